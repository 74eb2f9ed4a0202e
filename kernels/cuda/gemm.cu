// GEMM wrappers over cuBLASLt and the INT8 kernels of our own (see gemm.h for the layout mapping,
// the INT8 requirements and which path does what).
#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/error.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/quant_device.cuh"

namespace sq::cuda {
namespace {

void check_lt(cublasStatus_t status, const char* what, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail("cuBLASLt error {} ({}): {} [{} at {}:{}]", cublasLtGetStatusName(status),
       static_cast<int>(status), cublasLtGetStatusString(status), what, file, line);
}

#define SQ_LT_CHECK(expr) check_lt((expr), #expr, __FILE__, __LINE__)

// RAII owners of the cuBLASLt descriptors of one call.
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  ~MatmulDesc() {
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t layout = nullptr;
  ~MatrixLayout() {
    if (layout != nullptr) cublasLtMatrixLayoutDestroy(layout);
  }
};
struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  ~Preference() {
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
  }
};

// Stream-ordered scratch memory: cudaMallocAsync now, cudaFreeAsync on the same stream when the
// owner goes, so the memory is released only after the work enqueued before it.
class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  ~StreamScratch() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
  }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;

  void* allocate(std::size_t bytes) {
    SQ_CHECK(ptr_ == nullptr, "scratch allocated twice");
    SQ_CUDA_CHECK(cudaMallocAsync(&ptr_, std::max<std::size_t>(bytes, 1), stream_));
    return ptr_;
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
};

// The largest power of two (<= 256, cuBLASLt's default assumption) that divides the address.
std::uint32_t alignment_of(const void* ptr) {
  const auto address = reinterpret_cast<std::uintptr_t>(ptr);
  std::uint32_t align = 256;
  while (align > 1 && address % align != 0) align /= 2;
  return align;
}

bool aligned(const void* ptr, std::uint32_t bytes) {
  return reinterpret_cast<std::uintptr_t>(ptr) % bytes == 0;
}

i64 round_up(i64 v, i64 multiple) { return (v + multiple - 1) / multiple * multiple; }

// One column-major cuBLASLt call D = alpha * op(A) * B (+ bias), beta = 0, C = D, in the "TN"
// form: A stored inner x rows (ld lda) and transposed, B stored inner x cols (ld ldb), D rows x
// cols (ld ldd). See gemm.h for how row-major x, w and y map onto it.
struct Matmul {
  const char* who = "";
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale_type = CUDA_R_32F;
  cudaDataType_t ab_type = CUDA_R_16BF;
  cudaDataType_t d_type = CUDA_R_16BF;
  const void* alpha = nullptr;
  const void* beta = nullptr;
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
  const void* bias = nullptr;  // of d_type, rows elements; null: no bias epilogue
  i64 rows = 0, cols = 0, inner = 0;
  i64 lda = 0, ldb = 0, ldd = 0;
};

// Row-major y [m, n] (ld ldy) = x [m, k] w [n, k]^T (both ld ldk) in that TN form: A = w, B = x,
// cuBLAS m = n, n = m (gemm.h). Types, scalars and the bias are the caller's to set.
Matmul row_major_tn(const char* who, const void* x, i64 m, const void* w, i64 n, void* y, i64 k,
                    i64 ldk, i64 ldy) {
  Matmul p;
  p.who = who;
  p.a = w;
  p.b = x;
  p.d = y;
  p.rows = n;
  p.cols = m;
  p.inner = k;
  p.lda = ldk;
  p.ldb = ldk;
  p.ldd = ldy;
  return p;
}

