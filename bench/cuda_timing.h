// Timing of CUDA work for the GPU benchmarks: CUDA events around a batch of calls.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/device.h"

namespace sq::bench {

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
