// cuBLASLt bf16 GEMM against INT8 GEMM + dequantization epilogue (kernels/cuda/gemm.h) at M = 4096
// tokens on LLaMA-70B linear shapes: (N, K) = (8192, 8192) q/o projections, (28672, 8192) gate/up,
// (8192, 28672) down.
//   bench_cuda_gemm [--iterations N]
// Figures per shape: bf16 (bf16 in, fp32 accumulation, bf16 out) in TFLOP/s; INT8 -> INT32 GEMM
// alone and INT8 GEMM + epilogue (per-token x per-channel scales, bf16 out; linear_int8 on the
// strict path: these shapes are aligned, nothing is copied) in TOPS; 2 M N K operations each; and
// the ratio int8 (with epilogue) / bf16. Inputs are random (zeros would flatter the power draw).
//
// W4A4 at decode sizes, M in {1, 8, 16} tokens on (N, K) = (8192, 8192) and (28672, 8192): the
// bf16 linear (cuBLASLt) and linear_w4a4 (packed 4-bit x and w, per-token x per-channel scales
// fused into the store, bf16 out: one launch), timed in the same run. These are weight streams,
// so each figure is the time per call, the effective weight-read bandwidth (weight bytes / time,
// TB/s) and the speed-up bf16 time / w4a4 time; the per-token int4 activation quantization
// (quantize_per_token_int4, fp32 in) is timed on its own. Each side cycles through enough copies
// of its weights (at least 4x the L2) that every call reads them from device memory, as a
// model's layers would.
// Exits 0 with "no CUDA device: skipped" on a machine without a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "core/half.h"
#include "cuda_timing.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/int4.h"

namespace {

using sq::cuda::DeviceBuffer;
using i64 = std::int64_t;

using sq::bench::time_per_call;

// A xorshift stream: fast enough for the ~700 MB of inputs of the largest shape.
struct Xorshift {
  std::uint32_t s = 2463534242u;
  std::uint32_t next() {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
  }
  float uniform() { return float(next() >> 8) * (2.0f / 16777216.0f) - 1.0f; }  // [-1, 1)
};

std::vector<std::uint16_t> random_bf16(std::size_t n, Xorshift& rng) {
  std::vector<std::uint16_t> v(n);
  for (auto& b : v) b = sq::f32_to_bf16(rng.uniform());
  return v;
}

std::vector<std::int8_t> random_int8(std::size_t n, Xorshift& rng) {
  std::vector<std::int8_t> v(n);
  for (auto& b : v) b = static_cast<std::int8_t>(static_cast<int>(rng.next() >> 24) - 128);
  return v;
}

std::vector<float> random_scales(std::size_t n, Xorshift& rng) {
  std::vector<float> v(n);
  for (auto& s : v) s = 1e-3f + 1e-2f * (rng.uniform() + 1.0f);
  return v;
}

void run(sq::cuda::Blas& blas, i64 m, i64 n, i64 k, int iterations) {
  Xorshift rng;
  const auto mk = static_cast<std::size_t>(m * k), nk = static_cast<std::size_t>(n * k),
             mn = static_cast<std::size_t>(m * n);
  DeviceBuffer<std::uint16_t> y(mn), out(mn);
  DeviceBuffer<std::int32_t> acc(mn);
  double t_bf16 = 0.0, t_gemm8 = 0.0, t_linear8 = 0.0;
  {
    const DeviceBuffer<std::uint16_t> x = sq::cuda::to_device(random_bf16(mk, rng));
    const DeviceBuffer<std::uint16_t> w = sq::cuda::to_device(random_bf16(nk, rng));
    t_bf16 = time_per_call(iterations, [&] {
      sq::cuda::linear_bf16(blas, x.data(), m, k, w.data(),
                            static_cast<const std::uint16_t*>(nullptr), n, y.data(), nullptr);
    });
  }
  {
    const DeviceBuffer<std::int8_t> x = sq::cuda::to_device(random_int8(mk, rng));
    const DeviceBuffer<std::int8_t> w = sq::cuda::to_device(random_int8(nk, rng));
    const DeviceBuffer<float> xs =
        sq::cuda::to_device(random_scales(static_cast<std::size_t>(m), rng));
    const DeviceBuffer<float> ws =
        sq::cuda::to_device(random_scales(static_cast<std::size_t>(n), rng));
    t_gemm8 = time_per_call(iterations, [&] {
      sq::cuda::gemm_int8(blas, x.data(), m, k, w.data(), n, acc.data(), sq::cuda::Int8Path::strict,
                          nullptr);
    });
    t_linear8 = time_per_call(iterations, [&] {
      sq::cuda::linear_int8(blas, x.data(), xs.data(), m, k, w.data(), ws.data(), nullptr, n,
                            out.data(), sq::cuda::Half::bf16, sq::cuda::Int8Path::strict, nullptr);
    });
  }
  sq::cuda::synchronize();
  const double ops = 2.0 * double(m) * double(n) * double(k);
  const double bf16 = ops / t_bf16 / 1e12, gemm8 = ops / t_gemm8 / 1e12,
               linear8 = ops / t_linear8 / 1e12;
  std::printf(
      "M %lld N %-5lld K %-5lld | bf16: %8.1f us %7.1f TFLOP/s | int8 gemm: %8.1f us %7.1f TOPS | "
      "int8 + epilogue: %8.1f us %7.1f TOPS | ratio int8/bf16 %.2f (gemm only %.2f)\n",
      static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), t_bf16 * 1e6,
      bf16, t_gemm8 * 1e6, gemm8, t_linear8 * 1e6, linear8, linear8 / bf16, gemm8 / bf16);
}

