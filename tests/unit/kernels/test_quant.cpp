// Tests for kernels/cpu/quant.h: hand-computed cases (scales, ties, clamping, zero points), a
// plain reference written here with double arithmetic and straightforward loops compared over
// every granularity x bits x symmetric/asymmetric x divisor, properties that need no reference
// (fake-quant == quantize + dequantize, idempotence, error <= scale / 2, MSE never worse than
// min-max), bit packing by hand and round trip, and the errors. Fixed sq::Rng seeds.
//
// How the reference can demand identical integers: the format fixes every step as a float32
// operation (x / scale, absmax / divisor, hi - lo, ...). The reference gets each of those float
// values independently as float(exact double result): for + - * / the double result of float
// operands is exact or rounded once to 53 bits, and rounding that to float gives the correctly
// rounded float result (53 >= 2 * 24 + 2, so double rounding is innocuous). Rounding half to
// even is then done by hand with floor, not with std::nearbyint.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/random.h"
#include "kernels/cpu/quant.h"

namespace sq::cpu {
namespace {

constexpr double kU = 0x1p-24;  // unit roundoff of float32
constexpr float kEps = std::numeric_limits<float>::epsilon();

constexpr std::size_t sz(std::int64_t v) { return static_cast<std::size_t>(v); }

// --- reference -------------------------------------------------------------------------------

namespace ref {

std::int32_t qmin(int bits) { return -static_cast<std::int32_t>(std::ldexp(1.0, bits - 1)); }
std::int32_t qmax(int bits) { return static_cast<std::int32_t>(std::ldexp(1.0, bits - 1)) - 1; }

// Round half to even by hand.
double round_half_even(double v) {
  const double f = std::floor(v), d = v - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1.0;
  return std::fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

// The float32 quotient / difference, through double (see the file comment).
float fdiv(double a, double b) { return static_cast<float>(a / b); }

std::int32_t clampi(double v, std::int32_t lo, std::int32_t hi) {
  return static_cast<std::int32_t>(std::min<double>(std::max<double>(v, lo), hi));
}

struct Params {
  float scale = 0.0f;
  std::int32_t zp = 0;
};

Params from_range(double lo, double hi, const IntFormat& f) {
  const std::int32_t qn = qmin(f.bits), qx = qmax(f.bits);
  Params p;
  if (f.symmetric) {
    const double div = f.divisor == IntFormat::Divisor::max_int
                           ? std::ldexp(1.0, f.bits - 1) - 1.0
                           : (std::ldexp(1.0, f.bits) - 1.0) / 2.0;
    p.scale = fdiv(std::max(std::fabs(lo), std::fabs(hi)), div);
    if (p.scale == 0.0f) p.scale = kEps;
    return p;
  }
  lo = std::min(lo, 0.0);
  hi = std::max(hi, 0.0);
  // hi >= 0 >= lo: hi - lo = |hi| + |lo| is exact in double for the magnitudes used here.
  const float range = static_cast<float>(hi - lo);
  p.scale = fdiv(range, double(qx) - double(qn));
  if (p.scale == 0.0f) p.scale = kEps;
  const float t = fdiv(lo, p.scale);
  const float u = static_cast<float>(double(qn) - double(t));
  p.zp = clampi(round_half_even(u), qn, qx);
  return p;
}

std::int32_t quantize(float x, Params p, int bits) {
  const float t = fdiv(x, p.scale);
  return clampi(round_half_even(t) + p.zp, qmin(bits), qmax(bits));
}

// Exact: a 9-bit integer times a 24-bit significand fits in 53 bits.
double dequantize(std::int32_t q, Params p) { return double(q - p.zp) * double(p.scale); }

// Which slice (row, col) belongs to, from the layout's definition.
std::int64_t slice(std::int64_t r, std::int64_t c, std::int64_t rows, std::int64_t cols,
                   const QuantLayout& l) {
  (void)rows;
  if (l.granularity == Granularity::tensor) return 0;
  if (l.granularity == Granularity::row) return r;
  return r * (cols / l.group_size) + c / l.group_size;
}

std::int64_t count(std::int64_t rows, std::int64_t cols, const QuantLayout& l) {
  if (l.granularity == Granularity::tensor) return 1;
  if (l.granularity == Granularity::row) return rows;
  return rows * (cols / l.group_size);
}

// Min-max parameters per slice.
std::vector<Params> minmax(const std::vector<float>& x, std::int64_t rows, std::int64_t cols,
                           const QuantLayout& l, const IntFormat& f) {
  const auto n = sz(count(rows, cols, l));
  std::vector<double> lo(n, std::numeric_limits<double>::infinity()),
      hi(n, -std::numeric_limits<double>::infinity());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto k = sz(slice(r, c, rows, cols, l));
      lo[k] = std::min(lo[k], double(x[sz(r * cols + c)]));
      hi[k] = std::max(hi[k], double(x[sz(r * cols + c)]));
    }
  std::vector<Params> p(n);
  for (std::size_t k = 0; k < n; ++k) p[k] = from_range(lo[k], hi[k], f);
  return p;
}

}  // namespace ref

// --- helpers ---------------------------------------------------------------------------------

std::string describe(const QuantLayout& l, const IntFormat& f) {
  const char* g = l.granularity == Granularity::tensor ? "tensor"
                  : l.granularity == Granularity::row  ? "row"
                                                       : "group";
  return std::string(g) +
         (l.granularity == Granularity::group ? std::to_string(l.group_size) : "") +
         " bits=" + std::to_string(f.bits) + (f.symmetric ? " sym" : " asym") +
         (f.divisor == IntFormat::Divisor::max_int ? " max_int" : " half_range");
}

std::vector<QuantLayout> all_layouts() {
  return {{Granularity::tensor, 0},
          {Granularity::row, 0},
          {Granularity::group, 4},
          {Granularity::group, 32}};
}

std::vector<IntFormat> all_formats() {
  std::vector<IntFormat> out;
  for (const int bits : {2, 3, 4, 6, 8})
    for (const bool sym : {true, false})
      for (const auto div : {IntFormat::Divisor::max_int, IntFormat::Divisor::half_range})
        out.push_back({.bits = bits, .symmetric = sym, .divisor = div});
  return out;
}

// rows x 64 with awkward rows: all zero, all positive, all negative, one outlier, then normal
// rows whose magnitudes span 1e-3 .. 1e3.
std::vector<float> awkward_matrix(Rng& rng, std::int64_t rows, std::int64_t cols) {
  std::vector<float> x(sz(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const double v = rng.normal() * std::pow(10.0, double(r % 7) - 3.0);
      float& e = x[sz(r * cols + c)];
      switch (r) {
        case 0:
          e = 0.0f;
          break;
        case 1:
          e = static_cast<float>(std::fabs(v) + 0.5);
          break;
        case 2:
          e = static_cast<float>(-std::fabs(v) - 0.25);
          break;
        case 3:
          e = static_cast<float>(c == 5 ? 40.0 : v);
          break;
        default:
          e = static_cast<float>(v);
      }
    }
  return x;
}

std::vector<float> fake_quantized(std::vector<float> x, std::int64_t rows, std::int64_t cols,
                                  const QuantLayout& l, const IntFormat& f,
                                  const std::vector<float>& s, const std::vector<std::int32_t>& z) {
  fake_quantize(x.data(), rows, cols, l, f, s.data(), z.data());
  return x;
}

double squared_error(const std::vector<float>& x, const std::vector<float>& xh) {
  double e = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) e += (double(x[i]) - xh[i]) * (double(x[i]) - xh[i]);
  return e;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// --- format and layout -----------------------------------------------------------------------

TEST(QuantFormat, RangesAndDivisors) {
  for (int bits = 2; bits <= 8; ++bits) {
    const IntFormat f{.bits = bits};
    EXPECT_EQ(f.qmin(), -(1 << (bits - 1))) << bits;
    EXPECT_EQ(f.qmax(), (1 << (bits - 1)) - 1) << bits;
  }
  EXPECT_EQ((IntFormat{.bits = 8}.symmetric_divisor()), 127.0f);
  EXPECT_EQ((IntFormat{.bits = 8, .divisor = IntFormat::Divisor::half_range}.symmetric_divisor()),
            127.5f);
  EXPECT_EQ((IntFormat{.bits = 4}.symmetric_divisor()), 7.0f);
  EXPECT_EQ((IntFormat{.bits = 4, .divisor = IntFormat::Divisor::half_range}.symmetric_divisor()),
            7.5f);
  EXPECT_EQ((IntFormat{.bits = 2}.symmetric_divisor()), 1.0f);
}

TEST(QuantLayoutTest, NumQparamsAndIndex) {
  EXPECT_EQ(num_qparams(5, 12, {Granularity::tensor, 0}), 1);
  EXPECT_EQ(num_qparams(5, 12, {Granularity::row, 0}), 5);
  EXPECT_EQ(num_qparams(5, 12, {Granularity::group, 4}), 15);
  EXPECT_EQ(num_qparams(5, 12, {Granularity::group, 12}), 5);
  EXPECT_EQ(num_qparams(0, 0, {Granularity::group, 4}), 0);
  const QuantLayout g4{Granularity::group, 4};
  EXPECT_EQ(qparam_index(0, 0, 12, g4), 0);
  EXPECT_EQ(qparam_index(0, 3, 12, g4), 0);
  EXPECT_EQ(qparam_index(0, 4, 12, g4), 1);
  EXPECT_EQ(qparam_index(2, 11, 12, g4), 2 * 3 + 2);
  EXPECT_EQ(qparam_index(2, 11, 12, {Granularity::row, 0}), 2);
  EXPECT_EQ(qparam_index(2, 11, 12, {Granularity::tensor, 0}), 0);
}

// --- hand-computed cases ---------------------------------------------------------------------

TEST(QuantHand, SymmetricEightBitScale) {
  const float lo = -3.0f, hi = 12.7f;
  float s = 0.0f;
  std::int32_t z = 99;
  qparams_from_range(&lo, &hi, 1, {.bits = 8}, &s, &z);
  // 12.7f / 127 = 0.09999999850..., nearer to 0.1f (0.10000000149) than to the float below it.
  EXPECT_EQ(s, 0.1f);
  EXPECT_EQ(z, 0);
  const float nlo = -12.7f, nhi = 1.0f;  // absmax from the negative side
  qparams_from_range(&nlo, &nhi, 1, {.bits = 8}, &s, &z);
  EXPECT_EQ(s, 0.1f);
  qparams_from_range(&lo, &hi, 1, {.bits = 8, .divisor = IntFormat::Divisor::half_range}, &s, &z);
  // The correctly rounded float of 12.7f / 127.5: within half an ulp of the exact quotient.
  const double want = double(12.7f) / 127.5;
  EXPECT_LE(std::fabs(s - want), 0.5 * (std::nextafter(s, 1.0f) - s));
  EXPECT_EQ(z, 0);
  // Symmetric zero point may be omitted.
  EXPECT_NO_THROW(qparams_from_range(&lo, &hi, 1, {.bits = 8}, &s, nullptr));
}

TEST(QuantHand, RoundsHalfToEven) {
  // scale 0.5: x / scale is exact, so these are exact .5 ties.
  const float s = 0.5f;
  const std::int32_t qn = -128, qx = 127;
  EXPECT_EQ(quantize_value(1.25f, s, 0, qn, qx), 2);    // 2.5 -> 2
  EXPECT_EQ(quantize_value(1.75f, s, 0, qn, qx), 4);    // 3.5 -> 4
  EXPECT_EQ(quantize_value(-1.25f, s, 0, qn, qx), -2);  // -2.5 -> -2
  EXPECT_EQ(quantize_value(-1.75f, s, 0, qn, qx), -4);  // -3.5 -> -4
  EXPECT_EQ(quantize_value(0.25f, s, 0, qn, qx), 0);    // 0.5 -> 0
  EXPECT_EQ(quantize_value(-0.25f, s, 0, qn, qx), 0);   // -0.5 -> -0 -> 0
  EXPECT_EQ(quantize_value(0.75f, s, 0, qn, qx), 2);    // 1.5 -> 2
  // The zero point is added after rounding: 2.5 -> 2, + 3 = 5.
  EXPECT_EQ(quantize_value(1.25f, s, 3, qn, qx), 5);
  // Just off the tie rounds to nearest.
  EXPECT_EQ(quantize_value(std::nextafter(1.25f, 2.0f), s, 0, qn, qx), 3);
  // Through the bulk path too.
  const std::vector<float> x = {1.25f, 1.75f, -1.25f, -1.75f};
  std::vector<std::int8_t> q(4);
  quantize(x.data(), 1, 4, {Granularity::tensor, 0}, {.bits = 8}, &s, nullptr, q.data());
  EXPECT_EQ(q, (std::vector<std::int8_t>{2, 4, -2, -4}));
}

TEST(QuantHand, RoundHalfEvenEqualsNearbyint) {
  // The kernels round with an add-and-subtract trick; it must agree with std::nearbyint (default
  // FE_TONEAREST) everywhere quantize_value uses it, |v| <= 512: every multiple of 2^-12 there
  // (all .5 ties included) and the floats just either side of each tie.
  int bad = 0;
  for (std::int64_t k = -512 * 4096; k <= 512 * 4096; ++k) {
    const float v = std::ldexp(float(k), -12);
    const float vs[3] = {v, std::nextafter(v, -1e9f), std::nextafter(v, 1e9f)};
    for (const float w : vs)
      if (round_half_even(w) != std::nearbyint(w) && bad++ < 5)
        ADD_FAILURE() << "v=" << w << " got " << round_half_even(w) << " want "
                      << std::nearbyint(w);
  }
  EXPECT_EQ(bad, 0);
  EXPECT_TRUE(std::signbit(round_half_even(-0.25f)) || round_half_even(-0.25f) == 0.0f);
}

TEST(QuantHand, ClampsAndSurvivesNonFinite) {
  const float s = 0.1f;
  EXPECT_EQ(quantize_value(100.0f, s, 0, -128, 127), 127);
  EXPECT_EQ(quantize_value(-100.0f, s, 0, -128, 127), -128);
  EXPECT_EQ(quantize_value(12.8f, s, 0, -128, 127), 127);    // 128 -> 127
  EXPECT_EQ(quantize_value(-12.8f, s, 0, -128, 127), -128);  // exactly representable low end
  EXPECT_EQ(quantize_value(0.75f, s, 0, -8, 7), 7);          // 7.5 -> 8 -> 7 at 4 bits
  EXPECT_EQ(quantize_value(0.75f, s, -3, -8, 7), 5);         // zp shifts before the clamp
  EXPECT_EQ(quantize_value(0.75f, s, 3, -8, 7), 7);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(quantize_value(inf, s, 0, -128, 127), 127);
  EXPECT_EQ(quantize_value(-inf, s, 0, -128, 127), -128);
  EXPECT_EQ(quantize_value(3e38f, 1e-30f, 0, -128, 127), 127);  // quotient overflows to inf
  EXPECT_EQ(quantize_value(nan, s, 0, -128, 127), 0);           // NaN -> zero point
  EXPECT_EQ(quantize_value(nan, s, -5, -8, 7), -5);
  EXPECT_EQ(quantize_value(-0.0f, s, 0, -128, 127), 0);
  EXPECT_EQ(dequantize_value(quantize_value(nan, s, -5, -8, 7), s, -5), 0.0f);
}

TEST(QuantHand, AsymmetricFourBit) {
  // lo = -1, hi = 3, 4 bits: scale = 4 / 15, zp = round(-8 - (-1) / (4/15)) = round(-4.25) = -4.
  const float lo = -1.0f, hi = 3.0f;
  float s = 0.0f;
  std::int32_t z = 0;
  qparams_from_range(&lo, &hi, 1, {.bits = 4, .symmetric = false}, &s, &z);
  EXPECT_EQ(s, 4.0f / 15.0f);
  EXPECT_EQ(z, -4);
  const std::vector<float> x = {-1.0f, 0.0f, 3.0f, 1.0f, -2.0f, 5.0f};
  std::vector<std::int8_t> q(x.size());
  quantize(x.data(), 1, 6, {Granularity::tensor, 0}, {.bits = 4, .symmetric = false}, &s, &z,
           q.data());
  // -1/s = -3.75 -> -4, -4 + -4 = -8; 0 -> zp; 3/s = 11.25 -> 11 - 4 = 7; 1/s = 3.75 -> 4 - 4 = 0;
  // -2 and 5 lie outside the range and clamp.
  EXPECT_EQ(q, (std::vector<std::int8_t>{-8, -4, 7, 0, -8, 7}));
  std::vector<float> xh(x.size());
  dequantize(q.data(), 1, 6, {Granularity::tensor, 0}, &s, &z, xh.data());
  EXPECT_EQ(xh[1], 0.0f);  // zero is exact: the reason for widening and an integer zp
  EXPECT_EQ(xh[0], -4.0f * s);
  EXPECT_EQ(xh[2], 11.0f * s);
}

TEST(QuantHand, AsymmetricRangeWidenedToIncludeZero) {
  // lo = 2, hi = 6 -> [0, 6]: scale = 6 / 15 = 0.4, zp = -8 (0 maps to qmin).
  const float lo = 2.0f, hi = 6.0f;
  float s = 0.0f;
  std::int32_t z = 0;
  qparams_from_range(&lo, &hi, 1, {.bits = 4, .symmetric = false}, &s, &z);
  EXPECT_EQ(s, 6.0f / 15.0f);
  EXPECT_EQ(z, -8);
  EXPECT_EQ(quantize_value(0.0f, s, z, -8, 7), -8);
  EXPECT_EQ(quantize_value(6.0f, s, z, -8, 7), 7);
  EXPECT_EQ(quantize_value(2.0f, s, z, -8, 7), -3);  // 2 / 0.4f = 4.99999993 rounds to 5.0f
  // All-negative: [-6, -2] -> [-6, 0], zp = round(-8 + 15) = 7 (0 maps to qmax).
  const float nlo = -6.0f, nhi = -2.0f;
  qparams_from_range(&nlo, &nhi, 1, {.bits = 4, .symmetric = false}, &s, &z);
  EXPECT_EQ(s, 6.0f / 15.0f);
  EXPECT_EQ(z, 7);
}

TEST(QuantHand, ZeroSliceGetsMinScale) {
  std::vector<float> x(8, 0.0f);
  x[3] = -0.0f;
  for (const bool sym : {true, false}) {
    const IntFormat f{.bits = 8, .symmetric = sym};
    float s = 0.0f;
    std::int32_t z = 1;
    qparams_minmax(x.data(), 1, 8, {Granularity::row, 0}, f, &s, &z);
    EXPECT_EQ(s, kMinScale);
    EXPECT_EQ(z, sym ? 0 : -128);  // asymmetric: qmin - 0 / eps
    auto y = x;
    fake_quantize(y.data(), 1, 8, {Granularity::row, 0}, f, &s, &z);
    for (const float v : y) EXPECT_EQ(v, 0.0f);
    fake_quantize_dynamic(y.data(), 1, 8, {Granularity::row, 0}, f);
    for (const float v : y) EXPECT_EQ(v, 0.0f);
  }
}

TEST(QuantHand, NanIsSkippedByObserversAndBecomesZero) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {1.0f, nan, -12.7f, 3.0f};
  float s = 0.0f;
  std::int32_t z = 0;
  qparams_minmax(x.data(), 1, 4, {Granularity::row, 0}, {.bits = 8}, &s, &z);
  EXPECT_EQ(s, 0.1f);
  qparams_mse(x.data(), 1, 4, {Granularity::row, 0}, {.bits = 8}, 20, 0.5, &s, &z);
  EXPECT_TRUE(std::isfinite(s) && s > 0.0f);
  fake_quantize_dynamic(x.data(), 1, 4, {Granularity::row, 0}, {.bits = 8, .symmetric = false});
  EXPECT_EQ(x[1], 0.0f);
  for (const float v : x) EXPECT_TRUE(std::isfinite(v));
}

// --- against the reference ------------------------------------------------------------------

TEST(QuantReference, MatchesDoubleReferenceEverywhere) {
  const std::int64_t rows = 9, cols = 64;
  Rng rng(7);
  const auto x = awkward_matrix(rng, rows, cols);
  for (const auto& l : all_layouts())
    for (const auto& f : all_formats()) {
      const std::string what = describe(l, f);
      const auto n = sz(num_qparams(rows, cols, l));
      std::vector<float> s(n);
      std::vector<std::int32_t> z(n, 12345);
      qparams_minmax(x.data(), rows, cols, l, f, s.data(), z.data());
      const auto p = ref::minmax(x, rows, cols, l, f);
      ASSERT_EQ(p.size(), n) << what;
      // Parameters: the same float operations, so bit-identical.
      for (std::size_t k = 0; k < n; ++k) {
        EXPECT_EQ(s[k], p[k].scale) << what << " slice " << k;
        EXPECT_EQ(z[k], p[k].zp) << what << " slice " << k;
      }
      // Static path: the same parameters from the explicit range.
      {
        std::vector<float> lo(n), hi(n), s2(n);
        std::vector<std::int32_t> z2(n);
        for (std::size_t k = 0; k < n; ++k) {
          lo[k] = std::numeric_limits<float>::infinity();
          hi[k] = -lo[k];
        }
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t c = 0; c < cols; ++c) {
            const auto k = sz(ref::slice(r, c, rows, cols, l));
            lo[k] = std::min(lo[k], x[sz(r * cols + c)]);
            hi[k] = std::max(hi[k], x[sz(r * cols + c)]);
          }
        qparams_from_range(lo.data(), hi.data(), std::int64_t(n), f, s2.data(), z2.data());
        EXPECT_TRUE(same_bits(s, s2)) << what;
        EXPECT_EQ(z, z2) << what;
      }
      std::vector<std::int8_t> q(x.size());
      quantize(x.data(), rows, cols, l, f, s.data(), z.data(), q.data());
      std::vector<float> xh(x.size());
      dequantize(q.data(), rows, cols, l, s.data(), z.data(), xh.data());
      int bad = 0;
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = sz(r * cols + c);
          const auto& pk = p[sz(ref::slice(r, c, rows, cols, l))];
          const std::int32_t want_q = ref::quantize(x[i], pk, f.bits);
          // Integers: identical.
          if (q[i] != want_q && bad++ < 5)
            ADD_FAILURE() << what << " q at (" << r << ", " << c << ") x=" << x[i] << " got "
                          << int(q[i]) << " want " << want_q;
          // Dequantized: the exact product rounded once, so within half an ulp (the brief asks
          // 1 ulp; one rounding of exact operands guarantees this tighter bound).
          const double exact = ref::dequantize(want_q, pk);
          const float f_exact = static_cast<float>(exact);
          const double half_ulp =
              0.5 * (std::nextafter(std::fabs(f_exact), 3e38f) - std::fabs(f_exact));
          if (!(std::fabs(double(xh[i]) - exact) <= half_ulp) && bad++ < 5)
            ADD_FAILURE() << what << " x_hat at (" << r << ", " << c << ") got " << xh[i]
                          << " want " << exact;
        }
      EXPECT_EQ(bad, 0) << what;
    }
}

