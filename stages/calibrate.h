// Calibration: per-channel absmax, min and max of every activation that enters a matrix product
// in a block, over all calibration tokens, gathered while the calibration set's hidden states
// flow through the block.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "model/forward.h"

namespace sq::stages {

struct ChannelStats {
  std::vector<float> absmax, min, max;  // per channel; empty until something was observed
  std::int64_t channels() const { return static_cast<std::int64_t>(absmax.size()); }
  bool empty() const { return absmax.empty(); }
  void observe(const float* x, std::int64_t rows, std::int64_t cols);
  // Elementwise max/min: merging is order-independent, so the result does not depend on how
  // calibration samples were split across micro-batches, replicas or a resume.
  void merge(const ChannelStats& other);
  float tensor_absmax() const;
  float tensor_min() const;
  float tensor_max() const;
};

struct BlockStats {
  std::array<ChannelStats, model::kSiteCount> sites;
  ChannelStats& at(model::Site s) { return sites[static_cast<int>(s)]; }
  const ChannelStats& at(model::Site s) const { return sites[static_cast<int>(s)]; }
};

// A hook that records statistics at every site, then passes the activation on to `next`.
class StatsObserver : public model::ActivationHook {
 public:
  explicit StatsObserver(BlockStats& stats, model::ActivationHook* next = nullptr)
      : stats_(stats), next_(next) {}
  void at(model::Site site, float* x, std::int64_t rows, std::int64_t cols) override;

 private:
  BlockStats& stats_;
  model::ActivationHook* next_;  // e.g. the quantization hook when observing a quantized block
};

}  // namespace sq::stages
