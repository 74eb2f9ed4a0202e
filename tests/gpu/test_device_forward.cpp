// The CUDA block forward (model/device_forward.h) against the CPU block forward, and the GPU
// calibration statistics (stages/device_calibrate.h) against the CPU's. Skipped without a device.
//
// References. The GPU runs each linear on its input rounded to the checkpoint's 16-bit type; the
// CPU reference does the same rounding with a hook at the four linear-input sites (qkv_in, o_in,
// mlp_in, down_in), so both compute the same function and differ only by fp32 summation order,
// float vs double norm statistics and CUDA's expf / tanhf (a few ulps each), which can move a
// 16-bit rounding of an activation by one step now and then; a step taken at qkv_in moves the
// next sites' values and so their roundings: the flips compound over the four sites. Measure: the
// error of the block's output relative to the size of the block's update, ||gpu - cpu|| /
// ||cpu - input||. A CPU simulation of this shape puts it at 1e-6..6e-4 (median 4e-5) for bf16
// with the rounding hook and 3e-3 without (bf16's unit roundoff is 2^-8), so the test asks for
// <= 1e-3 and less than a quarter of the error without the hook: the GPU rounds the activations
// the CPU reference rounds, and only those. fp32 GEMMs (fp32 checkpoints, or Precision::fp32)
// round nothing: <= 2e-5.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/half.h"
#include "core/random.h"
#include "cuda_test_support.h"
#include "model/device_forward.h"
#include "model/forward.h"
#include "model/synth.h"
#include "model/weights.h"
#include "stages/calibrate.h"
#include "stages/device_calibrate.h"
#include "stages/device_quantize.h"
#include "stages/quantize.h"

namespace {

namespace fs = std::filesystem;
using namespace sq;
using sq::cuda::testing::i64;

// Rounds the GEMM inputs to the model's 16-bit type, as the GPU casts them.
class RoundGemmInputs : public model::ActivationHook {
 public:
  explicit RoundGemmInputs(DType type) : type_(type) {}
  void at(model::Site site, float* x, i64 rows, i64 cols) override {
    if (site != model::Site::qkv_in && site != model::Site::o_in && site != model::Site::mlp_in &&
        site != model::Site::down_in)
      return;
    for (i64 i = 0; i < rows * cols; ++i) {
      x[i] = type_ == DType::bf16 ? bf16_to_f32(f32_to_bf16(x[i])) : f16_to_f32(f32_to_f16(x[i]));
    }
  }

 private:
  DType type_;
};

model::Model synth_model(io::Arch arch, DType dtype, const std::string& tag) {
  model::SynthSpec spec;
  spec.arch = arch;
  spec.hidden = 128;
  spec.layers = 1;
  spec.heads = 4;
  spec.kv_heads = arch == io::Arch::llama ? 2 : 4;  // GQA on LLaMA
  spec.vocab = 128;
  spec.max_positions = 128;
  spec.dtype = dtype;
  spec.calib_seqs = spec.eval_seqs = 0;
  spec.seed = 11;
  const fs::path dir = fs::path(SQ_TEST_TMP_DIR) / "gpu" /
                       (tag + "_" + io::arch_name(arch) + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir.parent_path());
  model::write_synth_model(spec, dir.string());
  return model::Model::open(dir.string());
}

// Hidden states that look like a block's input: N(0, 1), a few large channels.
std::vector<float> block_input(i64 tokens, i64 hidden) {
  Rng rng(3);
  std::vector<float> h(static_cast<std::size_t>(tokens * hidden));
  for (auto& x : h) x = static_cast<float>(rng.normal());
  for (i64 t = 0; t < tokens; ++t) h[static_cast<std::size_t>(t * hidden + 7)] *= 20.0f;
  return h;
}

double norm_of_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}

// Relative error of the GPU block output against the CPU reference (with or without emulating
// the 16-bit GEMM inputs), for n_seq sequences of seq_len tokens.
double block_error(const model::Model& m, const model::BlockWeights& w, i64 n_seq, i64 seq_len,
                   bool emulate_rounding, model::DeviceBlockForward::Precision precision);

double block_error(const model::Model& m, i64 n_seq, i64 seq_len, bool emulate_rounding) {
  return block_error(m, m.load_block(0), n_seq, seq_len, emulate_rounding,
                     model::DeviceBlockForward::Precision::model);
}

