// Tests for kernels/cpu/ops.h: each optimised kernel against kernels/cpu/reference.h or a
// double-precision formula written here, over awkward sizes (1, 19, 111, 257) with fixed sq::Rng
// seeds, plus properties that need no reference at all (causality, uniform attention, GQA as
// repeated MHA, RoPE norm preservation and relative positions). Tolerances are derived from
// float32 rounding (u = 2^-24) and stated next to each check.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "core/random.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"

namespace sq::cpu {
namespace {

constexpr double kU = 0x1p-24;          // unit roundoff of float32 (round to nearest)
constexpr float kSentinel = -12345.5f;  // marks memory a kernel must not write

// Index/size conversion that reads shorter than static_cast (and avoids the vexing parse of
// std::size_t(n) in declarations).
constexpr std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

std::vector<float> randn(Rng& rng, std::size_t n, double scale = 1.0) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal() * scale);
  return v;
}

// Compares element-wise with a per-element tolerance; reports the first few offenders and the
// worst ratio error / tolerance.
template <typename Tol>
void expect_close(const std::vector<float>& got, const std::vector<double>& want, Tol tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(got[i]) - want[i]);
    const double t = tol(i);
    if (!(err <= t) && bad++ < 5)  // !(<=) so that NaN fails
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i]
                    << " (error " << err << " > tolerance " << t << ")";
  }
  EXPECT_EQ(bad, 0) << what;
}

// --- linear ----------------------------------------------------------------------------------

TEST(Linear, MatchesReferenceOnAwkwardSizes) {
  const std::int64_t sizes[] = {1, 19, 111, 257};
  Rng rng(1);
  for (const auto m : sizes)
    for (const auto n : sizes)
      for (const auto k : sizes)
        for (const bool with_bias : {false, true}) {
          const auto x = randn(rng, sz(m * k));
          const auto w = randn(rng, sz(n * k));
          const auto b = randn(rng, sz(n));
          const float* bias = with_bias ? b.data() : nullptr;
          std::vector<float> y(sz(m * n), kSentinel), yr(sz(m * n));
          linear(x.data(), m, k, w.data(), bias, n, y.data());
          ref::linear(x.data(), m, k, w.data(), bias, n, yr.data());
          // Exact result in double, and sum |x_i w_i| + |b| per output for the error bound.
          std::vector<double> exact(sz(m * n)), mag(sz(m * n));
          for (std::int64_t r = 0; r < m; ++r)
            for (std::int64_t c = 0; c < n; ++c) {
              double acc = with_bias ? b[sz(c)] : 0.0, a = std::fabs(acc);
              for (std::int64_t i = 0; i < k; ++i) {
                const double p = double(x[sz(r * k + i)]) * w[sz(c * k + i)];
                acc += p;
                a += std::fabs(p);
              }
              exact[sz(r * n + c)] = acc;
              mag[sz(r * n + c)] = a;
            }
          const std::string what = "linear m=" + std::to_string(m) + " n=" + std::to_string(n) +
                                   " k=" + std::to_string(k) + (with_bias ? " +bias" : "");
          // A float32 dot product of k terms in any order (blocked, FMA or not) is within
          // gamma_{k+1} = (k+1)u/(1-(k+1)u) of sum |x_i w_i| (+|b|): the classic bound of
          // Higham, Accuracy and Stability, 3.1. The reference (double, then one rounding) is
          // within u|y| + (k+1) 2^-53 * sum; both fit in (k+2)u * sum.
          const double g = double(k + 2) * kU / (1.0 - double(k + 2) * kU);
          expect_close(
              y, exact, [&](std::size_t i) { return g * mag[i]; }, what);
          std::vector<double> yr_d(yr.begin(), yr.end());
          expect_close(
              y, yr_d, [&](std::size_t i) { return 2 * g * mag[i]; }, what + " vs ref");
        }
}

