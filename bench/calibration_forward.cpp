// Calibration forward of one synthetic block with the LLaMA-2-70B shape (hidden 8192, MLP 28672,
// 64 heads, 8 KV heads, bf16), on the CPU (model::block_forward, FP32, OpenBLAS) and on the GPU
// (model::DeviceBlockForward, bf16 GEMMs), both with the calibration statistics hook, in tokens/s.
//
//   bench_calibration_forward [--dir DIR] [--seq-len 2048] [--micro-batch 4] [--batches 4]
//                             [--cpu-seqs 1] [--reps 2]
//
// GPU: `batches` micro-batches of `micro-batch` sequences, timed from host hidden states to host
// hidden states (the copies each way are part of the pass, as in a run), statistics kept on the
// device and read back once; the weight upload (fp32 host -> bf16 device) is timed separately.
// CPU: `cpu-seqs` sequences (a 70B block runs at tens of tokens/s per core), every OpenBLAS
// thread. The model (one layer, vocab 1024) is written once to DIR and reused when DIR holds it.
// The GPU's output on the sequences both ran must agree with the CPU's (relative to the block's
// update, <= 1e-2), or the benchmark fails instead of reporting. Last, one micro-batch's hidden
// states to the device and back from pageable and from pinned memory, beside one micro-batch's
// pass: how much of the pass the runner's pageable copies take.
// Exits 0 with "no CUDA device: skipped" on a machine without a GPU.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "core/random.h"
#include "cuda_timing.h"
#include "kernels/cpu/ops.h"
#include "model/device_forward.h"
#include "model/forward.h"
#include "model/synth.h"
#include "stages/calibrate.h"
#include "stages/device_calibrate.h"

