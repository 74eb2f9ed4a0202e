// Tests for kernels/cpu/int4.h: the 4-bit packed layout (round trip at odd column counts, nibble
// placement against bytes computed by hand), per-token 4-bit quantization as the composition of
// quant.h's functions, the W4A4 GEMM reference against an int64 product of the codes, the
// dequantization epilogue against hand values and a double-precision reference, and the refusals.
// Fixed sq::Rng seeds.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/random.h"
#include "kernels/cpu/int4.h"
#include "kernels/cpu/quant.h"

namespace sq::cpu {
namespace {

constexpr std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

std::vector<std::int8_t> random_codes(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::int8_t> q(n);
  for (auto& v : q) v = static_cast<std::int8_t>(static_cast<int>(rng.below(16)) - 8);
  return q;
}

std::vector<std::int32_t> pack4(const std::vector<std::int8_t>& q, i64 rows, i64 cols) {
  std::vector<std::int32_t> packed(sz(rows * int4_row_words(cols)), -1);  // -1: must be cleared
  pack_quantized(q.data(), rows, cols, kInt4Bits, packed.data());
  return packed;
}

std::vector<std::uint8_t> bytes_of(const std::vector<std::int32_t>& words) {
  std::vector<std::uint8_t> bytes(words.size() * 4);
  std::memcpy(bytes.data(), words.data(), bytes.size());
  return bytes;
}

std::string message_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// --- packed layout ---------------------------------------------------------------------------

TEST(Int4Pack, RowWordsArePackedWords) {
  for (i64 cols : {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 4096, 4097})
    EXPECT_EQ(int4_row_words(cols), packed_words(cols, kInt4Bits)) << cols;
}

TEST(Int4Pack, RoundTripAtOddColumnCountsWithZeroPadding) {
  for (i64 cols : {1, 3, 7, 9, 15, 17, 31, 33, 63, 65, 201}) {
    const i64 rows = 3, words = int4_row_words(cols);
    const std::vector<std::int8_t> q = random_codes(sz(rows * cols), 100 + sz(cols));
    const std::vector<std::int32_t> packed = pack4(q, rows, cols);
    std::vector<std::int8_t> back(q.size());
    unpack_quantized(packed.data(), rows, cols, kInt4Bits, back.data());
    EXPECT_EQ(back, q) << cols;
    // The nibbles past the last column of each row are zero bits (-8 once decoded).
    const int used = static_cast<int>(cols % 8);
    if (used != 0) {
      for (i64 r = 0; r < rows; ++r) {
        const auto last = std::bit_cast<std::uint32_t>(packed[sz(r * words + words - 1)]);
        EXPECT_EQ(last >> (4 * used), 0u) << "row " << r << " cols " << cols;
      }
    }
  }
}

TEST(Int4Pack, NibblePlacementMatchesHandComputedBytes) {
  static_assert(std::endian::native == std::endian::little, "the byte view assumes little endian");
  // Stored nibbles q + 8: 0, 15, 8, 7, 11, 5, 13, 9 | 10; byte j = element 2j | element 2j+1 << 4.
  const std::vector<std::int8_t> q{-8, 7, 0, -1, 3, -3, 5, 1, 2};
  const std::vector<std::int32_t> packed = pack4(q, 1, 9);
  ASSERT_EQ(packed.size(), 2u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(packed[0]), 0x9D5B78F0u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(packed[1]), 0x0000000Au);
  const std::vector<std::uint8_t> expected{0xF0, 0x78, 0x5B, 0x9D, 0x0A, 0x00, 0x00, 0x00};
  EXPECT_EQ(bytes_of(packed), expected);

  // Two rows of 3: each row starts a new word.
  const std::vector<std::int32_t> two = pack4({1, -2, 3, -4, 5, -6}, 2, 3);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(two[0]), 0xB69u);  // 9, 6, 11
  EXPECT_EQ(std::bit_cast<std::uint32_t>(two[1]), 0x2D4u);  // 4, 13, 2
}

TEST(Int4Pack, OutOfRangeCodesAreRefusedNotClamped) {
  std::int32_t packed[2] = {};
  for (int bad : {8, 9, 127, -9, -128}) {
    const std::int8_t q[3] = {0, static_cast<std::int8_t>(bad), 1};
    const std::string message = message_of([&] { pack_quantized(q, 1, 3, kInt4Bits, packed); });
    EXPECT_TRUE(contains(message, "does not fit 4 signed bits")) << message;
    EXPECT_TRUE(contains(message, "[0, 1]")) << message;
  }
}

// --- per-token quantization ------------------------------------------------------------------

TEST(Int4Quantize, HandComputedRow) {
  // absmax 14, scale 14 / 7 = 2: 7 / 2 = 3.5 rounds to even 4, -14 / 2 = -7, 3.5 / 2 = 1.75 -> 2,
  // 0 -> 0, 1 / 2 = 0.5 rounds to even 0. Nibbles 12, 1, 10, 8, 8.
  const std::vector<float> x{7.0f, -14.0f, 3.5f, 0.0f, 1.0f};
  std::int32_t packed = -1;
  float scale = 0.0f;
  quantize_per_token_int4(x.data(), 1, 5, IntFormat{4, true, IntFormat::Divisor::max_int}, &packed,
                          &scale);
  EXPECT_EQ(scale, 2.0f);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(packed), 0x88A1Cu);
}

