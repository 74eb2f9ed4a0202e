// Weight quantization (round to nearest with min-max or MSE-searched clipping, per channel,
// tensor or group) and the activation quantization the quantized forward applies.
#pragma once

#include <array>
#include <optional>

#include "stages/calibrate.h"
#include "stages/quantized_block.h"
#include "stages/scheme.h"

namespace sq::stages {

// Quantizes every linear of `block.weights` in place (weights become their dequantized values)
// and records the integer weights and scales in block.linears.
void quantize_block_weights(QuantizedBlock& block, const QuantScheme& scheme);

// The FP32 weight a quantized linear stands for: (q - zero_point) * scale, exactly what
// quantize_block_weights leaves in the block's weights (a resume rebuilds them with it).
Tensor dequantized_weight(const QuantizedLinear& q, const QuantScheme& scheme);

// Static per-tensor activation parameters from calibration statistics, for each linear's input
// (q, k and v share one input, as do gate and up). No-op for dynamic activations.
void set_static_activation_params(QuantizedBlock& block, const BlockStats& stats,
                                  const QuantScheme& scheme);

// The linear whose static input parameters a site uses (q/k/v share qkv_in's, gate/up share
// mlp_in's); none for the attention matmul inputs, which are only ever quantized per token.
std::optional<model::LinearRole> input_role(model::Site site);

// Fake-quantizes activations at matmul inputs as the scheme says: per-token dynamic, or
// per-tensor with the block's static input scales; attention inputs per token when enabled.
class QuantizeActivations : public model::ActivationHook {
 public:
  QuantizeActivations(const QuantizedBlock& block, const QuantScheme& scheme)
      : block_(block), scheme_(scheme) {}
  void at(model::Site site, float* x, std::int64_t rows, std::int64_t cols) override;

 private:
  const QuantizedBlock& block_;
  const QuantScheme& scheme_;
};

}  // namespace sq::stages