double block_error(const model::Model& m, const model::BlockWeights& w, i64 n_seq, i64 seq_len,
                   bool emulate_rounding, model::DeviceBlockForward::Precision precision) {
  const io::ModelConfig& c = m.config();
  const model::Batch batch{.n_seq = n_seq, .seq_len = seq_len};
  const std::vector<float> input = block_input(batch.tokens(), c.hidden_size);

  Tensor cpu = Tensor::zeros(DType::f32, {batch.tokens(), c.hidden_size});
  std::copy(input.begin(), input.end(), cpu.mutable_data<float>());
  const std::vector<float> inv_freq = model::rope_inv_freq(c);
  RoundGemmInputs round(c.torch_dtype);
  model::block_forward(
      c, w, batch, cpu,
      {.inv_freq = inv_freq,
       .hook = emulate_rounding && c.torch_dtype != DType::f32 ? &round : nullptr});

  std::vector<float> gpu = input;
  model::DeviceBlockForward device(c);
  device.load(w, precision);
  device.forward(batch, gpu.data(), nullptr);

  const std::vector<float> expected(cpu.data<float>(), cpu.data<float>() + cpu.numel());
  return norm_of_difference(gpu, expected) / norm_of_difference(expected, input);
}

TEST(DeviceForward, LlamaBf16MatchesTheCpuWithBf16GemmInputs) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "fwd");
  const double emulated = block_error(m, 3, 37, true), plain = block_error(m, 3, 37, false);
  EXPECT_LE(emulated, 1e-3);
  // The GPU is much closer to the CPU with 16-bit GEMM inputs than to the plain FP32 CPU forward.
  EXPECT_LT(emulated, plain / 4) << "plain " << plain;
}

TEST(DeviceForward, Fp32PrecisionOnA16BitModelRoundsNothing) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "fwd_exact");
  EXPECT_LE(
      block_error(m, m.load_block(0), 2, 29, false, model::DeviceBlockForward::Precision::fp32),
      2e-5);
}

TEST(DeviceForward, OptF16MatchesTheCpuWithF16GemmInputs) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::opt, DType::f16, "fwd");
  // fp16's unit roundoff is 2^-11, 8x below bf16's: the bf16 bound scaled by 1/8 (plain fp32
  // without the rounding hook lands near 4e-4, so 5e-4 would not tell the two apart).
  const double emulated = block_error(m, 2, 50, true), plain = block_error(m, 2, 50, false);
  EXPECT_LE(emulated, 1e-3 / 8);
  EXPECT_LT(emulated, plain / 4) << "plain " << plain;
}

TEST(DeviceForward, Fp32CheckpointRunsAnFp32Gemm) {
  SQ_SKIP_WITHOUT_CUDA();
  EXPECT_LE(block_error(synth_model(io::Arch::llama, DType::f32, "fwd32"), 2, 64, false), 2e-5);
  EXPECT_LE(block_error(synth_model(io::Arch::opt, DType::f32, "fwd32"), 1, 17, false), 2e-5);
}

// A run's determinism needs the same bits for the same micro-batch (replicas own whole
// micro-batches). A sequence's result in another batch is close but may differ in the last bits:
// cuBLASLt may choose another kernel for another number of rows.
TEST(DeviceForward, SameBatchSameBitsAndSequencesAreIndependent) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "batch");
  const io::ModelConfig& c = m.config();
  const i64 seq_len = 20, H = c.hidden_size;
  const std::vector<float> input = block_input(3 * seq_len, H);
  std::vector<float> once = input, twice = input;
  std::vector<float> second(input.begin() + seq_len * H, input.begin() + 2 * seq_len * H);
  model::DeviceBlockForward device(c);
  device.load(m.load_block(0));
  // One sequence first, so the buffers are sized for it and must grow for the batch of three.
  device.forward({.n_seq = 1, .seq_len = seq_len}, second.data(), nullptr);
  device.forward({.n_seq = 3, .seq_len = seq_len}, once.data(), nullptr);
  std::vector<float> second_again(input.begin() + seq_len * H, input.begin() + 2 * seq_len * H);
  device.forward({.n_seq = 1, .seq_len = seq_len}, second_again.data(), nullptr);
  device.forward({.n_seq = 3, .seq_len = seq_len}, twice.data(), nullptr);
  cuda::testing::expect_same_bits(second_again, second, H, "one sequence before and after growing");
  cuda::testing::expect_same_bits(twice, once, H, "the same micro-batch twice");
  // Sequence 1 alone vs inside the batch: relative to the size of its update.
  std::vector<float> in_batch(once.begin() + seq_len * H, once.begin() + 2 * seq_len * H);
  const std::vector<float> second_input(input.begin() + seq_len * H,
                                        input.begin() + 2 * seq_len * H);
  EXPECT_LE(norm_of_difference(second, in_batch) / norm_of_difference(in_batch, second_input),
            1e-3);
}