TEST(Int4Quantize, EqualsQparamsQuantizeAndPack) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (auto divisor : {IntFormat::Divisor::max_int, IntFormat::Divisor::half_range}) {
    const IntFormat format{4, true, divisor};
    for (i64 cols : {1, 7, 8, 9, 33, 200}) {
      const i64 rows = 6, words = int4_row_words(cols);
      Rng rng(7 + sz(cols));
      std::vector<float> x(sz(rows * cols));
      for (auto& v : x) v = static_cast<float>(rng.normal());
      std::fill(x.begin(), x.begin() + cols, 0.0f);                // row 0: all zero
      x[sz(1 * cols)] = 40.0f;                                     // row 1: an outlier
      x[sz(2 * cols + cols - 1)] = nan;                            // row 2: NaN is skipped -> 0
      x[sz(3 * cols)] = -inf;                                      // row 3: inf scale, codes 0
      std::fill(x.begin() + 4 * cols, x.begin() + 5 * cols, nan);  // row 4: all NaN

      std::vector<std::int32_t> packed(sz(rows * words), -1);
      std::vector<float> scale(sz(rows));
      quantize_per_token_int4(x.data(), rows, cols, format, packed.data(), scale.data());

      std::vector<float> s(sz(rows));
      std::vector<std::int8_t> q(x.size());
      const QuantLayout layout{Granularity::row, 0};
      qparams_minmax(x.data(), rows, cols, layout, format, s.data(), nullptr);
      quantize(x.data(), rows, cols, layout, format, s.data(), nullptr, q.data());
      EXPECT_EQ(packed, pack4(q, rows, cols)) << cols;
      for (i64 r = 0; r < rows; ++r)
        EXPECT_EQ(std::bit_cast<std::uint32_t>(scale[sz(r)]),
                  std::bit_cast<std::uint32_t>(s[sz(r)]))
            << "row " << r << " cols " << cols;
      EXPECT_EQ(scale[0], kMinScale);
      EXPECT_EQ(scale[4], kMinScale);
      EXPECT_TRUE(std::isinf(scale[3]));
      // Zero rows pack to nibble 8 everywhere a column exists.
      std::vector<std::int8_t> back(x.size());
      unpack_quantized(packed.data(), rows, cols, kInt4Bits, back.data());
      for (i64 c = 0; c < cols; ++c) {
        EXPECT_EQ(back[sz(c)], 0);
        EXPECT_EQ(back[sz(3 * cols + c)], 0);
        EXPECT_EQ(back[sz(4 * cols + c)], 0);
      }
      EXPECT_EQ(back[sz(2 * cols + cols - 1)], 0);  // the NaN
    }
  }
}

TEST(Int4Quantize, RefusesOtherFormats) {
  std::vector<float> x(8, 1.0f);
  std::int32_t packed = 0;
  float scale = 0.0f;
  for (const IntFormat& f : {IntFormat{8, true}, IntFormat{3, true}, IntFormat{4, false}}) {
    const std::string message =
        message_of([&] { quantize_per_token_int4(x.data(), 1, 8, f, &packed, &scale); });
    EXPECT_TRUE(contains(message, "needs a symmetric 4-bit format")) << message;
  }
  EXPECT_THROW(quantize_per_token_int4(x.data(), -1, 8, IntFormat{4, true}, &packed, &scale),
               Error);
}

// --- GEMM reference --------------------------------------------------------------------------

