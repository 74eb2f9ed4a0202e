// CUDA GEMMs (kernels/cuda/gemm.h) against the CPU over awkward sizes: M in {1, 3, 17, 128}, N and
// K in {1, 16, 19, 20, 64, 111, 4096}. Outputs start poisoned (0xFF bytes), so a path that writes
// nothing cannot pass on the previous path's result left in reused memory. Skipped on machines
// without a CUDA device.
//
// INT8: the int32 accumulator of every path (padded, strict, reference) must equal an int64 CPU
// product exactly. The dequantized bf16 / fp16 outputs must equal, bit for bit, the CPU twin of the
// epilogue (cpu::dequantize_int8_acc: the same fp32 operations in the same order, then
// round-to-nearest-even), and lie
// within the output format's rounding of a double-precision reference:
//   |out - ref| <= u * |ref| + 2^-21 * (|acc * xs * ws| + |bias|) (+ 2^-25 for fp16 subnormals)
// with u = 2^-8 (bf16) or 2^-11 (fp16), the 2^-21 term covering the epilogue's three fp32
// roundings (int -> float above 2^24, two products, the bias sum).
//
// bf16 / fp16 GEMMs, fp32 accumulation: the inputs are exact in fp32, so the reference is
// cpu::linear on the decoded values. Both sides accumulate k products in fp32; the standard bound
// per side is k * 2^-24 * S with S = sum_k |x||w| + |b| (computed by cpu::linear on the absolute
// values), and the GPU's 16-bit output adds one rounding, u * |y|:
//   |y_gpu - y_ref| <= u_out * |y_ref| + (2k + 16) * 2^-24 * S,  u_out = 2^-8, 2^-11 or 0 (fp32
//   out)
// This is much tighter than a K * eps_bf16 bound, which holds even for an accumulation in bf16 and
// so would not notice one; fp32 accumulation is what the API promises.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "cuda_test_support.h"
#include "kernels/cpu/int4.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"

namespace {

using sq::cuda::DeviceBuffer;
using sq::cuda::Half;
using sq::cuda::Int8Path;
using namespace sq::cuda::testing;

std::vector<std::int8_t> random_int8(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-128, 127);
  std::vector<std::int8_t> v(n);
  for (auto& x : v) x = static_cast<std::int8_t>(dist(rng));
  return v;
}

// acc[i, j] = sum_k x[i, k] w[j, k] in int64 (exact), checked to fit int32.
std::vector<std::int32_t> int8_reference(const std::vector<std::int8_t>& x, i64 m, i64 k,
                                         const std::vector<std::int8_t>& w, i64 n) {
  std::vector<std::int32_t> acc(static_cast<std::size_t>(m * n));
  for (i64 i = 0; i < m; ++i) {
    const std::int8_t* xr = x.data() + i * k;
    for (i64 j = 0; j < n; ++j) {
      const std::int8_t* wr = w.data() + j * k;
      std::int64_t s = 0;
      for (i64 t = 0; t < k; ++t) s += std::int32_t{xr[t]} * std::int32_t{wr[t]};
      EXPECT_LE(std::llabs(s), std::int64_t{INT32_MAX});
      acc[static_cast<std::size_t>(i * n + j)] = static_cast<std::int32_t>(s);
    }
  }
  return acc;
}

std::uint16_t to_half_bits(float v, Half h) {
  return h == Half::bf16 ? sq::f32_to_bf16(v) : sq::f32_to_f16(v);
}
float from_half_bits(std::uint16_t b, Half h) {
  return h == Half::bf16 ? sq::bf16_to_f32(b) : sq::f16_to_f32(b);
}
const char* half_name(Half h) { return h == Half::bf16 ? "bf16" : "fp16"; }

const char* path_name(Int8Path p) {
  switch (p) {
    case Int8Path::padded:
      return "padded";
    case Int8Path::strict:
      return "strict";
    case Int8Path::reference:
      return "reference";
  }
  return "?";
}

// |actual - expected| <= bound[i] element by element (NaN fails); at most 10 reports.
void expect_within(const std::vector<float>& actual, const std::vector<double>& expected,
                   const std::vector<double>& bound, i64 cols, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double error = std::fabs(double(actual[i]) - expected[i]);
    if (!(error <= bound[i])) {
      ADD_FAILURE() << what << ": row " << i / cols << " col " << i % cols << ": gpu " << actual[i]
                    << " reference " << expected[i] << " error " << error << " > bound "
                    << bound[i];
      if (++reported == 10) return;
    }
  }
}

