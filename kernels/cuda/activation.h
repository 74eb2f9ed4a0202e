// CUDA twins of the elementwise MLP activations in kernels/cpu/ops.h: same arguments and formulas,
// plus a stream. All pointers are device pointers; launches are asynchronous on `stream`
// (nullptr: the legacy default stream). A negative n throws sq::Error; n == 0 launches nothing.
//
// relu is exact. silu_mul and gelu_tanh use CUDA's expf / tanhf (at most 2 ulp from the correctly
// rounded value without fast math), so they may differ from the CPU (glibc) in the last bits.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sq::cuda {

using i64 = std::int64_t;

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i] (SwiGLU).
void silu_mul(const float* gate, const float* up, i64 n, float* out, cudaStream_t stream);
// In place x = max(x, 0); NaN becomes 0, as on the CPU (x > 0 ? x : 0).
void relu(float* x, i64 n, cudaStream_t stream);
// In place GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_tanh(float* x, i64 n, cudaStream_t stream);

}  // namespace sq::cuda
