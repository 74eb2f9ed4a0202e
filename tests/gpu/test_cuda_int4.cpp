// CUDA 4-bit kernels (kernels/cuda/int4.h) against their CPU twins (kernels/cpu/int4.h), bit for
// bit: packing (and its clamping of out-of-range codes, which the CPU refuses), fused per-token
// 4-bit quantization (packed words and scales, zero rows, outliers, NaN and inf), the W4A4 GEMM's
// int32 accumulator over awkward sizes (M in {1, 3, 16, 17, 64}, N in {1, 15, 16, 67, 256}, K in
// {1, 7, 8, 31, 64, 200, 4096}: partial words, row strides that do and do not allow 16-byte loads,
// several 16-row tiles), the fused linear's bf16 / fp16 bits, garbage in the padding nibbles,
// offset operands, and the refusals. Skipped on machines without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cuda_test_support.h"
#include "kernels/cpu/int4.h"
#include "kernels/cpu/quant.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/int4.h"

namespace {

using sq::cpu::IntFormat;
using sq::cuda::DeviceBuffer;
using sq::cuda::Half;
using namespace sq::cuda::testing;

constexpr std::size_t sz(i64 v) { return static_cast<std::size_t>(v); }

std::vector<std::int8_t> random_codes(std::size_t n, int lo, int hi, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<std::int8_t> v(n);
  for (auto& x : v) x = static_cast<std::int8_t>(dist(rng));
  return v;
}

std::vector<std::int32_t> cpu_pack(const std::vector<std::int8_t>& q, i64 rows, i64 cols) {
  std::vector<std::int32_t> packed(sz(rows * sq::cpu::int4_row_words(cols)));
  sq::cpu::pack_quantized(q.data(), rows, cols, sq::cpu::kInt4Bits, packed.data());
  return packed;
}

sq::cpu::HalfFormat cpu_half(Half h) {
  return h == Half::bf16 ? sq::cpu::HalfFormat::bf16 : sq::cpu::HalfFormat::f16;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const sq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_ERROR_MENTIONS(call, text)                                       \
  do {                                                                          \
    const std::string message_ = error_of([&] { call; });                       \
    EXPECT_NE(message_.find(text), std::string::npos) << "error: " << message_; \
  } while (0)

// ---- packing ----

TEST(CudaInt4Pack, MatchesCpuBytes) {
  SQ_SKIP_WITHOUT_CUDA();
  for (i64 rows : {1, 3, 17}) {
    for (i64 cols : {1, 7, 8, 9, 31, 64, 200}) {
      const std::vector<std::int8_t> q =
          random_codes(sz(rows * cols), -8, 7, static_cast<std::uint32_t>(rows * 1000 + cols));
      const std::vector<std::int32_t> expected = cpu_pack(q, rows, cols);
      const DeviceBuffer<std::int8_t> d_q = sq::cuda::to_device(q);
      DeviceBuffer<std::int32_t> d_packed(expected.size());
      poison(d_packed);
      sq::cuda::pack_int4(d_q.data(), rows, cols, d_packed.data(), nullptr);
      sq::cuda::synchronize();
      expect_equal(sq::cuda::to_host(d_packed), expected, sq::cpu::int4_row_words(cols),
                   "pack_int4 " + size_name(rows, cols));
    }
  }
}

// The CPU refuses codes outside [-8, 7]; the device clamps them (int4.h).
TEST(CudaInt4Pack, ClampsOutOfRangeCodes) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 rows = 5, cols = 37;
  const std::vector<std::int8_t> q = random_codes(sz(rows * cols), -128, 127, 11);
  std::vector<std::int8_t> clamped(q.size());
  for (std::size_t i = 0; i < q.size(); ++i)
    clamped[i] = static_cast<std::int8_t>(std::clamp(static_cast<int>(q[i]), -8, 7));
  EXPECT_THROW(cpu_pack(q, rows, cols), sq::Error);
  const DeviceBuffer<std::int8_t> d_q = sq::cuda::to_device(q);
  DeviceBuffer<std::int32_t> d_packed(sz(rows * sq::cpu::int4_row_words(cols)));
  poison(d_packed);
  sq::cuda::pack_int4(d_q.data(), rows, cols, d_packed.data(), nullptr);
  sq::cuda::synchronize();
  expect_equal(sq::cuda::to_host(d_packed), cpu_pack(clamped, rows, cols),
               sq::cpu::int4_row_words(cols), "pack_int4 of out-of-range codes");
}

// ---- per-token quantization ----

// Activation rows (row 0 zero, outlier columns) with NaN, inf and an all-NaN row where the matrix
// has room for them.
std::vector<float> int4_inputs(i64 rows, i64 cols, std::uint32_t seed) {
  std::vector<float> x = activations(rows, cols, seed);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if (rows >= 5 && cols >= 3) {
    x[sz(3 * cols + 1)] = nan;
    x[sz(4 * cols + 2)] = -std::numeric_limits<float>::infinity();
  }
  if (rows >= 6) std::fill(x.begin() + 5 * cols, x.begin() + 6 * cols, nan);
  return x;
}

void check_quantize(const std::vector<float>& x, i64 rows, i64 cols, const IntFormat& format,
                    i64 offset, const std::string& what) {
  const i64 words = sq::cpu::int4_row_words(cols);
  std::vector<std::int32_t> expected(sz(rows * words));
  std::vector<float> expected_scale(sz(rows));
  sq::cpu::quantize_per_token_int4(x.data() + offset, rows, cols, format, expected.data(),
                                   expected_scale.data());
  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  DeviceBuffer<std::int32_t> d_packed(std::max<std::size_t>(expected.size(), 1));
  DeviceBuffer<float> d_scale(sz(rows));
  poison(d_packed);
  poison(d_scale);
  sq::cuda::quantize_per_token_int4(d_x.data() + offset, rows, cols, format, d_packed.data(),
                                    d_scale.data(), nullptr);
  sq::cuda::synchronize();
  std::vector<std::int32_t> packed = sq::cuda::to_host(d_packed);
  packed.resize(expected.size());
  expect_equal(packed, expected, std::max<i64>(words, 1), what + " packed");
  expect_same_bits(sq::cuda::to_host(d_scale), expected_scale, 1, what + " scale");
}

class CudaInt4Quantize : public ::testing::TestWithParam<std::tuple<i64, i64>> {};

TEST_P(CudaInt4Quantize, MatchesCpuBitForBit) {
  SQ_SKIP_WITHOUT_CUDA();
  const auto [rows, cols] = GetParam();
  const std::vector<float> x =
      int4_inputs(rows, cols, static_cast<std::uint32_t>(rows * 7919 + cols));
  for (auto divisor : {IntFormat::Divisor::max_int, IntFormat::Divisor::half_range}) {
    const IntFormat format{4, true, divisor};
    const std::string what =
        size_name(rows, cols) + (divisor == IntFormat::Divisor::max_int ? " /7" : " /7.5");
    check_quantize(x, rows, cols, format, 0, what);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardSizes, CudaInt4Quantize,
    ::testing::Combine(::testing::Values(i64{1}, i64{3}, i64{6}, i64{16}, i64{17}),
                       ::testing::Values(i64{0}, i64{1}, i64{7}, i64{8}, i64{9}, i64{64}, i64{200},
                                         i64{4096}, i64{8192})),
    [](const ::testing::TestParamInfo<std::tuple<i64, i64>>& p) {
      return size_name(std::get<0>(p.param), std::get<1>(p.param));
    });

// A row start that is not 16-byte aligned takes the scalar loads.
TEST(CudaInt4QuantizeOffset, UnalignedInputMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 rows = 6, cols = 64;
  std::vector<float> x = int4_inputs(rows, cols, 3);
  x.insert(x.begin(), 123.0f);  // the element before the matrix, never read
  check_quantize(x, rows, cols, IntFormat{4, true}, 1, "offset input");
}

// ---- W4A4 GEMM and linear ----

struct W4A4Problem {
  i64 m = 0, n = 0, k = 0;
  std::vector<std::int32_t> x, w;  // packed
  std::vector<float> x_scale, w_scale, bias;
};

W4A4Problem make_problem(i64 m, i64 n, i64 k, std::uint32_t seed) {
  W4A4Problem p;
  p.m = m;
  p.n = n;
  p.k = k;
  std::vector<std::int8_t> xq = random_codes(sz(m * k), -8, 7, seed);
  std::vector<std::int8_t> wq = random_codes(sz(n * k), -8, 7, seed + 1);
  // The largest magnitudes: the last x row and the first w row all -8 (acc = 64 k there).
  std::fill(xq.end() - k, xq.end(), std::int8_t{-8});
  std::fill(wq.begin(), wq.begin() + k, std::int8_t{-8});
  p.x = cpu_pack(xq, m, k);
  p.w = cpu_pack(wq, n, k);
  p.x_scale = random_vector(sz(m), 1e-3f, 5e-2f, seed + 2);
  p.w_scale = random_vector(sz(n), 1e-3f, 2e-2f, seed + 3);
  p.bias = random_vector(sz(n), -1.0f, 1.0f, seed + 4);
  return p;
}

// gemm_w4a4 and linear_w4a4 (bf16 with bias, fp16 without) on device copies of p, where x and w
// start `offset` words into their buffers, against the CPU reference.
void check_w4a4(const W4A4Problem& p, i64 offset, const std::string& what) {
  const i64 M = p.m, N = p.n, K = p.k;
  std::vector<std::int32_t> expected(sz(M * N));
  sq::cpu::gemm_w4a4_reference(p.x.data(), M, K, p.w.data(), N, expected.data());

  std::vector<std::int32_t> x(sz(offset), 0x12345678), w(sz(offset), 0x12345678);
  x.insert(x.end(), p.x.begin(), p.x.end());
  w.insert(w.end(), p.w.begin(), p.w.end());
  const DeviceBuffer<std::int32_t> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<std::int32_t> d_w = sq::cuda::to_device(w);
  const DeviceBuffer<float> d_xs = sq::cuda::to_device(p.x_scale);
  const DeviceBuffer<float> d_ws = sq::cuda::to_device(p.w_scale);
  const DeviceBuffer<float> d_bias = sq::cuda::to_device(p.bias);

  DeviceBuffer<std::int32_t> d_acc(expected.size());
  poison(d_acc);
  sq::cuda::gemm_w4a4(d_x.data() + offset, M, K, d_w.data() + offset, N, d_acc.data(), nullptr);
  sq::cuda::synchronize();
  expect_equal(sq::cuda::to_host(d_acc), expected, N, what + " int32 accumulator");

  for (Half out_type : {Half::bf16, Half::f16}) {
    const float* bias = out_type == Half::bf16 ? p.bias.data() : nullptr;
    const float* d_b = out_type == Half::bf16 ? d_bias.data() : nullptr;
    std::vector<std::uint16_t> twin(expected.size());
    sq::cpu::linear_w4a4_reference(p.x.data(), p.x_scale.data(), M, K, p.w.data(), p.w_scale.data(),
                                   bias, N, twin.data(), cpu_half(out_type));
    DeviceBuffer<std::uint16_t> d_out(expected.size());
    poison(d_out);
    sq::cuda::linear_w4a4(d_x.data() + offset, d_xs.data(), M, K, d_w.data() + offset, d_ws.data(),
                          d_b, N, d_out.data(), out_type, nullptr);
    sq::cuda::synchronize();
    expect_equal(sq::cuda::to_host(d_out), twin, N,
                 what + (out_type == Half::bf16 ? " bf16 with bias" : " fp16 without bias"));
  }
}

class CudaW4A4 : public ::testing::TestWithParam<std::tuple<i64, i64, i64>> {};

TEST_P(CudaW4A4, MatchesCpuReference) {
  SQ_SKIP_WITHOUT_CUDA();
  const auto [M, N, K] = GetParam();
  const W4A4Problem p =
      make_problem(M, N, K, static_cast<std::uint32_t>(1009 + M * 7919 + N * 104729 + K * 31));
  check_w4a4(p, 0,
             "M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardSizes, CudaW4A4,
    ::testing::Combine(::testing::Values(i64{1}, i64{3}, i64{16}, i64{17}, i64{64}),
                       ::testing::Values(i64{1}, i64{15}, i64{16}, i64{67}, i64{256}),
                       ::testing::Values(i64{1}, i64{7}, i64{8}, i64{31}, i64{64}, i64{200},
                                         i64{4096})),
    MnkName());

// A decode-sized problem with a real hidden size: many chunks per warp, 16-byte loads.
TEST(CudaW4A4Shapes, DecodeShapeMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  check_w4a4(make_problem(16, 512, 8192, 5), 0, "decode M 16 N 512 K 8192");
  check_w4a4(make_problem(1, 300, 8192, 6), 0, "decode M 1 N 300 K 8192");
}

// Operands one word into their buffers are not 16-byte aligned: 4-byte loads, same results.
TEST(CudaW4A4Shapes, OffsetOperandsMatchCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  check_w4a4(make_problem(5, 40, 64, 7), 1, "offset operands K 64");
  check_w4a4(make_problem(17, 33, 100, 8), 3, "offset operands K 100");
}

// The padding nibbles of the last word are zero bits as pack_quantized writes them (code -8);
// here they are filled with garbage in both operands, and still no column k >= K counts.
TEST(CudaW4A4Shapes, PaddingNibblesNeverCount) {
  SQ_SKIP_WITHOUT_CUDA();
  // 29 and 125 (4 and 16 words a row): the 16-byte loads' tail masking sees the garbage too.
  for (i64 K : {1, 5, 13, 100, 29, 125}) {
    W4A4Problem p = make_problem(9, 21, K, static_cast<std::uint32_t>(K));
    const i64 words = sq::cpu::int4_row_words(K);
    const std::uint32_t padding = ~((std::uint32_t{1} << (4 * (K % 8))) - 1u);
    std::mt19937 rng(static_cast<std::uint32_t>(K));
    auto scramble = [&](std::vector<std::int32_t>& packed) {
      for (std::size_t r = 0; r < packed.size() / sz(words); ++r) {
        auto& last = packed[r * sz(words) + sz(words) - 1];
        last = static_cast<std::int32_t>(static_cast<std::uint32_t>(last) | (rng() & padding));
      }
    };
    scramble(p.x);
    scramble(p.w);
    check_w4a4(p, 0, "garbage padding K " + std::to_string(K));
  }
}

TEST(CudaW4A4Shapes, ZeroKWritesZeros) {
  SQ_SKIP_WITHOUT_CUDA();
  DeviceBuffer<std::int32_t> d_acc(6);
  poison(d_acc);
  sq::cuda::gemm_w4a4(nullptr, 2, 0, nullptr, 3, d_acc.data(), nullptr);
  sq::cuda::synchronize();
  expect_equal(sq::cuda::to_host(d_acc), std::vector<std::int32_t>(6, 0), 3, "k = 0");
}

// More 16-row tiles of x than grid.y holds (65535): the grid-stride loop over row tiles, and the
// shared partial sums reused from one tile to the next.
TEST(CudaW4A4Shapes, MoreRowTilesThanGridY) {
  SQ_SKIP_WITHOUT_CUDA();
  check_w4a4(make_problem(16 * 65535 + 17, 33, 8, 9), 0, "M 1048577 (65537 row tiles)");
}

// An infinite token scale (the per-token quantizer gives one to a row holding inf) times a zero
// accumulator is NaN: written as the canonical 0x7FFF on both sides (cpu::dequantize_int8_acc).
TEST(CudaW4A4Shapes, NaNOutputsAreCanonical) {
  SQ_SKIP_WITHOUT_CUDA();
  W4A4Problem p = make_problem(3, 20, 16, 12);
  p.x_scale[1] = std::numeric_limits<float>::infinity();
  p.x_scale[2] = -std::numeric_limits<float>::quiet_NaN();
  check_w4a4(p, 0, "inf and NaN token scales");
}

// ---- refusals: every argument checked before a launch, named in the error ----

TEST(CudaInt4Refusals, NameTheArgument) {
  SQ_SKIP_WITHOUT_CUDA();
  DeviceBuffer<std::int32_t> words(64);
  DeviceBuffer<float> floats(64);
  DeviceBuffer<std::uint16_t> out(64);
  std::int32_t* ip = words.data();
  float* fp = floats.data();
  auto* misaligned = reinterpret_cast<std::int32_t*>(reinterpret_cast<char*>(ip) + 1);
  const i64 big = sq::cpu::kW4A4MaxK + 1;

  EXPECT_ERROR_MENTIONS(sq::cuda::gemm_w4a4(ip, 1, big, ip, 1, ip, nullptr),
                        "k = " + std::to_string(big));
  EXPECT_ERROR_MENTIONS(
      sq::cuda::linear_w4a4(ip, fp, 1, big, ip, fp, nullptr, 1, out.data(), Half::bf16, nullptr),
      "k = " + std::to_string(big));
  EXPECT_ERROR_MENTIONS(sq::cuda::gemm_w4a4(ip, -1, 8, ip, 1, ip, nullptr), "negative shape");
  EXPECT_ERROR_MENTIONS(sq::cuda::gemm_w4a4(nullptr, 1, 8, ip, 1, ip, nullptr), "x_packed is null");
  EXPECT_ERROR_MENTIONS(sq::cuda::gemm_w4a4(ip, 1, 8, nullptr, 1, ip, nullptr), "w_packed is null");
  EXPECT_ERROR_MENTIONS(sq::cuda::gemm_w4a4(ip, 1, 8, ip, 1, misaligned, nullptr),
                        "acc is not 4-byte aligned");
  EXPECT_ERROR_MENTIONS(sq::cuda::gemm_w4a4(misaligned, 1, 8, ip, 1, ip, nullptr),
                        "x_packed is not 4-byte aligned");
  EXPECT_ERROR_MENTIONS(
      sq::cuda::linear_w4a4(ip, nullptr, 1, 8, ip, fp, nullptr, 1, out.data(), Half::bf16, nullptr),
      "x_scale is null");
  EXPECT_ERROR_MENTIONS(
      sq::cuda::linear_w4a4(ip, fp, 1, 8, ip, nullptr, nullptr, 1, out.data(), Half::f16, nullptr),
      "w_scale is null");
  EXPECT_ERROR_MENTIONS(
      sq::cuda::linear_w4a4(ip, fp, 1, 8, ip, fp, nullptr, 1, nullptr, Half::f16, nullptr),
      "out is null");

  for (const IntFormat& f : {IntFormat{8, true}, IntFormat{4, false}, IntFormat{3, true}}) {
    EXPECT_ERROR_MENTIONS(sq::cuda::quantize_per_token_int4(fp, 1, 8, f, ip, fp, nullptr),
                          "needs a symmetric 4-bit format");
  }
  EXPECT_ERROR_MENTIONS(
      sq::cuda::quantize_per_token_int4(fp, 1, 8, IntFormat{4, true}, ip, nullptr, nullptr),
      "scale is null");
  EXPECT_ERROR_MENTIONS(sq::cuda::pack_int4(nullptr, 1, 8, ip, nullptr), "q is null");
  EXPECT_ERROR_MENTIONS(sq::cuda::pack_int4(nullptr, -1, 8, ip, nullptr), "negative shape");
  sq::cuda::synchronize();  // nothing was launched, nothing failed
}

}  // namespace
