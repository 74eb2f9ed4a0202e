// Rotate-half RoPE (see rope.h): one thread per rotated pair (token, head, i), grid-stride.
// Consecutive threads take consecutive i of one head, so both halves are read coalesced.
#include "kernels/cuda/rope.h"

#include <algorithm>

#include "core/error.h"
#include "kernels/cuda/device.h"

namespace sq::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rope_rotate_half_kernel(float* __restrict__ x, i64 tokens, i64 heads, i64 head_dim,
                                        i64 row_stride, const i64* __restrict__ positions,
                                        const float* __restrict__ inv_freq) {
  const i64 half = head_dim / 2;
  const i64 pairs = tokens * heads * half;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 p = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs; p += stride) {
    const i64 i = p % half;
    const i64 h = (p / half) % heads;
    const i64 t = p / (half * heads);
    const float angle = __fmul_rn(static_cast<float>(positions[t]), inv_freq[i]);
    const float c = cosf(angle), s = sinf(angle);
    float* v = x + t * row_stride + h * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

}  // namespace

void rope_rotate_half(float* x, i64 tokens, i64 heads, i64 head_dim, i64 row_stride,
                      const i64* positions, const float* inv_freq, cudaStream_t stream) {
  if (tokens < 0 || heads < 0 || head_dim < 0)
    fail("cuda::rope_rotate_half: negative shape [{}, {}, {}]", tokens, heads, head_dim);
  if (tokens > 1 && row_stride < heads * head_dim)
    fail("cuda::rope_rotate_half: row stride {} is below heads x head_dim = {}", row_stride,
         heads * head_dim);
  const i64 pairs = tokens * heads * (head_dim / 2);
  if (pairs == 0) return;
  const i64 blocks = std::min<i64>((pairs + kThreads - 1) / kThreads, i64{1} << 16);
  rope_rotate_half_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x, tokens, heads, head_dim, row_stride, positions, inv_freq);
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sq::cuda