// --- fake quantization -----------------------------------------------------------------------

TEST(QuantFake, EqualsQuantizeThenDequantizeBitwise) {
  const std::int64_t rows = 9, cols = 64;
  Rng rng(11);
  const auto x = awkward_matrix(rng, rows, cols);
  for (const auto& l : all_layouts())
    for (const auto& f : all_formats()) {
      const auto n = sz(num_qparams(rows, cols, l));
      std::vector<float> s(n);
      std::vector<std::int32_t> z(n);
      qparams_minmax(x.data(), rows, cols, l, f, s.data(), z.data());
      std::vector<std::int8_t> q(x.size());
      std::vector<float> two_step(x.size());
      quantize(x.data(), rows, cols, l, f, s.data(), z.data(), q.data());
      dequantize(q.data(), rows, cols, l, s.data(), z.data(), two_step.data());
      EXPECT_TRUE(same_bits(fake_quantized(x, rows, cols, l, f, s, z), two_step)) << describe(l, f);
    }
}

TEST(QuantFake, DynamicMatchesParamsComputedByHand) {
  const std::int64_t rows = 9, cols = 64;
  Rng rng(13);
  const auto x = awkward_matrix(rng, rows, cols);
  for (const auto& l : all_layouts())
    for (const auto& f : all_formats()) {
      auto got = x;
      fake_quantize_dynamic(got.data(), rows, cols, l, f);
      // By hand: the reference min-max parameters per slice, then the reference rounding.
      const auto p = ref::minmax(x, rows, cols, l, f);
      std::vector<float> want(x.size());
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = sz(r * cols + c);
          const auto& pk = p[sz(ref::slice(r, c, rows, cols, l))];
          want[i] = static_cast<float>(ref::dequantize(ref::quantize(x[i], pk, f.bits), pk));
        }
      EXPECT_TRUE(same_bits(got, want)) << describe(l, f);
    }
}

