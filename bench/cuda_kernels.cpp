// Per-token INT8 activation quantization (sq::cuda::quantize_per_token, absmax / 127) on LLaMA-70B
// activation shapes, against the device's copy bandwidth measured in the same run; then fused
// causal attention (sq::cuda::attention) at the LLaMA-2-70B head shape against the fp32 FMA peak.
//   bench_cuda_kernels [--iterations N]
// Bytes moved per quantization: the f32 input read once from DRAM (the kernel's second pass over a
// row is meant to hit L1/L2), the int8 codes and one f32 scale per row written. A device-to-device
// cudaMemcpy of the input's size moves 2 x its bytes (read + write). The ratio is how close the
// kernel gets to a plain copy.
// Attention flops: the causal half of Q K^T and of P V, 2 x 2 x (tq x tk / 2) x head_dim per q
// head (the softmax's exps are not counted). The ceiling is the device's fp32 FMA rate: SMs x 128
// fp32 lanes x 2 flop x peak clock (128 lanes per SM on Hopper, Ada and GA10x; an A100 has 64, so
// there the ratio would read half of the truth).
// Exits 0 with "no CUDA device: skipped" on a machine without a GPU.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "cuda_timing.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/quant.h"

namespace {

using sq::cuda::DeviceBuffer;
using i64 = std::int64_t;

using sq::bench::time_per_call;

// Activation-like values without a slow generator: a xorshift stream mapped to [-4, 4), with every
// 97th column scaled x 30 (outlier channels).
std::vector<float> activations(i64 rows, i64 cols) {
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  std::uint32_t s = 2463534242u;
  for (std::size_t i = 0; i < x.size(); ++i) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    const float v = float(s >> 8) * (8.0f / 16777216.0f) - 4.0f;
    x[i] = (i % static_cast<std::size_t>(cols)) % 97 == 3 ? v * 30.0f : v;
  }
  return x;
}

void run(i64 rows, i64 cols, int iterations) {
  const std::vector<float> host = activations(rows, cols);
  const DeviceBuffer<float> x = sq::cuda::to_device(host);
  DeviceBuffer<float> copy(host.size());
  DeviceBuffer<std::int8_t> q(host.size());
  DeviceBuffer<float> scale(static_cast<std::size_t>(rows));
  const sq::cpu::IntFormat int8{};  // 8 bits, symmetric, absmax / 127

  const double t_quant = time_per_call(iterations, [&] {
    sq::cuda::quantize_per_token(x.data(), rows, cols, int8, q.data(), scale.data(), nullptr,
                                 nullptr);
  });
  const double t_copy = time_per_call(iterations, [&] {
    SQ_CUDA_CHECK(
        cudaMemcpyAsync(copy.data(), x.data(), x.bytes(), cudaMemcpyDeviceToDevice, nullptr));
  });
  sq::cuda::synchronize();

  const double quant_bytes = double(x.bytes()) + double(q.bytes()) + double(scale.bytes());
  const double copy_bytes = 2.0 * double(x.bytes());
  const double quant_gbs = quant_bytes / t_quant / 1e9, copy_gbs = copy_bytes / t_copy / 1e9;
  std::printf(
      "%5lld x %-6lld  quantize_per_token int8: %8.1f us %8.1f GB/s | memcpy d2d: %8.1f us "
      "%8.1f GB/s | ratio %.3f\n",
      static_cast<long long>(rows), static_cast<long long>(cols), t_quant * 1e6, quant_gbs,
      t_copy * 1e6, copy_gbs, quant_gbs / copy_gbs);
}

// Uniform values in [-1, 1) from a xorshift stream (attention inputs: the values only need to be
// finite; the kernel's work does not depend on them).
std::vector<float> uniform(std::size_t n, std::uint32_t s) {
  std::vector<float> x(n);
  for (float& v : x) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    v = float(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
  return x;
}

// fp32 FMA peak of device 0 in flop/s, printed with how it was computed.
double fp32_peak(const cudaDeviceProp& prop) {
  int clock_khz = 0;
  SQ_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  constexpr int kLanes = 128;  // fp32 FMA lanes per SM
  const double peak = double(prop.multiProcessorCount) * kLanes * 2.0 * double(clock_khz) * 1e3;
  std::printf(
      "fp32 FMA ceiling: %d SMs x %d lanes x 2 flop x %.3f GHz (peak clock) = %.1f TFLOP/s\n",
      prop.multiProcessorCount, kLanes, double(clock_khz) / 1e6, peak / 1e12);
  return peak;
}

// LLaMA-2-70B attention: 64 q heads, 8 kv heads, head_dim 128, one sequence of t tokens (tq = tk).
void run_attention(i64 t, int iterations, double peak) {
  constexpr i64 kQHeads = 64, kKvHeads = 8, kHeadDim = 128;
  sq::cpu::AttentionShape s;
  s.tq = s.tk = t;
  s.q_heads = kQHeads;
  s.kv_heads = kKvHeads;
  s.head_dim = kHeadDim;
  s.q_stride = s.out_stride = kQHeads * kHeadDim;
  s.kv_stride = kKvHeads * kHeadDim;
  s.scale = 1.0f / std::sqrt(float(kHeadDim));
  const DeviceBuffer<float> q = sq::cuda::to_device(uniform(std::size_t(t * s.q_stride), 1u));
  const DeviceBuffer<float> k = sq::cuda::to_device(uniform(std::size_t(t * s.kv_stride), 2u));
  const DeviceBuffer<float> v = sq::cuda::to_device(uniform(std::size_t(t * s.kv_stride), 3u));
  DeviceBuffer<float> out(std::size_t(t * s.out_stride));

  const double seconds = time_per_call(iterations, [&] {
    sq::cuda::attention(s, 1, q.data(), k.data(), v.data(), out.data(), nullptr);
  });
  sq::cuda::synchronize();

  const double flops = 4.0 * (double(t) * double(t) / 2.0) * double(kHeadDim) * double(kQHeads);
  const double achieved = flops / seconds;
  std::printf(
      "attention tq = tk = %-5lld %lld/%lld heads, d %lld: %9.1f us %7.2f TFLOP/s | %.3f of the "
      "fp32 FMA ceiling\n",
      static_cast<long long>(t), static_cast<long long>(kQHeads), static_cast<long long>(kKvHeads),
      static_cast<long long>(kHeadDim), seconds * 1e6, achieved / 1e12, achieved / peak);
}

}  // namespace

int main(int argc, char** argv) {
  return sq::bench::benchmark_main(argc, argv, [](int iterations, const cudaDeviceProp& prop) {
    run(4096, 8192, iterations);
    run(4096, 28672, iterations);
    const double peak = fp32_peak(prop);
    run_attention(2048, iterations, peak);
    run_attention(4096, iterations, peak);
  });
}
