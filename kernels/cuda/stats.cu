// Per-channel min / max / absmax (see stats.h). One thread block per 32 columns: a warp reads 32
// consecutive columns of a row (one 128-byte transaction), and the block's kRowChunks warps take
// contiguous, ordered chunks of the rows; the chunks are then combined in order by one warp.
#include "kernels/cuda/stats.h"

#include <climits>
#include <cmath>

#include "core/error.h"
#include "kernels/cuda/device.h"

namespace sq::cuda {
namespace {

constexpr int kCols = 32;       // columns per block (one per lane)
constexpr int kRowChunks = 16;  // warps per block, each a contiguous chunk of the rows

// std::min(a, b) and std::max(a, b) exactly: b replaces a only when strictly smaller / larger, so a
// NaN b never wins, a NaN a stays, and on ties (+0 / -0) the earlier value a is kept.
__device__ inline float ordered_min(float a, float b) { return b < a ? b : a; }
__device__ inline float ordered_max(float a, float b) { return a < b ? b : a; }

__global__ void fill_stats_kernel(i64 cols, float* __restrict__ absmax, float* __restrict__ mn,
                                  float* __restrict__ mx) {
  const i64 c = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  absmax[c] = 0.0f;
  mn[c] = INFINITY;
  mx[c] = -INFINITY;
}

__global__ void observe_kernel(const float* __restrict__ x, i64 rows, i64 cols,
                               float* __restrict__ absmax, float* __restrict__ mn,
                               float* __restrict__ mx) {
  __shared__ float chunk_min[kRowChunks][kCols];
  __shared__ float chunk_max[kRowChunks][kCols];
  const i64 c = static_cast<i64>(blockIdx.x) * kCols + threadIdx.x;
  const i64 per_chunk = (rows + kRowChunks - 1) / kRowChunks;
  const i64 r0 = threadIdx.y * per_chunk;
  const i64 r1 = r0 + per_chunk < rows ? r0 + per_chunk : rows;
  // Starting from +inf / -inf: the fold of a chunk is never NaN, and an empty chunk is the
  // identity of the ordered combination below.
  float lo = INFINITY, hi = -INFINITY;
  if (c < cols) {
    for (i64 r = r0; r < r1; ++r) {
      const float v = x[r * cols + c];
      lo = ordered_min(lo, v);
      hi = ordered_max(hi, v);
    }
  }
  chunk_min[threadIdx.y][threadIdx.x] = lo;
  chunk_max[threadIdx.y][threadIdx.x] = hi;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  for (int k = 1; k < kRowChunks; ++k) {
    lo = ordered_min(lo, chunk_min[k][threadIdx.x]);
    hi = ordered_max(hi, chunk_max[k][threadIdx.x]);
  }
  // The existing statistics come first in the CPU's order.
  lo = ordered_min(mn[c], lo);
  hi = ordered_max(mx[c], hi);
  mn[c] = lo;
  mx[c] = hi;
  absmax[c] = ordered_max(fabsf(lo), fabsf(hi));
}

void check_shape(const char* kernel, i64 rows, i64 cols) {
  if (rows < 0 || cols < 0) fail("{}: negative shape [{}, {}]", kernel, rows, cols);
}

}  // namespace

void channel_stats_init(i64 cols, float* absmax, float* min, float* max, cudaStream_t stream) {
  check_shape("cuda::channel_stats_init", 0, cols);
  if (cols == 0) return;
  constexpr int kThreads = 256;
  const i64 blocks = (cols + kThreads - 1) / kThreads;
  fill_stats_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(cols, absmax, min, max);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void channel_stats_observe(const float* x, i64 rows, i64 cols, float* absmax, float* min,
                           float* max, cudaStream_t stream) {
  check_shape("cuda::channel_stats_observe", rows, cols);
  if (cols == 0) return;
  const i64 blocks = (cols + kCols - 1) / kCols;
  if (blocks > INT_MAX) fail("cuda::channel_stats_observe: {} columns exceed one grid", cols);
  observe_kernel<<<static_cast<unsigned>(blocks), dim3(kCols, kRowChunks), 0, stream>>>(
      x, rows, cols, absmax, min, max);
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sq::cuda