void run_matmul(Blas& blas, const Matmul& p, cudaStream_t stream) {
  MatmulDesc desc;
  SQ_LT_CHECK(cublasLtMatmulDescCreate(&desc.desc, p.compute, p.scale_type));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  SQ_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                             sizeof trans_a));
  SQ_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                             sizeof trans_b));
  if (p.bias != nullptr) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    SQ_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                               sizeof epilogue));
    SQ_LT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                               &p.bias, sizeof p.bias));
  }

  MatrixLayout a, b, d;
  SQ_LT_CHECK(cublasLtMatrixLayoutCreate(&a.layout, p.ab_type, static_cast<std::uint64_t>(p.inner),
                                         static_cast<std::uint64_t>(p.rows), p.lda));
  SQ_LT_CHECK(cublasLtMatrixLayoutCreate(&b.layout, p.ab_type, static_cast<std::uint64_t>(p.inner),
                                         static_cast<std::uint64_t>(p.cols), p.ldb));
  SQ_LT_CHECK(cublasLtMatrixLayoutCreate(&d.layout, p.d_type, static_cast<std::uint64_t>(p.rows),
                                         static_cast<std::uint64_t>(p.cols), p.ldd));

  // The heuristic assumes 256-byte aligned buffers unless told otherwise: tell it the truth, so it
  // never picks a kernel that would fault on an offset pointer.
  Preference pref;
  SQ_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref.pref));
  const std::size_t workspace = blas.workspace_bytes();
  SQ_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace));
  const std::uint32_t align_a = alignment_of(p.a), align_b = alignment_of(p.b),
                      align_d = alignment_of(p.d);
  SQ_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a));
  SQ_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b));
  SQ_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d));
  SQ_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(blas.handle(), desc.desc, a.layout, b.layout, d.layout,
                                     d.layout, pref.pref, 1, &result, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    fail(
        "{}: cuBLASLt has no algorithm for this problem (cuBLAS m = {}, n = {}, k = {}; ld {} {} "
        "{}; "
        "alignment A {} B {} D {} bytes): {}",
        p.who, p.rows, p.cols, p.inner, p.lda, p.ldb, p.ldd, align_a, align_b, align_d,
        status == CUBLAS_STATUS_SUCCESS ? "no result" : cublasLtGetStatusName(status));
  }
  SQ_LT_CHECK(cublasLtMatmul(blas.handle(), desc.desc, p.alpha, p.a, a.layout, p.b, b.layout,
                             p.beta, p.d, d.layout, p.d, d.layout, &result.algo, blas.workspace(),
                             blas.workspace_bytes(), stream));
}

void check_shape(const char* who, i64 m, i64 k, i64 n) {
  if (m < 0 || k < 0 || n < 0) fail("{}: negative shape m = {}, k = {}, n = {}", who, m, k, n);
}

// y [m, n] = x [m, k] w [n, k]^T (+ bias) for 16-bit or fp32 inputs, fp32 accumulation
// (CUBLAS_COMPUTE_32F: never TF32, which only CUBLAS_COMPUTE_32F_FAST_TF32 allows).
void linear_float(Blas& blas, const char* who, cudaDataType_t in_type, const void* x, i64 m, i64 k,
                  const void* w, const void* bias, i64 n, void* y, cudaDataType_t out_type,
                  cudaStream_t stream) {
  check_shape(who, m, k, n);
  if (m == 0 || n == 0) return;
  if (k == 0) fail("{}: k = 0 (an empty inner dimension) is not supported", who);
  const float alpha = 1.0f, beta = 0.0f;
  Matmul p = row_major_tn(who, x, m, w, n, y, k, k, n);
  p.compute = CUBLAS_COMPUTE_32F;
  p.scale_type = CUDA_R_32F;
  p.ab_type = in_type;
  p.d_type = out_type;
  p.alpha = &alpha;
  p.beta = &beta;
  p.bias = bias;
  run_matmul(blas, p, stream);
}

// ---- INT8 ----

void check_int8_shape(const char* who, i64 m, i64 k, i64 n) {
  check_shape(who, m, k, n);
  if (k > kInt8MaxK)
    fail("{}: k = {} exceeds {} (int32 accumulation of int8 products could overflow)", who, k,
         kInt8MaxK);
}

