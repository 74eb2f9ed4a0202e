// CUDA twins of the integer quantizers in kernels/cpu/quant.h: same formats, layouts and rounding,
// plus a stream. All data pointers are device pointers; launches are asynchronous on `stream`
// (nullptr: the legacy default stream). Invalid formats, layouts and shapes throw sq::Error
// before anything is launched, with the CPU's rules (bits 2..8, cols % group_size == 0, a
// zero-point buffer for asymmetric formats).
//
// The parameter types (IntFormat, QuantLayout) are the CPU header's; only their fields are used,
// none of sq_kernels_cpu's functions, so this library does not link it.
//
// Every element goes through the CPU's quantize_value / dequantize_value arithmetic: q =
// clamp(rint(x / scale) + zp, qmin, qmax) with a correctly rounded float division and
// round-half-even (rintf), NaN -> zp, +-inf clamped; x_hat = (q - zp) * scale. Dynamic
// parameters are the CPU's qparams_minmax: min and max of the slice starting from 0 (NaN
// skipped), symmetric scale = max(|lo|, |hi|) / divisor (127 or 127.5 at 8 bits), asymmetric
// scale = (hi - lo) / (qmax - qmin) and zp = clamp(rint(qmin - lo / scale)), a zero scale
// replaced by kMinScale. Min and max are exact, so all of this is bit-identical to the CPU.
#pragma once

#include "kernels/cpu/quant.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sq::cuda {

using i64 = std::int64_t;
using cpu::IntFormat;
using cpu::QuantLayout;

// In place x = dequantize(quantize(x)) with given parameters (device arrays of
// num_qparams(rows, cols, layout) elements; zero_point null means all 0), as cpu::fake_quantize.
void fake_quantize(float* x, i64 rows, i64 cols, const QuantLayout& layout, const IntFormat& format,
                   const float* scale, const std::int32_t* zero_point, cudaStream_t stream);

// Dynamic parameters per slice (min-max), then fake quantization, as cpu::fake_quantize_dynamic.
// One thread block per slice: meant for row (per-token) and group layouts; tensor granularity
// works but runs on one block.
void fake_quantize_dynamic(float* x, i64 rows, i64 cols, const QuantLayout& layout,
                           const IntFormat& format, cudaStream_t stream);

// Per-token dynamic quantization (the activation quantizer of integer GEMMs): q [rows, cols]
// codes, scale[rows], and zero_point[rows] (may be null for a symmetric format, else required);
// equal to cpu::qparams_minmax with row granularity followed by cpu::quantize. With the default
// IntFormat (8 bits, symmetric, max_int) the scale is absmax / 127.
void quantize_per_token(const float* x, i64 rows, i64 cols, const IntFormat& format, std::int8_t* q,
                        float* scale, std::int32_t* zero_point, cudaStream_t stream);

// RMSNorm fused with per-token quantization: the normalized row y = x * rsqrt(mean(x^2) + eps) *
// weight, computed exactly as cuda::rms_norm computes it (same bits), quantized as
// quantize_per_token(y) without writing y.
void rms_norm_quantize_per_token(const float* x, i64 rows, i64 cols, const float* weight, float eps,
                                 const IntFormat& format, std::int8_t* q, float* scale,
                                 std::int32_t* zero_point, cudaStream_t stream);

}  // namespace sq::cuda
