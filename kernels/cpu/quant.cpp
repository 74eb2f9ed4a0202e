// Integer quantizers (see quant.h). Every loop walks "slices": the elements that share one
// (scale, zero point). In row-major storage each slice is a contiguous run of the flat array
// (the whole tensor, one row, or g columns of a row), so slice k is x[k * len, (k + 1) * len).
#include "kernels/cpu/quant.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sq::cpu {

void IntFormat::validate() const {
  if (bits < 2 || bits > 8) fail("integer quantization needs 2 to 8 bits, got {}", bits);
}

std::int32_t IntFormat::qmin() const {
  validate();
  return -(std::int32_t{1} << (bits - 1));
}

std::int32_t IntFormat::qmax() const {
  validate();
  return (std::int32_t{1} << (bits - 1)) - 1;
}

float IntFormat::symmetric_divisor() const {
  validate();
  // Both are exact in float: small integers, or an odd integer over 2.
  if (divisor == Divisor::max_int) return static_cast<float>((1 << (bits - 1)) - 1);
  return static_cast<float>((1 << bits) - 1) / 2.0f;
}

i64 num_qparams(i64 rows, i64 cols, const QuantLayout& layout) {
  if (rows < 0 || cols < 0) fail("quantization: negative shape [{}, {}]", rows, cols);
  switch (layout.granularity) {
    case Granularity::tensor:
      return 1;
    case Granularity::row:
      return rows;
    case Granularity::group:
      if (layout.group_size <= 0)
        fail("quantization: group size must be > 0, got {}", layout.group_size);
      if (cols % layout.group_size != 0)
        fail("quantization: group size {} does not divide the {} columns", layout.group_size, cols);
      return rows * (cols / layout.group_size);
  }
  fail("quantization: unknown granularity {}", static_cast<int>(layout.granularity));
}

namespace {

// count slices of len contiguous elements each (validated through num_qparams).
struct Slices {
  i64 count = 0;
  i64 len = 0;
};

Slices slices_of(i64 rows, i64 cols, const QuantLayout& layout) {
  const i64 count = num_qparams(rows, cols, layout);
  switch (layout.granularity) {
    case Granularity::tensor:
      return {count, rows * cols};
    case Granularity::row:
      return {count, cols};
    case Granularity::group:
      return {count, layout.group_size};
  }
  return {count, 0};
}

void require_zero_point(const IntFormat& format, const std::int32_t* zero_point) {
  if (!format.symmetric && zero_point == nullptr)
    fail("quantization: asymmetric parameters need a zero-point buffer");
}

// round_half_even then clamp for the zero point; the same NaN and overflow guards as
// quantize_value (NaN only arises from non-finite ranges).
std::int32_t round_clamp(float v, std::int32_t qmin, std::int32_t qmax) {
  if (std::isnan(v)) v = 0.0f;
  v = std::clamp(v, -512.0f, 512.0f);
  return std::clamp(static_cast<std::int32_t>(round_half_even(v)), qmin, qmax);
}

// One slice's parameters (the body of qparams_from_range).
void range_to_qparams(float lo, float hi, const IntFormat& format, std::int32_t qmin,
                      std::int32_t qmax, float& scale, std::int32_t& zero_point) {
  float s = 0.0f;
  if (format.symmetric) {
    s = std::max(std::fabs(lo), std::fabs(hi)) / format.symmetric_divisor();
  } else {
    lo = std::min(lo, 0.0f);  // 0 must be exactly representable (padding, ReLU zeros)
    hi = std::max(hi, 0.0f);
    s = (hi - lo) / static_cast<float>(qmax - qmin);
  }
  if (!(s > 0.0f)) s = kMinScale;  // zero (all-zero slice) or NaN (NaN range)
  scale = s;
  zero_point = format.symmetric ? 0 : round_clamp(static_cast<float>(qmin) - lo / s, qmin, qmax);
}

// Min and max of n values, skipping NaN. Starting from 0 changes nothing downstream (the
// asymmetric range is widened to include 0 anyway, and absmax >= 0) and makes an empty or all-NaN
// slice an all-zero one instead of [+inf, -inf].
void slice_minmax(const float* x, i64 n, float& lo, float& hi) {
  lo = 0.0f;
  hi = 0.0f;
  for (i64 i = 0; i < n; ++i) {
    if (x[i] < lo) lo = x[i];  // NaN fails both comparisons
    if (x[i] > hi) hi = x[i];
  }
}

// Sum of squared fake-quantization errors over a slice, in double, NaN skipped. Stops early
// once the partial sum reaches `give_up`: adding non-negative terms never decreases a rounded
// sum, so the total could not be below it either (the caller only takes strictly smaller ones).
double slice_error(const float* x, i64 n, float scale, std::int32_t zero_point, std::int32_t qmin,
                   std::int32_t qmax, double give_up) {
  constexpr i64 kBlock = 64;  // check the bound per block, keeping the inner loop branch-free
  double err = 0.0;
  for (i64 b = 0; b < n; b += kBlock) {
    const i64 e = std::min(n, b + kBlock);
    for (i64 i = b; i < e; ++i) {
      const float xh =
          dequantize_value(quantize_value(x[i], scale, zero_point, qmin, qmax), scale, zero_point);
      const double d = std::isnan(x[i]) ? 0.0 : double(x[i]) - double(xh);
      err += d * d;
    }
    if (err >= give_up) break;
  }
  return err;
}

void fake_quantize_slice(float* x, i64 n, float scale, std::int32_t zero_point, std::int32_t qmin,
                         std::int32_t qmax) {
  for (i64 i = 0; i < n; ++i)
    x[i] = dequantize_value(quantize_value(x[i], scale, zero_point, qmin, qmax), scale, zero_point);
}

}  // namespace

