#include "stages/calibrate.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sq::stages {

void ChannelStats::observe(const float* x, std::int64_t rows, std::int64_t cols) {
  if (empty()) {
    absmax.assign(static_cast<std::size_t>(cols), 0.0f);
    min.assign(static_cast<std::size_t>(cols), INFINITY);
    max.assign(static_cast<std::size_t>(cols), -INFINITY);
  }
  SQ_CHECK(channels() == cols, "stats of {} channels observing {}", channels(), cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      min[c] = std::min(min[c], row[c]);
      max[c] = std::max(max[c], row[c]);
    }
  }
  for (std::int64_t c = 0; c < cols; ++c) absmax[c] = std::max(std::abs(min[c]), std::abs(max[c]));
}

void ChannelStats::merge(const ChannelStats& o) {
  if (o.empty()) return;
  if (empty()) {
    *this = o;
    return;
  }
  SQ_CHECK(channels() == o.channels(), "merging stats of {} and {} channels", channels(),
           o.channels());
  for (std::int64_t c = 0; c < channels(); ++c) {
    absmax[c] = std::max(absmax[c], o.absmax[c]);
    min[c] = std::min(min[c], o.min[c]);
    max[c] = std::max(max[c], o.max[c]);
  }
}

float ChannelStats::tensor_absmax() const {
  return absmax.empty() ? 0.0f : *std::max_element(absmax.begin(), absmax.end());
}
float ChannelStats::tensor_min() const {
  return min.empty() ? 0.0f : *std::min_element(min.begin(), min.end());
}
float ChannelStats::tensor_max() const {
  return max.empty() ? 0.0f : *std::max_element(max.begin(), max.end());
}

void StatsObserver::at(model::Site site, float* x, std::int64_t rows, std::int64_t cols) {
  // Statistics describe the input before it is quantized: that is what scales are made from.
  stats_.at(site).observe(x, rows, cols);
  if (next_ != nullptr) next_->at(site, x, rows, cols);
}

}  // namespace sq::stages
