// CUDA device discovery and error reporting (see device.h).
#include "kernels/cuda/device.h"

namespace sq::cuda {

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // No driver, a driver older than the runtime, or no device: all mean "no GPU here". Clear
    // the recorded error so a later cudaGetLastError() does not report it against a launch.
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

void check(cudaError_t status, const char* what, const char* file, int line) {
  if (status == cudaSuccess) return;
  fail("CUDA error {} ({}): {} [{} at {}:{}]", cudaGetErrorName(status), static_cast<int>(status),
       cudaGetErrorString(status), what, file, line);
}

void synchronize(cudaStream_t stream) { SQ_CUDA_CHECK(cudaStreamSynchronize(stream)); }

}  // namespace sq::cuda
