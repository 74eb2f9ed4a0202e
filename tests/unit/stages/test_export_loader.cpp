// compressed-tensors export from a block loader (blocks produced one at a time, as a model too
// large for one process needs): the bytes must be those of the export from blocks in memory, the
// loader is called once per layer in increasing order with the previous block already released,
// and a loader that throws leaves no checkpoint behind and its exception unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/half.h"
#include "export_reference.h"
#include "model/synth.h"
#include "stages/export.h"

namespace sq::stages {
namespace {
namespace fs = std::filesystem;
using model::LinearRole;
using model::NormRole;
using Strategy = ExportScheme::WeightStrategy;
using ActStrategy = ExportScheme::ActivationStrategy;
using test::round_to;
using test::rtn;

constexpr int kLayers = 4;
constexpr std::uint64_t kShardBytes = 16 * 1024;  // several shards, blocks split across them

std::string scratch(const std::string& name) {
  const fs::path p = fs::path(SQ_TEST_TMP_DIR) / "stages_export_loader" / name;
  fs::remove_all(p);
  fs::create_directories(p.parent_path());
  return p.string();
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// Every file of `dir` (hidden ones included) by name, with its bytes.
std::map<std::string, std::string> files_of(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::directory_iterator(dir))
    files[entry.path().filename().string()] = read_bytes(entry.path());
  return files;
}

std::string synth_model(const std::string& name, io::Arch arch, DType dtype) {
  model::SynthSpec s;
  s.arch = arch;
  s.hidden = 64;
  s.layers = kLayers;
  s.heads = 4;
  s.vocab = 256;
  s.max_positions = 128;
  s.dtype = dtype;
  s.calib_seqs = 2;
  s.eval_seqs = 2;
  s.seq_len = 16;
  s.seed = 5;
  s.max_shard_bytes = 64 * 1024;
  const std::string dir = scratch(name);
  model::write_synth_model(s, dir);
  std::ofstream(fs::path(dir) / "tokenizer.json", std::ios::binary) << "{\"version\": \"1.0\"}\n";
  return dir;
}

QuantizedBlock quantize_block(const model::Model& m, int layer, const ExportScheme& scheme) {
  QuantizedBlock b;
  b.weights = m.load_block(layer);
  for (LinearRole role : model::kAllLinearRoles) {
    auto& linear = b.weights.linear(role);
    if (!linear.weight.defined()) continue;
    b.linear(role) = rtn(linear, scheme.weight_strategy, scheme.dtype);
    if (scheme.quantize_activations && !scheme.activation_dynamic) {
      const bool qkv = role == LinearRole::q || role == LinearRole::k || role == LinearRole::v;
      const bool mlp_in = role == LinearRole::gate || role == LinearRole::up;
      const float s = qkv ? 0.03125f : mlp_in ? 0.0234375f : 0.01171875f * (1 + layer);
      b.linear(role).input_scale = Tensor::from_f32(std::vector<float>{s}, {1});
    }
  }
  return b;
}

// Replaces the block's attention norm weight by a view whose owner `alive` observes: the norm is
// always converted on export, so nothing the writer holds keeps the owner alive, only the block.
void watch(QuantizedBlock& block, std::weak_ptr<const void>& alive) {
  struct Holder {
    Tensor tensor;
  };
  Tensor& w = block.weights.attn_norm.weight;
  auto holder = std::make_shared<Holder>(Holder{w.clone()});
  const Tensor& t = holder->tensor;
  w = Tensor::view(t.dtype(), t.shape(), t.bytes(), holder);
  alive = holder;
}

struct Case {
  std::string name;
  io::Arch arch;
  DType source_dtype;
  ExportScheme scheme;
};

std::vector<Case> cases() {
  ExportScheme dynamic;  // W8A8, per-channel weights, dynamic per-token activations, bf16
  ExportScheme static_tensor;
  static_tensor.weight_strategy = Strategy::tensor;
  static_tensor.activation_strategy = ActStrategy::tensor;
  static_tensor.activation_dynamic = false;
  static_tensor.dtype = DType::f32;
  ExportScheme weight_only;  // W8A16: pack-quantized
  weight_only.quantize_activations = false;
  weight_only.dtype = DType::f16;
  return {{"llama_w8a8", io::Arch::llama, DType::f32, dynamic},
          {"opt_static", io::Arch::opt, DType::bf16, static_tensor},
          {"llama_w8a16", io::Arch::llama, DType::bf16, weight_only}};
}

TEST(ExportLoader, WritesTheBytesOfTheVectorExportLoadingEachLayerOnceInOrder) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::string src = synth_model(c.name + "_src", c.arch, c.source_dtype);
    const auto m = model::Model::open(src);
    std::vector<QuantizedBlock> blocks;
    for (int layer = 0; layer < kLayers; ++layer)
      blocks.push_back(quantize_block(m, layer, c.scheme));
    const std::string from_vector = scratch(c.name + "_vector");
    export_compressed_tensors(m, blocks, c.scheme, from_vector, kShardBytes);

