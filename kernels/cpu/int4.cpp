// 4-bit quantization and the W4A4 reference (see int4.h). Everything goes through quant.h's
// functions, so rounding and the packed layout have one definition.
#include "kernels/cpu/int4.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace sq::cpu {
namespace {

void check_int4_format(const char* who, const IntFormat& format) {
  if (format.bits != kInt4Bits || !format.symmetric)
    fail("{}: needs a symmetric 4-bit format, got {} bits {}", who, format.bits,
         format.symmetric ? "symmetric" : "asymmetric");
}

void check_gemm_shape(const char* who, i64 m, i64 k, i64 n) {
  if (m < 0 || k < 0 || n < 0) fail("{}: negative shape m = {}, k = {}, n = {}", who, m, k, n);
  if (k > kW4A4MaxK)
    fail("{}: k = {} exceeds {} (the int32 accumulation of 4-bit products could overflow)", who, k,
         kW4A4MaxK);
}

// Stores v rounded to float and reads it back: the compiler can neither keep more precision nor
// fuse the next operation into an FMA (GCC contracts across statements when FMA is available).
float rounded(float v) {
  volatile float r = v;
  return r;
}

}  // namespace

void quantize_per_token_int4(const float* x, i64 rows, i64 cols, const IntFormat& format,
                             std::int32_t* packed, float* scale) {
  const char* who = "quantize_per_token_int4";
  check_int4_format(who, format);
  if (rows < 0 || cols < 0) fail("{}: negative shape [{}, {}]", who, rows, cols);
  const QuantLayout layout{Granularity::row, 0};
  const i64 words = int4_row_words(cols);
  // One row at a time: the codes need cols bytes of scratch, not rows * cols.
  std::vector<std::int8_t> q(static_cast<std::size_t>(cols));
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    qparams_minmax(xr, 1, cols, layout, format, scale + r, nullptr);
    quantize(xr, 1, cols, layout, format, scale + r, nullptr, q.data());
    pack_quantized(q.data(), 1, cols, kInt4Bits, packed + r * words);
  }
}

void gemm_w4a4_reference(const std::int32_t* x_packed, i64 m, i64 k, const std::int32_t* w_packed,
                         i64 n, std::int32_t* acc) {
  check_gemm_shape("gemm_w4a4_reference", m, k, n);
  if (m == 0 || n == 0) return;
  const i64 words = int4_row_words(k);
  // Unpacking k columns reads exactly the codes: the padding nibbles never enter a sum.
  std::vector<std::int8_t> x(static_cast<std::size_t>(m * k)), w(static_cast<std::size_t>(k));
  unpack_quantized(x_packed, m, k, kInt4Bits, x.data());
  for (i64 j = 0; j < n; ++j) {
    unpack_quantized(w_packed + j * words, 1, k, kInt4Bits, w.data());
    for (i64 i = 0; i < m; ++i) {
      const std::int8_t* xr = x.data() + i * k;
      std::int32_t sum = 0;  // |sum| <= 64 k < 2^31
      for (i64 t = 0; t < k; ++t) sum += std::int32_t{xr[t]} * std::int32_t{w[t]};
      acc[i * n + j] = sum;
    }
  }
}

void dequantize_int8_acc(const std::int32_t* acc, i64 m, i64 n, i64 ld, const float* x_scale,
                         const float* w_scale, const float* bias, std::uint16_t* out,
                         HalfFormat out_type) {
  if (m < 0 || n < 0) fail("dequantize_int8_acc: negative shape [{}, {}]", m, n);
  if (ld < n) fail("dequantize_int8_acc: leading dimension {} < n = {}", ld, n);
  for (i64 i = 0; i < m; ++i) {
    for (i64 j = 0; j < n; ++j) {
      // int -> float rounds to nearest even (as __int2float_rn), then each product rounds.
      float v = rounded(static_cast<float>(acc[i * ld + j]) * x_scale[i]);
      v = rounded(v * w_scale[j]);
      if (bias != nullptr) v = rounded(v + bias[j]);
      // Every NaN as the canonical 0x7FFF (0 x inf from an infinite token scale, say), so the
      // bits are the device's whatever its conversion does with a NaN's sign and payload.
      out[i * n + j] = std::isnan(v)                  ? std::uint16_t{0x7FFF}
                       : out_type == HalfFormat::bf16 ? f32_to_bf16(v)
                                                      : f32_to_f16(v);
    }
  }
}

void linear_w4a4_reference(const std::int32_t* x_packed, const float* x_scale, i64 m, i64 k,
                           const std::int32_t* w_packed, const float* w_scale, const float* bias,
                           i64 n, std::uint16_t* out, HalfFormat out_type) {
  check_gemm_shape("linear_w4a4_reference", m, k, n);
  std::vector<std::int32_t> acc(static_cast<std::size_t>(m * n));
  gemm_w4a4_reference(x_packed, m, k, w_packed, n, acc.data());
  dequantize_int8_acc(acc.data(), m, n, n, x_scale, w_scale, bias, out, out_type);
}

}  // namespace sq::cpu