void qparams_from_range(const float* lo, const float* hi, i64 n, const IntFormat& format,
                        float* scale, std::int32_t* zero_point) {
  require_zero_point(format, zero_point);
  const std::int32_t qmin = format.qmin(), qmax = format.qmax();
  for (i64 k = 0; k < n; ++k) {
    std::int32_t z = 0;
    range_to_qparams(lo[k], hi[k], format, qmin, qmax, scale[k], z);
    if (zero_point != nullptr) zero_point[k] = z;
  }
}

void qparams_minmax(const float* x, i64 rows, i64 cols, const QuantLayout& layout,
                    const IntFormat& format, float* scale, std::int32_t* zero_point) {
  require_zero_point(format, zero_point);
  const Slices sl = slices_of(rows, cols, layout);
  const std::int32_t qmin = format.qmin(), qmax = format.qmax();
  for (i64 k = 0; k < sl.count; ++k) {
    float lo = 0.0f, hi = 0.0f;
    slice_minmax(x + k * sl.len, sl.len, lo, hi);
    std::int32_t z = 0;
    range_to_qparams(lo, hi, format, qmin, qmax, scale[k], z);
    if (zero_point != nullptr) zero_point[k] = z;
  }
}

void qparams_mse(const float* x, i64 rows, i64 cols, const QuantLayout& layout,
                 const IntFormat& format, int grid, double max_shrink, float* scale,
                 std::int32_t* zero_point) {
  require_zero_point(format, zero_point);
  if (grid < 0) fail("qparams_mse: grid must be >= 0, got {}", grid);
  if (!(max_shrink >= 0.0 && max_shrink <= 1.0))
    fail("qparams_mse: max_shrink must lie in [0, 1], got {}", max_shrink);
  const Slices sl = slices_of(rows, cols, layout);
  const std::int32_t qmin = format.qmin(), qmax = format.qmax();
  for (i64 k = 0; k < sl.count; ++k) {
    const float* xs = x + k * sl.len;
    float lo = 0.0f, hi = 0.0f;
    slice_minmax(xs, sl.len, lo, hi);
    float best_s = 0.0f;
    std::int32_t best_z = 0;
    double best_err = 0.0;
    for (int i = 0; i <= grid; ++i) {
      // i = 0 is a = 1 exactly, i.e. the min-max parameters themselves.
      const double a = grid == 0 ? 1.0 : 1.0 - double(i) * max_shrink / double(grid);
      float s = 0.0f;
      std::int32_t z = 0;
      range_to_qparams(static_cast<float>(double(lo) * a), static_cast<float>(double(hi) * a),
                       format, qmin, qmax, s, z);
      const double err = slice_error(xs, sl.len, s, z, qmin, qmax, i == 0 ? HUGE_VAL : best_err);
      if (i == 0 || err < best_err) {  // strict: ties keep the larger a
        best_err = err;
        best_s = s;
        best_z = z;
      }
    }
    scale[k] = best_s;
    if (zero_point != nullptr) zero_point[k] = best_z;
  }
}

void quantize(const float* x, i64 rows, i64 cols, const QuantLayout& layout,
              const IntFormat& format, const float* scale, const std::int32_t* zero_point,
              std::int8_t* q) {
  const Slices sl = slices_of(rows, cols, layout);
  const std::int32_t qmin = format.qmin(), qmax = format.qmax();
  for (i64 k = 0; k < sl.count; ++k) {
    const float s = scale[k];
    const std::int32_t z = zero_point != nullptr ? zero_point[k] : 0;
    const float* xs = x + k * sl.len;
    std::int8_t* qs = q + k * sl.len;
    // bits <= 8 keeps [qmin, qmax] inside int8.
    for (i64 i = 0; i < sl.len; ++i)
      qs[i] = static_cast<std::int8_t>(quantize_value(xs[i], s, z, qmin, qmax));
  }
}