bool strict_aligned(i64 n, i64 k) {
  return k % sq::cuda::kInt8StrictMultiple == 0 && n % sq::cuda::kInt8StrictMultiple == 0;
}

// The message the strict path must give for an unaligned (n, k): K is checked first.
std::string strict_refusal(i64 n, i64 k) {
  const std::string multiple = std::to_string(sq::cuda::kInt8StrictMultiple);
  if (k % sq::cuda::kInt8StrictMultiple != 0)
    return "K = " + std::to_string(k) + " is not a multiple of " + multiple;
  return "N = " + std::to_string(n) + " is not a multiple of " + multiple;
}

class CudaGemm : public ::testing::TestWithParam<std::tuple<i64, i64, i64>> {
 protected:
  i64 m() const { return std::get<0>(GetParam()); }
  i64 n() const { return std::get<1>(GetParam()); }
  i64 k() const { return std::get<2>(GetParam()); }
  std::uint32_t seed() const {
    return static_cast<std::uint32_t>(1009 + m() * 7919 + n() * 104729 + k() * 31);
  }
};

TEST_P(CudaGemm, Int8MatchesCpuOnEveryPath) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 M = m(), N = n(), K = k();
  std::vector<std::int8_t> x = random_int8(static_cast<std::size_t>(M * K), seed());
  std::vector<std::int8_t> w = random_int8(static_cast<std::size_t>(N * K), seed() + 1);
  // The largest magnitudes: the last x row and the first w row all -128 (acc = 16384 k there).
  std::fill(x.end() - K, x.end(), std::int8_t{-128});
  std::fill(w.begin(), w.begin() + K, std::int8_t{-128});
  const std::vector<float> x_scale =
      random_vector(static_cast<std::size_t>(M), 1e-3f, 5e-2f, seed() + 2);
  const std::vector<float> w_scale =
      random_vector(static_cast<std::size_t>(N), 1e-3f, 2e-2f, seed() + 3);
  const std::vector<float> bias =
      random_vector(static_cast<std::size_t>(N), -1.0f, 1.0f, seed() + 4);
  const std::vector<std::int32_t> expected = int8_reference(x, M, K, w, N);

  const DeviceBuffer<std::int8_t> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<std::int8_t> d_w = sq::cuda::to_device(w);
  const DeviceBuffer<float> d_xs = sq::cuda::to_device(x_scale);
  const DeviceBuffer<float> d_ws = sq::cuda::to_device(w_scale);
  const DeviceBuffer<float> d_bias = sq::cuda::to_device(bias);
  sq::cuda::Blas blas;

  for (Int8Path path : {Int8Path::padded, Int8Path::strict, Int8Path::reference}) {
    const std::string what = std::string(path_name(path)) + " path";
    DeviceBuffer<std::int32_t> d_acc(expected.size());
    poison(d_acc);  // the previous path's result may sit in the same memory
    if (path == Int8Path::strict && !strict_aligned(N, K)) {
      try {
        sq::cuda::gemm_int8(blas, d_x.data(), M, K, d_w.data(), N, d_acc.data(), path, nullptr);
        ADD_FAILURE() << what << ": unaligned sizes were not refused";
      } catch (const sq::Error& e) {
        EXPECT_NE(std::string(e.what()).find(strict_refusal(N, K)), std::string::npos) << e.what();
      }
      continue;
    }
    sq::cuda::gemm_int8(blas, d_x.data(), M, K, d_w.data(), N, d_acc.data(), path, nullptr);
    sq::cuda::synchronize();
    expect_equal(sq::cuda::to_host(d_acc), expected, N, what + " int32 accumulator");

    // The W8A8 linear: bf16 with bias, fp16 without.
    for (Half out_type : {Half::bf16, Half::f16}) {
      const bool with_bias = out_type == Half::bf16;
      const std::string what_out = what + ", " + half_name(out_type) + " output";
      DeviceBuffer<std::uint16_t> d_out(expected.size());
      poison(d_out);
      sq::cuda::linear_int8(blas, d_x.data(), d_xs.data(), M, K, d_w.data(), d_ws.data(),
                            with_bias ? d_bias.data() : nullptr, N, d_out.data(), out_type, path,
                            nullptr);
      sq::cuda::synchronize();
      const std::vector<std::uint16_t> out = sq::cuda::to_host(d_out);

      // The CPU twin of the epilogue (kernels/cpu/int4.h), shared with the W4A4 tests.
      std::vector<std::uint16_t> twin(expected.size());
      sq::cpu::dequantize_int8_acc(
          expected.data(), M, N, N, x_scale.data(), w_scale.data(),
          with_bias ? bias.data() : nullptr, twin.data(),
          out_type == Half::bf16 ? sq::cpu::HalfFormat::bf16 : sq::cpu::HalfFormat::f16);
      std::vector<float> decoded(expected.size());
      std::vector<double> reference(expected.size()), bound(expected.size());
      const double u = out_type == Half::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
      const double floor = out_type == Half::bf16 ? 0.0 : std::ldexp(1.0, -25);
      for (i64 i = 0; i < M; ++i) {
        for (i64 j = 0; j < N; ++j) {
          const std::size_t e = static_cast<std::size_t>(i * N + j);
          const double product = double(expected[e]) *
                                 double(x_scale[static_cast<std::size_t>(i)]) *
                                 double(w_scale[static_cast<std::size_t>(j)]);
          const double b = with_bias ? double(bias[static_cast<std::size_t>(j)]) : 0.0;
          reference[e] = product + b;
          bound[e] = u * std::fabs(reference[e]) +
                     std::ldexp(1.0, -21) * (std::fabs(product) + std::fabs(b)) + floor;
          decoded[e] = from_half_bits(out[e], out_type);
        }
      }
      expect_equal(out, twin, N, what_out + " vs the CPU epilogue");
      expect_within(decoded, reference, bound, N, what_out + " vs double");
    }
  }
}

