// cuBLASLt bf16 GEMM against INT8 GEMM + dequantization epilogue (kernels/cuda/gemm.h) at M = 4096
// tokens on LLaMA-70B linear shapes: (N, K) = (8192, 8192) q/o projections, (28672, 8192) gate/up,
// (8192, 28672) down.
//   bench_cuda_gemm [--iterations N]
// Figures per shape: bf16 (bf16 in, fp32 accumulation, bf16 out) in TFLOP/s; INT8 -> INT32 GEMM
// alone and INT8 GEMM + epilogue (per-token x per-channel scales, bf16 out; linear_int8 on the
// strict path: these shapes are aligned, nothing is copied) in TOPS; 2 M N K operations each; and
// the ratio int8 (with epilogue) / bf16. Inputs are random (zeros would flatter the power draw).
// Exits 0 with "no CUDA device: skipped" on a machine without a GPU.
#include <cuda_runtime_api.h>

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

}  // namespace

int main(int argc, char** argv) {
  int iterations = 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--iterations N]\n", argv[0]);
      return 2;
    }
  }
  if (iterations < 1) iterations = 1;
  if (sq::cuda::device_count() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  try {
    cudaDeviceProp prop{};
    SQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    // linear_int8 takes its int32 accumulator from the stream-ordered pool on every call; keep
    // freed memory in the pool so the timing does not include returning it to the driver.
    cudaMemPool_t pool = nullptr;
    SQ_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, 0));
    std::uint64_t keep = UINT64_MAX;
    SQ_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    std::printf("device: %s, %d iterations per figure\n", prop.name, iterations);
    sq::cuda::Blas blas;
    run(blas, 4096, 8192, 8192, iterations);
    run(blas, 4096, 28672, 8192, iterations);
    run(blas, 4096, 8192, 28672, iterations);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
