// Integer quantizers, 2 to 8 bits: symmetric or asymmetric, per tensor / row / group, static or
// dynamic parameters, fake-quant and real quantize. Everything rounds through the one pair
// quantize_value / dequantize_value below, so fake-quant, quantize + dequantize and the MSE
// clipping search cannot drift apart. Framework-free like ops.h: raw pointers and sizes.
//
// Matrices are row-major [rows, cols]. Parameters (scale, zero point) are indexed by
// qparam_index: one for the tensor, one per row (weight output channel / activation token), or
// one per g consecutive columns of a row ([rows, cols / g], row-major), as compressed-tensors
// stores them.
//
// Non-finite inputs never cause undefined behaviour: NaN quantizes to the zero point (so it
// dequantizes to 0) and, with a finite scale, +-inf clamps to qmax / qmin; the min-max and MSE
// observers skip NaN. A slice holding +-inf gets an infinite min-max scale, so fake-quantizing it
// gives (q - zp) x inf: NaN for its codes at the zero point (which NaN is the platform's).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace sq::cpu {

using i64 = std::int64_t;

// A zero scale (all-zero slice) is replaced by this so that x / scale is never inf or NaN
// (torch.finfo(float32).eps, as compressed-tensors does).
inline constexpr float kMinScale = std::numeric_limits<float>::epsilon();

struct IntFormat {
  int bits = 8;  // 2..8; every function taking an IntFormat throws sq::Error otherwise
  bool symmetric = true;
  // Symmetric scale = absmax / divisor. max_int: 2^(b-1) - 1 (SmoothQuant: absmax/127).
  // half_range: (2^b - 1) / 2 (compressed-tensors observers: absmax/127.5).
  enum class Divisor { max_int, half_range };
  Divisor divisor = Divisor::max_int;

  void validate() const;            // throws sq::Error unless 2 <= bits <= 8
  std::int32_t qmin() const;        // -2^(b-1)   (signed range for both symmetric and asymmetric)
  std::int32_t qmax() const;        //  2^(b-1)-1
  float symmetric_divisor() const;  // 2^(b-1) - 1 or (2^b - 1) / 2, by `divisor`
};

// row: per output channel (weights) / per token (activations); group: g consecutive columns.
enum class Granularity { tensor, row, group };
struct QuantLayout {
  Granularity granularity = Granularity::row;
  i64 group_size = 0;  // used by group only
};

// tensor 1, row `rows`, group rows * cols / g. Throws sq::Error for negative sizes, g <= 0 or
// cols % g != 0 (a partial last group is not supported). Every bulk function below calls it.
i64 num_qparams(i64 rows, i64 cols, const QuantLayout& layout);

// Which parameter element (row, col) uses. Not validated (hot): validate with num_qparams.
inline i64 qparam_index(i64 row, i64 col, i64 cols, const QuantLayout& layout) {
  switch (layout.granularity) {
    case Granularity::tensor:
      return 0;
    case Granularity::row:
      return row;
    case Granularity::group:
      return row * (cols / layout.group_size) + col / layout.group_size;
  }
  return 0;
}

// Round half to even: the same value as std::nearbyint(v) under the default FE_TONEAREST mode
// (a test compares them), for |v| <= 2^22. Adding 1.5 * 2^23 leaves no fraction bits, so that
// addition rounds v to an integer in the current mode and subtracting it back is exact. Unlike
// std::nearbyint it needs no library call (baseline x86-64 has no float round instruction): about
// 2.5x faster quantization. It needs IEEE semantics: -ffast-math or -fassociative-math would fold
// it to v (the tie tests would catch that).
inline float round_half_even(float v) {
  constexpr float kShift = 0x1.8p23f;
  return (v + kShift) - kShift;
}

// The one definition of rounding (used by everything below):
//   q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)
//   x_hat = (q - zero_point) * scale
// x / scale is a float division, as torch.round(x / scale) in compressed-tensors.
// (compressed-tensors adds the zero point before rounding, round(x / scale + zp) in float; that
// differs from this only when the float addition itself rounds onto or across a .5 tie, and
// never when zp = 0.) Expects qmin <= zero_point <= qmax, as every qparams_* function makes it;
// any zero point still gives a q in [qmin, qmax].
inline std::int32_t quantize_value(float x, float scale, std::int32_t zero_point, std::int32_t qmin,
                                   std::int32_t qmax) {
  float r = x / scale;
  // NaN (x NaN, or inf / inf) is sent to 0: q = zero_point, x_hat = 0.
  if (std::isnan(r)) r = 0.0f;
  // Clamp before rounding: inf and huge quotients must not reach the int conversion (UB).
  // +-512 is wider than any |q - zp| that survives the final clamp (|qmax - qmin| <= 255), and
  // the bounds are integers, so clamping before rounding gives the same result as after.
  r = round_half_even(std::clamp(r, -512.0f, 512.0f)) + static_cast<float>(zero_point);
  // Integers below 2^24, so the addition above is exact and the final clamp can stay in float.
  return static_cast<std::int32_t>(
      std::clamp(r, static_cast<float>(qmin), static_cast<float>(qmax)));
}