TEST(Linear, ZeroInnerDimension) {
  // k = 0: y = bias (exactly), or zeros without bias; any old contents of y are overwritten.
  const std::vector<float> b = {1.5f, -2.0f, 3.0f};
  std::vector<float> y(6, kSentinel);
  linear(nullptr, 2, 0, nullptr, b.data(), 3, y.data());
  EXPECT_EQ(y, (std::vector<float>{1.5f, -2.0f, 3.0f, 1.5f, -2.0f, 3.0f}));
  std::fill(y.begin(), y.end(), kSentinel);
  linear(nullptr, 2, 0, nullptr, nullptr, 3, y.data());
  EXPECT_EQ(y, std::vector<float>(6, 0.0f));
  std::vector<float> yr(6, kSentinel);
  ref::linear(nullptr, 2, 0, nullptr, b.data(), 3, yr.data());
  EXPECT_EQ(yr, (std::vector<float>{1.5f, -2.0f, 3.0f, 1.5f, -2.0f, 3.0f}));
  // m = 0 or n = 0: nothing to write.
  std::vector<float> untouched(4, kSentinel);
  linear(nullptr, 0, 5, nullptr, nullptr, 4, untouched.data());
  EXPECT_EQ(untouched, std::vector<float>(4, kSentinel));
}

// --- attention -------------------------------------------------------------------------------

// q, k and v interleaved in one buffer of tk rows: [q (q_heads*d) | k (kv*d) | v (kv*d) | pad];
// the queries are the last tq rows (the KV-cache case: new tokens at the end). The output has a
// padded row stride too, whose padding must survive.
struct AttnCase {
  std::int64_t tq, tk, q_heads, kv_heads, d;
};

struct AttnData {
  AttentionShape s;
  std::vector<float> qkv, out;
  const float* q() const { return qkv.data() + (s.tk - s.tq) * s.kv_stride; }
  const float* k() const { return qkv.data() + s.q_heads * s.head_dim; }
  const float* v() const { return qkv.data() + (s.q_heads + s.kv_heads) * s.head_dim; }
  float* k_mut() { return qkv.data() + s.q_heads * s.head_dim; }
  float* v_mut() { return qkv.data() + (s.q_heads + s.kv_heads) * s.head_dim; }
  float& at_k(std::int64_t j, std::int64_t h, std::int64_t i) {
    return k_mut()[j * s.kv_stride + h * s.head_dim + i];
  }
  float& at_v(std::int64_t j, std::int64_t h, std::int64_t i) {
    return v_mut()[j * s.kv_stride + h * s.head_dim + i];
  }
};

AttnData make_attn(const AttnCase& c, Rng& rng) {
  AttnData a;
  a.s.tq = c.tq;
  a.s.tk = c.tk;
  a.s.q_heads = c.q_heads;
  a.s.kv_heads = c.kv_heads;
  a.s.head_dim = c.d;
  a.s.q_stride = a.s.kv_stride = (c.q_heads + 2 * c.kv_heads) * c.d + 3;
  a.s.out_stride = c.q_heads * c.d + 5;
  a.s.scale = static_cast<float>(1.0 / std::sqrt(double(c.d)));
  a.qkv = randn(rng, sz(c.tk * a.s.kv_stride));
  a.out.assign(sz(c.tq * a.s.out_stride), kSentinel);
  return a;
}

std::vector<float> run_attention(AttnData& a) {
  std::vector<float> scratch(sz(a.s.tq * a.s.tk), kSentinel);
  std::fill(a.out.begin(), a.out.end(), kSentinel);
  attention(a.s, a.q(), a.k(), a.v(), a.out.data(), scratch.data());
  return a.out;
}

std::string attn_name(const AttnCase& c) {
  return "attention tq=" + std::to_string(c.tq) + " tk=" + std::to_string(c.tk) +
         " heads=" + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) +
         " d=" + std::to_string(c.d);
}

// Tolerance for one attention output. The worst-case (linear in d and tk) bound of float32
// rounding is ~1000x above the errors seen for d = 64 and would let a 1e-5 relative bug pass, so
// this uses the usual sqrt growth of independent rounding errors (Higham, Accuracy and
// Stability, 2.8): each score is a (d+1)-operation float sum, error ~ sqrt(d+1) u max(1,|s|); a
// score error e moves the softmax weights by at most 2e in L1, times max|v|; exp, normalisation
// and the tk-term weighted sum add ~ sqrt(tk+4) u max|v|. Factor 4 on top: the worst error seen
// on these cases is ~2 u max|v|, about 1/80 of the tolerance.
double attn_tolerance(const AttnData& a) {
  double smax = 0.0, vmax = 0.0;
  const auto& s = a.s;
  const std::int64_t group = s.q_heads / s.kv_heads;
  for (std::int64_t h = 0; h < s.q_heads; ++h)
    for (std::int64_t i = 0; i < s.tq; ++i)
      for (std::int64_t j = 0; j < s.tk; ++j) {
        double sum = 0.0;
        for (std::int64_t x = 0; x < s.head_dim; ++x)
          sum += a.q()[i * s.q_stride + h * s.head_dim + x] *
                 double(a.k()[j * s.kv_stride + (h / group) * s.head_dim + x]);
        smax = std::max(smax, std::fabs(sum * s.scale));
      }
  for (std::int64_t j = 0; j < s.tk; ++j)
    for (std::int64_t x = 0; x < s.kv_heads * s.head_dim; ++x)
      vmax = std::max(vmax, std::fabs(double(a.v()[j * s.kv_stride + x])));
  const double score_err = std::sqrt(double(s.head_dim + 1)) * kU * std::max(1.0, smax);
  return 4.0 * vmax * (2.0 * score_err + std::sqrt(double(s.tk + 4)) * kU);
}

