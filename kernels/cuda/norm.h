// CUDA twins of the CPU normalization kernels in kernels/cpu/ops.h: same arguments and semantics,
// plus a stream. All pointers are device pointers; the launch is asynchronous on `stream`
// (nullptr: the legacy default stream). Launch errors throw sq::Error.
//
// Accumulation is in float (the CPU kernels accumulate in double); layer_norm computes the
// variance in a second pass over (x - mean), not as E[x^2] - mean^2, so rows with a large mean do
// not lose precision to cancellation.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sq::cuda {

using i64 = std::int64_t;

// out = x * rsqrt(mean(x^2) + eps) * weight, per row of x [rows, cols].
void rms_norm(const float* x, i64 rows, i64 cols, const float* weight, float eps, float* out,
              cudaStream_t stream);

// out = (x - mean) * rsqrt(var + eps) * weight + bias, per row; bias may be null. var is the
// biased (population) variance, as in torch.nn.LayerNorm.
void layer_norm(const float* x, i64 rows, i64 cols, const float* weight, const float* bias,
                float eps, float* out, cudaStream_t stream);

}  // namespace sq::cuda
