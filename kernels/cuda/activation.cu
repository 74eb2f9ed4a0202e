// Elementwise activations (see activation.h): grid-stride loops, one element per thread per step.
#include "kernels/cuda/activation.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/cuda/device.h"

namespace sq::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void silu_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, i64 n,
                                float* __restrict__ out) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void relu_kernel(float* __restrict__ x, i64 n) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void gelu_tanh_kernel(float* __restrict__ x, i64 n) {
  constexpr float k = 0.7978845608028654f;  // sqrt(2 / pi)
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
  }
}

// Blocks for n elements: one element per thread, capped (the kernels stride over the rest).
unsigned blocks_for(const char* kernel, i64 n) {
  if (n < 0) fail("{}: negative size {}", kernel, n);
  return static_cast<unsigned>(std::min<i64>((n + kThreads - 1) / kThreads, i64{1} << 16));
}

}  // namespace

void silu_mul(const float* gate, const float* up, i64 n, float* out, cudaStream_t stream) {
  const unsigned blocks = blocks_for("cuda::silu_mul", n);
  if (n == 0) return;
  silu_mul_kernel<<<blocks, kThreads, 0, stream>>>(gate, up, n, out);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void relu(float* x, i64 n, cudaStream_t stream) {
  const unsigned blocks = blocks_for("cuda::relu", n);
  if (n == 0) return;
  relu_kernel<<<blocks, kThreads, 0, stream>>>(x, n);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void gelu_tanh(float* x, i64 n, cudaStream_t stream) {
  const unsigned blocks = blocks_for("cuda::gelu_tanh", n);
  if (n == 0) return;
  gelu_tanh_kernel<<<blocks, kThreads, 0, stream>>>(x, n);
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sq::cuda
