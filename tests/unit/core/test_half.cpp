// Tests for core/half.h (float32 <-> IEEE half / bfloat16). Every result is compared bit-exactly
// with a reference that shares no code with the library: the x86 F16C instructions (skipped on
// CPUs without them), values built with std::ldexp, and a bfloat16 rounding written here with
// exact double arithmetic. Inputs: all 65536 16-bit patterns, every tie, its neighbours, the
// overflow and underflow edges, and 10 million random float32 bit patterns from sq::Rng.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "core/half.h"
#include "core/random.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SQ_TEST_HAVE_X86 1
#else
#define SQ_TEST_HAVE_X86 0
#endif

namespace sq {
namespace {

constexpr std::size_t kRandomPatterns = 10'000'000;

// --- Hardware reference (F16C) ---------------------------------------------------------------

#if SQ_TEST_HAVE_X86
bool have_f16c() { return __builtin_cpu_supports("f16c"); }
__attribute__((target("f16c"))) float hw_f16_to_f32(std::uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) std::uint16_t hw_f32_to_f16(float f) {
  return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
#else
bool have_f16c() { return false; }
float hw_f16_to_f32(std::uint16_t) { return 0.0f; }
std::uint16_t hw_f32_to_f16(float) { return 0; }
#endif

#define SQ_REQUIRE_F16C() \
  if (!have_f16c()) GTEST_SKIP() << "CPU has no F16C instructions to compare with"

std::string hex(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

// --- Independent software references ---------------------------------------------------------

bool f16_is_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7F80u) == 0x7F80u && (b & 0x7Fu) != 0; }

// The value of a finite (or infinite) half from its fields, by ldexp; 0x7C00 reads as 2^16, the
// value IEEE rounding uses for "one ulp above the largest finite half" (it is also +Inf).
double f16_value(std::uint16_t h) {
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  const double mag = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return (h & 0x8000u) ? -mag : mag;
}

// Round-to-nearest-even float -> bfloat16 by exact arithmetic: the two bfloat16 neighbours are
// "truncate" and "truncate + 1 ulp" (sign-magnitude), the nearer wins, a tie goes to the even
// mantissa. One ulp above the largest finite bfloat16 is 2^128, which is what makes values at or
// beyond the midpoint between them round to infinity.
std::uint16_t ref_f32_to_bf16(float x) {
  const std::uint32_t u = float_bits(x);
  const auto lo = static_cast<std::uint16_t>(u >> 16);
  if (std::isinf(x)) return lo;
  const auto hi = static_cast<std::uint16_t>(lo + 1);
  const double vlo = std::fabs(static_cast<double>(bits_float(std::uint32_t(lo) << 16)));
  const double vhi = (hi & 0x7FFFu) == 0x7F80u
                         ? std::ldexp(1.0, 128)
                         : std::fabs(static_cast<double>(bits_float(std::uint32_t(hi) << 16)));
  const double ax = std::fabs(static_cast<double>(x));
  const double dlo = ax - vlo, dhi = vhi - ax;  // both exact in double
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1u) == 0 ? lo : hi;
}

// Checks one float -> half conversion against F16C (NaN: only NaN-ness and sign are compared).
::testing::AssertionResult matches_hw_f16(float x) {
  const std::uint16_t got = f32_to_f16(x), want = hw_f32_to_f16(x);
  if (std::isnan(x)) {
    if (f16_is_nan(got) && (got & 0x8000u) == (want & 0x8000u))
      return ::testing::AssertionSuccess();
  } else if (got == want) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "f32_to_f16(" << hex(float_bits(x)) << " = " << x
                                       << ") = " << hex(got) << ", F16C gives " << hex(want);
}

::testing::AssertionResult matches_ref_bf16(float x) {
  const std::uint16_t got = f32_to_bf16(x);
  if (std::isnan(x)) {
    const bool ok = bf16_is_nan(got) && (got & 0x0040u) != 0 &&  // NaN, quiet bit set
                    (got & 0x8000u) == ((float_bits(x) >> 16) & 0x8000u);
    if (ok) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "f32_to_bf16(NaN " << hex(float_bits(x)) << ") = " << hex(got)
           << " is not a quiet NaN of that sign";
  }
  const std::uint16_t want = ref_f32_to_bf16(x);
  if (got == want) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "f32_to_bf16(" << hex(float_bits(x)) << " = " << x << ") = " << hex(got)
         << ", exact rounding gives " << hex(want);
}

// Stops a loop after the first few failures so a broken conversion does not print 65536 lines.
#define SQ_EXPECT_FEW(cond, failures)  \
  do {                                 \
    if (failures < 10) {               \
      const auto r_ = (cond);          \
      if (!r_) {                       \
        ++failures;                    \
        ADD_FAILURE() << r_.message(); \
      }                                \
    }                                  \
  } while (0)

// --- half -> float ---------------------------------------------------------------------------

TEST(HalfToFloat, AllPatternsMatchF16CForNonNaN) {
  SQ_REQUIRE_F16C();
  int failures = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<std::uint16_t>(h);
    if (f16_is_nan(hb)) continue;  // NaNs: see the NaN tests below
    const std::uint32_t got = float_bits(f16_to_f32(hb)), want = float_bits(hw_f16_to_f32(hb));
    if (got != want && failures++ < 10)
      ADD_FAILURE() << "f16_to_f32(" << hex(h) << ") = " << hex(got) << ", F16C " << hex(want);
  }
  EXPECT_EQ(failures, 0);
}

