// Integer quantization kernels (see quant.h). Elementwise fake quantization with given parameters
// runs one thread per element; everything with dynamic parameters runs one thread block per slice
// (a row, or a group of a row): a min/max reduction over the slice, the parameters, then a second
// pass over the slice (re-read from L1/L2) that quantizes.
#include "kernels/cuda/quant.h"

#include <algorithm>
#include <climits>

#include "core/error.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/quant_device.cuh"
#include "kernels/cuda/reduce.cuh"

namespace sq::cuda {
namespace {

using detail::Format;
using detail::resolve;

// count slices of len contiguous elements (cpu::num_qparams' checks and messages).
struct Slices {
  i64 count = 0;
  i64 len = 0;
};

Slices slices_of(i64 rows, i64 cols, const QuantLayout& layout) {
  if (rows < 0 || cols < 0) fail("quantization: negative shape [{}, {}]", rows, cols);
  switch (layout.granularity) {
    case cpu::Granularity::tensor:
      return {1, rows * cols};
    case cpu::Granularity::row:
      return {rows, cols};
    case cpu::Granularity::group:
      if (layout.group_size <= 0)
        fail("quantization: group size must be > 0, got {}", layout.group_size);
      if (cols % layout.group_size != 0)
        fail("quantization: group size {} does not divide the {} columns", layout.group_size, cols);
      return {rows * (cols / layout.group_size), layout.group_size};
  }
  fail("quantization: unknown granularity {}", static_cast<int>(layout.granularity));
}

void require_zero_point(const Format& f, const std::int32_t* zero_point) {
  if (!f.symmetric && zero_point == nullptr)
    fail("quantization: asymmetric parameters need a zero-point buffer");
}

using detail::block_range;
using detail::dequantize_value;
using detail::fold_range;
using detail::quantize_value;
using detail::range_to_qparams;

__global__ void fake_quantize_kernel(float* __restrict__ x, i64 n, i64 slice_len,
                                     const float* __restrict__ scale,
                                     const std::int32_t* __restrict__ zero_point, int qmin,
                                     int qmax) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const i64 k = i / slice_len;
    const float s = scale[k];
    const int z = zero_point != nullptr ? zero_point[k] : 0;
    x[i] = dequantize_value(quantize_value(x[i], s, z, qmin, qmax), s, z);
  }
}

__global__ void fake_quantize_dynamic_kernel(float* __restrict__ x, i64 slice_len, Format f) {
  float* xs = x + static_cast<i64>(blockIdx.x) * slice_len;
  float lo = 0.0f, hi = 0.0f;
  for (i64 j = threadIdx.x; j < slice_len; j += blockDim.x) fold_range(xs[j], lo, hi);
  block_range(lo, hi);
  float s;
  int z;
  range_to_qparams(lo, hi, f, s, z);
  for (i64 j = threadIdx.x; j < slice_len; j += blockDim.x)
    xs[j] = dequantize_value(quantize_value(xs[j], s, z, f.qmin, f.qmax), s, z);
}

// One block per row. kVec: cols % 4 == 0 and x 16-byte / q 4-byte aligned, so a row is read as
// float4 and written as 4 codes at a time.
template <bool kVec>
__global__ void quantize_rows_kernel(const float* __restrict__ x, i64 cols, Format f,
                                     std::int8_t* __restrict__ q, float* __restrict__ scale,
                                     std::int32_t* __restrict__ zero_point) {
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  std::int8_t* qr = q + row * cols;
  float lo = 0.0f, hi = 0.0f;
  if constexpr (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (i64 j = threadIdx.x; j < cols / 4; j += blockDim.x) {
      const float4 v = x4[j];
      fold_range(v.x, lo, hi);
      fold_range(v.y, lo, hi);
      fold_range(v.z, lo, hi);
      fold_range(v.w, lo, hi);
    }
  } else {
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x) fold_range(xr[j], lo, hi);
  }
  block_range(lo, hi);
  float s;
  int z;
  range_to_qparams(lo, hi, f, s, z);
  if (threadIdx.x == 0) {
    scale[row] = s;
    if (zero_point != nullptr) zero_point[row] = z;
  }
  if constexpr (kVec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    char4* q4 = reinterpret_cast<char4*>(qr);
    for (i64 j = threadIdx.x; j < cols / 4; j += blockDim.x) {
      const float4 v = x4[j];
      q4[j] = make_char4(static_cast<signed char>(quantize_value(v.x, s, z, f.qmin, f.qmax)),
                         static_cast<signed char>(quantize_value(v.y, s, z, f.qmin, f.qmax)),
                         static_cast<signed char>(quantize_value(v.z, s, z, f.qmin, f.qmax)),
                         static_cast<signed char>(quantize_value(v.w, s, z, f.qmin, f.qmax)));
    }
  } else {
    for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
      qr[j] = static_cast<std::int8_t>(quantize_value(xr[j], s, z, f.qmin, f.qmax));
  }
}

