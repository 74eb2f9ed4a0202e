// CUDA twin of the per-channel calibration statistics (stages/calibrate.cpp,
// ChannelStats::observe): per column of an activation x [rows, cols], the running min and max,
// and absmax = max(|min|, |max|). All pointers are device pointers; launches are asynchronous on
// `stream` (nullptr: the legacy default stream). Shape errors and launch errors throw sq::Error.
//
// Results are bit-identical to the CPU: the CPU folds min = std::min(min, x) over the rows in
// order, which skips NaN inputs (a NaN already in `min` stays), and on ties (+0 / -0) keeps the
// earlier value. The kernel folds contiguous row chunks in order and combines the chunks
// left to right with the same comparison, which gives the same value for any chunking.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sq::cuda {

using i64 = std::int64_t;

// Empty statistics for `cols` channels: absmax 0, min +inf, max -inf (what ChannelStats::observe
// starts from).
void channel_stats_init(i64 cols, float* absmax, float* min, float* max, cudaStream_t stream);

// Merges x [rows, cols] into min[cols] and max[cols] and recomputes absmax[cols] from them, as
// ChannelStats::observe does once its arrays exist. rows may be 0 (absmax is still recomputed).
void channel_stats_observe(const float* x, i64 rows, i64 cols, float* absmax, float* min,
                           float* max, cudaStream_t stream);

}  // namespace sq::cuda
