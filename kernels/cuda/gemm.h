// GEMMs of the CUDA backend, in the layout of cpu::linear (kernels/cpu/ops.h): row-major
// activations x [m, k], a weight w [n, k] as Hugging Face stores it ([out, in]), and
// y [m, n] = x w^T (+ bias[n]). All data pointers are device pointers; work is enqueued on
// `stream` (nullptr: the legacy default stream). Invalid shapes throw sq::Error before anything is
// launched. 16-bit floats travel as their bits (std::uint16_t, as core/half.h stores them), so
// this header needs no CUDA type headers and compiles in host-only translation units.
//
// Row-major data through column-major cuBLASLt: a row-major [r, c] matrix is the column-major
// [c, r] matrix with leading dimension c. So y^T (n x m, ld n) = op(A) * B with A = the w buffer
// seen as k x n (ld k) and transposed, B = the x buffer seen as k x m (ld k), not transposed:
// cuBLAS m = n, n = m, k = k, the "TN" form, which is also the only form cuBLASLt's INT8 (IMMA)
// kernels take with the ordinary (non-COL32) data order. No operand is copied or transposed.
//
// INT8 (linear_int8 / gemm_int8): int8 x int8 -> int32 through cuBLASLt (CUBLAS_COMPUTE_32I, A/B
// CUDA_R_8I, C/D CUDA_R_32I, int32 alpha = 1, beta = 0), then a dequantization epilogue of our own.
// cuBLASLt's documented requirements for IMMA with the regular data order (cublasLtMatmul, "To use
// IMMA kernels"; Hopper has no COL32 / COL4_4R2_8C orders):
//   - A transposed, B not ("TN"): given by the mapping above;
//   - cuBLAS m and k multiples of 4: our n and k;
//   - leading dimensions of A, B, C multiples of 4: k, k and n here, so the same two conditions;
//   - all matrix pointers 4-byte aligned (16 bytes for the best kernels).
// Our m (tokens) has no documented requirement. Accumulation is exact while |acc| < 2^31:
// k * 128 * 128 < 2^31, so k <= kInt8MaxK (checked by every INT8 entry point).
//
// Which INT8 path (Int8Path):
//   - padded (the default): every dimension that is not a multiple of kInt8PadMultiple (16), and
//     every operand pointer not 16-byte aligned, is copied into a zero-filled stream-ordered
//     scratch buffer of padded size; zeros add nothing to the dot products, and the result is
//     cropped (the epilogue reads the padded accumulator with its leading dimension, gemm_int8
//     copies the m x n corner out). Padding to 16 rather than the documented 4 also keeps the
//     16-byte alignment of every row and sidesteps small-size heuristics (PyTorch's _int_mm on
//     cuBLAS refuses m <= 16 and k, n not multiples of 8). Aligned problems (every dimension a
//     multiple of 16, 16-byte pointers: the LLM shapes) copy nothing. Weights reused across calls
//     are better padded once by the caller and run through the strict path.
//   - strict: no copies; refuses, with an sq::Error naming the dimension and the multiple, any
//     problem outside the documented requirements above (k or n not a multiple of 4, a pointer not
//     4-byte aligned). Also an error (never a silent fallback) when cuBLASLt's heuristic still
//     finds no algorithm.
//   - reference: our own tiled int8 kernel (correct for every size, slow): the GPU-side oracle of
//     the tests, used only when a caller names it. Nothing falls back to it by itself.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

struct cublasLtContext;  // cublasLtHandle_t is cublasLtContext*; <cublasLt.h> stays in gemm.cu

namespace sq::cuda {

using i64 = std::int64_t;

// A cuBLASLt handle and the workspace its kernels may use (split-K and the like). Non-copyable,
// movable. The workspace is shared by every call made through this object: calls on one stream
// are ordered, but two streams must not use one Blas at the same time (make one per stream).
class Blas {
 public:
  // 32 MiB: what the cuBLAS documentation recommends for Hopper.
  static constexpr std::size_t kDefaultWorkspaceBytes = std::size_t{32} << 20;