TEST(HalfToFloat, AllPatternsMatchLdexpValue) {
  // Same property without the hardware: every non-NaN half reads as its exact value.
  int failures = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<std::uint16_t>(h);
    if (f16_is_nan(hb)) continue;
    const float got = f16_to_f32(hb);
    const bool is_inf = (h & 0x7FFFu) == 0x7C00u;
    const double want = is_inf ? ((h & 0x8000u) ? -INFINITY : INFINITY) : f16_value(hb);
    const bool sign_ok = std::signbit(got) == ((h & 0x8000u) != 0);  // -0 must stay -0
    if ((static_cast<double>(got) != want || !sign_ok) && failures++ < 10)
      ADD_FAILURE() << "f16_to_f32(" << hex(h) << ") = " << got << ", exact value " << want;
  }
  EXPECT_EQ(failures, 0);
}

TEST(HalfToFloat, NaNKeepsSignAndPayload) {
  SQ_REQUIRE_F16C();
  int failures = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<std::uint16_t>(h);
    if (!f16_is_nan(hb)) continue;
    const std::uint32_t got = float_bits(f16_to_f32(hb)), want = float_bits(hw_f16_to_f32(hb));
    // F16C quiets the NaN (sets bit 22); everything else (sign, payload) must match it.
    const bool ok = std::isnan(bits_float(got)) && (got | 0x00400000u) == want;
    if (!ok && failures++ < 10)
      ADD_FAILURE() << "f16_to_f32(NaN " << hex(h) << ") = " << hex(got) << ", F16C " << hex(want);
  }
  EXPECT_EQ(failures, 0);
}

TEST(HalfToFloat, SignalingNaNBecomesQuiet) {
  // half.h promises "NaN stays NaN (quiet, sign kept)", and F16C quiets signalling NaNs too. A
  // half sNaN (quiet bit 0x0200 clear) must therefore read as a quiet float NaN (bit 22 set).
  int failures = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<std::uint16_t>(h);
    if (!f16_is_nan(hb)) continue;
    const std::uint32_t got = float_bits(f16_to_f32(hb));
    if ((got & 0x00400000u) == 0 && failures++ < 3)
      ADD_FAILURE() << "f16_to_f32(" << hex(h) << ") = " << hex(got) << " is a signalling NaN";
  }
  EXPECT_EQ(failures, 0);
}

TEST(HalfToFloat, RoundTripIsIdentityExceptNaN) {
  int failures = 0;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto hb = static_cast<std::uint16_t>(h);
    const std::uint16_t back = f32_to_f16(f16_to_f32(hb));
    const bool ok =
        f16_is_nan(hb) ? f16_is_nan(back) && (back & 0x8000u) == (h & 0x8000u) : back == hb;
    if (!ok && failures++ < 10)
      ADD_FAILURE() << hex(h) << " -> " << f16_to_f32(hb) << " -> " << hex(back);
  }
  EXPECT_EQ(failures, 0);
}

// --- float -> half ---------------------------------------------------------------------------

