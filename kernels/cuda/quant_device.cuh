// Device-side pieces of the integer quantizers shared by the kernels of this folder (included by
// .cu files only): a format resolved on the host, cpu::quantize_value's arithmetic, and the
// min-max parameters of a slice, each reproducing the CPU's bits (see quant.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/error.h"
#include "kernels/cpu/quant.h"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda::detail {

// An fp32 epilogue value as bf16 (kBf16) or fp16 bits, round to nearest even; every NaN becomes
// the canonical 0x7FFF, as the CPU twins (cpu::dequantize_int8_acc) write it, so the bits do not
// depend on what the conversion instruction does with a NaN's sign and payload.
template <bool kBf16>
__device__ inline std::uint16_t to_half_bits(float v) {
  if (isnan(v)) return 0x7FFF;
  if constexpr (kBf16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  } else {
    return __half_as_ushort(__float2half_rn(v));
  }
}

// The integer range and divisor of an IntFormat, resolved on the host (IntFormat's own methods
// live in sq_kernels_cpu, which this library does not link).
struct Format {
  int qmin = 0;
  int qmax = 0;
  bool symmetric = true;
  float divisor = 1.0f;  // symmetric scale = absmax / divisor
};

inline Format resolve(const cpu::IntFormat& f) {
  if (f.bits < 2 || f.bits > 8) fail("integer quantization needs 2 to 8 bits, got {}", f.bits);
  Format r;
  r.qmin = -(1 << (f.bits - 1));
  r.qmax = (1 << (f.bits - 1)) - 1;
  r.symmetric = f.symmetric;
  // Both exact in float, as IntFormat::symmetric_divisor.
  r.divisor = f.divisor == cpu::IntFormat::Divisor::max_int
                  ? static_cast<float>((1 << (f.bits - 1)) - 1)
                  : static_cast<float>((1 << f.bits) - 1) / 2.0f;
  return r;
}

// cpu::quantize_value. The _rn intrinsics pin IEEE round-to-nearest operations, so neither FMA
// contraction nor a fast-math flag can change the bits.
__device__ inline int quantize_value(float x, float scale, int zero_point, int qmin, int qmax) {
  float r = __fdiv_rn(x, scale);
  if (isnan(r)) r = 0.0f;
  r = fminf(fmaxf(r, -512.0f), 512.0f);
  r = __fadd_rn(rintf(r), static_cast<float>(zero_point));
  r = fminf(fmaxf(r, static_cast<float>(qmin)), static_cast<float>(qmax));
  return static_cast<int>(r);
}

__device__ inline float dequantize_value(int q, float scale, int zero_point) {
  return __fmul_rn(static_cast<float>(q - zero_point), scale);
}

// cpu range_to_qparams (lo, hi: the slice's min and max starting from 0, never NaN).
__device__ inline void range_to_qparams(float lo, float hi, const Format& f, float& scale,
                                        int& zero_point) {
  float s;
  if (f.symmetric) {
    s = __fdiv_rn(fmaxf(fabsf(lo), fabsf(hi)), f.divisor);
  } else {
    lo = fminf(lo, 0.0f);
    hi = fmaxf(hi, 0.0f);
    s = __fdiv_rn(__fsub_rn(hi, lo), static_cast<float>(f.qmax - f.qmin));
  }
  if (!(s > 0.0f)) s = cpu::kMinScale;
  scale = s;
  zero_point = 0;
  if (!f.symmetric) {
    float v = __fsub_rn(static_cast<float>(f.qmin), __fdiv_rn(lo, s));
    if (isnan(v)) v = 0.0f;
    v = fminf(fmaxf(v, -512.0f), 512.0f);
    const int z = static_cast<int>(rintf(v));
    zero_point = z < f.qmin ? f.qmin : (z > f.qmax ? f.qmax : z);
  }
}

// Min and max of one value folded into (lo, hi) as the CPU's slice_minmax does: strict
// comparisons, so NaN is skipped and, starting from +0, a -0 never replaces it.
__device__ inline void fold_range(float v, float& lo, float& hi) {
  if (v < lo) lo = v;
  if (v > hi) hi = v;
}

// The (lo, hi) of a block's per-thread folds, to every thread. The folds are NaN-free and never
// -0, so fminf / fmaxf in any order give the CPU's values.
__device__ inline void block_range(float& lo, float& hi) {
  lo = block_min(lo);
  hi = block_max(hi);
}

}  // namespace sq::cuda::detail
