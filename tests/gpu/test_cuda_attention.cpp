// CUDA attention against cpu::attention (kernels/cpu/ops.h) over awkward shapes and layouts, plus
// causality, argument checks, large scores, streams and determinism. Skipped without a device.
//
// Tolerance, per output element o_c of one (sequence, head, query row) with visible keys
// j = 0..n-1, exact scores s_j (double), m = max_j s_j and exact probabilities P_j, u = 2^-24:
//   - each score differs between the two implementations by at most
//     2 gamma_d |scale| sum_i |q_i k_ji| (two fp32 dot products in any order, gamma_d =
//     d u / (1 - d u)) + 2 u |s_j| (the product with scale, rounded on each side);
//   - exp(s_j - m) then differs by a relative 2 u (m - s_j) (the rounded subtraction, on each
//     side; the GPU's running max only makes it smaller) + 3 ulps = 6 u (CUDA expf 2 ulp, the
//     CPU's 1 ulp). Call the sum of these relative errors of p_j e_j. To first order the
//     normalised output moves by sum_j P_j (e_j - e_bar) v_jc with e_bar = sum_j P_j e_j, so by
//     at most sum_j P_j (e_j + e_bar) |v_jc|; each rescale factor expf(m_old - m_new) carries
//     ~3 u that shifts the keys already summed against later ones (<= 6 u A_c per rescale, inside
//     the accumulation term below);
//   - summing p_j v_j in fp32 (both sides: n terms each), the GPU's fp32 running sum of p (n
//     terms), one rounding per tile rescale of accumulator and sum, and the final normalisation:
//     (3 n + 2 (n / 32 + 2) + 10) u relative to A_c = sum_j P_j |v_jc|.
// The test allows twice the sum of both terms (the factor covers second-order terms; every e_j is
// checked to stay below 0.05 so first order is sound). For q, k, v uniform in [-1, 1] and
// scale 1 / sqrt(d) that is at most about 1e-3 A_c at d = 256 and about 1e-5 A_c at d = 7,
// while one key too many or too few moves an output by about |v_j - o| / n, i.e. 5e-3 A_c or more
// at n <= 167 keys, a wrong kv head or a missing rescale by O(A_c). Output padding (a wider
// buffer) must keep its sentinel exactly: a tolerance of 0 there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cuda_test_support.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device.h"

namespace {

using sq::cpu::AttentionShape;
using sq::cuda::DeviceBuffer;
using sq::cuda::testing::expect_same_bits;
using sq::cuda::testing::expect_within;
using sq::cuda::testing::random_vector;
using i64 = std::int64_t;

constexpr double kU = 0x1p-24;         // unit roundoff of float
constexpr float kSentinel = -7777.0f;  // output padding, never written

// q, k and v live in one input buffer at element offsets, with the row strides of `s`; out is
// n_seq x tq rows of s.out_stride elements.
struct Problem {
  AttentionShape s;
  i64 n_seq = 1;
  std::vector<float> in;
  i64 q_off = 0, k_off = 0, v_off = 0;