void check_out_padding(const AttnData& a, const std::vector<float>& out, const std::string& what) {
  for (std::int64_t i = 0; i < a.s.tq; ++i)
    for (std::int64_t x = a.s.q_heads * a.s.head_dim; x < a.s.out_stride; ++x)
      ASSERT_EQ(out[sz(i * a.s.out_stride + x)], kSentinel) << what << ": row padding";
}

// The output values (without padding) as a dense [tq, q_heads*d] vector.
std::vector<float> dense_out(const AttnData& a, const std::vector<float>& out) {
  std::vector<float> d;
  for (std::int64_t i = 0; i < a.s.tq; ++i)
    for (std::int64_t x = 0; x < a.s.q_heads * a.s.head_dim; ++x)
      d.push_back(out[sz(i * a.s.out_stride + x)]);
  return d;
}

const AttnCase kAttnCases[] = {
    // MHA, prefill (tq == tk)
    {19, 19, 4, 4, 1},
    {19, 19, 4, 4, 8},
    {19, 19, 4, 4, 64},
    {111, 111, 2, 2, 64},
    // MHA, KV cache (tq < tk)
    {1, 19, 4, 4, 8},
    {5, 111, 4, 4, 64},
    {1, 1, 3, 3, 8},
    // GQA 8/2 and MQA 8/1
    {19, 19, 8, 2, 1},
    {19, 19, 8, 2, 8},
    {19, 19, 8, 1, 64},
    {1, 19, 8, 2, 64},
    {5, 111, 8, 1, 8},
    {5, 111, 8, 2, 64},
    {257, 257, 8, 2, 8},
};

TEST(Attention, MatchesReference) {
  Rng rng(2);
  for (const auto& c : kAttnCases) {
    const std::string what = attn_name(c);
    AttnData a = make_attn(c, rng);
    const std::vector<float> out = run_attention(a);
    check_out_padding(a, out, what);
    std::vector<float> want(a.out.size(), kSentinel);
    ref::attention(a.s, a.q(), a.k(), a.v(), want.data());
    check_out_padding(a, want, what + " (ref)");
    const std::vector<float> got_d = dense_out(a, out), want_f = dense_out(a, want);
    const std::vector<double> want_d(want_f.begin(), want_f.end());
    // The reference is double then one rounding (u relative, small next to this tolerance).
    const double tol = attn_tolerance(a);
    expect_close(
        got_d, want_d, [&](std::size_t) { return tol; }, what);
  }
}

TEST(Attention, IsCausal) {
  // Changing k/v rows of positions after query i's position must leave out[i] bit-identical:
  // their softmax weights are exact zeros and 0 * v adds exactly 0 in any summation order.
  Rng rng(3);
  for (const AttnCase c :
       {AttnCase{19, 19, 4, 4, 8}, AttnCase{19, 19, 8, 2, 64}, AttnCase{5, 111, 8, 1, 8}}) {
    AttnData a = make_attn(c, rng);
    const std::vector<float> before = run_attention(a);
    const std::int64_t offset = c.tk - c.tq;
    for (std::int64_t i = 0; i < c.tq; ++i) {
      const std::int64_t pos = offset + i;
      if (pos + 1 >= c.tk) continue;
      AttnData b = a;
      for (std::int64_t j = pos + 1; j < c.tk; ++j)
        for (std::int64_t h = 0; h < c.kv_heads; ++h)
          for (std::int64_t x = 0; x < c.d; ++x) {
            b.at_k(j, h, x) = static_cast<float>(rng.normal() * 100.0);  // would dominate
            b.at_v(j, h, x) = static_cast<float>(rng.normal() * 100.0);
          }
      const std::vector<float> after = run_attention(b);
      for (std::int64_t r = 0; r <= i; ++r)
        for (std::int64_t x = 0; x < c.q_heads * c.d; ++x) {
          const auto idx = sz(r * a.s.out_stride + x);
          ASSERT_EQ(before[idx], after[idx])
              << attn_name(c) << ": out row " << r << " changed when keys after position " << pos
              << " changed";
        }
      // And the change is visible to later rows (so the test can tell): row i + 1 moves.
      if (i + 1 < c.tq) {
        bool moved = false;
        for (std::int64_t x = 0; x < c.q_heads * c.d; ++x) {
          const auto idx = sz((i + 1) * a.s.out_stride + x);
          moved = moved || before[idx] != after[idx];
        }
        EXPECT_TRUE(moved) << attn_name(c) << ": row " << i + 1 << " ignores its own key";
      }
    }
  }
}