void dequantize(const std::int8_t* q, i64 rows, i64 cols, const QuantLayout& layout,
                const float* scale, const std::int32_t* zero_point, float* x) {
  const Slices sl = slices_of(rows, cols, layout);
  for (i64 k = 0; k < sl.count; ++k) {
    const float s = scale[k];
    const std::int32_t z = zero_point != nullptr ? zero_point[k] : 0;
    const std::int8_t* qs = q + k * sl.len;
    float* xs = x + k * sl.len;
    for (i64 i = 0; i < sl.len; ++i) xs[i] = dequantize_value(qs[i], s, z);
  }
}

void fake_quantize(float* x, i64 rows, i64 cols, const QuantLayout& layout, const IntFormat& format,
                   const float* scale, const std::int32_t* zero_point) {
  const Slices sl = slices_of(rows, cols, layout);
  const std::int32_t qmin = format.qmin(), qmax = format.qmax();
  for (i64 k = 0; k < sl.count; ++k)
    fake_quantize_slice(x + k * sl.len, sl.len, scale[k], zero_point != nullptr ? zero_point[k] : 0,
                        qmin, qmax);
}

void fake_quantize_dynamic(float* x, i64 rows, i64 cols, const QuantLayout& layout,
                           const IntFormat& format) {
  const Slices sl = slices_of(rows, cols, layout);
  const std::int32_t qmin = format.qmin(), qmax = format.qmax();
  for (i64 k = 0; k < sl.count; ++k) {
    float* xs = x + k * sl.len;
    float lo = 0.0f, hi = 0.0f, s = 0.0f;
    std::int32_t z = 0;
    slice_minmax(xs, sl.len, lo, hi);
    range_to_qparams(lo, hi, format, qmin, qmax, s, z);
    fake_quantize_slice(xs, sl.len, s, z, qmin, qmax);
  }
}

i64 packed_words(i64 cols, int bits) {
  IntFormat{.bits = bits}.validate();
  if (cols < 0) fail("packed_words: negative column count {}", cols);
  return (cols * bits + 31) / 32;
}

void pack_quantized(const std::int8_t* q, i64 rows, i64 cols, int bits, std::int32_t* packed) {
  const i64 words = packed_words(cols, bits);
  if (rows < 0) fail("pack_quantized: negative row count {}", rows);
  const std::int32_t offset = std::int32_t{1} << (bits - 1);
  for (i64 r = 0; r < rows; ++r) {
    // Built as uint32 so that shifts into bit 31 are well defined; int32 and uint32 may alias.
    auto* w = reinterpret_cast<std::uint32_t*>(packed + r * words);
    std::fill(w, w + words, 0u);
    for (i64 c = 0; c < cols; ++c) {
      const std::int32_t v = q[r * cols + c];
      if (v < -offset || v >= offset)
        fail("pack_quantized: value {} at [{}, {}] does not fit {} signed bits", v, r, c, bits);
      const auto u = static_cast<std::uint32_t>(v + offset);
      const i64 bit = c * bits;
      const int shift = static_cast<int>(bit % 32);
      w[bit / 32] |= u << shift;
      // Straddles into the next word (only when 32 % bits != 0): its high bits go there.
      if (shift + bits > 32) w[bit / 32 + 1] |= u >> (32 - shift);
    }
  }
}

void unpack_quantized(const std::int32_t* packed, i64 rows, i64 cols, int bits, std::int8_t* q) {
  const i64 words = packed_words(cols, bits);
  if (rows < 0) fail("unpack_quantized: negative row count {}", rows);
  const std::int32_t offset = std::int32_t{1} << (bits - 1);
  const std::uint32_t mask = (std::uint32_t{1} << bits) - 1;
  for (i64 r = 0; r < rows; ++r) {
    const auto* w = reinterpret_cast<const std::uint32_t*>(packed + r * words);
    for (i64 c = 0; c < cols; ++c) {
      const i64 bit = c * bits;
      const int shift = static_cast<int>(bit % 32);
      std::uint32_t u = w[bit / 32] >> shift;
      if (shift + bits > 32) u |= w[bit / 32 + 1] << (32 - shift);
      q[r * cols + c] = static_cast<std::int8_t>(static_cast<std::int32_t>(u & mask) - offset);
    }
  }
}

}  // namespace sq::cpu
