// The activation quantization of the quantized forward on the GPU (recipes with `device: cuda`
// and `calibration.inputs: quant`; built only with CUDA): the device twin of QuantizeActivations,
// through kernels/cuda/quant.h, whose fake quantization is bit-identical to the CPU's.
#pragma once

#include <array>
#include <cstdint>

#include "kernels/cuda/device.h"
#include "model/device_forward.h"
#include "stages/quantized_block.h"
#include "stages/scheme.h"

namespace sq::stages {

class DeviceQuantizeActivations : public model::DeviceActivationHook {
 public:
  // Uploads the block's static input scales (when the scheme has them); `scheme` must outlive
  // the hook.
  DeviceQuantizeActivations(const QuantizedBlock& block, const QuantScheme& scheme);
  void at(model::Site site, float* x, std::int64_t rows, std::int64_t cols,
          cudaStream_t stream) override;

 private:
  const QuantScheme& scheme_;
  // Static per-tensor parameters by site (the linear inputs; see input_role).
  struct Static {
    cuda::DeviceBuffer<float> scale;
    cuda::DeviceBuffer<std::int32_t> zero_point;
  };
  std::array<Static, model::kSiteCount> static_;
};

}  // namespace sq::stages
