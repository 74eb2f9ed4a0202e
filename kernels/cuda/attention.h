// CUDA twin of cpu::attention (kernels/cpu/ops.h): causal multi-head attention with grouped KV
// heads (GQA), fused flash-style, in fp32. All data pointers are device pointers; the launch is
// asynchronous on `stream` (nullptr: the legacy default stream). Invalid shapes throw sq::Error
// naming the argument before anything is launched.
//
// The shape type is the CPU header's; only its fields are used, none of sq_kernels_cpu's
// functions, so this library does not link it.
//
// Semantics, per sequence: q is [tq, q_heads, head_dim], k and v are [tk, kv_heads, head_dim],
// out is [tq, q_heads, head_dim], each with its row stride; q head h reads kv head
// h / (q_heads / kv_heads); query i sits at absolute position tk - tq + i and sees keys 0..that
// position; scores are scale * q.k, softmax over the visible keys, out = probabilities x v.
// Requirements: tk >= tq >= 0, q_heads a positive multiple of kv_heads, 1 <= head_dim <= 256,
// strides >= heads x head_dim (rows may sit inside a wider fused buffer).
//
// The score matrix is never materialised: keys are streamed in tiles with an online softmax
// (running max and sum) and the output is accumulated in registers, so memory traffic is
// O((tq + tk) x head_dim) per block of queries and no scratch buffer is needed. Results are
// deterministic (fixed reduction order, no atomics).
//
// Accuracy vs the CPU (which forms all scores with one sgemm, then softmax with a double sum,
// then a second sgemm): the dot products are summed in a different order (each within
// head_dim x 2^-24 x scale x sum_i |q_i k_i| of the exact score), expf is CUDA's (at most 2 ulp),
// and p x v is summed in fp32 tile by tile with rescaling (within about (keys + tiles) x 2^-24 of
// sum_j p_j |v_j|). An output element therefore differs from the CPU by a small multiple of
// (score error + a few ulps) x sum_j p_j |v_j| / sum_j p_j; tests/gpu/test_cuda_attention.cpp
// states the exact bound it checks.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/ops.h"

namespace sq::cuda {

using i64 = std::int64_t;
using cpu::AttentionShape;

// Largest head_dim the kernel supports (each lane of a warp holds head_dim / 32 output dims).
constexpr i64 kAttentionMaxHeadDim = 256;

// n_seq independent sequences laid out one after the other: sequence b's q starts at
// q + b * s.tq * s.q_stride, its k / v at k / v + b * s.tk * s.kv_stride and its out at
// out + b * s.tq * s.out_stride. n_seq == 0 or s.tq == 0 launches nothing.
void attention(const AttentionShape& s, i64 n_seq, const float* q, const float* k, const float* v,
               float* out, cudaStream_t stream);

}  // namespace sq::cuda