inline float dequantize_value(std::int32_t q, float scale, std::int32_t zero_point) {
  return static_cast<float>(q - zero_point) * scale;
}

// Params from a range, n slices. Symmetric: scale = max(|lo|, |hi|) / divisor, zp = 0.
// Asymmetric: the range is first widened to include 0 (lo = min(lo, 0), hi = max(hi, 0)),
// scale = (hi - lo) / (qmax - qmin), zp = clamp(round_half_even(qmin - lo / scale), qmin, qmax).
// All in float, like PyTorch. A zero (or NaN) scale becomes kMinScale before zp is computed.
// zero_point may be null when the format is symmetric (it would be all 0); otherwise throws.
void qparams_from_range(const float* lo, const float* hi, i64 n, const IntFormat& format,
                        float* scale, std::int32_t* zero_point);

// Dynamic / min-max: the min and max of each slice of x [rows, cols] (NaN skipped), then
// qparams_from_range. Writes num_qparams(rows, cols, layout) parameters.
void qparams_minmax(const float* x, i64 rows, i64 cols, const QuantLayout& layout,
                    const IntFormat& format, float* scale, std::int32_t* zero_point);

// Weight clipping search (MSE): per slice, try the min-max range shrunk by a = 1 - i *
// max_shrink / grid, i = 0..grid (lo * a, hi * a), and keep the a with the least sum of
// (x - fake_quant(x))^2 over the slice (accumulated in double, NaN skipped); ties keep the larger
// a, so i = 0 (plain min-max) wins unless shrinking strictly helps. grid >= 0 (0: min-max only),
// 0 <= max_shrink <= 1; throws otherwise.
void qparams_mse(const float* x, i64 rows, i64 cols, const QuantLayout& layout,
                 const IntFormat& format, int grid, double max_shrink, float* scale,
                 std::int32_t* zero_point);

// q [rows, cols] from x with the given parameters. zero_point null means all 0 (symmetric).
void quantize(const float* x, i64 rows, i64 cols, const QuantLayout& layout,
              const IntFormat& format, const float* scale, const std::int32_t* zero_point,
              std::int8_t* q);
// x = (q - zp) * scale. zero_point null means all 0.
void dequantize(const std::int8_t* q, i64 rows, i64 cols, const QuantLayout& layout,
                const float* scale, const std::int32_t* zero_point, float* x);
// In place x = dequantize(quantize(x)), bit-identical to the two-step path.
void fake_quantize(float* x, i64 rows, i64 cols, const QuantLayout& layout, const IntFormat& format,
                   const float* scale, const std::int32_t* zero_point);
// Dynamic: qparams_minmax then fake_quantize, per call (per-token dynamic activations), one
// slice at a time without allocating.
void fake_quantize_dynamic(float* x, i64 rows, i64 cols, const QuantLayout& layout,
                           const IntFormat& format);

// int32 words per packed row: ceil(cols * bits / 32).
i64 packed_words(i64 cols, int bits);
// Dense bit packing: each value stored unsigned as q + 2^(b-1); element i of a row occupies bits
// i*b .. i*b + b - 1 of the row's bit stream, i.e. starts at bit (i*b) % 32 of word (i*b) / 32,
// least significant first; a value may straddle two words (low bits in the first). Rows are
// padded with zero bits to whole words: packed is [rows, packed_words(cols, bits)].
// This is compressed-tensors' pack-quantized layout for every width: its pack_to_int32 (0.20)
// packs densely, splitting values across int32 boundaries, into ceil(cols * b / 32) words.
// pack throws sq::Error if a value lies outside [-2^(b-1), 2^(b-1) - 1] or bits is not 2..8.
void pack_quantized(const std::int8_t* q, i64 rows, i64 cols, int bits, std::int32_t* packed);
void unpack_quantized(const std::int32_t* packed, i64 rows, i64 cols, int bits, std::int8_t* q);

}  // namespace sq::cpu
