// Calibration statistics gathered on the GPU (recipes with `device: cuda`; built only with CUDA):
// the device twin of StatsObserver. Per site, per-channel min / max / absmax stay on the device
// for the whole calibration pass (kernels/cuda/stats.h, bit-identical to ChannelStats::observe on
// the same activations) and come back once, at the end of the pass.
#pragma once

#include <array>
#include <cstdint>

#include "kernels/cuda/device.h"
#include "model/device_forward.h"
#include "stages/calibrate.h"

namespace sq::stages {

class DeviceBlockStats {
 public:
  // Folds x [rows, cols] (device) into the site's statistics, creating them on first use.
  void observe(model::Site site, const float* x, std::int64_t rows, std::int64_t cols,
               cudaStream_t stream);
  // Merges everything observed into `stats` (ChannelStats::merge), after waiting for `stream`.
  void merge_into(BlockStats& stats, cudaStream_t stream) const;

 private:
  struct Site {
    cuda::DeviceBuffer<float> absmax, min, max;
    std::int64_t cols = 0;
  };
  std::array<Site, model::kSiteCount> sites_;
};

// Records statistics at every site, then passes the activation on to `next` (e.g. a
// HostHookBridge to the OS+ input capture, or the quantization hook).
class DeviceStatsObserver : public model::DeviceActivationHook {
 public:
  explicit DeviceStatsObserver(DeviceBlockStats& stats, model::DeviceActivationHook* next = nullptr)
      : stats_(stats), next_(next) {}
  void at(model::Site site, float* x, std::int64_t rows, std::int64_t cols,
          cudaStream_t stream) override;

 private:
  DeviceBlockStats& stats_;
  model::DeviceActivationHook* next_;
};

}  // namespace sq::stages
