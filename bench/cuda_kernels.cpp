// Per-token INT8 activation quantization (sq::cuda::quantize_per_token, absmax / 127) on LLaMA-70B
// activation shapes, against the device's copy bandwidth measured in the same run.
//   bench_cuda_kernels [--iterations N]
// Bytes moved per quantization: the f32 input read once from DRAM (the kernel's second pass over a
// row is meant to hit L1/L2), the int8 codes and one f32 scale per row written. A device-to-device
// cudaMemcpy of the input's size moves 2 x its bytes (read + write). The ratio is how close the
// kernel gets to a plain copy. Exits 0 with "no CUDA device: skipped" on a machine without a GPU.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "cuda_timing.h"
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
    std::printf("device: %s, %d iterations per figure\n", prop.name, iterations);
    run(4096, 8192, iterations);
    run(4096, 28672, iterations);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