TEST(QuantFake, StaticFakeQuantIsIdempotent) {
  // x_hat / scale is within 2u * 128 of the integer q - zp, far from a .5 tie, so the second
  // pass picks the same integers and reproduces x_hat bit for bit.
  const std::int64_t rows = 9, cols = 64;
  Rng rng(17);
  const auto x = awkward_matrix(rng, rows, cols);
  for (const auto& l : all_layouts())
    for (const auto& f : all_formats()) {
      const auto n = sz(num_qparams(rows, cols, l));
      std::vector<float> s(n);
      std::vector<std::int32_t> z(n);
      qparams_minmax(x.data(), rows, cols, l, f, s.data(), z.data());
      const auto once = fake_quantized(x, rows, cols, l, f, s, z);
      const auto twice = fake_quantized(once, rows, cols, l, f, s, z);
      EXPECT_TRUE(same_bits(once, twice)) << describe(l, f);
    }
}

TEST(QuantFake, ErrorAtMostHalfScaleInsideRange) {
  const std::int64_t rows = 9, cols = 64;
  Rng rng(19);
  const auto x = awkward_matrix(rng, rows, cols);
  for (const auto& l : all_layouts())
    for (const auto& f : all_formats()) {
      const auto n = sz(num_qparams(rows, cols, l));
      std::vector<float> s(n);
      std::vector<std::int32_t> z(n);
      qparams_minmax(x.data(), rows, cols, l, f, s.data(), z.data());
      const auto xh = fake_quantized(x, rows, cols, l, f, s, z);
      int bad = 0, inside = 0;
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = sz(r * cols + c);
          const auto k = sz(qparam_index(r, c, cols, l));
          const double sk = s[k];
          const double lo = double(f.qmin() - z[k]) * sk, hi = double(f.qmax() - z[k]) * sk;
          if (!(x[i] >= lo && x[i] <= hi)) continue;  // clipped values may err by more
          ++inside;
          // Exact arithmetic gives |x - x_hat| <= s/2. Float: x / s is off by <= |x/s| u
          // (|x/s| <= 256 here) and x_hat carries one more rounding, u |x_hat|.
          const double tol = sk * (0.5 + 256 * kU) + std::fabs(double(xh[i])) * kU;
          if (!(std::fabs(double(x[i]) - xh[i]) <= tol) && bad++ < 5)
            ADD_FAILURE() << describe(l, f) << " at (" << r << ", " << c << ") x=" << x[i]
                          << " x_hat=" << xh[i] << " scale=" << sk;
        }
      EXPECT_EQ(bad, 0) << describe(l, f);
      // Min-max parameters put (nearly) everything inside; guard against a vacuous pass.
      EXPECT_GT(inside, rows * cols / 2) << describe(l, f);
    }
}