TEST(Attention, EqualKeysGiveMeanOfVisibleValues) {
  // All keys equal (per kv head) -> every visible key gets weight 1/(pos+1), whatever q is.
  Rng rng(4);
  for (const auto& c : kAttnCases) {
    AttnData a = make_attn(c, rng);
    for (std::int64_t j = 1; j < c.tk; ++j)
      for (std::int64_t h = 0; h < c.kv_heads; ++h)
        for (std::int64_t x = 0; x < c.d; ++x) a.at_k(j, h, x) = a.at_k(0, h, x);
    const std::vector<float> out = run_attention(a);
    std::vector<double> want;
    const std::int64_t group = c.q_heads / c.kv_heads;
    for (std::int64_t i = 0; i < c.tq; ++i)
      for (std::int64_t h = 0; h < c.q_heads; ++h)
        for (std::int64_t x = 0; x < c.d; ++x) {
          const std::int64_t pos = c.tk - c.tq + i;
          double sum = 0.0;
          for (std::int64_t j = 0; j <= pos; ++j) sum += a.at_v(j, h / group, x);
          want.push_back(sum / double(pos + 1));
        }
    // Equal scores (up to the rounding of identical dot products in different BLAS lanes) make
    // the weights uniform; the same tolerance as against the reference applies.
    const double tol = attn_tolerance(a);
    expect_close(
        dense_out(a, out), want, [&](std::size_t) { return tol; }, attn_name(c));
  }
}

TEST(Attention, GqaEqualsMhaWithRepeatedKvHeads) {
  Rng rng(5);
  for (const auto& c : kAttnCases) {
    if (c.kv_heads == c.q_heads) continue;
    AttnData g = make_attn(c, rng);
    // The same problem with every kv head repeated q_heads/kv_heads times.
    AttnData m = make_attn({c.tq, c.tk, c.q_heads, c.q_heads, c.d}, rng);
    const std::int64_t group = c.q_heads / c.kv_heads;
    for (std::int64_t j = 0; j < c.tk; ++j) {
      for (std::int64_t x = 0; x < c.q_heads * c.d; ++x)
        m.qkv[sz(j * m.s.kv_stride + x)] = g.qkv[sz(j * g.s.kv_stride + x)];
      for (std::int64_t h = 0; h < c.q_heads; ++h)
        for (std::int64_t x = 0; x < c.d; ++x) {
          m.at_k(j, h, x) = g.at_k(j, h / group, x);
          m.at_v(j, h, x) = g.at_v(j, h / group, x);
        }
    }
    const std::vector<float> go = dense_out(g, run_attention(g));
    const std::vector<float> mo = dense_out(m, run_attention(m));
    const std::vector<double> mo_d(mo.begin(), mo.end());
    // Same arithmetic on the same numbers; only the buffer layout differs, which may change
    // BLAS's blocking, so allow the rounding-level tolerance.
    const double tol = attn_tolerance(g);
    expect_close(
        go, mo_d, [&](std::size_t) { return tol; }, attn_name(c) + " GQA vs MHA");
    // The reference works in double element by element: there the two must agree exactly.
    std::vector<float> gr(g.out.size()), mr(m.out.size());
    ref::attention(g.s, g.q(), g.k(), g.v(), gr.data());
    ref::attention(m.s, m.q(), m.k(), m.v(), mr.data());
    EXPECT_EQ(dense_out(g, gr), dense_out(m, mr)) << attn_name(c) << " ref GQA vs MHA";
  }
}

// --- normalisation ---------------------------------------------------------------------------