  explicit Blas(std::size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  Blas(Blas&& other) noexcept;
  Blas& operator=(Blas&& other) noexcept;

  cublasLtContext* handle() const { return handle_; }
  void* workspace() const { return workspace_; }
  std::size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  void reset() noexcept;
  cublasLtContext* handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
};

// The two 16-bit float formats, for outputs that are bits (std::uint16_t) either way.
enum class Half { bf16, f16 };

// ---- 16-bit float GEMMs: bf16 / fp16 inputs, fp32 accumulation (CUBLAS_COMPUTE_32F, fp32 alpha
// and beta), through cublasLtMatmul. bias (may be null) is added in fp32 by cuBLASLt's BIAS
// epilogue before the one rounding of the output, and has the output's type (cuBLASLt's default
// bias type is the output type): bf16 / fp16 bits for a 16-bit y, float for a float y. m, n,
// k >= 0; m or n = 0 does nothing; k = 0 is refused. Any size is accepted (cuBLASLt picks kernels
// that handle odd sizes; the heuristic is told the pointers' real alignment).

// y [m, n] bf16 = x [m, k] bf16 * w [n, k]^T bf16 (+ bias[n] bf16)
void linear_bf16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                 const std::uint16_t* bias, i64 n, std::uint16_t* y, cudaStream_t stream);
// y [m, n] float = x [m, k] bf16 * w [n, k]^T bf16 (+ bias[n] float)
void linear_bf16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                 const float* bias, i64 n, float* y, cudaStream_t stream);
// The same with IEEE half inputs (and a half output in the first form).
void linear_f16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                const std::uint16_t* bias, i64 n, std::uint16_t* y, cudaStream_t stream);
void linear_f16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                const float* bias, i64 n, float* y, cudaStream_t stream);
// fp32 in, fp32 out, fp32 accumulation (no TF32): for checkpoints stored in fp32.
void linear_f32(Blas& blas, const float* x, i64 m, i64 k, const float* w, const float* bias, i64 n,
                float* y, cudaStream_t stream);

// ---- INT8 ----

enum class Int8Path { padded, strict, reference };
inline constexpr i64 kInt8StrictMultiple = 4;  // cuBLASLt's documented IMMA minimum (k, n)
inline constexpr i64 kInt8PadMultiple = 16;    // what the padded path pads m, n and k to
inline constexpr i64 kInt8MaxK = 131071;       // 128 * 128 * k stays below 2^31

// acc [m, n] int32 = x [m, k] int8 * w [n, k]^T int8, exact. m, n, k >= 0 (k <= kInt8MaxK); m or
// n = 0 does nothing, k = 0 writes zeros.
void gemm_int8(Blas& blas, const std::int8_t* x, i64 m, i64 k, const std::int8_t* w, i64 n,
               std::int32_t* acc, Int8Path path, cudaStream_t stream);

// Our own INT8 GEMM (the `reference` path): one thread per output, 16 x 16 output tiles, k in steps
// of 16 through shared memory, int32 accumulation, bounds-checked everywhere, so any size works
// (m up to 65535 * 16 rows). Needs no Blas.
void gemm_int8_reference(const std::int8_t* x, i64 m, i64 k, const std::int8_t* w, i64 n,
                         std::int32_t* acc, cudaStream_t stream);

// The dequantization epilogue: out[i, j] = round((float(acc[i * ld + j]) * x_scale[i]) *
// w_scale[j] + bias[j]) to `out_type`, with IEEE fp32 operations in exactly that order (no FMA
// contraction: __fmul_rn / __fadd_rn) and one round-to-nearest-even conversion, so a CPU can
// reproduce it bit for bit. x_scale [m] per token, w_scale [n] per output channel, bias [n] float
// or null; out [m, n] row-major (ld n). ld >= n.
void dequantize_int8_acc(const std::int32_t* acc, i64 m, i64 n, i64 ld, const float* x_scale,
                         const float* w_scale, const float* bias, std::uint16_t* out, Half out_type,
                         cudaStream_t stream);

// W8A8 linear: gemm_int8 on `path`, then dequantize_int8_acc into out [m, n] (bf16 or fp16
// bits). The int32 accumulator is stream-ordered scratch (cudaMallocAsync) of the padded size.
void linear_int8(Blas& blas, const std::int8_t* x, const float* x_scale, i64 m, i64 k,
                 const std::int8_t* w, const float* w_scale, const float* bias, i64 n,
                 std::uint16_t* out, Half out_type, Int8Path path, cudaStream_t stream);

}  // namespace sq::cuda