// One 16-bit GEMM case: inputs rounded to `in_type`, outputs in `in_type` (with bias) and fp32
// (without), against cpu::linear on the decoded inputs with the bound in the file comment.
void check_linear_16bit(Half in_type, i64 M, i64 N, i64 K, std::uint32_t seed) {
  const std::vector<float> x_raw = random_vector(static_cast<std::size_t>(M * K), -1, 1, seed);
  const std::vector<float> w_raw = random_vector(static_cast<std::size_t>(N * K), -1, 1, seed + 1);
  const std::vector<float> b_raw = random_vector(static_cast<std::size_t>(N), -1, 1, seed + 2);
  auto encode = [&](const std::vector<float>& v, std::vector<std::uint16_t>& bits,
                    std::vector<float>& value, std::vector<float>& magnitude) {
    bits.resize(v.size());
    value.resize(v.size());
    magnitude.resize(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      bits[i] = to_half_bits(v[i], in_type);
      value[i] = from_half_bits(bits[i], in_type);
      magnitude[i] = std::fabs(value[i]);
    }
  };
  std::vector<std::uint16_t> xb, wb, bb;
  std::vector<float> xf, wf, bf, xa, wa, ba;
  encode(x_raw, xb, xf, xa);
  encode(w_raw, wb, wf, wa);
  encode(b_raw, bb, bf, ba);

  const std::size_t size = static_cast<std::size_t>(M * N);
  std::vector<float> y_bias(size), y_plain(size), s_bias(size), s_plain(size);
  sq::cpu::linear(xf.data(), M, K, wf.data(), bf.data(), N, y_bias.data());
  sq::cpu::linear(xf.data(), M, K, wf.data(), nullptr, N, y_plain.data());
  sq::cpu::linear(xa.data(), M, K, wa.data(), ba.data(), N, s_bias.data());
  sq::cpu::linear(xa.data(), M, K, wa.data(), nullptr, N, s_plain.data());

  const DeviceBuffer<std::uint16_t> d_x = sq::cuda::to_device(xb);
  const DeviceBuffer<std::uint16_t> d_w = sq::cuda::to_device(wb);
  const DeviceBuffer<std::uint16_t> d_b = sq::cuda::to_device(bb);
  // The fp32-output variant with an fp32 bias is the one the GPU forward runs.
  const DeviceBuffer<float> d_bf = sq::cuda::to_device(bf);
  DeviceBuffer<std::uint16_t> d_y16(size);
  DeviceBuffer<float> d_y32(size), d_y32b(size);
  poison(d_y16);
  poison(d_y32);
  poison(d_y32b);
  sq::cuda::Blas blas;
  if (in_type == Half::bf16) {
    sq::cuda::linear_bf16(blas, d_x.data(), M, K, d_w.data(), d_b.data(), N, d_y16.data(), nullptr);
    sq::cuda::linear_bf16(blas, d_x.data(), M, K, d_w.data(), static_cast<const float*>(nullptr), N,
                          d_y32.data(), nullptr);
    sq::cuda::linear_bf16(blas, d_x.data(), M, K, d_w.data(), d_bf.data(), N, d_y32b.data(),
                          nullptr);
  } else {
    sq::cuda::linear_f16(blas, d_x.data(), M, K, d_w.data(), d_b.data(), N, d_y16.data(), nullptr);
    sq::cuda::linear_f16(blas, d_x.data(), M, K, d_w.data(), static_cast<const float*>(nullptr), N,
                         d_y32.data(), nullptr);
    sq::cuda::linear_f16(blas, d_x.data(), M, K, d_w.data(), d_bf.data(), N, d_y32b.data(),
                         nullptr);
  }
  sq::cuda::synchronize();
  const std::vector<std::uint16_t> y16 = sq::cuda::to_host(d_y16);
  std::vector<float> y16f(size);
  for (std::size_t i = 0; i < size; ++i) y16f[i] = from_half_bits(y16[i], in_type);
  const std::vector<float> y32 = sq::cuda::to_host(d_y32);
  const std::vector<float> y32b = sq::cuda::to_host(d_y32b);

  const double u = in_type == Half::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
  const double accumulation = double(2 * K + 16) * std::ldexp(1.0, -24);
  std::vector<double> ref16(size), bound16(size), ref32(size), bound32(size), ref32b(size),
      bound32b(size);
  for (std::size_t i = 0; i < size; ++i) {
    ref16[i] = y_bias[i];
    bound16[i] = u * std::fabs(ref16[i]) + accumulation * s_bias[i];
    ref32[i] = y_plain[i];
    bound32[i] = accumulation * s_plain[i];
    ref32b[i] = y_bias[i];
    bound32b[i] = accumulation * s_bias[i];
  }
  const std::string name = half_name(in_type);
  expect_within(y16f, ref16, bound16, N, name + " GEMM, " + name + " output with bias");
  expect_within(y32, ref32, bound32, N, name + " GEMM, fp32 output");
  expect_within(y32b, ref32b, bound32b, N, name + " GEMM, fp32 output with an fp32 bias");
}