  std::size_t out_size() const { return static_cast<std::size_t>(n_seq * s.tq * s.out_stride); }
  const float* q(i64 b) const { return in.data() + q_off + b * s.tq * s.q_stride; }
  const float* k(i64 b) const { return in.data() + k_off + b * s.tk * s.kv_stride; }
  const float* v(i64 b) const { return in.data() + v_off + b * s.tk * s.kv_stride; }
};

// Values uniform in [-1, 1], q and k then multiplied by qk_magnitude. With `fused` (tq == tk)
// each token row is [q | k | v | pad] as a fused qkv projection writes it; otherwise q rows
// [q | pad] come first, then key/value rows [k | v | pad] (a KV cache). out rows carry pad + 1
// extra elements.
Problem make_problem(i64 n_seq, i64 tq, i64 tk, i64 q_heads, i64 kv_heads, i64 d, i64 pad,
                     bool fused, std::uint32_t seed, float qk_magnitude = 1.0f) {
  Problem p;
  p.n_seq = n_seq;
  AttentionShape& s = p.s;
  s.tq = tq;
  s.tk = tk;
  s.q_heads = q_heads;
  s.kv_heads = kv_heads;
  s.head_dim = d;
  s.scale = 1.0f / std::sqrt(static_cast<float>(d));
  s.out_stride = q_heads * d + pad + 1;
  i64 total = 0;
  if (fused) {
    s.q_stride = s.kv_stride = q_heads * d + 2 * kv_heads * d + pad;
    p.q_off = 0;
    p.k_off = q_heads * d;
    p.v_off = q_heads * d + kv_heads * d;
    total = n_seq * tq * s.q_stride;
  } else {
    s.q_stride = q_heads * d + pad;
    s.kv_stride = 2 * kv_heads * d + pad;
    p.q_off = 0;
    p.k_off = n_seq * tq * s.q_stride;
    p.v_off = p.k_off + kv_heads * d;
    total = p.k_off + n_seq * tk * s.kv_stride;
  }
  p.in = random_vector(static_cast<std::size_t>(total), -1.0f, 1.0f, seed);
  for (i64 b = 0; b < n_seq; ++b) {
    for (i64 t = 0; t < tq; ++t) {
      float* row = p.in.data() + p.q_off + (b * tq + t) * s.q_stride;
      for (i64 c = 0; c < q_heads * d; ++c) row[c] *= qk_magnitude;
    }
    for (i64 t = 0; t < tk; ++t) {
      float* row = p.in.data() + p.k_off + (b * tk + t) * s.kv_stride;
      for (i64 c = 0; c < kv_heads * d; ++c) row[c] *= qk_magnitude;
    }
  }
  return p;
}

std::vector<float> cpu_attention(const Problem& p) {
  std::vector<float> out(p.out_size(), kSentinel);
  std::vector<float> scratch(static_cast<std::size_t>(p.s.tq * p.s.tk));
  for (i64 b = 0; b < p.n_seq; ++b) {
    sq::cpu::attention(p.s, p.q(b), p.k(b), p.v(b), out.data() + b * p.s.tq * p.s.out_stride,
                       scratch.data());
  }
  return out;
}

std::vector<float> gpu_attention(const Problem& p, cudaStream_t stream = nullptr) {
  const DeviceBuffer<float> in = sq::cuda::to_device(p.in);
  DeviceBuffer<float> out = sq::cuda::to_device(std::vector<float>(p.out_size(), kSentinel));
  sq::cuda::attention(p.s, p.n_seq, in.data() + p.q_off, in.data() + p.k_off, in.data() + p.v_off,
                      out.data(), stream);
  sq::cuda::synchronize(stream);
  return sq::cuda::to_host(out);
}

// The per-element bound derived at the top of this file (0 on output padding).
std::vector<float> tolerance(const Problem& p) {
  const AttentionShape& s = p.s;
  const i64 d = s.head_dim, group = s.q_heads / s.kv_heads;
  const double gamma_d = static_cast<double>(d) * kU / (1.0 - static_cast<double>(d) * kU);
  const double scale = std::fabs(static_cast<double>(s.scale));
  std::vector<float> tol(p.out_size(), 0.0f);
  std::vector<double> score(static_cast<std::size_t>(s.tk)), dot_err(score.size()),
      prob(score.size()), err(score.size());
  double worst_e = 0.0;
  for (i64 b = 0; b < p.n_seq; ++b) {
    for (i64 h = 0; h < s.q_heads; ++h) {
      const i64 kvh = h / group;
      for (i64 i = 0; i < s.tq; ++i) {
        const i64 n = s.tk - s.tq + i + 1;  // visible keys
        const float* qi = p.q(b) + i * s.q_stride + h * d;
        double m = -INFINITY;
        for (i64 j = 0; j < n; ++j) {
          const float* kj = p.k(b) + j * s.kv_stride + kvh * d;
          double dot = 0.0, mag = 0.0;
          for (i64 c = 0; c < d; ++c) {
            dot += static_cast<double>(qi[c]) * kj[c];
            mag += std::fabs(static_cast<double>(qi[c]) * kj[c]);
          }
          score[j] = static_cast<double>(s.scale) * dot;
          dot_err[j] = 2.0 * gamma_d * scale * mag;
          m = std::max(m, score[j]);
        }
        double sum = 0.0;
        for (i64 j = 0; j < n; ++j) {
          prob[j] = std::exp(score[j] - m);
          sum += prob[j];
        }
        double e_bar = 0.0;
        for (i64 j = 0; j < n; ++j) {
          prob[j] /= sum;
          err[j] =
              dot_err[j] + 2.0 * kU * std::fabs(score[j]) + 2.0 * kU * (m - score[j]) + 6.0 * kU;
          e_bar += prob[j] * err[j];
          worst_e = std::max(worst_e, err[j]);
        }
        const double acc_eps = static_cast<double>(3 * n + 2 * (n / 32 + 2) + 10) * kU;
        float* t = tol.data() + (b * s.tq + i) * s.out_stride + h * d;
        for (i64 c = 0; c < d; ++c) {
          double a = 0.0, softmax_err = 0.0;
          for (i64 j = 0; j < n; ++j) {
            const double w =
                prob[j] * std::fabs(static_cast<double>(p.v(b)[j * s.kv_stride + kvh * d + c]));
            a += w;
            softmax_err += w * (err[j] + e_bar);
          }
          t[c] = static_cast<float>(2.0 * (softmax_err + acc_eps * a) + 1e-30);
        }
      }
    }
  }
  EXPECT_LT(worst_e, 0.05) << "first-order tolerance no longer sound";
  return tol;
}

void expect_matches_cpu(const Problem& p, const std::string& what) {
  const std::vector<float> actual = gpu_attention(p);
  expect_within(actual, cpu_attention(p), tolerance(p), p.s.out_stride, what);
}

struct Heads {
  i64 q, kv;
};
const Heads kHeads[] = {{1, 1}, {3, 1}, {8, 2}, {4, 4}};

class CudaAttention : public ::testing::TestWithParam<std::tuple<i64, int, i64>> {
 protected:
  i64 tq() const { return std::get<0>(GetParam()); }
  Heads heads() const { return kHeads[std::get<1>(GetParam())]; }
  i64 head_dim() const { return std::get<2>(GetParam()); }
  std::uint32_t seed() const {
    return static_cast<std::uint32_t>(4099 + tq() * 7919 + std::get<1>(GetParam()) * 131 +
                                      head_dim());
  }
};

// Three layouts per shape: one sequence in a fused qkv buffer with odd padding (unaligned rows,
// scalar loads), three sequences fused with padding 4 (float4 loads when d % 4 == 0), and three
// sequences with 37 cached keys more than queries (a KV cache: tk > tq, queries at the end).
TEST_P(CudaAttention, MatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const Heads hd = heads();
  expect_matches_cpu(make_problem(1, tq(), tq(), hd.q, hd.kv, head_dim(), 3, true, seed()),
                     "one sequence, fused, pad 3");
  expect_matches_cpu(make_problem(3, tq(), tq(), hd.q, hd.kv, head_dim(), 4, true, seed() + 1),
                     "three sequences, fused, pad 4");
  expect_matches_cpu(
      make_problem(3, tq(), tq() + 37, hd.q, hd.kv, head_dim(), 8, false, seed() + 2),
      "three sequences, tk = tq + 37, separate, pad 8");
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardShapes, CudaAttention,
    ::testing::Combine(::testing::Values<i64>(1, 2, 17, 33, 130), ::testing::Values(0, 1, 2, 3),
                       // 48, 200: part-fill the 64- and 256-wide kernels (200: 2nd vector's guard)
                       ::testing::Values<i64>(1, 7, 32, 48, 64, 80, 128, 200, 256)),
    [](const ::testing::TestParamInfo<CudaAttention::ParamType>& p) {
      const Heads hd = kHeads[std::get<1>(p.param)];
      return "tq" + std::to_string(std::get<0>(p.param)) + "_heads" + std::to_string(hd.q) + "x" +
             std::to_string(hd.kv) + "_d" + std::to_string(std::get<2>(p.param));
    });

// Decoding a few tokens against a long cache: 5 queries at positions 65..69 of 70 keys.
TEST(CudaAttentionCache, FewQueriesLongCache) {
  SQ_SKIP_WITHOUT_CUDA();
  expect_matches_cpu(make_problem(3, 5, 70, 8, 2, 128, 0, false, 17), "tq 5, tk 70, d 128");
  expect_matches_cpu(make_problem(1, 5, 70, 8, 2, 80, 5, false, 18), "tq 5, tk 70, d 80");
  expect_matches_cpu(make_problem(2, 1, 300, 3, 1, 64, 2, false, 19), "tq 1, tk 300, d 64");
}

// Keys and values after a query's position do not reach it: rows whose position is below `cut`
// keep the same bits when every key/value row from `cut` on is replaced (by large values), and
// the rows that do see them change.
void expect_causal(i64 tq, i64 tk, i64 cut, std::uint32_t seed) {
  Problem p = make_problem(2, tq, tk, 8, 2, 64, 4, false, seed);
  const std::vector<float> before = gpu_attention(p);
  const std::vector<float> big = random_vector(p.in.size(), -1e4f, 1e4f, seed + 1);
  for (i64 b = 0; b < p.n_seq; ++b) {
    for (i64 j = cut; j < tk; ++j) {
      const std::size_t row = static_cast<std::size_t>(p.k_off + (b * tk + j) * p.s.kv_stride);
      for (i64 c = 0; c < 2 * p.s.kv_heads * p.s.head_dim; ++c) p.in[row + c] = big[row + c];
    }
  }
  const std::vector<float> after = gpu_attention(p);
  const i64 offset = tk - tq, stride = p.s.out_stride;
  for (i64 b = 0; b < p.n_seq; ++b) {
    for (i64 i = 0; i < tq; ++i) {
      const auto first = before.begin() + (b * tq + i) * stride;
      const std::vector<float> row_before(first, first + stride);
      const auto second = after.begin() + (b * tq + i) * stride;
      const std::vector<float> row_after(second, second + stride);
      const std::string what = "sequence " + std::to_string(b) + " query " + std::to_string(i);
      if (offset + i < cut) {
        expect_same_bits(row_after, row_before, stride, what);
      } else {
        EXPECT_NE(row_after, row_before) << what << " should see the replaced keys";
      }
    }
  }
}

TEST(CudaAttentionCausal, LaterKeysDoNotChangeEarlierQueries) {
  SQ_SKIP_WITHOUT_CUDA();
  expect_causal(50, 50, 21, 23);  // self-attention: the cut falls inside a warp's rows
  expect_causal(5, 70, 67, 29);   // KV cache: queries at positions 65..69
}

// Scores of magnitude ~100 (q.k ~ 1e3, scale 1/8): exp without subtracting the running max would
// overflow float; the output must stay finite and match the CPU.
TEST(CudaAttentionStability, LargeScoresStayFinite) {
  SQ_SKIP_WITHOUT_CUDA();
  const Problem p = make_problem(2, 70, 70, 8, 2, 64, 0, true, 31, 20.0f);
  const std::vector<float> actual = gpu_attention(p);
  for (std::size_t i = 0; i < actual.size(); ++i)
    ASSERT_TRUE(std::isfinite(actual[i])) << "element " << i << ": " << actual[i];
  expect_within(actual, cpu_attention(p), tolerance(p), p.s.out_stride, "q.k ~ 1e3");
}

TEST(CudaAttentionDeterminism, SameBitsTwice) {
  SQ_SKIP_WITHOUT_CUDA();
  const Problem p = make_problem(3, 130, 130, 8, 2, 80, 0, true, 37);
  expect_same_bits(gpu_attention(p), gpu_attention(p), p.s.out_stride, "second run");
}

TEST(CudaAttentionStream, RunsOnGivenStream) {
  SQ_SKIP_WITHOUT_CUDA();
  const Problem p = make_problem(2, 33, 33, 4, 4, 32, 0, true, 41);
  cudaStream_t stream = nullptr;
  SQ_CUDA_CHECK(cudaStreamCreate(&stream));
  const std::vector<float> actual = gpu_attention(p, stream);
  SQ_CUDA_CHECK(cudaStreamDestroy(stream));
  expect_within(actual, cpu_attention(p), tolerance(p), p.s.out_stride, "own stream");
}

// Every refusal is an sq::Error naming the argument, thrown before any launch (null pointers: a
// check that wrongly passed would then throw the null-pointer error instead of reading memory).
// 8 q heads over 2 kv heads of 64 dims, packed rows: the shape the argument tests vary.
AttentionShape gqa_shape(i64 tq, i64 tk) {
  AttentionShape s;
  s.tq = tq;
  s.tk = tk;
  s.q_heads = 8;
  s.kv_heads = 2;
  s.head_dim = 64;
  s.q_stride = s.out_stride = 8 * 64;
  s.kv_stride = 2 * 64;
  return s;
}

TEST(CudaAttentionArgs, RefusesBadShapes) {
  SQ_SKIP_WITHOUT_CUDA();
  const AttentionShape good = gqa_shape(4, 6);
  const auto expect_refused = [](const AttentionShape& s, i64 n_seq, const std::string& needle) {
    try {
      sq::cuda::attention(s, n_seq, nullptr, nullptr, nullptr, nullptr, nullptr);
      ADD_FAILURE() << "no error, expected one naming '" << needle << "'";
    } catch (const sq::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
  };
  AttentionShape s = good;
  s.head_dim = 257;
  s.q_stride = s.out_stride = 8 * 257;
  s.kv_stride = 2 * 257;
  expect_refused(s, 1, "head_dim 257");
  s = good;
  s.head_dim = 0;
  expect_refused(s, 1, "head_dim 0");
  s = good;
  s.q_heads = 3;
  s.q_stride = s.out_stride = 3 * 64;
  expect_refused(s, 1, "q_heads 3 is not a multiple of kv_heads 2");
  s = good;
  s.kv_heads = 0;
  expect_refused(s, 1, "kv_heads 0");
  s = good;
  s.q_heads = 0;
  expect_refused(s, 1, "q_heads 0");
  s = good;
  s.tk = 3;
  expect_refused(s, 1, "tk 3 is below tq 4");
  s = good;
  s.tq = -1;
  expect_refused(s, 1, "tq -1");
  expect_refused(good, -1, "n_seq -1");
  s = good;
  s.q_stride = 8 * 64 - 1;
  expect_refused(s, 1, "q_stride 511");
  s = good;
  s.kv_stride = 2 * 64 - 1;
  expect_refused(s, 1, "kv_stride 127");
  s = good;
  s.out_stride = 100;
  expect_refused(s, 1, "out_stride 100");
  expect_refused(good, 1, "null device pointer");
  sq::cuda::synchronize();
}

TEST(CudaAttentionArgs, EmptyLaunchesNothing) {
  SQ_SKIP_WITHOUT_CUDA();
  AttentionShape s = gqa_shape(4, 4);
  EXPECT_NO_THROW(sq::cuda::attention(s, 0, nullptr, nullptr, nullptr, nullptr, nullptr));
  s.tq = 0;
  EXPECT_NO_THROW(sq::cuda::attention(s, 3, nullptr, nullptr, nullptr, nullptr, nullptr));
  sq::cuda::synchronize();
}

}  // namespace