namespace {

using Clock = std::chrono::steady_clock;
using i64 = std::int64_t;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<float> hidden_states(i64 tokens, i64 hidden, std::uint64_t seed) {
  sq::Rng rng(seed);
  std::vector<float> h(static_cast<std::size_t>(tokens * hidden));
  for (auto& x : h) x = static_cast<float>(rng.normal());
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = (std::filesystem::temp_directory_path() / "sq_bench_llama70b_block").string();
  i64 seq_len = 2048, micro_batch = 4, batches = 4, cpu_seqs = 1;
  int reps = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "option %s needs a value\n", a.c_str());
      return 2;
    }
    const char* v = argv[++i];
    if (a == "--dir")
      dir = v;
    else if (a == "--seq-len")
      seq_len = std::stoll(v);
    else if (a == "--micro-batch")
      micro_batch = std::stoll(v);
    else if (a == "--batches")
      batches = std::stoll(v);
    else if (a == "--cpu-seqs")
      cpu_seqs = std::stoll(v);
    else if (a == "--reps")
      reps = std::max(1, std::stoi(v));
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (sq::bench::skip_without_device()) return 0;
  try {
    sq::model::SynthSpec spec;
    spec.arch = sq::io::Arch::llama;
    spec.hidden = 8192;
    spec.intermediate = 28672;
    spec.layers = 1;
    spec.heads = 64;
    spec.kv_heads = 8;
    spec.vocab = 1024;
    spec.max_positions = std::max<i64>(4096, seq_len);
    spec.dtype = sq::DType::bf16;
    spec.calib_seqs = spec.eval_seqs = 0;
    spec.seed = 70;
    if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
      std::filesystem::remove_all(dir);
      std::printf("writing the synthetic block to %s\n", dir.c_str());
      sq::model::write_synth_model(spec, dir);
    }
    const auto model = sq::model::Model::open(dir);
    const auto& c = model.config();
    const i64 H = c.hidden_size;
    auto t = Clock::now();
    const sq::model::BlockWeights w = model.load_block(0);
    const double host_load = seconds_since(t);
    const std::vector<float> inv_freq = sq::model::rope_inv_freq(c);

    // --- GPU ---
    sq::model::DeviceBlockForward device(c);
    t = Clock::now();
    device.load(w);
    const double upload = seconds_since(t);
    const sq::model::Batch batch{.n_seq = micro_batch, .seq_len = seq_len};
    std::vector<std::vector<float>> inputs;
    for (i64 b = 0; b < batches; ++b)
      inputs.push_back(hidden_states(batch.tokens(), H, 100 + static_cast<std::uint64_t>(b)));
    double gpu_best = 1e30;
    std::vector<float> gpu_first;      // micro-batch 0's output, checked against the CPU below
    for (int r = 0; r <= reps; ++r) {  // the first pass warms up (allocations, cuBLASLt)
      std::vector<std::vector<float>> h = inputs;
      sq::stages::DeviceBlockStats stats;
      sq::stages::DeviceStatsObserver observer(stats);
      t = Clock::now();
      for (auto& x : h) device.forward(batch, x.data(), &observer);
      sq::stages::BlockStats out;
      stats.merge_into(out, device.stream());
      if (r > 0) gpu_best = std::min(gpu_best, seconds_since(t));
      gpu_first = std::move(h[0]);
    }
    const double gpu_tokens = double(batches * batch.tokens());

    // --- CPU ---
    const sq::model::Batch cpu_batch{.n_seq = cpu_seqs, .seq_len = seq_len};
    // The same draws as the first cpu-seqs sequences of the GPU's micro-batch 0 (seed 100).
    const std::vector<float> cpu_input = hidden_states(cpu_batch.tokens(), H, 100);
    double cpu_best = 1e30;
    std::vector<float> cpu_output;
    for (int r = 0; r < reps; ++r) {
      sq::Tensor h = sq::Tensor::zeros(sq::DType::f32, {cpu_batch.tokens(), H});
      std::memcpy(h.mutable_data<float>(), cpu_input.data(), cpu_input.size() * sizeof(float));
      sq::stages::BlockStats stats;
      sq::stages::StatsObserver observer(stats);
      t = Clock::now();
      sq::model::block_forward(c, w, cpu_batch, h, {.inv_freq = inv_freq, .hook = &observer});
      cpu_best = std::min(cpu_best, seconds_since(t));
      cpu_output.assign(h.data<float>(), h.data<float>() + h.numel());
    }
    const double cpu_tokens = double(cpu_batch.tokens());

    // A figure only counts for a correct forward: the GPU's output on the shared sequences
    // against the CPU's, relative to the size of the block's update (bf16 GEMM inputs alone give
    // a few 1e-3; tests/gpu/test_device_forward.cpp).
    double diff = 0.0, update = 0.0;
    for (std::size_t i = 0; i < cpu_output.size() && i < gpu_first.size(); ++i) {
      diff += (double(gpu_first[i]) - cpu_output[i]) * (double(gpu_first[i]) - cpu_output[i]);
      update += (double(cpu_output[i]) - cpu_input[i]) * (double(cpu_output[i]) - cpu_input[i]);
    }
    const double relative = std::sqrt(diff / update);
    std::printf("GPU vs CPU output on the %lld shared sequence(s): %.2e of the block's update\n",
                static_cast<long long>(std::min(cpu_seqs, micro_batch)), relative);
    if (!(relative <= 1e-2)) {
      std::fprintf(stderr, "error: the GPU forward disagrees with the CPU (%.2e > 1e-2)\n",
                   relative);
      return 1;
    }

    // Linear FLOPs per token of the block (attention adds ~2 * 2 * seq_len / 2 * q_dim).
    const double linear_flops = 2.0 * (H * c.q_dim() + 2.0 * H * c.kv_dim() + c.q_dim() * H +
                                       3.0 * H * double(c.intermediate_size));
    const double attn_flops = 2.0 * 2.0 * double(seq_len) / 2.0 * double(c.q_dim());
    const double per_token = linear_flops + attn_flops;
    std::printf(
        "| device | tokens per pass | seconds | tokens/s | TFLOP/s (linears + causal attention) "
        "|\n|---|---|---|---|---|\n");
    std::printf("| GPU (bf16 GEMMs, fp32 rest) | %lld x %lld x %lld | %.3f | %.0f | %.1f |\n",
                static_cast<long long>(batches), static_cast<long long>(micro_batch),
                static_cast<long long>(seq_len), gpu_best, gpu_tokens / gpu_best,
                gpu_tokens * per_token / gpu_best / 1e12);
    std::printf("| CPU (FP32, %d BLAS threads) | %lld x %lld | %.3f | %.1f | %.3f |\n",
                sq::cpu::blas_threads(), static_cast<long long>(cpu_seqs),
                static_cast<long long>(seq_len), cpu_best, cpu_tokens / cpu_best,
                cpu_tokens * per_token / cpu_best / 1e12);
    std::printf(
        "GPU / CPU tokens/s: %.1fx; block load (map + bf16 -> fp32 on the host) %.2f s, upload "
        "to the GPU (fp32 -> bf16) %.2f s; GPU memory held %.2f GB\n",
        (gpu_tokens / gpu_best) / (cpu_tokens / cpu_best), host_load, upload,
        double(device.device_bytes()) / 1e9);

    // What the pass spends moving hidden states: one micro-batch to the device and back, from
    // pageable memory (as the runner's hidden states are) and from the same memory pinned.
    {
      std::vector<float>& host = inputs[0];
      const std::size_t bytes = host.size() * sizeof(float);
      sq::cuda::DeviceBuffer<float> d(host.size());
      auto round_trip = [&] {
        double best = 1e30;
        for (int r = 0; r < 3; ++r) {
          const auto t0 = Clock::now();
          SQ_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), bytes, cudaMemcpyHostToDevice));
          SQ_CUDA_CHECK(cudaMemcpy(host.data(), d.data(), bytes, cudaMemcpyDeviceToHost));
          best = std::min(best, seconds_since(t0));
        }
        return best;
      };
      const double pageable = round_trip();
      SQ_CUDA_CHECK(cudaHostRegister(host.data(), bytes, cudaHostRegisterDefault));
      const double pinned = round_trip();
      SQ_CUDA_CHECK(cudaHostUnregister(host.data()));
      const double pass = gpu_best / double(batches);
      std::printf(
          "hidden states of one micro-batch (%.0f MB) to the GPU and back: pageable %.1f ms "
          "(%.1f GB/s), pinned %.1f ms (%.1f GB/s); one micro-batch's pass %.1f ms\n",
          double(bytes) / 1e6, pageable * 1e3, 2.0 * double(bytes) / pageable / 1e9, pinned * 1e3,
          2.0 * double(bytes) / pinned / 1e9, pass * 1e3);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