TEST(RmsNorm, MatchesDoubleFormula) {
  Rng rng(6);
  for (const std::int64_t cols : {1, 19, 111, 257, 4096})
    for (const float eps : {1e-6f, 1e-5f}) {
      const std::int64_t rows = 3;
      auto x = randn(rng, sz(rows * cols), 2.0);
      std::fill(x.begin() + cols, x.begin() + 2 * cols, 0.0f);  // an all-zero row: eps matters
      const auto w = randn(rng, sz(cols));
      std::vector<float> out(x.size(), kSentinel);
      rms_norm(x.data(), rows, cols, w.data(), eps, out.data());
      std::vector<double> want(x.size()), tol(x.size());
      for (std::int64_t r = 0; r < rows; ++r) {
        double ss = 0.0;
        for (std::int64_t c = 0; c < cols; ++c)
          ss += double(x[sz(r * cols + c)]) * x[sz(r * cols + c)];
        const double inv = 1.0 / std::sqrt(ss / double(cols) + double(eps));
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = sz(r * cols + c);
          want[i] = x[i] * inv * w[sz(c)];
          // float32 steps: mean -> float (u), + eps (u), sqrt (u/2), 1/. (u), two products (2u):
          // under 6u relative; 8u leaves room for the library's sqrtf/division rounding.
          tol[i] = 8 * kU * std::fabs(want[i]);
        }
      }
      expect_close(
          out, want, [&](std::size_t i) { return tol[i]; },
          "rms_norm cols=" + std::to_string(cols));
      for (std::int64_t c = 0; c < cols; ++c) EXPECT_EQ(out[sz(cols + c)], 0.0f);
    }
}

TEST(LayerNorm, MatchesDoubleFormulaWithAndWithoutBias) {
  Rng rng(7);
  for (const std::int64_t cols : {1, 19, 111, 257, 4096})
    for (const bool with_bias : {true, false}) {
      const std::int64_t rows = 3;
      const float eps = 1e-5f;
      auto x = randn(rng, sz(rows * cols), 3.0);
      for (std::int64_t c = 0; c < cols; ++c) x[sz(c)] += 50.0f;  // shifted row
      const auto w = randn(rng, sz(cols));
      const auto b = randn(rng, sz(cols));
      std::vector<float> out(x.size(), kSentinel);
      layer_norm(x.data(), rows, cols, w.data(), with_bias ? b.data() : nullptr, eps, out.data());
      std::vector<double> want(x.size()), tol(x.size());
      for (std::int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * cols;
        double mean = 0.0, var = 0.0;
        for (std::int64_t c = 0; c < cols; ++c) mean += xr[c];
        mean /= double(cols);
        for (std::int64_t c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
        var /= double(cols);
        const double inv = 1.0 / std::sqrt(var + eps);
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = sz(r * cols + c);
          const double bias = with_bias ? b[sz(c)] : 0.0;
          const double centred = (xr[c] - mean) * inv * w[sz(c)];
          want[i] = centred + bias;
          // The mean is rounded to float before the subtraction (error u|mean|, scaled by
          // inv*|w|); x - mean, the products and the bias add each add u of their size. 8u over
          // the sum of those magnitudes covers it with margin.
          tol[i] = 8 * kU *
                   ((std::fabs(mean) + std::fabs(xr[c] - mean)) * inv * std::fabs(w[sz(c)]) +
                    std::fabs(bias));
        }
      }
      expect_close(
          out, want, [&](std::size_t i) { return tol[i]; },
          "layer_norm cols=" + std::to_string(cols) + (with_bias ? " +bias" : ""));
    }
}

