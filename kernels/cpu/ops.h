// CPU kernels for the FP32 forward pass. Framework-free: raw pointers, sizes and row strides;
// no Tensor, no I/O, no MPI. Every kernel here has a plain reference twin in reference.h that
// tests compare it with.
//
// Conventions: matrices are row-major; a linear layer's weight is [out, in] (Hugging Face
// layout) and computes y = x W^T + b. Activations of one sequence are [tokens, heads, head_dim]
// with a row stride (elements between consecutive tokens) so q/k/v can live side by side.
#pragma once

#include <cstdint>

namespace sq::cpu {

using i64 = std::int64_t;

// y[m, n] = x[m, k] W[n, k]^T (+ bias[n] when bias != nullptr). Through OpenBLAS sgemm.
void linear(const float* x, i64 m, i64 k, const float* w, const float* bias, i64 n, float* y);

// out = x * rsqrt(mean(x^2) + eps) * weight, per row; accumulates in double.
void rms_norm(const float* x, i64 rows, i64 cols, const float* weight, float eps, float* out);
// out = (x - mean) * rsqrt(var + eps) * weight + bias (bias may be null), per row.
void layer_norm(const float* x, i64 rows, i64 cols, const float* weight, const float* bias,
                float eps, float* out);

// Rotary position embedding, rotate-half convention (HF LLaMA): for each head, pairs (i, i+d/2)
// rotate by angle positions[t] * inv_freq[i]. In place on x[t, heads, head_dim] with row stride.
void rope_rotate_half(float* x, i64 tokens, i64 heads, i64 head_dim, i64 row_stride,
                      const i64* positions, const float* inv_freq);

// Causal multi-head attention with grouped KV heads (GQA): q head h reads kv head
// h / (q_heads / kv_heads). q is [tq, q_heads, d]; k and v are [tk, kv_heads, d]; query i sits at
// absolute position tk - tq + i and sees keys 0..that position. out is [tq, q_heads, d].
struct AttentionShape {
  i64 tq = 0, tk = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  i64 q_stride = 0, kv_stride = 0, out_stride = 0;  // row strides in elements
  float scale = 1.0f;                               // applied to q.k (1/sqrt(d) for LLaMA)
};
// `scratch` must hold tq * tk floats.
void attention(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
               float* scratch);

// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, i64 n, float* out);
void relu(float* x, i64 n);
// GELU, tanh approximation (BLOOM): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_tanh(float* x, i64 n);
// y[i] += x[i]
void add(const float* x, i64 n, float* y);

// rows of `table` [vocab, dim] picked by ids; throws no errors: ids are checked by the caller.
void embedding(const float* table, i64 dim, const std::uint32_t* ids, i64 n, float* out);

// Natural-log softmax cross entropy: nll[t] = logsumexp(logits[t]) - logits[t][target[t]].
void cross_entropy(const float* logits, i64 rows, i64 vocab, const std::uint32_t* targets,
                   float* nll);

// OpenBLAS thread count (1 per rank under MPI unless a recipe says otherwise).
void set_blas_threads(int threads);
int blas_threads();

}  // namespace sq::cpu