std::vector<std::int32_t> random_words(std::size_t n, Xorshift& rng) {
  std::vector<std::int32_t> v(n);  // every bit pattern is 8 valid 4-bit codes
  for (auto& w : v) w = static_cast<std::int32_t>(rng.next());
  return v;
}

// Copies of one weight matrix, enough that cycling through them reads at least 4x the L2 bytes.
template <typename T>
std::vector<DeviceBuffer<T>> weight_copies(const std::vector<T>& host, std::size_t l2_bytes) {
  const std::size_t bytes = host.size() * sizeof(T);
  const std::size_t count = std::max<std::size_t>(1, (4 * l2_bytes + bytes - 1) / bytes);
  std::vector<DeviceBuffer<T>> copies;
  for (std::size_t i = 0; i < count; ++i) copies.push_back(sq::cuda::to_device(host));
  return copies;
}

void run_w4a4(sq::cuda::Blas& blas, i64 m, i64 n, i64 k, int iterations, std::size_t l2_bytes) {
  Xorshift rng;
  const i64 words = sq::cpu::int4_row_words(k);
  const auto mk = static_cast<std::size_t>(m * k), mn = static_cast<std::size_t>(m * n);
  DeviceBuffer<std::uint16_t> y(mn), out(mn);
  double t_bf16 = 0.0, t_w4a4 = 0.0, t_quant = 0.0;
  {
    const DeviceBuffer<std::uint16_t> x = sq::cuda::to_device(random_bf16(mk, rng));
    const auto w = weight_copies(random_bf16(static_cast<std::size_t>(n * k), rng), l2_bytes);
    std::size_t call = 0;
    t_bf16 = time_per_call(iterations, [&] {
      sq::cuda::linear_bf16(blas, x.data(), m, k, w[call++ % w.size()].data(),
                            static_cast<const std::uint16_t*>(nullptr), n, y.data(), nullptr);
    });
  }
  {
    std::vector<float> x_host(mk);
    for (auto& v : x_host) v = rng.uniform();
    const DeviceBuffer<float> x = sq::cuda::to_device(x_host);
    DeviceBuffer<std::int32_t> x_packed(static_cast<std::size_t>(m * words));
    DeviceBuffer<float> x_scale(static_cast<std::size_t>(m));
    t_quant = time_per_call(iterations, [&] {
      sq::cuda::quantize_per_token_int4(x.data(), m, k, sq::cuda::IntFormat{4, true},
                                        x_packed.data(), x_scale.data(), nullptr);
    });
    const auto w = weight_copies(random_words(static_cast<std::size_t>(n * words), rng), l2_bytes);
    const DeviceBuffer<float> w_scale =
        sq::cuda::to_device(random_scales(static_cast<std::size_t>(n), rng));
    std::size_t call = 0;
    t_w4a4 = time_per_call(iterations, [&] {
      sq::cuda::linear_w4a4(x_packed.data(), x_scale.data(), m, k, w[call++ % w.size()].data(),
                            w_scale.data(), nullptr, n, out.data(), sq::cuda::Half::bf16, nullptr);
    });
  }
  sq::cuda::synchronize();
  const double bytes_bf16 = 2.0 * double(n) * double(k), bytes_w4a4 = 4.0 * double(n * words);
  std::printf(
      "M %2lld N %-5lld K %-5lld | bf16: %7.1f us %5.2f TB/s | w4a4 + epilogue: %7.1f us %5.2f "
      "TB/s | speed-up %.2fx | int4 activation quantization: %6.1f us\n",
      static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), t_bf16 * 1e6,
      bytes_bf16 / t_bf16 / 1e12, t_w4a4 * 1e6, bytes_w4a4 / t_w4a4 / 1e12, t_bf16 / t_w4a4,
      t_quant * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  return sq::bench::benchmark_main(argc, argv, [](int iterations, const cudaDeviceProp& prop) {
    // linear_int8 takes its int32 accumulator from the stream-ordered pool on every call; keep
    // freed memory in the pool so the timing does not include returning it to the driver.
    cudaMemPool_t pool = nullptr;
    SQ_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
    std::uint64_t keep = UINT64_MAX;
    SQ_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    sq::cuda::Blas blas;
    run(blas, 4096, 8192, 8192, iterations);
    run(blas, 4096, 28672, 8192, iterations);
    run(blas, 4096, 8192, 28672, iterations);
    std::printf("W4A4 at decode sizes (weights cycled through >= 4x the %d MB L2):\n",
                prop.l2CacheSize >> 20);
    const auto l2 = static_cast<std::size_t>(prop.l2CacheSize);
    for (const i64 n : {i64{8192}, i64{28672}}) {
      for (const i64 m : {i64{1}, i64{8}, i64{16}}) run_w4a4(blas, m, n, 8192, iterations, l2);
    }
  });
}
