// Plain reference kernels: the obvious loops, double accumulation, no BLAS. They define what the
// kernels in ops.h (and later the CUDA kernels) must compute, and exist only to test them.
#pragma once

#include "kernels/cpu/ops.h"

namespace sq::cpu::ref {

void linear(const float* x, i64 m, i64 k, const float* w, const float* bias, i64 n, float* y);
void attention(const AttentionShape& s, const float* q, const float* k, const float* v, float* out);
// The interleaved-pair RoPE convention (GPT-J / Meta's original LLaMA code): pairs (2i, 2i+1).
// Not what HF LLaMA checkpoints use; kept to show tests can tell the two apart.
void rope_interleaved(float* x, i64 tokens, i64 heads, i64 head_dim, i64 row_stride,
                      const i64* positions, const float* inv_freq);

}  // namespace sq::cpu::ref