TEST(FloatToHalf, EveryTieRoundsToEvenAndMatchesF16C) {
  // For every pair of adjacent non-negative halves (0x7BFF's upper neighbour is 2^16: the tie at
  // 65520), the midpoint is exact in float (12 significant bits). It must round to the even one;
  // its float neighbours must round to the nearer one. Same with the sign flipped.
  const bool hw = have_f16c();
  int failures = 0;
  for (std::uint32_t h = 0; h < 0x7C00u; ++h) {
    const double lo = f16_value(static_cast<std::uint16_t>(h));
    const double up = f16_value(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + up) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + up) / 2) << "midpoint not exact in float";
    const auto even = static_cast<std::uint16_t>((h & 1u) == 0 ? h : h + 1);
    const float above = std::nextafter(mid, INFINITY), below = std::nextafter(mid, 0.0f);
    const struct {
      float x;
      std::uint16_t want;
    } cases[] = {{mid, even},
                 {above, static_cast<std::uint16_t>(h + 1)},
                 {below, static_cast<std::uint16_t>(h)}};
    for (const auto& c : cases) {
      for (const float sign : {1.0f, -1.0f}) {
        const float x = sign * c.x;
        const auto want = static_cast<std::uint16_t>(c.want | (sign < 0 ? 0x8000u : 0u));
        const std::uint16_t got = f32_to_f16(x);
        if (got != want && failures++ < 10)
          ADD_FAILURE() << "f32_to_f16(" << x << " [" << hex(float_bits(x)) << "]) = " << hex(got)
                        << ", want " << hex(want);
        if (hw) SQ_EXPECT_FEW(matches_hw_f16(x), failures);
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(FloatToHalf, RangeEdges) {
  const float two_m25 = std::ldexp(1.0f, -25), two_m24 = std::ldexp(1.0f, -24);
  const struct {
    float x;
    std::uint16_t want;
  } cases[] = {
      {65504.0f, 0x7BFF},
      {-65504.0f, 0xFBFF},
      {65519.99f, 0x7BFF},  // just below the tie at 65520
      {std::nextafter(65520.0f, 0.0f), 0x7BFF},
      {65520.0f, 0x7C00},  // the tie rounds to even, and the even neighbour is Inf
      {-65520.0f, 0xFC00},
      {1e6f, 0x7C00},
      {std::numeric_limits<float>::max(), 0x7C00},
      {INFINITY, 0x7C00},
      {-INFINITY, 0xFC00},
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {two_m24, 0x0001},  // smallest subnormal half
      {-two_m24, 0x8001},
      {std::nextafter(two_m24, 0.0f), 0x0001},
      {two_m25, 0x0000},  // tie between 0 and 2^-24: the even one is 0
      {-two_m25, 0x8000},
      {std::nextafter(two_m25, 1.0f), 0x0001},
      {std::nextafter(two_m25, 0.0f), 0x0000},
      {1.5f * two_m24, 0x0002},  // tie between 1 and 2 subnormal ulps: even is 2
      {2.5f * two_m24, 0x0002},  // tie between 2 and 3: even is 2
      {std::ldexp(1.0f, -26), 0x0000},
      {std::numeric_limits<float>::denorm_min(), 0x0000},
      {-std::numeric_limits<float>::denorm_min(), 0x8000},
      {std::ldexp(1.0f, -14), 0x0400},     // smallest normal half
      {std::ldexp(1023.0f, -24), 0x03FF},  // largest subnormal half
      {std::ldexp(2047.0f, -25), 0x0400},  // tie between largest subnormal and smallest normal
      {1.0f, 0x3C00},
      {1.0f + std::ldexp(1.0f, -11), 0x3C00},  // tie: 1 is even
      {1.0f + 3 * std::ldexp(1.0f, -11), 0x3C02},
      {2047.0f, 0x67FF},
      {2049.0f, 0x6800},  // tie between 2048 and 2050: 2048 is even
  };
  for (const auto& c : cases) {
    EXPECT_EQ(hex(f32_to_f16(c.x)), hex(c.want))
        << "x = " << c.x << " [" << hex(float_bits(c.x)) << "]";
    if (have_f16c()) {
      EXPECT_TRUE(matches_hw_f16(c.x));
    }
  }
}

TEST(FloatToHalf, NaNStaysNaNWithSign) {
  const std::uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u,
                                0x7FBFFFFFu, 0x7FFFFFFFu, 0x7F802000u, 0xFFFFE000u};
  for (const std::uint32_t bits : nans) {
    const std::uint16_t h = f32_to_f16(bits_float(bits));
    EXPECT_TRUE(f16_is_nan(h)) << hex(bits) << " -> " << hex(h);
    EXPECT_EQ(h & 0x8000u, (bits >> 16) & 0x8000u) << hex(bits);
    EXPECT_NE(h & 0x0200u, 0u) << "not quiet: " << hex(bits) << " -> " << hex(h);
    if (have_f16c()) {
      EXPECT_TRUE(matches_hw_f16(bits_float(bits)));
    }
  }
}

TEST(FloatToHalf, RandomBitPatternsMatchF16C) {
  SQ_REQUIRE_F16C();
  Rng rng(20240601);
  int failures = 0;
  for (std::size_t i = 0; i < kRandomPatterns; i += 2) {
    const std::uint64_t r = rng.next();
    SQ_EXPECT_FEW(matches_hw_f16(bits_float(static_cast<std::uint32_t>(r))), failures);
    SQ_EXPECT_FEW(matches_hw_f16(bits_float(static_cast<std::uint32_t>(r >> 32))), failures);
  }
  EXPECT_EQ(failures, 0);
}

TEST(FloatToHalf, RandomValuesInHalfRangeMatchF16C) {
  // Uniform bit patterns rarely land in the half range (|x| in [2^-25, 2^16]); sample it densely.
  SQ_REQUIRE_F16C();
  Rng rng(7);
  int failures = 0;
  for (int i = 0; i < 1'000'000; ++i) {
    const auto exp = static_cast<std::uint32_t>(101 + rng.below(43));  // 2^-26 .. 2^16
    const auto bits = static_cast<std::uint32_t>((rng.below(2) << 31) | (exp << 23) |
                                                 static_cast<std::uint32_t>(rng.below(1u << 23)));
    SQ_EXPECT_FEW(matches_hw_f16(bits_float(bits)), failures);
  }
  EXPECT_EQ(failures, 0);
}

// --- bfloat16 --------------------------------------------------------------------------------

TEST(BFloat16, ToFloatIsTheHighHalf) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(bf16_to_f32(0x7F7F), std::ldexp(255.0f, 120));  // largest finite bf16
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));   // smallest subnormal bf16
  EXPECT_TRUE(std::signbit(bf16_to_f32(0x8000)) && bf16_to_f32(0x8000) == 0.0f);
  int failures = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bb = static_cast<std::uint16_t>(b);
    if (float_bits(bf16_to_f32(bb)) != b << 16 && failures++ < 10)
      ADD_FAILURE() << "bf16_to_f32(" << hex(b) << ")";
    const std::uint16_t back = f32_to_bf16(bf16_to_f32(bb));
    const bool ok =
        bf16_is_nan(bb) ? bf16_is_nan(back) && (back & 0x8000u) == (b & 0x8000u) : back == bb;
    if (!ok && failures++ < 10) ADD_FAILURE() << "round trip " << hex(b) << " -> " << hex(back);
  }
  EXPECT_EQ(failures, 0);
}