// --- MSE clipping search ---------------------------------------------------------------------

TEST(QuantMse, NeverWorseThanMinMax) {
  const std::int64_t rows = 9, cols = 64;
  Rng rng(23);
  const auto x = awkward_matrix(rng, rows, cols);
  for (const auto& l : all_layouts())
    for (const auto& f : all_formats()) {
      const auto n = sz(num_qparams(rows, cols, l));
      std::vector<float> s_mm(n), s_mse(n);
      std::vector<std::int32_t> z_mm(n), z_mse(n);
      qparams_minmax(x.data(), rows, cols, l, f, s_mm.data(), z_mm.data());
      qparams_mse(x.data(), rows, cols, l, f, 50, 0.8, s_mse.data(), z_mse.data());
      // Per slice: the search includes a = 1 (the min-max parameters) and keeps the minimum.
      // The sums here add the same terms in possibly another order: relative differences up to
      // n * 2^-53 (n = 64 * 9 terms at most), hence the 1e-12 slack.
      const auto e_mm = fake_quantized(x, rows, cols, l, f, s_mm, z_mm);
      const auto e_mse = fake_quantized(x, rows, cols, l, f, s_mse, z_mse);
      std::vector<double> err_mm(n, 0.0), err_mse(n, 0.0);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
          const auto i = sz(r * cols + c);
          const auto k = sz(qparam_index(r, c, cols, l));
          err_mm[k] += (double(x[i]) - e_mm[i]) * (double(x[i]) - e_mm[i]);
          err_mse[k] += (double(x[i]) - e_mse[i]) * (double(x[i]) - e_mse[i]);
        }
      for (std::size_t k = 0; k < n; ++k)
        EXPECT_LE(err_mse[k], err_mm[k] * (1.0 + 1e-12)) << describe(l, f) << " slice " << k;
      EXPECT_LE(squared_error(x, e_mse), squared_error(x, e_mm) * (1.0 + 1e-12)) << describe(l, f);
    }
}