// Records the activation seen at each site, so tests can compare what the GPU hooks see.
class Recorder : public model::ActivationHook {
 public:
  void at(model::Site site, float* x, i64 rows, i64 cols) override {
    const auto i = static_cast<std::size_t>(site);
    seen[i].assign(x, x + rows * cols);
    n_rows[i] = rows;
    n_cols[i] = cols;
  }
  std::vector<float> seen[model::kSiteCount];
  i64 n_rows[model::kSiteCount] = {}, n_cols[model::kSiteCount] = {};
};

// Records what a hook sees, then rounds the GEMM inputs: the CPU twin of what the GPU's hooks see
// (the fp32 value before its 16-bit cast) and of what its GEMMs then consume.
class RecordThenRound : public model::ActivationHook {
 public:
  RecordThenRound(Recorder& recorder, RoundGemmInputs& round)
      : recorder_(recorder), round_(round) {}
  void at(model::Site site, float* x, i64 rows, i64 cols) override {
    recorder_.at(site, x, rows, cols);
    round_.at(site, x, rows, cols);
  }

 private:
  Recorder& recorder_;
  RoundGemmInputs& round_;
};

// Every site's hook gets the CPU's activation at that site (the right buffer, RoPE at the right
// positions: sequences 2 and 3 start at position 0 again). A position error barely shows in the
// block output (a shift common to q and k cancels in q . k) but is O(1) at attn_q / attn_k.
TEST(DeviceForward, HooksSeeTheCpuActivationsAtEverySite) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "sites");
  const io::ModelConfig& c = m.config();
  const model::BlockWeights w = m.load_block(0);
  const model::Batch batch{.n_seq = 3, .seq_len = 37};
  const std::vector<float> input = block_input(batch.tokens(), c.hidden_size);

  Tensor cpu = Tensor::zeros(DType::f32, {batch.tokens(), c.hidden_size});
  std::copy(input.begin(), input.end(), cpu.mutable_data<float>());
  const std::vector<float> inv_freq = model::rope_inv_freq(c);
  Recorder cpu_seen;
  RoundGemmInputs round(c.torch_dtype);
  RecordThenRound both(cpu_seen, round);
  model::block_forward(c, w, batch, cpu, {.inv_freq = inv_freq, .hook = &both});

  std::vector<float> gpu = input;
  Recorder gpu_seen;
  model::HostHookBridge bridge(gpu_seen, false);
  model::DeviceBlockForward device(c);
  device.load(w);
  device.forward(batch, gpu.data(), &bridge);

  for (int s = 0; s < model::kSiteCount; ++s) {
    const std::string what(model::site_name(static_cast<model::Site>(s)));
    const std::vector<float>& expected = cpu_seen.seen[s];
    ASSERT_FALSE(expected.empty()) << what;
    ASSERT_EQ(gpu_seen.seen[s].size(), expected.size()) << what;
    EXPECT_EQ(gpu_seen.n_cols[s], cpu_seen.n_cols[s]) << what;
    const std::vector<float> zeros(expected.size(), 0.0f);
    EXPECT_LE(norm_of_difference(gpu_seen.seen[s], expected) / norm_of_difference(expected, zeros),
              1e-3)
        << what;
  }
}