std::vector<std::int32_t> int64_product(const std::vector<std::int8_t>& x, i64 m, i64 k,
                                        const std::vector<std::int8_t>& w, i64 n) {
  std::vector<std::int32_t> acc(sz(m * n));
  for (i64 i = 0; i < m; ++i) {
    for (i64 j = 0; j < n; ++j) {
      std::int64_t s = 0;
      for (i64 t = 0; t < k; ++t)
        s += std::int64_t{x[sz(i * k + t)]} * std::int64_t{w[sz(j * k + t)]};
      acc[sz(i * n + j)] = static_cast<std::int32_t>(s);
    }
  }
  return acc;
}

TEST(Int4Gemm, ReferenceEqualsInt64ProductOfTheCodes) {
  for (i64 m : {1, 3, 17}) {
    for (i64 n : {1, 5, 16}) {
      for (i64 k : {1, 7, 8, 9, 31, 200}) {
        std::vector<std::int8_t> x = random_codes(sz(m * k), 1000 + sz(m * 131 + n * 17 + k));
        std::vector<std::int8_t> w = random_codes(sz(n * k), 2000 + sz(m * 131 + n * 17 + k));
        // The largest magnitude, -8 * -8 over a whole row pair.
        std::fill(x.end() - k, x.end(), std::int8_t{-8});
        std::fill(w.begin(), w.begin() + k, std::int8_t{-8});
        std::vector<std::int32_t> acc(sz(m * n), -1);
        gemm_w4a4_reference(pack4(x, m, k).data(), m, k, pack4(w, n, k).data(), n, acc.data());
        EXPECT_EQ(acc, int64_product(x, m, k, w, n)) << m << " " << n << " " << k;
        EXPECT_EQ(acc[sz((m - 1) * n)], 64 * k);
      }
    }
  }
}

TEST(Int4Gemm, ZeroKWritesZerosAndLargeKIsRefusedByName) {
  std::vector<std::int32_t> acc(6, -1);
  const std::int32_t dummy = 0;
  gemm_w4a4_reference(&dummy, 2, 0, &dummy, 3, acc.data());
  EXPECT_EQ(acc, std::vector<std::int32_t>(6, 0));
  const std::string message =
      message_of([&] { gemm_w4a4_reference(&dummy, 1, kW4A4MaxK + 1, &dummy, 1, acc.data()); });
  EXPECT_TRUE(contains(message, "k = " + std::to_string(kW4A4MaxK + 1))) << message;
  EXPECT_THROW(gemm_w4a4_reference(&dummy, -1, 8, &dummy, 1, acc.data()), Error);
}

// --- epilogue --------------------------------------------------------------------------------

TEST(Int4Epilogue, HandValues) {
  // (3 * 0.5) * 0.25 + 1 = 1.375: bf16 0x3FB0, fp16 0x3D80; without bias 0.375: 0x3EC0 / 0x3600.
  const std::int32_t acc = 3;
  const float xs = 0.5f, ws = 0.25f, b = 1.0f;
  std::uint16_t out = 0;
  dequantize_int8_acc(&acc, 1, 1, 1, &xs, &ws, &b, &out, HalfFormat::bf16);
  EXPECT_EQ(out, 0x3FB0);
  dequantize_int8_acc(&acc, 1, 1, 1, &xs, &ws, &b, &out, HalfFormat::f16);
  EXPECT_EQ(out, 0x3D80);
  dequantize_int8_acc(&acc, 1, 1, 1, &xs, &ws, nullptr, &out, HalfFormat::bf16);
  EXPECT_EQ(out, 0x3EC0);
  dequantize_int8_acc(&acc, 1, 1, 1, &xs, &ws, nullptr, &out, HalfFormat::f16);
  EXPECT_EQ(out, 0x3600);
  // No bias means no addition: -0 stays -0 (adding +0 would give +0).
  const std::int32_t zero = 0;
  const float negative = -1.0f;
  dequantize_int8_acc(&zero, 1, 1, 1, &negative, &ws, nullptr, &out, HalfFormat::bf16);
  EXPECT_EQ(out, 0x8000);
  // The accumulator is read with its leading dimension.
  const std::int32_t wide[4] = {1, 99, 2, 99};
  const float xs2[2] = {1.0f, 1.0f};
  std::uint16_t two[2] = {};
  dequantize_int8_acc(wide, 2, 1, 2, xs2, &ws, nullptr, two, HalfFormat::f16);
  EXPECT_EQ(two[0], f32_to_f16(0.25f));
  EXPECT_EQ(two[1], f32_to_f16(0.5f));
  // 0 x inf (a token whose scale overflowed) and a NaN scale: the canonical NaN 0x7FFF in both
  // formats, never a sign or payload the platform's arithmetic happened to give.
  const float inf = std::numeric_limits<float>::infinity();
  const float nan_scale = -std::numeric_limits<float>::quiet_NaN();
  for (HalfFormat h : {HalfFormat::bf16, HalfFormat::f16}) {
    out = 0;
    dequantize_int8_acc(&zero, 1, 1, 1, &inf, &ws, nullptr, &out, h);
    EXPECT_EQ(out, 0x7FFF);
    out = 0;
    dequantize_int8_acc(&acc, 1, 1, 1, &nan_scale, &ws, &b, &out, h);
    EXPECT_EQ(out, 0x7FFF);
  }
}