TEST(LayerNorm, HugeMeanOffsetStillGivesUnitVariance) {
  // x = 1e4 + N(0, 0.1): a one-pass E[x^2] - E[x]^2 in float loses everything (1e8 vs 1e-2);
  // two passes keep it. Output with weight 1, no bias: mean ~0, variance var/(var + eps) ~ 1.
  Rng rng(8);
  const std::int64_t cols = 4096;
  std::vector<float> x(sz(cols));
  for (auto& v : x) v = static_cast<float>(1e4 + 0.1 * rng.normal());
  const std::vector<float> w(sz(cols), 1.0f);
  std::vector<float> out(x.size());
  const float eps = 1e-6f;
  layer_norm(x.data(), 1, cols, w.data(), nullptr, eps, out.data());
  double var_in = 0.0, mean_in = std::accumulate(x.begin(), x.end(), 0.0) / double(cols);
  for (const float v : x) var_in += (v - mean_in) * (v - mean_in);
  var_in /= double(cols);
  double mean = 0.0, var = 0.0;
  for (const float v : out) mean += v;
  mean /= double(cols);
  for (const float v : out) var += (v - mean) * (v - mean);
  var /= double(cols);
  // Rounding the mean 1e4 to float shifts every output by <= ulp(1e4)/2 / std = 4.9e-4 / 0.1.
  EXPECT_NEAR(mean, 0.0, 0.5 * std::ldexp(1.0, -10) / std::sqrt(var_in) * 1.01);
  // The spread is untouched by that shift; what remains is float rounding (~1e-7) and eps.
  EXPECT_NEAR(var, var_in / (var_in + eps), 1e-5);
}

// --- RoPE ------------------------------------------------------------------------------------

std::vector<float> inv_freqs(std::int64_t d, double base = 10000.0) {
  std::vector<float> f(sz(d / 2));
  for (std::int64_t i = 0; i < d / 2; ++i)
    f[sz(i)] = static_cast<float>(std::pow(base, -2.0 * double(i) / double(d)));
  return f;
}

// Applies RoPE (rotate-half) to one head vector at one position.
std::vector<float> rope1(std::vector<float> v, std::int64_t pos, const std::vector<float>& f) {
  const auto d = static_cast<std::int64_t>(v.size());
  rope_rotate_half(v.data(), 1, 1, d, d, &pos, f.data());
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}
double norm(const std::vector<float>& a) { return std::sqrt(dot(a, a)); }

TEST(Rope, RotateHalfIsComplexMultiplication) {
  Rng rng(9);
  for (const std::int64_t d : {2, 8, 64, 128}) {
    const std::int64_t tokens = 6, heads = 3, stride = heads * d + 7;
    const std::vector<std::int64_t> pos = {0, 1, 2, 17, 511, 4095};
    const auto f = inv_freqs(d);
    auto x = randn(rng, sz(tokens * stride));
    const auto x0 = x;
    rope_rotate_half(x.data(), tokens, heads, d, stride, pos.data(), f.data());
    std::vector<double> want(x.size()), tol(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) want[i] = x0[i];  // padding: unchanged
    for (std::int64_t t = 0; t < tokens; ++t)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < d / 2; ++i) {
          const auto ia = sz(t * stride + h * d + i), ib = ia + sz(d / 2);
          // (a + ib) * exp(i * angle). The angle is the float32 product positions * inv_freq,
          // as documented in ops.h (HF computes it in fp32); cos/sin and the rest in double.
          const double angle = double(static_cast<float>(pos[sz(t)]) * f[sz(i)]);
          const double a = x0[ia], b = x0[ib];
          want[ia] = a * std::cos(angle) - b * std::sin(angle);
          want[ib] = b * std::cos(angle) + a * std::sin(angle);
          // float cos/sin (~1 ulp each, on top of range reduction), two products and a sum:
          // about 4u of |a| + |b|; 8u for margin.
          tol[ia] = tol[ib] = 8 * kU * (std::fabs(a) + std::fabs(b));
        }
    // Padding is not touched at all (tolerance 0 there).
    expect_close(
        x, want, [&](std::size_t i) { return tol[i]; }, "rope_rotate_half d=" + std::to_string(d));
  }
}

TEST(Rope, PreservesNormAndPositionZeroIsIdentity) {
  Rng rng(10);
  for (const std::int64_t d : {2, 8, 64, 128}) {
    const auto f = inv_freqs(d);
    for (const std::int64_t p : {0, 3, 100, 4095}) {
      const auto v = randn(rng, sz(d));
      const auto r = rope1(v, p, f);
      // A rotation: each pair keeps its length up to ~3u relative; 16u on the whole norm.
      EXPECT_NEAR(norm(r), norm(v), 16 * kU * norm(v)) << "d=" << d << " pos=" << p;
      if (p == 0) {
        EXPECT_EQ(r, v) << "cos 0 = 1 and sin 0 = 0 exactly: bit-identical";
      }
    }
  }
}

TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  Rng rng(11);
  for (const std::int64_t d : {8, 64, 128}) {
    const auto f = inv_freqs(d);
    const auto q = randn(rng, sz(d)), k = randn(rng, sz(d));
    const double a = dot(rope1(q, 5, f), rope1(k, 2, f));
    const double b = dot(rope1(q, 13, f), rope1(k, 10, f));
    const double other = dot(rope1(q, 5, f), rope1(k, 3, f));  // distance 2 instead of 3
    // The fp32 angles m*f carry up to ulp(13)/2 ~ 5e-7 rad of error each; with the float
    // rounding of the rotated vectors, 1e-5 * |q||k| bounds the difference comfortably.
    const double tol = 1e-5 * norm(q) * norm(k);
    EXPECT_NEAR(a, b, tol) << "d=" << d;
    EXPECT_GT(std::fabs(a - other), 100 * tol) << "d=" << d << ": the test must be sensitive";
    EXPECT_GT(std::fabs(a - dot(q, k)), 100 * tol) << "d=" << d << ": rotation must matter";
  }
}

TEST(Rope, InterleavedReferenceIsADifferentConvention) {
  Rng rng(12);
  for (const std::int64_t d : {2, 4, 8, 64}) {
    const auto f = inv_freqs(d);
    const std::int64_t pos = 7;
    const auto v = randn(rng, sz(d));
    auto half = v, inter = v;
    rope_rotate_half(half.data(), 1, 1, d, d, &pos, f.data());
    ref::rope_interleaved(inter.data(), 1, 1, d, d, &pos, f.data());
    double maxdiff = 0.0;
    for (std::size_t i = 0; i < v.size(); ++i)
      maxdiff = std::max(maxdiff, std::fabs(double(half[i]) - inter[i]));
    // Both are rotations: same norm (16u relative as above).
    EXPECT_NEAR(norm(inter), norm(v), 16 * kU * norm(v)) << "d=" << d;
    if (d == 2) {
      // One pair: (0, 1) is both "i, i + d/2" and "2i, 2i + 1": the two conventions coincide.
      // The angle 7 * 1 is exact in both; only the float cos/sin/products differ (~4u of the
      // pair's size), so 16u of the norm.
      EXPECT_LE(maxdiff, 16 * kU * norm(v)) << "d=2";
    } else {
      EXPECT_GT(maxdiff, 1e-2) << "d=" << d << ": conventions must be distinguishable";
    }
  }
}

// --- element-wise kernels --------------------------------------------------------------------

TEST(Elementwise, SiluMulMatchesDoubleFormula) {
  Rng rng(13);
  for (const std::int64_t n : {1, 19, 111, 257}) {
    auto g = randn(rng, sz(n), 4.0);
    const auto u = randn(rng, sz(n), 2.0);
    const float specials[] = {0.0f, -0.0f, 20.0f, -20.0f, 88.0f, -88.0f, 100.0f, -100.0f, 1e-30f};
    for (std::size_t i = 0; i < std::size(specials) && i < g.size(); ++i) g[i] = specials[i];
    std::vector<float> out(sz(n), kSentinel);
    silu_mul(g.data(), u.data(), n, out.data());
    std::vector<double> want(sz(n));
    for (std::size_t i = 0; i < want.size(); ++i)
      want[i] = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    // exp (~1 ulp), 1 + ., division and product: 6u relative; below float's normal range
    // (|g| >~ 88, exp overflows to Inf and the result flushes to 0) an absolute 1e-30.
    expect_close(
        out, want, [&](std::size_t i) { return 6 * kU * std::fabs(want[i]) + 1e-30; },
        "silu_mul n=" + std::to_string(n));
  }
}

TEST(Elementwise, ReluAndAddAreExact) {
  Rng rng(14);
  for (const std::int64_t n : {1, 19, 111, 257}) {
    auto x = randn(rng, sz(n));
    if (n > 2) x[1] = -0.0f;
    auto r = x;
    relu(r.data(), n);
    for (std::size_t i = 0; i < x.size(); ++i) {
      // No arithmetic, so no tolerance.
      EXPECT_EQ(r[i], x[i] > 0.0f ? x[i] : 0.0f) << i;
    }
    const auto y0 = randn(rng, sz(n));
    auto y = y0;
    add(x.data(), n, y.data());
    // The sum of two floats computed in double and rounded once equals the float sum exactly
    // (double has more than 2*24+2 bits), so the comparison is exact.
    for (std::size_t i = 0; i < x.size(); ++i)
      EXPECT_EQ(y[i], static_cast<float>(double(y0[i]) + double(x[i]))) << i;
  }
}

