// Elementwise helpers of the CUDA block forward: fp32 -> 16-bit casts (the GEMM inputs of a
// 16-bit model) and the residual add. Device pointers, asynchronous on `stream` (nullptr: the
// legacy default stream); a negative n throws sq::Error, n == 0 launches nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sq::cuda {

using i64 = std::int64_t;

// out[i] = x[i] rounded to nearest-even bf16 / IEEE half, as bits; the same bits as
// sq::f32_to_bf16 / sq::f32_to_f16 (core/half.h) for every finite and infinite input (NaN stays
// NaN).
void to_bf16(const float* x, i64 n, std::uint16_t* out, cudaStream_t stream);
void to_f16(const float* x, i64 n, std::uint16_t* out, cudaStream_t stream);

// y[i] += x[i] (cpu::add); exact.
void add(const float* x, i64 n, float* y, cudaStream_t stream);

}  // namespace sq::cuda