TEST(BFloat16, RandomBitPatternsMatchExactRounding) {
  Rng rng(99);
  int failures = 0;
  for (std::size_t i = 0; i < kRandomPatterns; i += 2) {
    const std::uint64_t r = rng.next();
    SQ_EXPECT_FEW(matches_ref_bf16(bits_float(static_cast<std::uint32_t>(r))), failures);
    SQ_EXPECT_FEW(matches_ref_bf16(bits_float(static_cast<std::uint32_t>(r >> 32))), failures);
  }
  EXPECT_EQ(failures, 0);
}

TEST(BFloat16, EveryTieAndItsNeighbours) {
  // Every float whose low 16 bits are exactly 0x8000 is a tie between two bfloat16 values.
  int failures = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    if ((b & 0x7F80u) == 0x7F80u) continue;  // Inf/NaN exponent: not a tie
    const float tie = bits_float((b << 16) | 0x8000u);
    const auto even = static_cast<std::uint16_t>((b & 1u) == 0 ? b : b + 1);
    if (f32_to_bf16(tie) != even && failures++ < 10)
      ADD_FAILURE() << "tie " << hex(float_bits(tie)) << " -> " << hex(f32_to_bf16(tie))
                    << ", want " << hex(even);
    SQ_EXPECT_FEW(matches_ref_bf16(tie), failures);
    SQ_EXPECT_FEW(matches_ref_bf16(bits_float(float_bits(tie) + 1)), failures);  // away from 0
    SQ_EXPECT_FEW(matches_ref_bf16(bits_float(float_bits(tie) - 1)), failures);  // toward 0
  }
  EXPECT_EQ(failures, 0);
}