TEST(QuantMse, StrictlyBetterWithAnOutlier) {
  // One row of 1023 values uniform in [-1, 1] plus one outlier at 6, 4 bits. Symmetric min-max
  // spends the grid on the outlier (scale 6/7: the bulk rounds to 0 or +-0.86, error ~0.05
  // each); clipping it near 2 costs ~16 on the outlier but cuts the 1023 others to ~0.008 each
  // (about 54 -> 22 here). Asymmetric shrinks lo too, clipping the negative tail, so its gain is
  // smaller (about 17 -> 14). Demand 10% so that the gain is real, not rounding noise.
  const std::int64_t cols = 1024;
  Rng rng(29);
  std::vector<float> x(sz(cols));
  for (auto& v : x) v = static_cast<float>(2.0 * rng.uniform() - 1.0);
  x[100] = 6.0f;
  for (const bool sym : {true, false}) {
    const IntFormat f{.bits = 4, .symmetric = sym};
    const QuantLayout l{Granularity::row, 0};
    std::vector<float> s_mm(1), s_mse(1);
    std::vector<std::int32_t> z_mm(1), z_mse(1);
    qparams_minmax(x.data(), 1, cols, l, f, s_mm.data(), z_mm.data());
    qparams_mse(x.data(), 1, cols, l, f, 100, 0.8, s_mse.data(), z_mse.data());
    const double e_mm = squared_error(x, fake_quantized(x, 1, cols, l, f, s_mm, z_mm));
    const double e_mse = squared_error(x, fake_quantized(x, 1, cols, l, f, s_mse, z_mse));
    EXPECT_LT(e_mse, 0.9 * e_mm) << (sym ? "sym" : "asym");
    EXPECT_LT(s_mse[0], s_mm[0]) << (sym ? "sym" : "asym");  // it got there by clipping
  }
}

