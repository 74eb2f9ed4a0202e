// 4-bit weights and activations on the GPU: packing, per-token 4-bit quantization, and a W4A4 GEMM
// that unpacks nibbles in registers and feeds the int8 tensor cores (Hopper has no 4-bit MMA). The
// CUDA twins of kernels/cpu/int4.h: same packed layout (compressed-tensors' pack-quantized layout
// at 4 bits, as cpu::pack_quantized(q, rows, cols, 4, packed) writes it: q + 8 in a nibble, element
// i of a row in nibble i % 8 of int32 word i / 8, rows padded with zero bits to
// cpu::int4_row_words(cols) words), same rounding, same results bit for bit.
//
// All data pointers are device pointers; work is enqueued on `stream` (nullptr: the legacy default
// stream). Every argument is checked before anything is launched: an invalid one throws sq::Error
// naming it. 16-bit outputs are bits (std::uint16_t); this header compiles in host-only
// translation units.
//
// The GEMM (gemm_w4a4, linear_w4a4): x [m, k] and w [n, k] packed, row stride int4_row_words(k)
// int32 words; acc [m, n] = x w^T exact in int32 (k <= cpu::kW4A4MaxK). Built for decode-sized m
// (<= 16: one pass over the weights, which it streams with 16-byte loads); any m works, one pass
// over the weights per 16 rows of x. Any n and k: rows past n are not read, columns past k (the
// row padding, which decodes to -8) never enter a sum. The 16-byte loads need a row stride of a
// multiple of 4 words (k rounded up to a multiple of 32, i.e. int4_row_words(k) % 4 == 0) and
// 16-byte aligned x and w; other problems take 4-byte loads (correct, slower). Pad k (zero codes
// cost nothing but bandwidth) to get the fast path.
#pragma once

#include "kernels/cpu/int4.h"

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/quant.h"
#include "kernels/cuda/gemm.h"

namespace sq::cuda {

using i64 = std::int64_t;
using cpu::IntFormat;

// packed [rows, int4_row_words(cols)] from int8 codes q [rows, cols]: the bytes of
// cpu::pack_quantized(q, rows, cols, 4, packed) for codes in [-8, 7]. Out-of-range codes, which
// the CPU refuses, are clamped to [-8, 7] here (a kernel cannot throw).
void pack_int4(const std::int8_t* q, i64 rows, i64 cols, std::int32_t* packed, cudaStream_t stream);

// Per-token dynamic symmetric 4-bit quantization, fused (one thread block per row: min/max
// reduction, scale, quantization, nibbles written packed): packed [rows, int4_row_words(cols)],
// scale [rows], equal bit for bit to cpu::quantize_per_token_int4 (NaN skipped by the min/max and
// quantized to 0; an all-zero row gets kMinScale). format must be 4 bits and symmetric; its
// divisor picks absmax / 7 or absmax / 7.5.
void quantize_per_token_int4(const float* x, i64 rows, i64 cols, const IntFormat& format,
                             std::int32_t* packed, float* scale, cudaStream_t stream);

// acc [m, n] int32 = x [m, k] * w [n, k]^T over the 4-bit codes, as cpu::gemm_w4a4_reference.
// m, n, k >= 0, k <= cpu::kW4A4MaxK; m or n = 0 does nothing; k = 0 writes zeros.
void gemm_w4a4(const std::int32_t* x_packed, i64 m, i64 k, const std::int32_t* w_packed, i64 n,
               std::int32_t* acc, cudaStream_t stream);

// W4A4 linear in one launch: the GEMM with dequantize_int8_acc's epilogue fused into its store,
// out[i, j] = round((float(acc) * x_scale[i]) * w_scale[j] + bias[j]) with the same fp32
// operations in the same order, bit for bit cpu::linear_w4a4_reference. x_scale [m], w_scale [n],
// bias [n] float or null, out [m, n] bf16 or fp16 bits.
void linear_w4a4(const std::int32_t* x_packed, const float* x_scale, i64 m, i64 k,
                 const std::int32_t* w_packed, const float* w_scale, const float* bias, i64 n,
                 std::uint16_t* out, Half out_type, cudaStream_t stream);

}  // namespace sq::cuda