// cuBLASLt INT8 -> INT32 on row-major x [m, k] (ld ldk), w [n, k] (ld ldk), acc [m, n] (ld ldn),
// sizes already meeting the IMMA requirements.
void lt_int8(Blas& blas, const char* who, const std::int8_t* x, i64 m, i64 k, i64 ldk,
             const std::int8_t* w, i64 n, std::int32_t* acc, i64 ldn, cudaStream_t stream) {
  const std::int32_t alpha = 1, beta = 0;
  Matmul p = row_major_tn(who, x, m, w, n, acc, k, ldk, ldn);
  p.compute = CUBLAS_COMPUTE_32I;
  p.scale_type = CUDA_R_32I;
  p.ab_type = CUDA_R_8I;
  p.d_type = CUDA_R_32I;
  p.alpha = &alpha;
  p.beta = &beta;
  run_matmul(blas, p, stream);
}

// The strict path's refusals: cuBLASLt's documented IMMA requirements (gemm.h).
void check_strict(const char* who, const std::int8_t* x, i64 k, const std::int8_t* w, i64 n,
                  const std::int32_t* acc) {
  const char* hint = "use Int8Path::padded, or pad the operands";
  if (k % kInt8StrictMultiple != 0)
    fail(
        "{}: strict INT8 path: K = {} is not a multiple of {} (cuBLASLt IMMA kernels need k and "
        "the leading dimensions of x and w as multiples of {}); {}",
        who, k, kInt8StrictMultiple, kInt8StrictMultiple, hint);
  if (n % kInt8StrictMultiple != 0)
    fail(
        "{}: strict INT8 path: N = {} is not a multiple of {} (cuBLASLt IMMA kernels need the "
        "output rows of w and the accumulator's leading dimension as multiples of {}); {}",
        who, n, kInt8StrictMultiple, kInt8StrictMultiple, hint);
  const std::pair<const void*, const char*> pointers[] = {{x, "x"}, {w, "w"}, {acc, "acc"}};
  for (const auto& [ptr, name] : pointers) {
    if (!aligned(ptr, 4))
      fail("{}: strict INT8 path: pointer {} is not 4-byte aligned (cuBLASLt IMMA needs 4); {}",
           who, name, hint);
  }
}

// Where an INT8 GEMM left its int32 result: [m, n] with leading dimension ld.
struct Accumulator {
  const std::int32_t* data = nullptr;
  i64 ld = 0;
};

// The padded path (gemm.h): pads what needs padding into `scratch_*`, writes the accumulator to
// `direct` (ld n) when it needs no padding and is given, else to scratch [mp, np].
Accumulator padded_int8(Blas& blas, const char* who, const std::int8_t* x, i64 m, i64 k,
                        const std::int8_t* w, i64 n, std::int32_t* direct, StreamScratch& scratch_x,
                        StreamScratch& scratch_w, StreamScratch& scratch_acc, cudaStream_t stream) {
  const i64 mp = round_up(m, kInt8PadMultiple), np = round_up(n, kInt8PadMultiple),
            kp = round_up(k, kInt8PadMultiple);
  // A row-major [rows, cols] int8 operand, copied into a zeroed [rows_p, kp] buffer unless it
  // already has the padded shape and a 16-byte aligned start.
  auto operand = [&](const std::int8_t* src, i64 rows, i64 rows_p, StreamScratch& scratch) {
    if (rows == rows_p && k == kp && aligned(src, 16)) return src;
    auto* dst = static_cast<std::int8_t*>(
        scratch.allocate(static_cast<std::size_t>(rows_p) * static_cast<std::size_t>(kp)));
    SQ_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<std::size_t>(rows_p * kp), stream));
    if (rows > 0 && k > 0) {
      SQ_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<std::size_t>(kp), src,
                                      static_cast<std::size_t>(k), static_cast<std::size_t>(k),
                                      static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice,
                                      stream));
    }
    return static_cast<const std::int8_t*>(dst);
  };
  const std::int8_t* xp = operand(x, m, mp, scratch_x);
  const std::int8_t* wp = operand(w, n, np, scratch_w);
  std::int32_t* acc = direct;
  if (acc == nullptr || m != mp || n != np || !aligned(acc, 16)) {
    acc = static_cast<std::int32_t*>(
        scratch_acc.allocate(static_cast<std::size_t>(mp) * static_cast<std::size_t>(np) * 4));
  }
  lt_int8(blas, who, xp, mp, kp, kp, wp, np, acc, np, stream);
  return {acc, np};
}