TEST(BFloat16, OverflowAndSpecials) {
  const float max_bf16 = bf16_to_f32(0x7F7F);
  const float midpoint = bits_float(0x7F7F8000u);  // halfway between max bf16 and 2^128
  ASSERT_EQ(static_cast<double>(midpoint),
            (static_cast<double>(max_bf16) + std::ldexp(1.0, 128)) / 2);
  EXPECT_EQ(f32_to_bf16(max_bf16), 0x7F7F);
  EXPECT_EQ(f32_to_bf16(std::nextafter(midpoint, 0.0f)), 0x7F7F);
  EXPECT_EQ(f32_to_bf16(midpoint), 0x7F80);  // the tie's even neighbour is Inf
  EXPECT_EQ(f32_to_bf16(-midpoint), 0xFF80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::max()), 0xFF80);
  for (std::uint32_t low = 0x8000u; low <= 0xFFFFu; low += 0x111u) {  // all above the midpoint
    EXPECT_EQ(f32_to_bf16(bits_float(0x7F7F0000u | low)), 0x7F80) << hex(low);
    EXPECT_TRUE(matches_ref_bf16(bits_float(0x7F7F0000u | low)));
  }
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xFF80);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_bf16(bits_float(0x00008000u)), 0x0000);  // subnormal tie: even is 0
  EXPECT_EQ(f32_to_bf16(bits_float(0x00018000u)), 0x0002);  // subnormal tie: even is 2
  EXPECT_EQ(f32_to_bf16(bits_float(0x00008001u)), 0x0001);
  const std::uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u,
                                0x7F80FFFFu, 0x7FBF0000u, 0xFFFFFFFFu};
  for (const std::uint32_t bits : nans) EXPECT_TRUE(matches_ref_bf16(bits_float(bits)));
}

// --- bulk conversions ------------------------------------------------------------------------

TEST(HalfBulk, AgreesWithScalar) {
  constexpr std::size_t n = 4099;  // odd length: catches vector-loop tail handling
  Rng rng(3);
  std::vector<float> f(n);
  std::vector<std::uint16_t> h(n);
  for (std::size_t i = 0; i < n; ++i) {
    // Mixed magnitudes (including values that overflow/underflow half) and raw bit patterns.
    f[i] = i % 3 == 0 ? bits_float(static_cast<std::uint32_t>(rng.next()))
                      : static_cast<float>(rng.normal() * std::ldexp(1.0, int(rng.below(60)) - 30));
    h[i] = static_cast<std::uint16_t>(rng.next());
  }
  std::vector<std::uint16_t> to16(n), tob16(n);
  std::vector<float> from16(n), fromb16(n);
  f32_to_f16(f.data(), to16.data(), n);
  f32_to_bf16(f.data(), tob16.data(), n);
  f16_to_f32(h.data(), from16.data(), n);
  bf16_to_f32(h.data(), fromb16.data(), n);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(to16[i], f32_to_f16(f[i])) << i;
    ASSERT_EQ(tob16[i], f32_to_bf16(f[i])) << i;
    ASSERT_EQ(float_bits(from16[i]), float_bits(f16_to_f32(h[i]))) << i;
    ASSERT_EQ(float_bits(fromb16[i]), float_bits(bf16_to_f32(h[i]))) << i;
  }
  // n = 0 must not touch the output.
  std::uint16_t sentinel = 0xABCD;
  f32_to_f16(f.data(), &sentinel, 0);
  EXPECT_EQ(sentinel, 0xABCD);
}

}  // namespace
}  // namespace sq
