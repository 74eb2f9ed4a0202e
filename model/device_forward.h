// The decoder block forward on a GPU (recipes with `device: cuda`; built only with CUDA): the
// same computation as model::block_forward, on the kernels of kernels/cuda, one rank per GPU.
//
// Precision, as the model is served: norms, RoPE, attention, activations and the residual stream
// in fp32; every linear in the checkpoint's storage type (bf16 or fp16 inputs, fp32 accumulation
// and output, fp32 bias; fp32 checkpoints use an fp32 GEMM without TF32). The activations a hook
// sees are the fp32 values right before their cast to the GEMM type, so calibration statistics
// describe the same tensors as on the CPU. Results are therefore close to, not equal to, the CPU
// forward (bounded in tests/gpu/test_device_forward.cpp): a run's statistics depend on its
// device, which is why the device is part of the recipe hash (a resume cannot switch it).
//
// Hooks run on the device (DeviceActivationHook). A host ActivationHook runs through
// HostHookBridge: the activation is copied to the host and back, which is meant for hooks that
// see one micro-batch (OS+ input capture) or have no device twin yet.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "io/model_config.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"
#include "model/forward.h"
#include "model/weights.h"

namespace sq::model {

// Sees, and may change in place, each activation on the device right before it is consumed:
// x is a device pointer to [rows, cols] fp32, work is ordered on `stream`.
class DeviceActivationHook {
 public:
  virtual ~DeviceActivationHook() = default;
  virtual void at(Site site, float* x, std::int64_t rows, std::int64_t cols,
                  cudaStream_t stream) = 0;
};

// Runs a host hook on a device activation: copies it to the host, calls the hook, and copies it
// back when the hook may change it (`writes`). Only the listed sites cross (empty: all of them).
class HostHookBridge : public DeviceActivationHook {
 public:
  HostHookBridge(ActivationHook& host, bool writes, std::initializer_list<Site> sites = {});
  void at(Site site, float* x, std::int64_t rows, std::int64_t cols, cudaStream_t stream) override;

 private:
  ActivationHook& host_;
  bool writes_;
  bool sites_[kSiteCount];
  std::vector<float> buffer_;
};

// The GPU a rank uses, made the calling thread's device: the one at its node-local rank among the
// visible devices, or device 0 when the launcher bound devices to ranks (CUDA_VISIBLE_DEVICES
// set and fewer devices visible than the node has ranks, as `srun --gpus-per-task=1` leaves it).
// Refused, naming the counts, when no device is visible or the node has more ranks than GPUs. The
// runner then checks with device_pci_id that no two ranks of a node share a GPU.
int select_device(int local_rank, int local_ranks);
// The PCI domain, bus and device of a device in one integer: the same for one physical GPU
// whatever numbering CUDA_VISIBLE_DEVICES gives it.
std::int64_t device_pci_id(int device);

// One rank's block forward on its GPU: a stream, a cuBLASLt handle, one block's weights and the
// activation buffers of the largest micro-batch seen so far. Not thread-safe.
class DeviceBlockForward {
 public:
  explicit DeviceBlockForward(const io::ModelConfig& config);
  ~DeviceBlockForward();
  DeviceBlockForward(const DeviceBlockForward&) = delete;
  DeviceBlockForward& operator=(const DeviceBlockForward&) = delete;

  // The GEMM precision of a loaded block: the checkpoint's type (calibration, FP propagation), or
  // fp32 for blocks whose weights are dequantized values a 16-bit type cannot hold (an int8 code
  // times its scale needs up to 8 more significant bits): the quantized propagation.
  enum class Precision { model, fp32 };
  // Uploads a block's weights (linears converted to the GEMM type). Refuses norms with an output
  // map (RPTQ / QLLM transforms have no device kernel yet) naming the norm.
  void load(const BlockWeights& weights, Precision precision = Precision::model);
  // hidden: host fp32 [batch.tokens(), hidden_size], updated in place. No KV cache (calibration
  // and propagation see whole sequences). `hook` may be null.
  void forward(const Batch& batch, float* hidden, DeviceActivationHook* hook);

  cudaStream_t stream() const { return stream_; }
  // The GEMM input type of Precision::model blocks: bf16 or f16 from config.json's torch_dtype,
  // f32 for anything else.
  DType gemm_dtype() const;
  // Device memory held now (weights and activation buffers), for logs and plans.
  std::int64_t device_bytes() const;

 private:
  struct Impl;
  const io::ModelConfig& config_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sq::model