constexpr int kRefTile = 16;

__global__ void gemm_int8_reference_kernel(const std::int8_t* __restrict__ x,
                                           const std::int8_t* __restrict__ w, i64 m, i64 n, i64 k,
                                           std::int32_t* __restrict__ acc) {
  __shared__ int xs[kRefTile][kRefTile + 1];
  __shared__ int ws[kRefTile][kRefTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const i64 row = static_cast<i64>(blockIdx.y) * kRefTile + ty;   // output row (token)
  const i64 col = static_cast<i64>(blockIdx.x) * kRefTile + tx;   // output column (channel)
  const i64 wrow = static_cast<i64>(blockIdx.x) * kRefTile + ty;  // the w row this thread loads
  int sum = 0;
  for (i64 k0 = 0; k0 < k; k0 += kRefTile) {
    const i64 kk = k0 + tx;
    xs[ty][tx] = row < m && kk < k ? static_cast<int>(x[row * k + kk]) : 0;
    ws[ty][tx] = wrow < n && kk < k ? static_cast<int>(w[wrow * k + kk]) : 0;
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kRefTile; ++t) sum += xs[ty][t] * ws[tx][t];
    __syncthreads();
  }
  if (row < m && col < n) acc[row * n + col] = sum;
}

void launch_reference(const char* who, const std::int8_t* x, i64 m, i64 k, const std::int8_t* w,
                      i64 n, std::int32_t* acc, cudaStream_t stream) {
  const i64 grid_y = (m + kRefTile - 1) / kRefTile, grid_x = (n + kRefTile - 1) / kRefTile;
  if (grid_y > 65535) fail("{}: reference INT8 GEMM supports m <= {}, got {}", who, 65535 * 16, m);
  if (grid_x > 0x7FFFFFFF) fail("{}: reference INT8 GEMM: n = {} is too large", who, n);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  const dim3 block(kRefTile, kRefTile);
  gemm_int8_reference_kernel<<<grid, block, 0, stream>>>(x, w, m, n, k, acc);
  SQ_CUDA_CHECK(cudaGetLastError());
}

constexpr int kEpilogueThreads = 256;

// One thread per column j (w_scale and bias read once), rows strided over grid.y.
template <Half H>
__global__ void dequantize_kernel(const std::int32_t* __restrict__ acc, i64 m, i64 n, i64 ld,
                                  const float* __restrict__ x_scale,
                                  const float* __restrict__ w_scale, const float* __restrict__ bias,
                                  std::uint16_t* __restrict__ out) {
  const i64 j = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const float wj = w_scale[j];
  const float bj = bias != nullptr ? bias[j] : 0.0f;
  for (i64 i = blockIdx.y; i < m; i += gridDim.y) {
    float v = __fmul_rn(__fmul_rn(__int2float_rn(acc[i * ld + j]), x_scale[i]), wj);
    if (bias != nullptr) v = __fadd_rn(v, bj);
    out[i * n + j] = detail::to_half_bits<H == Half::bf16>(v);
  }
}