// fp32 GEMM (fp32 checkpoints, the quantized propagation): fp32 accumulation and no TF32. The
// bound is the fp32 accumulation bound of the file comment with u_out = 0; TF32 inputs (10-bit
// mantissas, relative error 2^-11 per product) would exceed it by orders of magnitude.
void check_linear_f32(i64 M, i64 N, i64 K, std::uint32_t seed) {
  const std::vector<float> x = random_vector(static_cast<std::size_t>(M * K), -1, 1, seed);
  const std::vector<float> w = random_vector(static_cast<std::size_t>(N * K), -1, 1, seed + 1);
  const std::vector<float> b = random_vector(static_cast<std::size_t>(N), -1, 1, seed + 2);
  std::vector<float> xa(x.size()), wa(w.size()), ba(b.size());
  for (std::size_t i = 0; i < x.size(); ++i) xa[i] = std::fabs(x[i]);
  for (std::size_t i = 0; i < w.size(); ++i) wa[i] = std::fabs(w[i]);
  for (std::size_t i = 0; i < b.size(); ++i) ba[i] = std::fabs(b[i]);
  const std::size_t size = static_cast<std::size_t>(M * N);
  std::vector<float> y(size), s(size);
  sq::cpu::linear(x.data(), M, K, w.data(), b.data(), N, y.data());
  sq::cpu::linear(xa.data(), M, K, wa.data(), ba.data(), N, s.data());
  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_w = sq::cuda::to_device(w);
  const DeviceBuffer<float> d_b = sq::cuda::to_device(b);
  DeviceBuffer<float> d_y(size);
  poison(d_y);
  sq::cuda::Blas blas;
  sq::cuda::linear_f32(blas, d_x.data(), M, K, d_w.data(), d_b.data(), N, d_y.data(), nullptr);
  sq::cuda::synchronize();
  const double accumulation = double(2 * K + 16) * std::ldexp(1.0, -24);
  std::vector<double> ref(size), bound(size);
  for (std::size_t i = 0; i < size; ++i) {
    ref[i] = y[i];
    bound[i] = accumulation * s[i];
  }
  expect_within(sq::cuda::to_host(d_y), ref, bound, N, "fp32 GEMM with bias");
}

