// CUDA device helpers for host code: device discovery, error checks that throw sq::Error, an RAII
// device buffer and host <-> device copies. Kernels live in the other files of this folder.
//
// Only <cuda_runtime_api.h> is included (plain C declarations), so C++ translation units compiled
// by the host compiler can use this header too.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/error.h"

namespace sq::cuda {

// Number of CUDA devices; 0 when there is no driver or no device (never throws for that), so
// callers and tests can fall back or skip.
int device_count();

// Throws sq::Error naming the CUDA error, the expression and where it was checked, unless
// status == cudaSuccess.
void check(cudaError_t status, const char* what, const char* file, int line);

// Waits for `stream` (nullptr: the legacy default stream) and reports any asynchronous error.
void synchronize(cudaStream_t stream = nullptr);

}  // namespace sq::cuda

#define SQ_CUDA_CHECK(expr) ::sq::cuda::check((expr), #expr, __FILE__, __LINE__)

namespace sq::cuda {

// Owns `size()` elements of device memory (uninitialized). Non-copyable, movable; a moved-from
// buffer is empty. An empty buffer holds no allocation.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) {
    SQ_CHECK(count <= SIZE_MAX / sizeof(T), "DeviceBuffer of {} elements overflows size_t", count);
    if (count == 0) return;
    void* ptr = nullptr;
    SQ_CUDA_CHECK(cudaMalloc(&ptr, count * sizeof(T)));
    data_ = static_cast<T*>(ptr);
    size_ = count;
  }
  ~DeviceBuffer() { reset(); }

  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

  // Frees the memory. An error from cudaFree here can only be a sticky error of an earlier
  // launch, which the next checked call reports; a destructor must not throw it.
  void reset() noexcept {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    size_ = 0;
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// Copies of `count` elements through cudaMemcpy; the buffer must hold at least `count`. They are
// ordered on the legacy default stream only: work on a cudaStreamNonBlocking stream is not waited
// for (synchronize that stream first), and a copy from pageable host memory may return before
// the device has it, so device work on another stream must not rely on it without a sync.
template <typename T>
void copy_to_device(const T* host, std::size_t count, DeviceBuffer<T>& device) {
  SQ_CHECK(count <= device.size(), "copy of {} elements into a buffer of {}", count, device.size());
  if (count == 0) return;
  SQ_CUDA_CHECK(cudaMemcpy(device.data(), host, count * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
void copy_to_host(const DeviceBuffer<T>& device, std::size_t count, T* host) {
  SQ_CHECK(count <= device.size(), "copy of {} elements from a buffer of {}", count, device.size());
  if (count == 0) return;
  SQ_CUDA_CHECK(cudaMemcpy(host, device.data(), count * sizeof(T), cudaMemcpyDeviceToHost));
}

// A new device buffer holding a copy of `host`.
template <typename T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
  DeviceBuffer<T> device(host.size());
  copy_to_device(host.data(), host.size(), device);
  return device;
}

// The whole buffer, copied back to the host.
template <typename T>
std::vector<T> to_host(const DeviceBuffer<T>& device) {
  std::vector<T> host(device.size());
  copy_to_host(device, device.size(), host.data());
  return host;
}

}  // namespace sq::cuda