void launch_dequantize(const std::int32_t* acc, i64 m, i64 n, i64 ld, const float* x_scale,
                       const float* w_scale, const float* bias, std::uint16_t* out, Half out_type,
                       cudaStream_t stream) {
  const i64 blocks_x = (n + kEpilogueThreads - 1) / kEpilogueThreads;
  if (blocks_x > 0x7FFFFFFF) fail("cuda::dequantize_int8_acc: n = {} is too large", n);
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(std::min<i64>(m, 65535)));
  if (out_type == Half::bf16) {
    dequantize_kernel<Half::bf16>
        <<<grid, kEpilogueThreads, 0, stream>>>(acc, m, n, ld, x_scale, w_scale, bias, out);
  } else {
    dequantize_kernel<Half::f16>
        <<<grid, kEpilogueThreads, 0, stream>>>(acc, m, n, ld, x_scale, w_scale, bias, out);
  }
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// ---- Blas ----

Blas::Blas(std::size_t workspace_bytes) {
  cublasLtHandle_t handle = nullptr;
  SQ_LT_CHECK(cublasLtCreate(&handle));
  handle_ = handle;
  if (workspace_bytes > 0) {
    const cudaError_t status = cudaMalloc(&workspace_, workspace_bytes);
    if (status != cudaSuccess) {
      reset();
      SQ_CUDA_CHECK(status);
    }
    workspace_bytes_ = workspace_bytes;
  }
}

Blas::~Blas() { reset(); }

Blas::Blas(Blas&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)),
      workspace_(std::exchange(other.workspace_, nullptr)),
      workspace_bytes_(std::exchange(other.workspace_bytes_, 0)) {}

Blas& Blas::operator=(Blas&& other) noexcept {
  if (this != &other) {
    reset();
    handle_ = std::exchange(other.handle_, nullptr);
    workspace_ = std::exchange(other.workspace_, nullptr);
    workspace_bytes_ = std::exchange(other.workspace_bytes_, 0);
  }
  return *this;
}

// As DeviceBuffer::reset: errors here can only be sticky errors of earlier work, which the next
// checked call reports; a destructor must not throw them.
void Blas::reset() noexcept {
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
  workspace_ = nullptr;
  handle_ = nullptr;
  workspace_bytes_ = 0;
}

// ---- 16-bit linears ----

void linear_bf16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                 const std::uint16_t* bias, i64 n, std::uint16_t* y, cudaStream_t stream) {
  linear_float(blas, "cuda::linear_bf16", CUDA_R_16BF, x, m, k, w, bias, n, y, CUDA_R_16BF, stream);
}

void linear_bf16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                 const float* bias, i64 n, float* y, cudaStream_t stream) {
  linear_float(blas, "cuda::linear_bf16", CUDA_R_16BF, x, m, k, w, bias, n, y, CUDA_R_32F, stream);
}

void linear_f16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                const std::uint16_t* bias, i64 n, std::uint16_t* y, cudaStream_t stream) {
  linear_float(blas, "cuda::linear_f16", CUDA_R_16F, x, m, k, w, bias, n, y, CUDA_R_16F, stream);
}

void linear_f16(Blas& blas, const std::uint16_t* x, i64 m, i64 k, const std::uint16_t* w,
                const float* bias, i64 n, float* y, cudaStream_t stream) {
  linear_float(blas, "cuda::linear_f16", CUDA_R_16F, x, m, k, w, bias, n, y, CUDA_R_32F, stream);
}

void linear_f32(Blas& blas, const float* x, i64 m, i64 k, const float* w, const float* bias, i64 n,
                float* y, cudaStream_t stream) {
  linear_float(blas, "cuda::linear_f32", CUDA_R_32F, x, m, k, w, bias, n, y, CUDA_R_32F, stream);
}

// ---- INT8 ----

void gemm_int8_reference(const std::int8_t* x, i64 m, i64 k, const std::int8_t* w, i64 n,
                         std::int32_t* acc, cudaStream_t stream) {
  const char* who = "cuda::gemm_int8_reference";
  check_int8_shape(who, m, k, n);
  if (m == 0 || n == 0) return;
  launch_reference(who, x, m, k, w, n, acc, stream);
}