TEST_P(CudaGemm, Bf16MatchesCpuLinear) {
  SQ_SKIP_WITHOUT_CUDA();
  check_linear_16bit(Half::bf16, m(), n(), k(), seed());
}

TEST_P(CudaGemm, F16MatchesCpuLinear) {
  SQ_SKIP_WITHOUT_CUDA();
  check_linear_16bit(Half::f16, m(), n(), k(), seed() + 17);
}

TEST_P(CudaGemm, F32MatchesCpuLinearWithoutTf32) {
  SQ_SKIP_WITHOUT_CUDA();
  check_linear_f32(m(), n(), k(), seed() + 29);
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardSizes, CudaGemm,
    // 20: a multiple of 4 but not of 16, the strict INT8 path's minimum alignment.
    ::testing::Combine(
        ::testing::Values(i64{1}, i64{3}, i64{17}, i64{128}),
        ::testing::Values(i64{1}, i64{16}, i64{19}, i64{20}, i64{64}, i64{111}, i64{4096}),
        ::testing::Values(i64{1}, i64{16}, i64{19}, i64{20}, i64{64}, i64{111}, i64{4096})),
    MnkName());

// The strict path refuses, before launching anything, each unmet requirement by name; the padded
// path runs the same problems. Unaligned pointers: an operand starting 1 byte into its buffer.
TEST(CudaGemmStrict, RefusesUnalignedSizesAndPointersByName) {
  SQ_SKIP_WITHOUT_CUDA();
  sq::cuda::Blas blas;
  DeviceBuffer<std::int8_t> x(64 * 64 + 1), w(64 * 64 + 1);
  DeviceBuffer<std::int32_t> acc(64 * 64);
  auto refusal = [&](const std::int8_t* xp, i64 mm, i64 kk, const std::int8_t* wp, i64 nn) {
    try {
      sq::cuda::gemm_int8(blas, xp, mm, kk, wp, nn, acc.data(), Int8Path::strict, nullptr);
    } catch (const sq::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(refusal(x.data(), 8, 19, w.data(), 16).find("K = 19 is not a multiple of 4"),
            std::string::npos);
  EXPECT_NE(refusal(x.data(), 8, 16, w.data(), 18).find("N = 18 is not a multiple of 4"),
            std::string::npos);
  EXPECT_NE(refusal(x.data() + 1, 8, 16, w.data(), 16).find("pointer x is not 4-byte aligned"),
            std::string::npos);
  EXPECT_NE(refusal(x.data(), 8, 16, w.data() + 1, 16).find("pointer w is not 4-byte aligned"),
            std::string::npos);
  // M has no requirement: 5 rows pass the checks.
  EXPECT_EQ(refusal(x.data(), 5, 16, w.data(), 16), "(no error)");
  sq::cuda::synchronize();
}

// The padded path copes with offset operands (copied into aligned scratch) and still matches.
TEST(CudaGemmPadded, OffsetOperandsMatchTheReferenceKernel) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 M = 5, N = 24, K = 40;
  const std::vector<std::int8_t> host_x = random_int8(static_cast<std::size_t>(M * K + 1), 5);
  const std::vector<std::int8_t> host_w = random_int8(static_cast<std::size_t>(N * K + 1), 6);
  const DeviceBuffer<std::int8_t> x = sq::cuda::to_device(host_x);
  const DeviceBuffer<std::int8_t> w = sq::cuda::to_device(host_w);
  DeviceBuffer<std::int32_t> padded(static_cast<std::size_t>(M * N)),
      reference(static_cast<std::size_t>(M * N));
  poison(padded);
  poison(reference);
  sq::cuda::Blas blas;
  sq::cuda::gemm_int8(blas, x.data() + 1, M, K, w.data() + 1, N, padded.data(), Int8Path::padded,
                      nullptr);
  sq::cuda::gemm_int8_reference(x.data() + 1, M, K, w.data() + 1, N, reference.data(), nullptr);
  sq::cuda::synchronize();
  const std::vector<std::int8_t> xs(host_x.begin() + 1, host_x.end());
  const std::vector<std::int8_t> ws(host_w.begin() + 1, host_w.end());
  const std::vector<std::int32_t> expected = int8_reference(xs, M, K, ws, N);
  expect_equal(sq::cuda::to_host(padded), expected, N, "padded, offset operands");
  expect_equal(sq::cuda::to_host(reference), expected, N, "reference kernel, offset operands");
}

}  // namespace
