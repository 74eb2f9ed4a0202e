// Casts and the residual add (see convert.h): grid-stride loops, one element per thread per step.
#include "kernels/cuda/convert.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "core/error.h"
#include "kernels/cuda/device.h"

namespace sq::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void to_bf16_kernel(const float* __restrict__ x, i64 n,
                               std::uint16_t* __restrict__ out) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

__global__ void to_f16_kernel(const float* __restrict__ x, i64 n, std::uint16_t* __restrict__ out) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __half_as_ushort(__float2half_rn(x[i]));
}

__global__ void add_kernel(const float* __restrict__ x, i64 n, float* __restrict__ y) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = __fadd_rn(y[i], x[i]);
}

unsigned blocks_for(const char* kernel, i64 n) {
  if (n < 0) fail("{}: negative size {}", kernel, n);
  return static_cast<unsigned>(std::min<i64>((n + kThreads - 1) / kThreads, i64{1} << 16));
}

}  // namespace

void to_bf16(const float* x, i64 n, std::uint16_t* out, cudaStream_t stream) {
  const unsigned blocks = blocks_for("cuda::to_bf16", n);
  if (n == 0) return;
  to_bf16_kernel<<<blocks, kThreads, 0, stream>>>(x, n, out);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void to_f16(const float* x, i64 n, std::uint16_t* out, cudaStream_t stream) {
  const unsigned blocks = blocks_for("cuda::to_f16", n);
  if (n == 0) return;
  to_f16_kernel<<<blocks, kThreads, 0, stream>>>(x, n, out);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void add(const float* x, i64 n, float* y, cudaStream_t stream) {
  const unsigned blocks = blocks_for("cuda::add", n);
  if (n == 0) return;
  add_kernel<<<blocks, kThreads, 0, stream>>>(x, n, y);
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sq::cuda