void gemm_int8(Blas& blas, const std::int8_t* x, i64 m, i64 k, const std::int8_t* w, i64 n,
               std::int32_t* acc, Int8Path path, cudaStream_t stream) {
  const char* who = "cuda::gemm_int8";
  check_int8_shape(who, m, k, n);
  if (path == Int8Path::strict) check_strict(who, x, k, w, n, acc);
  if (m == 0 || n == 0) return;
  if (k == 0) {  // empty dot products; cuBLASLt is not asked about k = 0
    SQ_CUDA_CHECK(cudaMemsetAsync(acc, 0, static_cast<std::size_t>(m * n) * 4, stream));
    return;
  }
  switch (path) {
    case Int8Path::reference:
      launch_reference(who, x, m, k, w, n, acc, stream);
      return;
    case Int8Path::strict:
      lt_int8(blas, who, x, m, k, k, w, n, acc, n, stream);
      return;
    case Int8Path::padded: {
      StreamScratch sx(stream), sw(stream), sacc(stream);
      const Accumulator result = padded_int8(blas, who, x, m, k, w, n, acc, sx, sw, sacc, stream);
      if (result.data != acc) {  // crop the padded accumulator into the caller's [m, n]
        SQ_CUDA_CHECK(cudaMemcpy2DAsync(
            acc, static_cast<std::size_t>(n) * 4, result.data,
            static_cast<std::size_t>(result.ld) * 4, static_cast<std::size_t>(n) * 4,
            static_cast<std::size_t>(m), cudaMemcpyDeviceToDevice, stream));
      }
      return;
    }
  }
  fail("{}: unknown Int8Path {}", who, static_cast<int>(path));
}

void dequantize_int8_acc(const std::int32_t* acc, i64 m, i64 n, i64 ld, const float* x_scale,
                         const float* w_scale, const float* bias, std::uint16_t* out, Half out_type,
                         cudaStream_t stream) {
  if (m < 0 || n < 0) fail("cuda::dequantize_int8_acc: negative shape [{}, {}]", m, n);
  if (ld < n) fail("cuda::dequantize_int8_acc: leading dimension {} < n = {}", ld, n);
  if (m == 0 || n == 0) return;
  launch_dequantize(acc, m, n, ld, x_scale, w_scale, bias, out, out_type, stream);
}

void linear_int8(Blas& blas, const std::int8_t* x, const float* x_scale, i64 m, i64 k,
                 const std::int8_t* w, const float* w_scale, const float* bias, i64 n,
                 std::uint16_t* out, Half out_type, Int8Path path, cudaStream_t stream) {
  const char* who = "cuda::linear_int8";
  check_int8_shape(who, m, k, n);
  // The strict checks on x and w come first; the accumulator is our own (cudaMallocAsync: 256-byte
  // aligned), so it always passes.
  if (path == Int8Path::strict) check_strict(who, x, k, w, n, nullptr);
  if (m == 0 || n == 0) return;
  StreamScratch sx(stream), sw(stream), sacc(stream);
  Accumulator acc;
  if (path == Int8Path::padded && k > 0) {
    acc = padded_int8(blas, who, x, m, k, w, n, nullptr, sx, sw, sacc, stream);
  } else {
    auto* buffer = static_cast<std::int32_t*>(
        sacc.allocate(static_cast<std::size_t>(m) * static_cast<std::size_t>(n) * 4));
    if (k == 0) {
      SQ_CUDA_CHECK(cudaMemsetAsync(buffer, 0, static_cast<std::size_t>(m * n) * 4, stream));
    } else if (path == Int8Path::reference) {
      launch_reference(who, x, m, k, w, n, buffer, stream);
    } else if (path == Int8Path::strict) {
      lt_int8(blas, who, x, m, k, k, w, n, buffer, n, stream);
    } else {
      fail("{}: unknown Int8Path {}", who, static_cast<int>(path));
    }
    acc = {buffer, n};
  }
  launch_dequantize(acc.data, m, n, acc.ld, x_scale, w_scale, bias, out, out_type, stream);
}

}  // namespace sq::cuda
