// 4-bit integer codes for W4A4 linears: the per-token 4-bit activation quantizer and the plain
// reference twins of the CUDA W4A4 GEMM and linear (kernels/cuda/int4.h), plus the CPU twin of the
// integer GEMMs' dequantization epilogue.
//
// Packed layout: compressed-tensors' pack-quantized layout at 4 bits, i.e. exactly what
// pack_quantized(q, rows, cols, 4, packed) writes (quant.h). A code q in [-8, 7] is stored as
// q + 8 in a nibble; element i of a row sits in nibble i % 8 of int32 word i / 8, least significant
// first, so in little-endian memory byte j of a row holds element 2j in its low nibble and 2j + 1
// in its high nibble. Each row is padded with zero bits to int4_row_words(cols) words. Exported
// weights therefore feed the GEMM as they are. The padding decodes to -8, not 0: the GEMMs stop at
// k = K instead of counting on it.
#pragma once

#include <cstdint>

#include "kernels/cpu/quant.h"

namespace sq::cpu {

inline constexpr int kInt4Bits = 4;

// The largest K of a W4A4 GEMM. An exact int32 sum needs K * 64 < 2^31 (|x * w| <= 64); the CUDA
// kernel sums x * (w + 8) first (|.| <= 120) and subtracts 8 * sum(x) afterwards, so both sides
// accept K <= 2^24 (120 * 2^24 < 2^31) and refuse more, naming k.
inline constexpr i64 kW4A4MaxK = i64{1} << 24;

// int32 words per packed 4-bit row, packed_words(cols, 4); inline so that the CUDA library, which
// does not link this one, computes the same stride.
inline constexpr i64 int4_row_words(i64 cols) { return (cols + 7) / 8; }

// The two 16-bit float formats of the dequantized outputs (bits as std::uint16_t, core/half.h).
enum class HalfFormat { bf16, f16 };

// Per-token (row) dynamic symmetric 4-bit quantization of x [rows, cols]: qparams_minmax with row
// granularity (absmax / 7 for Divisor::max_int, absmax / 7.5 for half_range; NaN skipped, an
// all-zero row gets kMinScale), quantize, pack_quantized(..., 4, ...). packed [rows,
// int4_row_words(cols)], scale [rows]. format must be 4 bits and symmetric (throws sq::Error
// otherwise). NaN quantizes to 0; an infinite value makes the row's scale inf and its codes 0.
void quantize_per_token_int4(const float* x, i64 rows, i64 cols, const IntFormat& format,
                             std::int32_t* packed, float* scale);

// acc [m, n] = x [m, k] * w [n, k]^T over the signed 4-bit codes of the packed operands (row
// strides int4_row_words(k)); plain loops, exact. m, n, k >= 0, k <= kW4A4MaxK (throws otherwise);
// k = 0 writes zeros.
void gemm_w4a4_reference(const std::int32_t* x_packed, i64 m, i64 k, const std::int32_t* w_packed,
                         i64 n, std::int32_t* acc);

// The CPU twin of cuda::dequantize_int8_acc, bit for bit: out[i, j] = round((float(acc[i * ld + j])
// * x_scale[i]) * w_scale[j] + bias[j]) with fp32 operations in exactly that order, each rounded
// (never contracted into an FMA), the bias added only when given, then one round-to-nearest-even
// conversion to `out_type`; a NaN is written as the canonical 0x7FFF. out [m, n] (ld n); ld >= n.
void dequantize_int8_acc(const std::int32_t* acc, i64 m, i64 n, i64 ld, const float* x_scale,
                         const float* w_scale, const float* bias, std::uint16_t* out,
                         HalfFormat out_type);

// W4A4 linear: gemm_w4a4_reference, then dequantize_int8_acc (x_scale [m] per token, w_scale [n]
// per output channel, bias [n] or null) into out [m, n].
void linear_w4a4_reference(const std::int32_t* x_packed, const float* x_scale, i64 m, i64 k,
                           const std::int32_t* w_packed, const float* w_scale, const float* bias,
                           i64 n, std::uint16_t* out, HalfFormat out_type);

}  // namespace sq::cpu