// Within the output format's rounding of a double-precision value: u |ref| plus the three fp32
// roundings (2^-21 of the magnitudes), plus half an fp16 subnormal step.
TEST(Int4Epilogue, WithinRoundingOfDoubleReference) {
  const i64 m = 7, n = 29, k = 4096;
  Rng rng(77);
  std::vector<std::int32_t> acc(sz(m * n));
  for (auto& a : acc)
    a = static_cast<std::int32_t>(rng.below(2 * 64 * k + 1)) - 64 * static_cast<std::int32_t>(k);
  std::vector<float> xs(sz(m)), ws(sz(n)), bias(sz(n));
  for (auto& v : xs) v = static_cast<float>(1e-3 + 5e-2 * rng.uniform());
  for (auto& v : ws) v = static_cast<float>(1e-3 + 2e-2 * rng.uniform());
  for (auto& v : bias) v = static_cast<float>(2.0 * rng.uniform() - 1.0);
  for (HalfFormat h : {HalfFormat::bf16, HalfFormat::f16}) {
    for (bool with_bias : {false, true}) {
      std::vector<std::uint16_t> out(sz(m * n));
      dequantize_int8_acc(acc.data(), m, n, n, xs.data(), ws.data(),
                          with_bias ? bias.data() : nullptr, out.data(), h);
      const double u = h == HalfFormat::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
      const double floor = h == HalfFormat::bf16 ? 0.0 : std::ldexp(1.0, -25);
      for (i64 i = 0; i < m; ++i) {
        for (i64 j = 0; j < n; ++j) {
          const double product = double(acc[sz(i * n + j)]) * double(xs[sz(i)]) * double(ws[sz(j)]);
          const double b = with_bias ? double(bias[sz(j)]) : 0.0;
          const double ref = product + b;
          const std::uint16_t bits = out[sz(i * n + j)];
          const double got = h == HalfFormat::bf16 ? bf16_to_f32(bits) : f16_to_f32(bits);
          const double bound = u * std::fabs(ref) +
                               std::ldexp(1.0, -21) * (std::fabs(product) + std::fabs(b)) + floor;
          EXPECT_LE(std::fabs(got - ref), bound) << i << " " << j;
        }
      }
    }
  }
}

TEST(Int4Linear, IsTheGemmFollowedByTheEpilogue) {
  const i64 m = 5, n = 11, k = 37;
  const std::vector<std::int8_t> x = random_codes(sz(m * k), 5);
  const std::vector<std::int8_t> w = random_codes(sz(n * k), 6);
  const std::vector<std::int32_t> xp = pack4(x, m, k), wp = pack4(w, n, k);
  Rng rng(8);
  std::vector<float> xs(sz(m)), ws(sz(n)), bias(sz(n));
  for (auto& v : xs) v = static_cast<float>(0.01 + 0.1 * rng.uniform());
  for (auto& v : ws) v = static_cast<float>(0.01 + 0.1 * rng.uniform());
  for (auto& v : bias) v = static_cast<float>(rng.uniform() - 0.5);
  const std::vector<std::int32_t> acc = int64_product(x, m, k, w, n);
  for (HalfFormat h : {HalfFormat::bf16, HalfFormat::f16}) {
    std::vector<std::uint16_t> out(sz(m * n)), expected(sz(m * n));
    linear_w4a4_reference(xp.data(), xs.data(), m, k, wp.data(), ws.data(), bias.data(), n,
                          out.data(), h);
    dequantize_int8_acc(acc.data(), m, n, n, xs.data(), ws.data(), bias.data(), expected.data(), h);
    EXPECT_EQ(out, expected);
  }
  std::uint16_t dummy = 0;
  const std::string message = message_of([&] {
    linear_w4a4_reference(xp.data(), xs.data(), 1, kW4A4MaxK + 1, wp.data(), ws.data(), nullptr, 1,
                          &dummy, HalfFormat::bf16);
  });
  EXPECT_TRUE(contains(message, "linear_w4a4_reference: k = ")) << message;
}

}  // namespace
}  // namespace sq::cpu
