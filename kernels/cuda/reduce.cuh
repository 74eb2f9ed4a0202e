// Device-side block reductions shared by the kernels of this folder (included by .cu files only).
// Every reduction combines in a fixed order for a given blockDim, so a kernel that reduces the same
// values with the same block size gets the same bits (the fused RMSNorm + quantization kernel
// relies on this to reproduce rms_norm exactly).
#pragma once

namespace sq::cuda::detail {

constexpr int kWarp = 32;
constexpr int kMaxBlockThreads = 1024;
// Threads per row of rms_norm / layer_norm and of the fused RMSNorm + quantization.
constexpr int kNormThreads = 256;

__device__ inline float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Largest of v over the warp. fmaxf: NaN-free inputs are expected (callers filter NaN first).
__device__ inline float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ inline float warp_min(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = fminf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Combines `v` over the block with the warp reduction `warp_op`, returned to every thread.
// blockDim.x must be a multiple of 32 and at most 1024. Safe to call repeatedly: the first barrier
// keeps a call from overwriting what the previous call's readers still need.
template <typename WarpOp>
__device__ inline float block_reduce(float v, float identity, WarpOp warp_op) {
  __shared__ float partial[kMaxBlockThreads / kWarp];
  __shared__ float total;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_op(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? partial[lane] : identity;
    v = warp_op(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

__device__ inline float block_sum(float v) {
  return block_reduce(v, 0.0f, [](float x) { return warp_sum(x); });
}
__device__ inline float block_max(float v) {
  return block_reduce(v, -INFINITY, [](float x) { return warp_max(x); });
}
__device__ inline float block_min(float v) {
  return block_reduce(v, INFINITY, [](float x) { return warp_min(x); });
}

// Threads per block for one block per row: the columns rounded up to whole warps, at most
// max_threads (a multiple of 32).
inline int threads_for_cols(long long cols, int max_threads) {
  const long long warps = (cols + kWarp - 1) / kWarp;
  return static_cast<int>(warps * kWarp < max_threads ? warps * kWarp : max_threads);
}

// rsqrt(mean(x^2) + eps) of one row, returned to every thread: the statistic of rms_norm. Threads
// stride over the columns, then block_sum; the same blockDim gives the same bits.
__device__ inline float row_inv_rms(const float* __restrict__ xr, long long cols, float eps) {
  float sum_sq = 0.0f;
  // An explicit FMA: rms_norm and the fused quantizer share these bits whatever the compiler's
  // contraction choice (or -fmad=false) would make of x * x + s.
  for (long long j = threadIdx.x; j < cols; j += blockDim.x)
    sum_sq = __fmaf_rn(xr[j], xr[j], sum_sq);
  sum_sq = block_sum(sum_sq);
  return rsqrtf(sum_sq / static_cast<float>(cols) + eps);
}

}  // namespace sq::cuda::detail
