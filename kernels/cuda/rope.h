// CUDA twin of cpu::rope_rotate_half (kernels/cpu/ops.h): rotary position embedding, rotate-half
// convention (HF LLaMA), in place on x [tokens, heads, head_dim] with a row stride (elements
// between consecutive tokens, so q and k may live inside a fused qkv buffer). For each token t,
// head h and i < head_dim / 2, the pair (v[i], v[i + head_dim / 2]) rotates by angle
// float(positions[t]) * inv_freq[i] (fp32, as HF computes it); an odd head_dim leaves the last
// element alone. positions [tokens] (int64) and inv_freq [head_dim / 2] are device pointers.
// Unlike the CPU loop, overlapping token rows (row_stride < heads * head_dim with tokens > 1)
// throw sq::Error: threads would race on them.
//
// sinf / cosf are CUDA's (at most 2 ulp without fast math), so results may differ from the CPU
// in the last bits; the angle itself is the same float product.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sq::cuda {

using i64 = std::int64_t;

void rope_rotate_half(float* x, i64 tokens, i64 heads, i64 head_dim, i64 row_stride,
                      const i64* positions, const float* inv_freq, cudaStream_t stream);

}  // namespace sq::cuda
