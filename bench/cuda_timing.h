// What the GPU benchmarks share: their command line, the skip without a device, and CUDA events
// around a batch of calls.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>

#include "kernels/cuda/device.h"

namespace sq::bench {

// `[--iterations N]` (default 20, at least 1); nothing on a usage error (printed).
inline std::optional<int> parse_iterations(int argc, char** argv) {
  int iterations = 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--iterations N]\n", argv[0]);
      return std::nullopt;
    }
  }
  return iterations < 1 ? 1 : iterations;
}

// True (after saying so) when there is no device to benchmark: the benchmark then exits 0.
inline bool skip_without_device() {
  if (cuda::device_count() > 0) return false;
  std::printf("no CUDA device: skipped\n");
  return true;
}

// Device 0's properties, after printing its name and the iteration count (every figure's header).
inline cudaDeviceProp describe_device(int iterations) {
  cudaDeviceProp prop{};
  SQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d iterations per figure\n", prop.name, iterations);
  return prop;
}

// The main of a `[--iterations N]` GPU benchmark: 2 on a usage error, 0 after saying so without a
// device, else body(iterations, device 0's properties) after the header; an exception is printed
// and gives 1.
template <typename Body>
int benchmark_main(int argc, char** argv, Body body) {
  const std::optional<int> iterations = parse_iterations(argc, argv);
  if (!iterations) return 2;
  if (skip_without_device()) return 0;
  try {
    body(*iterations, describe_device(*iterations));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

// Seconds per call of `fn`, averaged over `iterations` calls after 3 warm-up calls, measured with
// events on the default stream (fn must enqueue its work there).
template <typename Fn>
double time_per_call(int iterations, Fn fn) {
  for (int i = 0; i < 3; ++i) fn();
  cudaEvent_t start = nullptr, stop = nullptr;
  SQ_CUDA_CHECK(cudaEventCreate(&start));
  SQ_CUDA_CHECK(cudaEventCreate(&stop));
  SQ_CUDA_CHECK(cudaEventRecord(start, nullptr));
  for (int i = 0; i < iterations; ++i) fn();
  SQ_CUDA_CHECK(cudaEventRecord(stop, nullptr));
  SQ_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  SQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  SQ_CUDA_CHECK(cudaEventDestroy(start));
  SQ_CUDA_CHECK(cudaEventDestroy(stop));
  return double(ms) / 1e3 / iterations;
}

}  // namespace sq::bench
