#include "stages/device_calibrate.h"

#include "core/error.h"
#include "kernels/cuda/stats.h"

namespace sq::stages {

void DeviceBlockStats::observe(model::Site site, const float* x, std::int64_t rows,
                               std::int64_t cols, cudaStream_t stream) {
  Site& s = sites_[static_cast<std::size_t>(site)];
  if (s.cols == 0) {
    const auto n = static_cast<std::size_t>(cols);
    s.absmax = cuda::DeviceBuffer<float>(n);
    s.min = cuda::DeviceBuffer<float>(n);
    s.max = cuda::DeviceBuffer<float>(n);
    s.cols = cols;
    cuda::channel_stats_init(cols, s.absmax.data(), s.min.data(), s.max.data(), stream);
  }
  SQ_CHECK(s.cols == cols, "stats of {} channels at {} observing {}", s.cols,
           model::site_name(site), cols);
  cuda::channel_stats_observe(x, rows, cols, s.absmax.data(), s.min.data(), s.max.data(), stream);
}

void DeviceBlockStats::merge_into(BlockStats& stats, cudaStream_t stream) const {
  cuda::synchronize(stream);
  for (std::size_t i = 0; i < sites_.size(); ++i) {
    const Site& s = sites_[i];
    if (s.cols == 0) continue;
    ChannelStats host;
    host.absmax = cuda::to_host(s.absmax);
    host.min = cuda::to_host(s.min);
    host.max = cuda::to_host(s.max);
    stats.sites[i].merge(host);
  }
}

void DeviceStatsObserver::at(model::Site site, float* x, std::int64_t rows, std::int64_t cols,
                             cudaStream_t stream) {
  stats_.observe(site, x, rows, cols, stream);
  if (next_ != nullptr) next_->at(site, x, rows, cols, stream);
}

}  // namespace sq::stages