    std::vector<int> calls;
    std::weak_ptr<const void> previous;
    const std::string from_loader = scratch(c.name + "_loader");
    export_compressed_tensors(
        m,
        [&](int layer) {
          calls.push_back(layer);
          // The exporter released the previous block before asking for this one.
          EXPECT_TRUE(previous.expired()) << "block " << layer - 1 << " still alive";
          QuantizedBlock block = quantize_block(m, layer, c.scheme);
          watch(block, previous);
          return block;
        },
        c.scheme, from_loader, kShardBytes);
    EXPECT_TRUE(previous.expired()) << "the last block outlived the export";

    std::vector<int> want(kLayers);
    for (int layer = 0; layer < kLayers; ++layer) want[static_cast<std::size_t>(layer)] = layer;
    EXPECT_EQ(calls, want);

    const auto want_files = files_of(from_vector);
    const auto got_files = files_of(from_loader);
    EXPECT_TRUE(want_files.count("model.safetensors.index.json")) << "expected several shards";
    EXPECT_TRUE(want_files.count("config.json"));
    ASSERT_EQ(got_files.size(), want_files.size());
    for (const auto& [name, bytes] : want_files) {
      ASSERT_TRUE(got_files.count(name)) << name;
      EXPECT_TRUE(got_files.at(name) == bytes) << name << " differs";
    }
  }
}

TEST(ExportLoader, AThrowingLoaderLeavesNoCheckpointAndItsErrorPropagates) {
  const Case c = cases()[0];
  const std::string src = synth_model("throw_src", c.arch, c.source_dtype);
  const auto m = model::Model::open(src);
  const std::string message = "block 2: the checkpoint store of rank 3 is unreadable";

  // Once into a directory the export creates (removed again), once into an existing empty one
  // (left empty).
  for (const bool exists : {false, true}) {
    SCOPED_TRACE(exists ? "existing directory" : "new directory");
    const std::string out = scratch(exists ? "throw_existing" : "throw_new");
    if (exists) fs::create_directories(out);
    std::vector<int> calls;
    bool wrote_before_failing = false;
    try {
      export_compressed_tensors(
          m,
          [&](int layer) -> QuantizedBlock {
            calls.push_back(layer);
            if (layer == 2) {
              // Blocks 0 and 1 filled shards already: the failure has files to remove.
              for (const auto& entry : fs::directory_iterator(out))
                wrote_before_failing |=
                    entry.path().filename().string().find(".safetensors") != std::string::npos;
              throw std::runtime_error(message);
            }
            return quantize_block(m, layer, c.scheme);
          },
          c.scheme, out, kShardBytes);
      ADD_FAILURE() << "the loader's exception was swallowed";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), message);
    }
    EXPECT_EQ(calls, (std::vector<int>{0, 1, 2}));
    EXPECT_TRUE(wrote_before_failing);
    if (exists) {
      ASSERT_TRUE(fs::is_directory(out));
      EXPECT_TRUE(fs::is_empty(out)) << files_of(out).begin()->first;
    } else {
      EXPECT_FALSE(fs::exists(out));
    }
    EXPECT_FALSE(fs::exists(fs::path(out) / "config.json"));
    EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors.index.json"));
  }
}

TEST(ExportLoader, RefusesABadBlockWhenItIsLoadedAndCleansUp) {
  const Case c = cases()[0];
  const std::string src = synth_model("bad_src", c.arch, c.source_dtype);
  const auto m = model::Model::open(src);
  const std::string out = scratch("bad_out");
  std::vector<int> calls;
  try {
    export_compressed_tensors(
        m,
        [&](int layer) {
          calls.push_back(layer);
          QuantizedBlock block = quantize_block(m, layer, c.scheme);
          if (layer == 3)
            block.linear(LinearRole::up).weight_zero_point = Tensor::zeros(DType::i32, {1});
          return block;
        },
        c.scheme, out, kShardBytes);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight_zero_point"), std::string::npos) << e.what();
    EXPECT_EQ(e.context().tensor, "model.layers.3.mlp.up_proj.weight") << e.what();
  }
  EXPECT_EQ(calls, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace sq::stages