// The quantized propagation as the runner runs it (pipeline/runner.cpp): fp32 GEMMs with the
// device activation quantization inside the forward, against the CPU forward with
// QuantizeActivations. Both quantize the same activations up to fp32 summation order, so the
// two outputs differ by a few single-step flips, far less than the quantization itself changes
// the block (which a hook placed after the cast, or a result dropped, would leave out).
TEST(DeviceForward, QuantizedForwardMatchesTheCpuQuantizedForward) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "quant");
  const io::ModelConfig& c = m.config();
  const model::BlockWeights w = m.load_block(0);
  const model::Batch batch{.n_seq = 2, .seq_len = 24};
  const std::vector<float> input = block_input(batch.tokens(), c.hidden_size);
  const std::vector<float> inv_freq = model::rope_inv_freq(c);

  stages::QuantizedBlock block;  // no static scales: the dynamic per-token scheme needs none
  stages::QuantScheme scheme;
  scheme.activations = stages::ActivationQuant{
      .format = {.bits = 8, .symmetric = true}, .per_token = true, .dynamic = true};
  scheme.attention_inputs = true;

  auto cpu_forward = [&](model::ActivationHook* hook) {
    Tensor h = Tensor::zeros(DType::f32, {batch.tokens(), c.hidden_size});
    std::copy(input.begin(), input.end(), h.mutable_data<float>());
    model::block_forward(c, w, batch, h, {.inv_freq = inv_freq, .hook = hook});
    return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
  };
  stages::QuantizeActivations cpu_hook(block, scheme);
  const std::vector<float> cpu_quant = cpu_forward(&cpu_hook);
  const std::vector<float> cpu_fp = cpu_forward(nullptr);

  std::vector<float> gpu = input;
  stages::DeviceQuantizeActivations gpu_hook(block, scheme);
  model::DeviceBlockForward device(c);
  device.load(w, model::DeviceBlockForward::Precision::fp32);
  device.forward(batch, gpu.data(), &gpu_hook);

  const double quantization = norm_of_difference(cpu_quant, cpu_fp);
  const double gpu_vs_cpu = norm_of_difference(gpu, cpu_quant);
  ASSERT_GT(quantization, 0.0);
  EXPECT_LT(gpu_vs_cpu, quantization / 10) << "quantization changes the block by " << quantization;
}

TEST(DeviceForward, StatisticsOnTheDeviceEqualTheCpuOnTheSameActivations) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "stats");
  const io::ModelConfig& c = m.config();
  model::DeviceBlockForward device(c);
  device.load(m.load_block(0));
  stages::DeviceBlockStats device_stats;
  stages::BlockStats cpu_stats;
  // Two micro-batches: the device statistics accumulate across them.
  for (int mb = 0; mb < 2; ++mb) {
    std::vector<float> h = block_input(2 * 16, c.hidden_size);
    for (auto& x : h) x *= float(mb + 1);
    Recorder recorder;
    model::HostHookBridge bridge(recorder, false);
    stages::DeviceStatsObserver observer(device_stats, &bridge);
    device.forward({.n_seq = 2, .seq_len = 16}, h.data(), &observer);
    for (int s = 0; s < model::kSiteCount; ++s) {
      const auto& x = recorder.seen[s];
      ASSERT_FALSE(x.empty()) << model::site_name(static_cast<model::Site>(s));
      cpu_stats.sites[static_cast<std::size_t>(s)].observe(x.data(), recorder.n_rows[s],
                                                           recorder.n_cols[s]);
    }
  }
  stages::BlockStats merged;
  device_stats.merge_into(merged, device.stream());
  for (int s = 0; s < model::kSiteCount; ++s) {
    const auto& g = merged.sites[static_cast<std::size_t>(s)];
    const auto& e = cpu_stats.sites[static_cast<std::size_t>(s)];
    const std::string what(model::site_name(static_cast<model::Site>(s)));
    cuda::testing::expect_same_bits(g.absmax, e.absmax, e.channels(), what + " absmax");
    cuda::testing::expect_same_bits(g.min, e.min, e.channels(), what + " min");
    cuda::testing::expect_same_bits(g.max, e.max, e.channels(), what + " max");
  }
}

