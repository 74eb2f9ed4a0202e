// RMSNorm and LayerNorm kernels: one thread block per row; threads stride over the columns
// (coalesced), then reduce through warp shuffles and one shared-memory exchange between warps.
#include "kernels/cuda/norm.h"

#include <climits>

#include "core/error.h"
#include "kernels/cuda/device.h"

namespace sq::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 256;  // rows are the parallelism; 256 threads keep 4096 cols at 16 each

__device__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of `v` over the block, returned to every thread. blockDim.x must be a multiple of 32. Safe
// to call repeatedly: the first barrier keeps a call from overwriting what the previous call's
// readers still need.
__device__ float block_sum(float v) {
  __shared__ float partial[kMaxThreads / kWarp];
  __shared__ float total;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? partial[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

__global__ void rms_norm_kernel(const float* __restrict__ x, i64 cols,
                                const float* __restrict__ weight, float eps,
                                float* __restrict__ out) {
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = out + row * cols;
  float sum_sq = 0.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) sum_sq += xr[j] * xr[j];
  sum_sq = block_sum(sum_sq);
  const float inv_rms = rsqrtf(sum_sq / static_cast<float>(cols) + eps);
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = xr[j] * inv_rms * weight[j];
}

__global__ void layer_norm_kernel(const float* __restrict__ x, i64 cols,
                                  const float* __restrict__ weight, const float* __restrict__ bias,
                                  float eps, float* __restrict__ out) {
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = out + row * cols;
  const float n = static_cast<float>(cols);

  float sum = 0.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) sum += xr[j];
  const float mean = block_sum(sum) / n;

  // Second pass: variance from centred values (the row is re-read from L1/L2, not from DRAM).
  float sum_sq = 0.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    const float d = xr[j] - mean;
    sum_sq += d * d;
  }
  const float inv_std = rsqrtf(block_sum(sum_sq) / n + eps);

  for (i64 j = threadIdx.x; j < cols; j += blockDim.x) {
    const float y = (xr[j] - mean) * inv_std * weight[j];
    yr[j] = bias != nullptr ? y + bias[j] : y;
  }
}

// Threads per block: the columns rounded up to whole warps, at most kMaxThreads.
int threads_for(i64 cols) {
  const i64 warps = (cols + kWarp - 1) / kWarp;
  return static_cast<int>(warps * kWarp < kMaxThreads ? warps * kWarp : kMaxThreads);
}

void check_shape(const char* kernel, i64 rows, i64 cols) {
  if (rows < 0 || cols < 0) fail("{}: negative shape [{}, {}]", kernel, rows, cols);
  // One block per row: the grid's x dimension holds at most 2^31 - 1 blocks.
  if (rows > INT_MAX) fail("{}: {} rows exceed the {} blocks of one grid", kernel, rows, INT_MAX);
}

}  // namespace

void rms_norm(const float* x, i64 rows, i64 cols, const float* weight, float eps, float* out,
              cudaStream_t stream) {
  check_shape("cuda::rms_norm", rows, cols);
  if (rows == 0 || cols == 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), threads_for(cols), 0, stream>>>(x, cols, weight,
                                                                                 eps, out);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void layer_norm(const float* x, i64 rows, i64 cols, const float* weight, const float* bias,
                float eps, float* out, cudaStream_t stream) {
  check_shape("cuda::layer_norm", rows, cols);
  if (rows == 0 || cols == 0) return;
  layer_norm_kernel<<<static_cast<unsigned>(rows), threads_for(cols), 0, stream>>>(x, cols, weight,
                                                                                   bias, eps, out);
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sq::cuda
