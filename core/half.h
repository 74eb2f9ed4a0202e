// Exact conversions between float32 and the 16-bit float formats (IEEE half, bfloat16):
// round to nearest, ties to even; NaN stays NaN (quiet, sign kept), infinities stay infinite,
// subnormals are produced and read exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sq {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_f32(std::uint16_t h) { return bits_float(std::uint32_t(h) << 16); }

inline std::uint16_t f32_to_bf16(float f) {
  std::uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((x >> 16) | 0x0040u);  // quiet NaN
  // Adding 0x7FFF plus the lowest kept bit rounds to nearest even; overflow carries into Inf.
  x += 0x7FFFu + ((x >> 16) & 1u);
  return std::uint16_t(x >> 16);
}

inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F)  // Inf, or NaN made quiet (payload kept) as the F16C instruction does
    return bits_float(sign | 0x7F800000u | (mant << 13) | (mant != 0 ? 0x00400000u : 0u));
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal: value = mant * 2^-24; normalise it.
  std::uint32_t e = 113;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_float(sign | (e << 23) | ((mant & 0x3FFu) << 13));
}

inline std::uint16_t f32_to_f16(float f) {
  std::uint32_t x = float_bits(f);
  const std::uint16_t sign = std::uint16_t((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) {  // Inf or NaN (NaN keeps its top payload bits and is made quiet)
    return x == 0x7F800000u ? std::uint16_t(sign | 0x7C00u)
                            : std::uint16_t(sign | 0x7E00u | ((x >> 13) & 0x3FFu));
  }
  if (x >= 0x477FF000u) return std::uint16_t(sign | 0x7C00u);  // >= 65520 rounds to Inf
  if (x < 0x38800000u) {                                       // below 2^-14: subnormal or 0
    if (x <= 0x33000000u) return sign;                         // <= 2^-25 rounds to 0 (tie->even)
    const std::uint32_t m = (x & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126u - (x >> 23);  // in [14, 24]
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return std::uint16_t(sign | r);
  }
  std::uint32_t r = (((x >> 23) - 112u) << 10) | ((x & 0x7FFFFFu) >> 13);
  const std::uint32_t rem = x & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry may step into the exponent
  return std::uint16_t(sign | r);
}

// Bulk conversions (element counts, not bytes).
void f16_to_f32(const std::uint16_t* in, float* out, std::size_t n);
void bf16_to_f32(const std::uint16_t* in, float* out, std::size_t n);
void f32_to_f16(const float* in, std::uint16_t* out, std::size_t n);
void f32_to_bf16(const float* in, std::uint16_t* out, std::size_t n);

}  // namespace sq
