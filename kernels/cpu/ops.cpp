// Optimised CPU kernels: GEMMs through OpenBLAS, the rest as tight loops.
#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace sq::cpu {

void linear(const float* x, i64 m, i64 k, const float* w, const float* bias, i64 n, float* y) {
  if (m == 0 || n == 0) return;
  float beta = 0.0f;
  if (bias != nullptr) {
    for (i64 r = 0; r < m; ++r) std::memcpy(y + r * n, bias, sizeof(float) * n);
    beta = 1.0f;
  }
  if (k == 0) {
    if (bias == nullptr) std::fill(y, y + m * n, 0.0f);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), 1.0f, x, static_cast<blasint>(k), w,
              static_cast<blasint>(k), beta, y, static_cast<blasint>(n));
}

void rms_norm(const float* x, i64 rows, i64 cols, const float* weight, float eps, float* out) {
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* o = out + r * cols;
    double ss = 0.0;
    for (i64 c = 0; c < cols; ++c) ss += double(xr[c]) * xr[c];
    // HF computes rsqrt in fp32 on the fp32 mean; doing the sum in double only removes
    // accumulation error, it does not change the formula.
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / double(cols)) + eps);
    for (i64 c = 0; c < cols; ++c) o[c] = (xr[c] * inv) * weight[c];
  }
}

void layer_norm(const float* x, i64 rows, i64 cols, const float* weight, const float* bias,
                float eps, float* out) {
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* o = out + r * cols;
    double mean = 0.0;
    for (i64 c = 0; c < cols; ++c) mean += xr[c];
    mean /= double(cols);
    double var = 0.0;  // two-pass: no cancellation when the mean is large (OPT shifted channels)
    for (i64 c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= double(cols);
    const float inv = 1.0f / std::sqrt(static_cast<float>(var) + eps);
    const float m = static_cast<float>(mean);
    for (i64 c = 0; c < cols; ++c)
      o[c] = (xr[c] - m) * inv * weight[c] + (bias != nullptr ? bias[c] : 0.0f);
  }
}

void rope_rotate_half(float* x, i64 tokens, i64 heads, i64 head_dim, i64 row_stride,
                      const i64* positions, const float* inv_freq) {
  const i64 half = head_dim / 2;
  std::vector<float> cos_t(half), sin_t(half);
  for (i64 t = 0; t < tokens; ++t) {
    for (i64 i = 0; i < half; ++i) {
      // The angle in fp32 as HF computes it (position * inv_freq, both fp32).
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cos_t[i] = std::cos(angle);
      sin_t[i] = std::sin(angle);
    }
    for (i64 h = 0; h < heads; ++h) {
      float* v = x + t * row_stride + h * head_dim;
      for (i64 i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos_t[i] - b * sin_t[i];
        v[i + half] = b * cos_t[i] + a * sin_t[i];
      }
    }
  }
}

void attention(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
               float* scratch) {
  const i64 group = s.q_heads / s.kv_heads;
  const i64 offset = s.tk - s.tq;  // absolute position of query 0
  for (i64 h = 0; h < s.q_heads; ++h) {
    const i64 kvh = h / group;
    const float* qh = q + h * s.head_dim;
    const float* kh = k + kvh * s.head_dim;
    const float* vh = v + kvh * s.head_dim;
    // scores[tq, tk] = scale * Q_h K_h^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(s.tq),
                static_cast<blasint>(s.tk), static_cast<blasint>(s.head_dim), s.scale, qh,
                static_cast<blasint>(s.q_stride), kh, static_cast<blasint>(s.kv_stride), 0.0f,
                scratch, static_cast<blasint>(s.tk));
    for (i64 i = 0; i < s.tq; ++i) {
      float* row = scratch + i * s.tk;
      const i64 visible = std::min(s.tk, offset + i + 1);
      float mx = row[0];
      for (i64 j = 1; j < visible; ++j) mx = std::max(mx, row[j]);
      double sum = 0.0;
      for (i64 j = 0; j < visible; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (i64 j = 0; j < visible; ++j) row[j] *= inv;
      for (i64 j = visible; j < s.tk; ++j) row[j] = 0.0f;  // causal mask
    }
    // out_h[tq, d] = P V_h
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(s.tq),
                static_cast<blasint>(s.head_dim), static_cast<blasint>(s.tk), 1.0f, scratch,
                static_cast<blasint>(s.tk), vh, static_cast<blasint>(s.kv_stride), 0.0f,
                out + h * s.head_dim, static_cast<blasint>(s.out_stride));
  }
}

void silu_mul(const float* gate, const float* up, i64 n, float* out) {
  for (i64 i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void relu(float* x, i64 n) {
  for (i64 i = 0; i < n; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void gelu_tanh(float* x, i64 n) {
  constexpr float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (i64 i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
  }
}

void add(const float* x, i64 n, float* y) {
  for (i64 i = 0; i < n; ++i) y[i] += x[i];
}

void embedding(const float* table, i64 dim, const std::uint32_t* ids, i64 n, float* out) {
  for (i64 t = 0; t < n; ++t)
    std::memcpy(out + t * dim, table + static_cast<i64>(ids[t]) * dim, sizeof(float) * dim);
}

void cross_entropy(const float* logits, i64 rows, i64 vocab, const std::uint32_t* targets,
                   float* nll) {
  for (i64 r = 0; r < rows; ++r) {
    const float* l = logits + r * vocab;
    const float mx = *std::max_element(l, l + vocab);
    double sum = 0.0;
    for (i64 j = 0; j < vocab; ++j) sum += std::exp(double(l[j]) - mx);
    nll[r] = static_cast<float>(std::log(sum) + mx - double(l[targets[r]]));
  }
}

void set_blas_threads(int threads) { openblas_set_num_threads(threads); }
int blas_threads() { return openblas_get_num_threads(); }

}  // namespace sq::cpu