TEST(Elementwise, EmbeddingCopiesRows) {
  Rng rng(15);
  for (const std::int64_t dim : {1, 19, 111}) {
    const std::int64_t vocab = 257;
    const auto table = randn(rng, sz(vocab * dim));
    const std::vector<std::uint32_t> ids = {0, 256, 5, 5, 128, 0, 255};
    const auto n = static_cast<std::int64_t>(ids.size());
    std::vector<float> out(sz(n * dim) + 1, kSentinel);
    embedding(table.data(), dim, ids.data(), n, out.data());
    for (std::int64_t t = 0; t < n; ++t)
      for (std::int64_t c = 0; c < dim; ++c)
        ASSERT_EQ(out[sz(t * dim + c)], table[sz(ids[sz(t)] * dim + c)])
            << "token " << t << " col " << c;
    EXPECT_EQ(out.back(), kSentinel) << "wrote past the end";
  }
}

TEST(Elementwise, CrossEntropyMatchesLogSumExp) {
  Rng rng(16);
  for (const std::int64_t vocab : {1, 19, 111, 257}) {
    const std::int64_t rows = 6;
    auto logits = randn(rng, sz(rows * vocab), 3.0);
    std::vector<std::uint32_t> targets(sz(rows));
    for (auto& t : targets) t = static_cast<std::uint32_t>(rng.below(std::uint64_t(vocab)));
    // Row 3: a huge logit at the target; row 4: a huge logit elsewhere; row 5: huge negative.
    logits[sz(3 * vocab + targets[3])] = 1e4f;
    logits[sz(4 * vocab + (targets[4] + 1) % vocab)] = 1e4f;
    logits[sz(5 * vocab + targets[5])] = -1e4f;
    std::vector<float> nll(sz(rows), kSentinel);
    cross_entropy(logits.data(), rows, vocab, targets.data(), nll.data());
    std::vector<double> want(sz(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* l = logits.data() + r * vocab;
      double mx = -INFINITY;
      for (std::int64_t j = 0; j < vocab; ++j) mx = std::max(mx, double(l[j]));
      double s = 0.0;
      for (std::int64_t j = 0; j < vocab; ++j) s += std::exp(double(l[j]) - mx);
      want[sz(r)] = std::log(s) + mx - l[targets[sz(r)]];
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      EXPECT_TRUE(std::isfinite(nll[sz(r)])) << "row " << r << " vocab " << vocab;
      EXPECT_GE(nll[sz(r)], 0.0f) << "row " << r;  // -log p with p <= 1
    }
    // Computed in double and rounded once to float: u relative; the double terms add about
    // 1e-16 * |max logit| (1e-12 here), covered by the 1e-9 absolute part.
    expect_close(
        nll, want, [&](std::size_t i) { return 2 * kU * std::fabs(want[i]) + 1e-9; },
        "cross_entropy vocab=" + std::to_string(vocab));
    if (vocab == 1) {
      EXPECT_EQ(nll, std::vector<float>(sz(rows), 0.0f));  // log(1) + l - l: exactly 0
    }
  }
}

// --- BLAS threads ----------------------------------------------------------------------------

TEST(Blas, ThreadCountRoundTrips) {
  const int original = blas_threads();
  EXPECT_GE(original, 1);
  set_blas_threads(1);
  EXPECT_EQ(blas_threads(), 1);
  set_blas_threads(2);
  EXPECT_EQ(blas_threads(), 2);
  set_blas_threads(original);
  EXPECT_EQ(blas_threads(), original);
}

}  // namespace
}  // namespace sq::cpu

namespace sq {
namespace {
// GELU (tanh form) against the formula in double; and it is not exact GELU (erf form) — the
// two differ by up to ~5e-4 near |x| = 2, which is what a model would notice.
TEST(CpuElementwise, GeluTanhMatchesFormula) {
  std::vector<float> x;
  for (int i = -400; i <= 400; ++i) x.push_back(float(i) / 50.0f);
  std::vector<float> y = x;
  cpu::gelu_tanh(y.data(), static_cast<cpu::i64>(y.size()));
  double max_vs_erf = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    const double ref =
        0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    // fp32 tanh and cubic: a few ulp of the result.
    EXPECT_NEAR(y[i], ref, 1e-6 * std::max(1.0, std::abs(ref))) << v;
    max_vs_erf =
        std::max(max_vs_erf, std::abs(ref - 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))));
  }
  EXPECT_GT(max_vs_erf, 1e-4);
}
}  // namespace
}  // namespace sq