// The quantized forward's activation quantization: the device hook gives the CPU hook's bits on
// the same activations, for every scheme the runner uses it with.
TEST(DeviceForward, ActivationQuantizationOnTheDeviceEqualsTheCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  stages::QuantizedBlock block;
  const float scales[4] = {0.031f, 0.0123f, 0.5f, 0.00777f};
  const model::LinearRole roles[4] = {model::LinearRole::q, model::LinearRole::o,
                                      model::LinearRole::up, model::LinearRole::down};
  for (int i = 0; i < 4; ++i) {
    auto& q = block.linear(roles[i]);
    q.input_scale = Tensor::zeros(DType::f32, {1});
    q.input_scale.mutable_data<float>()[0] = scales[i];
    q.input_zero_point = Tensor::zeros(DType::i32, {1});
    q.input_zero_point.mutable_data<std::int32_t>()[0] = i - 2;
  }
  struct Case {
    const char* name;
    bool per_token, dynamic, symmetric, attention;
    int bits;
  };
  const Case cases[] = {{"per-token dynamic int8", true, true, true, false, 8},
                        {"per-tensor dynamic int8", false, true, true, false, 8},
                        {"per-tensor static int8", false, false, true, false, 8},
                        {"per-tensor static asymmetric int6", false, false, false, false, 6},
                        {"per-token int4 with attention inputs", true, true, true, true, 4}};
  const i64 rows = 37, cols = 96;
  for (const Case& k : cases) {
    stages::QuantScheme scheme;
    scheme.activations =
        stages::ActivationQuant{.format = {.bits = k.bits, .symmetric = k.symmetric},
                                .per_token = k.per_token,
                                .dynamic = k.dynamic};
    scheme.attention_inputs = k.attention;
    stages::QuantizeActivations cpu_hook(block, scheme);
    stages::DeviceQuantizeActivations gpu_hook(block, scheme);
    for (int s = 0; s < model::kSiteCount; ++s) {
      const auto site = static_cast<model::Site>(s);
      std::vector<float> x = cuda::testing::activations(rows, cols, 40u + static_cast<unsigned>(s));
      cuda::DeviceBuffer<float> d = cuda::to_device(x);
      gpu_hook.at(site, d.data(), rows, cols, nullptr);
      cpu_hook.at(site, x.data(), rows, cols);
      cuda::testing::expect_same_bits(
          cuda::to_host(d), x, cols,
          std::string(k.name) + " at " + std::string(model::site_name(site)));
    }
  }
}

// A host hook that changes the activation: the bridge must copy it back when told to.
class Negate : public model::ActivationHook {
 public:
  void at(model::Site, float* x, i64 rows, i64 cols) override {
    for (i64 i = 0; i < rows * cols; ++i) x[i] = -x[i];
  }
};

TEST(DeviceForward, HostHookBridgeCopiesBackOnlyWhenTheHookWrites) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> host = {1.0f, -2.0f, 3.5f, 0.0f, 7.0f, -1e30f};
  for (const bool writes : {false, true}) {
    cuda::DeviceBuffer<float> d = cuda::to_device(host);
    Negate negate;
    model::HostHookBridge bridge(negate, writes);
    bridge.at(model::Site::o_in, d.data(), 2, 3, nullptr);
    const std::vector<float> back = cuda::to_host(d);
    for (std::size_t i = 0; i < host.size(); ++i)
      EXPECT_EQ(back[i], writes ? -host[i] : host[i]) << i << (writes ? " writes" : " reads");
  }
  // A bridge for some sites leaves the others alone (no copy, no call).
  cuda::DeviceBuffer<float> d = cuda::to_device(host);
  Negate negate;
  model::HostHookBridge only_mlp(negate, true, {model::Site::mlp_in});
  only_mlp.at(model::Site::o_in, d.data(), 2, 3, nullptr);
  EXPECT_EQ(cuda::to_host(d), host);
  only_mlp.at(model::Site::mlp_in, d.data(), 2, 3, nullptr);
  EXPECT_EQ(cuda::to_host(d)[2], -host[2]);
}

TEST(DeviceForward, RefusesWhatItCannotRun) {
  SQ_SKIP_WITHOUT_CUDA();
  const model::Model m = synth_model(io::Arch::llama, DType::bf16, "refuse");
  model::DeviceBlockForward device(m.config());
  std::vector<float> h(16 * 128);
  // forward before load
  EXPECT_THROW(device.forward({.n_seq = 1, .seq_len = 16}, h.data(), nullptr), Error);
  model::BlockWeights w = m.load_block(0);
  w.attn_norm.map.index = {0};
  w.attn_norm.map.merge = {0};
  w.attn_norm.map.out_channels = 1;
  try {
    device.load(w);
    ADD_FAILURE() << "a norm output map was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention norm carries an output map"), std::string::npos)
        << e.what();
  }
  // More ranks on a node than devices (without a launcher's binding, which CUDA_VISIBLE_DEVICES
  // with one device would mean).
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved = visible != nullptr ? visible : "";
  ::unsetenv("CUDA_VISIBLE_DEVICES");
  EXPECT_THROW(model::select_device(0, cuda::device_count() + 1), Error);
  if (visible != nullptr) ::setenv("CUDA_VISIBLE_DEVICES", saved.c_str(), 1);
}

}  // namespace
