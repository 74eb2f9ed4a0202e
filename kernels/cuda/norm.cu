// RMSNorm and LayerNorm kernels: one thread block per row; threads stride over the columns
// (coalesced), then reduce through warp shuffles and one shared-memory exchange between warps
// (reduce.cuh).
#include "kernels/cuda/norm.h"

#include <climits>

#include "core/error.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {
namespace {

using detail::block_sum;

// Rows are the parallelism; 256 threads keep 4096 cols at 16 each. The fused RMSNorm + quantize
// kernel (quant.cu) uses the same count so that its inv_rms has the same bits.
constexpr int kMaxThreads = detail::kNormThreads;

__global__ void rms_norm_kernel(const float* __restrict__ x, i64 cols,
                                const float* __restrict__ weight, float eps,
                                float* __restrict__ out) {
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  float* yr = out + row * cols;
  const float inv_rms = detail::row_inv_rms(xr, cols, eps);
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

int threads_for(i64 cols) { return detail::threads_for_cols(cols, kMaxThreads); }

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