// One block per row, blockDim = rms_norm's, so inv_rms has rms_norm's bits; y is recomputed in
// the quantizing pass with the same expression instead of being stored.
__global__ void rms_norm_quantize_kernel(const float* __restrict__ x, i64 cols,
                                         const float* __restrict__ weight, float eps, Format f,
                                         std::int8_t* __restrict__ q, float* __restrict__ scale,
                                         std::int32_t* __restrict__ zero_point) {
  const i64 row = blockIdx.x;
  const float* xr = x + row * cols;
  std::int8_t* qr = q + row * cols;
  const float inv_rms = detail::row_inv_rms(xr, cols, eps);
  float lo = 0.0f, hi = 0.0f;
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
    fold_range(xr[j] * inv_rms * weight[j], lo, hi);
  block_range(lo, hi);
  float s;
  int z;
  range_to_qparams(lo, hi, f, s, z);
  if (threadIdx.x == 0) {
    scale[row] = s;
    if (zero_point != nullptr) zero_point[row] = z;
  }
  for (i64 j = threadIdx.x; j < cols; j += blockDim.x)
    qr[j] =
        static_cast<std::int8_t>(quantize_value(xr[j] * inv_rms * weight[j], s, z, f.qmin, f.qmax));
}

void check_blocks(const char* kernel, i64 blocks) {
  if (blocks > INT_MAX)
    fail("{}: {} slices exceed the {} blocks of one grid", kernel, blocks, INT_MAX);
}

constexpr int kElementThreads = 256;
constexpr int kRowThreads = 512;  // per-token quantization: 8192 columns are 4 float4 per thread

}  // namespace

void fake_quantize(float* x, i64 rows, i64 cols, const QuantLayout& layout, const IntFormat& format,
                   const float* scale, const std::int32_t* zero_point, cudaStream_t stream) {
  const Slices sl = slices_of(rows, cols, layout);
  const Format f = resolve(format);
  const i64 n = rows * cols;
  if (n == 0) return;
  // Enough blocks to fill the GPU many times over; the kernel strides over the rest.
  const i64 blocks = std::min<i64>((n + kElementThreads - 1) / kElementThreads, i64{1} << 16);
  fake_quantize_kernel<<<static_cast<unsigned>(blocks), kElementThreads, 0, stream>>>(
      x, n, sl.len, scale, zero_point, f.qmin, f.qmax);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void fake_quantize_dynamic(float* x, i64 rows, i64 cols, const QuantLayout& layout,
                           const IntFormat& format, cudaStream_t stream) {
  const Slices sl = slices_of(rows, cols, layout);
  const Format f = resolve(format);
  if (sl.count == 0 || sl.len == 0) return;
  check_blocks("cuda::fake_quantize_dynamic", sl.count);
  const int threads = detail::threads_for_cols(sl.len, detail::kMaxBlockThreads);
  fake_quantize_dynamic_kernel<<<static_cast<unsigned>(sl.count), threads, 0, stream>>>(x, sl.len,
                                                                                        f);
  SQ_CUDA_CHECK(cudaGetLastError());
}

void quantize_per_token(const float* x, i64 rows, i64 cols, const IntFormat& format, std::int8_t* q,
                        float* scale, std::int32_t* zero_point, cudaStream_t stream) {
  if (rows < 0 || cols < 0) fail("quantization: negative shape [{}, {}]", rows, cols);
  const Format f = resolve(format);
  require_zero_point(f, zero_point);
  if (rows == 0) return;
  check_blocks("cuda::quantize_per_token", rows);
  // cols == 0 still writes each row's parameters (an empty slice: kMinScale), as the CPU does.
  const bool vec = cols % 4 == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(q) % 4 == 0;
  const int threads =
      std::max(detail::kWarp, detail::threads_for_cols(vec ? cols / 4 : cols, kRowThreads));
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec) {
    quantize_rows_kernel<true><<<grid, threads, 0, stream>>>(x, cols, f, q, scale, zero_point);
  } else {
    quantize_rows_kernel<false><<<grid, threads, 0, stream>>>(x, cols, f, q, scale, zero_point);
  }
  SQ_CUDA_CHECK(cudaGetLastError());
}

void rms_norm_quantize_per_token(const float* x, i64 rows, i64 cols, const float* weight, float eps,
                                 const IntFormat& format, std::int8_t* q, float* scale,
                                 std::int32_t* zero_point, cudaStream_t stream) {
  if (rows < 0 || cols < 0)
    fail("cuda::rms_norm_quantize_per_token: negative shape [{}, {}]", rows, cols);
  const Format f = resolve(format);
  require_zero_point(f, zero_point);
  if (rows == 0) return;
  check_blocks("cuda::rms_norm_quantize_per_token", rows);
  // cols == 0 still writes each row's parameters (kMinScale), as quantize_per_token does; for
  // cols > 0 the count is rms_norm's (at least one warp already).
  const int threads = std::max(detail::kWarp, detail::threads_for_cols(cols, detail::kNormThreads));
  rms_norm_quantize_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(
      x, cols, weight, eps, f, q, scale, zero_point);
  SQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace sq::cuda