TEST(QuantMse, KeepsFullRangeWhenGridIsExact) {
  // Symmetric 4-bit: values k * 0.5, k = -7..7: min-max scale 3.5 / 7 = 0.5 represents every
  // value exactly (error 0); any a < 1 clips +-3.5, so a = 1 must win.
  std::vector<float> x;
  for (int rep = 0; rep < 3; ++rep)
    for (int k = -7; k <= 7; ++k) x.push_back(0.5f * float(k));
  const auto n = std::int64_t(x.size());
  float s = 0.0f;
  std::int32_t z = 0;
  qparams_mse(x.data(), 1, n, {Granularity::row, 0}, {.bits = 4}, 100, 0.8, &s, &z);
  EXPECT_EQ(s, 0.5f);
  EXPECT_EQ(z, 0);
  // Asymmetric 4-bit: k * 0.25, k = -3..12: range [-0.75, 3], scale 3.75 / 15 = 0.25,
  // zp = round(-8 + 3) = -5, all exact.
  std::vector<float> y;
  for (int k = -3; k <= 12; ++k) y.push_back(0.25f * float(k));
  const IntFormat fa{.bits = 4, .symmetric = false};
  qparams_mse(y.data(), 1, std::int64_t(y.size()), {Granularity::row, 0}, fa, 100, 0.8, &s, &z);
  EXPECT_EQ(s, 0.25f);
  EXPECT_EQ(z, -5);
  std::vector<float> yh = y;
  fake_quantize(yh.data(), 1, std::int64_t(y.size()), {Granularity::row, 0}, fa, &s, &z);
  EXPECT_EQ(yh, y);
}

