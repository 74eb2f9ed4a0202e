// Reference kernels: straightforward loops in double precision.
#include "kernels/cpu/reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sq::cpu::ref {

void linear(const float* x, i64 m, i64 k, const float* w, const float* bias, i64 n, float* y) {
  for (i64 r = 0; r < m; ++r)
    for (i64 c = 0; c < n; ++c) {
      double acc = bias != nullptr ? bias[c] : 0.0;
      for (i64 i = 0; i < k; ++i) acc += double(x[r * k + i]) * w[c * k + i];
      y[r * n + c] = static_cast<float>(acc);
    }
}

void attention(const AttentionShape& s, const float* q, const float* k, const float* v,
               float* out) {
  const i64 group = s.q_heads / s.kv_heads;
  std::vector<double> p(static_cast<std::size_t>(s.tk));
  for (i64 h = 0; h < s.q_heads; ++h) {
    const i64 kvh = h / group;
    for (i64 i = 0; i < s.tq; ++i) {
      const i64 pos = s.tk - s.tq + i;
      double mx = -INFINITY;
      for (i64 j = 0; j <= pos; ++j) {
        double dot = 0.0;
        for (i64 d = 0; d < s.head_dim; ++d)
          dot += double(q[i * s.q_stride + h * s.head_dim + d]) *
                 k[j * s.kv_stride + kvh * s.head_dim + d];
        p[j] = dot * s.scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0.0;
      for (i64 j = 0; j <= pos; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (i64 d = 0; d < s.head_dim; ++d) {
        double acc = 0.0;
        for (i64 j = 0; j <= pos; ++j) acc += p[j] * v[j * s.kv_stride + kvh * s.head_dim + d];
        out[i * s.out_stride + h * s.head_dim + d] = static_cast<float>(acc / sum);
      }
    }
  }
}

void rope_interleaved(float* x, i64 tokens, i64 heads, i64 head_dim, i64 row_stride,
                      const i64* positions, const float* inv_freq) {
  for (i64 t = 0; t < tokens; ++t)
    for (i64 h = 0; h < heads; ++h) {
      float* v = x + t * row_stride + h * head_dim;
      for (i64 i = 0; i < head_dim / 2; ++i) {
        const double angle = double(positions[t]) * inv_freq[i];
        const double a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
        v[2 * i + 1] = static_cast<float>(b * std::cos(angle) + a * std::sin(angle));
      }
    }
}

}  // namespace sq::cpu::ref