TEST(QuantMse, TiesKeepTheLargerFactor) {
  // 2-bit symmetric, max_int divisor 1 (levels -2..1 times scale), x = {-1, 0.25}; grid 2,
  // max_shrink 0.5 tries a = 1, 0.75, 0.5:
  //   a = 1:    scale 1,    -1 -> -1 exact, 0.25 -> 0        error 0.0625
  //   a = 0.75: scale 0.75, -1 -> -0.75,    0.25 -> 0        error 0.125
  //   a = 0.5:  scale 0.5,  -1 -> -2 * 0.5 exact, 0.25 / 0.5 = 0.5 -> 0 (even)  error 0.0625
  // a = 1 and a = 0.5 tie exactly (all values are dyadic); the larger a must win.
  const std::vector<float> x = {-1.0f, 0.25f};
  float s = 0.0f;
  std::int32_t z = 0;
  qparams_mse(x.data(), 1, 2, {Granularity::row, 0}, {.bits = 2}, 2, 0.5, &s, &z);
  EXPECT_EQ(s, 1.0f);
  // Control: with x = {-1, 0.5}, a = 0.5 is exact (error 0) while a = 1 rounds 0.5 to 0, so the
  // smaller factor wins when it is strictly better.
  const std::vector<float> y = {-1.0f, 0.5f};
  qparams_mse(y.data(), 1, 2, {Granularity::row, 0}, {.bits = 2}, 2, 0.5, &s, &z);
  EXPECT_EQ(s, 0.5f);
}

// --- packing ---------------------------------------------------------------------------------

TEST(QuantPack, RoundTripAllBitsAndOddColumns) {
  Rng rng(31);
  for (int bits = 2; bits <= 8; ++bits)
    for (const std::int64_t cols : {1, 19, 111}) {
      const std::int64_t rows = 3;
      const std::int32_t lo = -(1 << (bits - 1)), span = 1 << bits;
      std::vector<std::int8_t> q(sz(rows * cols));
      for (auto& v : q) v = static_cast<std::int8_t>(lo + std::int32_t(rng.below(sz(span))));
      q[0] = static_cast<std::int8_t>(lo);  // both ends of the range
      q[1 % q.size()] = static_cast<std::int8_t>(lo + span - 1);
      const std::int64_t words = packed_words(cols, bits);
      EXPECT_EQ(words, (cols * bits + 31) / 32);
      std::vector<std::int32_t> packed(sz(rows * words), -1);  // -1: packing must clear padding
      pack_quantized(q.data(), rows, cols, bits, packed.data());
      std::vector<std::int8_t> back(q.size(), 99);
      unpack_quantized(packed.data(), rows, cols, bits, back.data());
      EXPECT_EQ(back, q) << "bits " << bits << " cols " << cols;
      // Padding bits past cols * b in the last word of each row are zero.
      const std::int64_t used = cols * bits - (words - 1) * 32;
      for (std::int64_t r = 0; r < rows; ++r) {
        const auto last = std::bit_cast<std::uint32_t>(packed[sz(r * words + words - 1)]);
        if (used < 32) {
          EXPECT_EQ(last >> used, 0u) << "bits " << bits << " cols " << cols;
        }
      }
    }
}

TEST(QuantPack, BitLayoutByHand) {
  // 4 bits: stored q + 8 = [0, 15, 8, 9, 7, 10, 5, 12 | 13], element i in nibble i, least
  // significant first: word 0 reads (most significant nibble first) C 5 A 7 9 8 F 0.
  const std::vector<std::int8_t> q4 = {-8, 7, 0, 1, -1, 2, -3, 4, 5};
  std::vector<std::int32_t> p4(2);
  pack_quantized(q4.data(), 1, 9, 4, p4.data());
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p4[0]), 0xC5A798F0u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p4[1]), 0xDu);
  // 8 bits, compressed-tensors' own docstring example: [1, 2] -> [129, 130] -> 33409.
  const std::vector<std::int8_t> q8 = {1, 2};
  std::int32_t p8 = 0;
  pack_quantized(q8.data(), 1, 2, 8, &p8);
  EXPECT_EQ(p8, 33409);
  // 3 bits, 11 values: element 10 starts at bit 30 and straddles: its low two bits are bits
  // 30-31 of word 0, its high bit is bit 0 of word 1. All others store 0 (q = -4).
  std::vector<std::int8_t> q3(11, -4);
  q3[10] = 3;  // stored 7 = 0b111
  std::vector<std::int32_t> p3(2);
  pack_quantized(q3.data(), 1, 11, 3, p3.data());
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p3[0]), 0xC0000000u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p3[1]), 0x1u);
  q3[10] = 1;  // stored 5 = 0b101: low bits 01 in word 0, high bit 1 in word 1
  pack_quantized(q3.data(), 1, 11, 3, p3.data());
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p3[0]), 0x40000000u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p3[1]), 0x1u);
  std::vector<std::int8_t> back(11);
  unpack_quantized(p3.data(), 1, 11, 3, back.data());
  EXPECT_EQ(back, q3);
}

// --- errors ----------------------------------------------------------------------------------

TEST(QuantErrors, BitsOutsideTwoToEightThrow) {
  const float x[4] = {1, 2, 3, 4};
  float s = 1.0f;
  std::int32_t z = 0;
  std::int8_t q[4] = {};
  std::int32_t packed[4] = {};
  for (const int bits : {1, 9, 0, -3, 32}) {
    const IntFormat f{.bits = bits};
    EXPECT_THROW((void)f.qmin(), sq::Error) << bits;
    EXPECT_THROW((void)f.qmax(), sq::Error) << bits;
    EXPECT_THROW(qparams_from_range(x, x + 1, 1, f, &s, &z), sq::Error) << bits;
    EXPECT_THROW(qparams_minmax(x, 1, 4, {}, f, &s, &z), sq::Error) << bits;
    EXPECT_THROW(qparams_mse(x, 1, 4, {}, f, 10, 0.5, &s, &z), sq::Error) << bits;
    EXPECT_THROW(quantize(x, 1, 4, {}, f, &s, &z, q), sq::Error) << bits;
    float y[4] = {1, 2, 3, 4};
    EXPECT_THROW(fake_quantize(y, 1, 4, {}, f, &s, &z), sq::Error) << bits;
    EXPECT_THROW(fake_quantize_dynamic(y, 1, 4, {}, f), sq::Error) << bits;
    EXPECT_THROW(pack_quantized(q, 1, 4, bits, packed), sq::Error) << bits;
    EXPECT_THROW(unpack_quantized(packed, 1, 4, bits, q), sq::Error) << bits;
    EXPECT_THROW((void)packed_words(4, bits), sq::Error) << bits;
  }
}

TEST(QuantErrors, BadLayoutAndArgumentsThrow) {
  std::vector<float> x(2 * 12, 1.0f);
  std::vector<float> s(8, 1.0f);
  std::vector<std::int32_t> z(8, 0);
  std::vector<std::int8_t> q(x.size());
  const QuantLayout g5{Granularity::group, 5};
  EXPECT_THROW((void)num_qparams(2, 12, g5), sq::Error);
  EXPECT_THROW((void)num_qparams(2, 12, {Granularity::group, 0}), sq::Error);
  EXPECT_THROW((void)num_qparams(-1, 12, {Granularity::row, 0}), sq::Error);
  EXPECT_THROW(qparams_minmax(x.data(), 2, 12, g5, {}, s.data(), z.data()), sq::Error);
  EXPECT_THROW(quantize(x.data(), 2, 12, g5, {}, s.data(), z.data(), q.data()), sq::Error);
  EXPECT_THROW(dequantize(q.data(), 2, 12, g5, s.data(), z.data(), x.data()), sq::Error);
  EXPECT_THROW(fake_quantize_dynamic(x.data(), 2, 12, g5, {}), sq::Error);
  // Asymmetric parameters need somewhere to put the zero point.
  const IntFormat asym{.bits = 8, .symmetric = false};
  EXPECT_THROW(qparams_minmax(x.data(), 2, 12, {}, asym, s.data(), nullptr), sq::Error);
  // MSE search arguments.
  EXPECT_THROW(qparams_mse(x.data(), 2, 12, {}, {}, -1, 0.5, s.data(), z.data()), sq::Error);
  EXPECT_THROW(qparams_mse(x.data(), 2, 12, {}, {}, 10, 1.5, s.data(), z.data()), sq::Error);
  // A value that does not fit the packed width.
  const std::int8_t big[2] = {8, 0};
  std::int32_t packed = 0;
  EXPECT_THROW(pack_quantized(big, 1, 2, 4, &packed), sq::Error);
  const std::int8_t low[2] = {0, -9};
  EXPECT_THROW(pack_quantized(low, 1, 2, 4, &packed), sq::Error);
}

}  // namespace
}  // namespace sq::cpu
