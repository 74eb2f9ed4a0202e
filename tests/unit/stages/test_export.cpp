// compressed-tensors export: a synth model quantized by hand (per-channel or per-tensor symmetric
// int8 round-to-nearest, scales rounded to the export dtype) is exported and read back with
// load_compressed_tensors; every tensor, the config and the copied-through files must survive.
// Also the refusals: schemes vLLM cannot run, scales the export dtype cannot hold, blocks that do
// not match their integer weights, a non-empty output directory, and quantization_config keys the
// reader does not understand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <span>

#include "core/half.h"
#include "export_reference.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/synth.h"
#include "stages/export.h"

namespace sq::stages {
namespace {
namespace fs = std::filesystem;
using model::LinearRole;
using model::NormRole;
using nlohmann::json;
using Strategy = ExportScheme::WeightStrategy;
using ActStrategy = ExportScheme::ActivationStrategy;
using test::round_to;
using test::rtn;

std::string scratch(const std::string& name) {
  const fs::path p = fs::path(SQ_TEST_TMP_DIR) / "stages_export" / name;
  fs::remove_all(p);
  fs::create_directories(p.parent_path());
  return p.string();
}

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// The files a Hugging Face model directory carries besides weights and config.
const std::vector<std::pair<std::string, std::string>> kExtraFiles = {
    {"tokenizer.json", "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n"},
    {"tokenizer_config.json", "{\"bos_token\": \"<s>\"}\n"},
    {"special_tokens_map.json", "{\"eos_token\": \"</s>\"}\n"},
    {"generation_config.json", "{\"do_sample\": false}\n"},
    {"tokenizer.model", std::string("\x00\x01\x02spm\xff", 7)},
};

std::string synth_model(const std::string& name, io::Arch arch, DType dtype) {
  model::SynthSpec s;
  s.arch = arch;
  s.hidden = 64;
  s.layers = 2;
  s.heads = 4;
  s.vocab = 256;
  s.max_positions = 128;
  s.dtype = dtype;
  s.calib_seqs = 2;
  s.eval_seqs = 2;
  s.seq_len = 16;
  s.seed = 3;
  s.max_shard_bytes = 64 * 1024;
  const std::string dir = scratch(name);
  model::write_synth_model(s, dir);
  for (const auto& [file, content] : kExtraFiles) write_text(fs::path(dir) / file, content);
  return dir;
}

std::vector<QuantizedBlock> quantize_by_hand(const model::Model& m, const ExportScheme& scheme) {
  std::vector<QuantizedBlock> blocks;
  for (int layer = 0; layer < m.num_layers(); ++layer) {
    QuantizedBlock b;
    b.weights = m.load_block(layer);
    // Stand-ins for smoothing: norms that are no longer the source's (and not bf16 values).
    for (NormRole role : {NormRole::attn, NormRole::mlp}) {
      Tensor w = b.weights.norm(role).weight.to_f32().clone();
      for (float& v : std::span(w.mutable_data<float>(), static_cast<std::size_t>(w.numel())))
        v *= 1.0f + 1.0f / 3.0f;
      b.weights.norm(role).weight = w;
    }
    for (LinearRole role : model::kAllLinearRoles) {
      auto& linear = b.weights.linear(role);
      if (!linear.weight.defined()) continue;
      linear.weight = linear.weight.clone();  // owned: the block keeps the dequantized weights
      b.linear(role) = rtn(linear, scheme.weight_strategy, scheme.dtype);
      if (scheme.quantize_activations && !scheme.activation_dynamic) {
        // One scale per input (q/k/v share theirs, as do gate/up), as calibration would give.
        const bool qkv = role == LinearRole::q || role == LinearRole::k || role == LinearRole::v;
        const bool mlp_in = role == LinearRole::gate || role == LinearRole::up;
        const float s = qkv ? 0.03125f : mlp_in ? 0.0234375f : 0.01171875f * (1 + layer);
        b.linear(role).input_scale = Tensor::from_f32(std::vector<float>{s}, {1});
      }
    }
    blocks.push_back(std::move(b));
  }
  return blocks;
}

std::vector<float> floats(const Tensor& t) {
  const Tensor f = t.to_f32();
  return {f.values<float>().begin(), f.values<float>().end()};
}

// `got` (read back, f32) equals `want` rounded to `dtype`, element for element.
void expect_rounded(const Tensor& got, const Tensor& want, DType dtype, const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const auto g = floats(got), w = floats(want);
  for (std::size_t i = 0; i < g.size(); ++i)
    ASSERT_EQ(g[i], round_to(w[i], dtype)) << what << "[" << i << "]";
}

void expect_same_linear(const QuantizedLinear& got, const QuantizedLinear& want,
                        const std::string& what) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.weight_q.shape(), want.weight_q.shape()) << what;
  ASSERT_EQ(got.weight_q.dtype(), DType::i8) << what;
  EXPECT_EQ(0, std::memcmp(got.weight_q.bytes(), want.weight_q.bytes(), want.weight_q.nbytes()))
      << what;
  EXPECT_EQ(got.weight_scale.shape(), want.weight_scale.shape()) << what;
  EXPECT_EQ(floats(got.weight_scale), floats(want.weight_scale)) << what;
  EXPECT_EQ(got.input_scale.defined(), want.input_scale.defined()) << what;
  if (want.input_scale.defined()) {
    EXPECT_EQ(floats(got.input_scale), floats(want.input_scale)) << what;
  }
  EXPECT_FALSE(got.weight_zero_point.defined()) << what;
}

// Exports, reads back, and checks every tensor of the model.
void round_trip(const std::string& name, io::Arch arch, DType source_dtype,
                const ExportScheme& scheme) {
  const std::string src = synth_model(name + "_src", arch, source_dtype);
  const auto m = model::Model::open(src);
  const auto blocks = quantize_by_hand(m, scheme);
  const std::string out = scratch(name + "_out");
  export_compressed_tensors(m, blocks, scheme, out, 32 * 1024);

  const LoadedExport e = load_compressed_tensors(out);
  io::ModelConfig want_config = m.config();
  want_config.torch_dtype = scheme.dtype;
  EXPECT_EQ(io::to_hf_config(e.config), io::to_hf_config(want_config));
  EXPECT_EQ(e.scheme.weight_strategy, scheme.weight_strategy);
  EXPECT_EQ(e.scheme.quantize_activations, scheme.quantize_activations);
  if (scheme.quantize_activations) {
    EXPECT_EQ(e.scheme.activation_strategy, scheme.activation_strategy);
    EXPECT_EQ(e.scheme.activation_dynamic, scheme.activation_dynamic);
  }
  EXPECT_EQ(e.scheme.dtype, scheme.dtype);

  const auto embedding = m.load_embedding();
  const auto head = m.load_head();
  expect_rounded(e.embedding.tokens, embedding.tokens, scheme.dtype, "embed_tokens");
  if (embedding.positions.defined())
    expect_rounded(e.embedding.positions, embedding.positions, scheme.dtype, "positions");
  expect_rounded(e.head.final_norm.weight, head.final_norm.weight, scheme.dtype, "final norm");
  if (head.final_norm.bias.defined())
    expect_rounded(e.head.final_norm.bias, head.final_norm.bias, scheme.dtype, "final norm bias");
  expect_rounded(e.head.lm_head, head.lm_head, scheme.dtype, "lm_head");

  ASSERT_EQ(e.blocks.size(), blocks.size());
  for (std::size_t layer = 0; layer < blocks.size(); ++layer) {
    const auto& got = e.blocks[layer].weights;
    const auto& want = blocks[layer].weights;
    const std::string at = "layer " + std::to_string(layer);
    expect_rounded(got.attn_norm.weight, want.attn_norm.weight, scheme.dtype, at + " attn norm");
    expect_rounded(got.mlp_norm.weight, want.mlp_norm.weight, scheme.dtype, at + " mlp norm");
    if (want.attn_norm.bias.defined())
      expect_rounded(got.attn_norm.bias, want.attn_norm.bias, scheme.dtype, at + " norm bias");
    for (LinearRole role : model::kAllLinearRoles) {
      const std::string what = at + " " + std::string(model::role_name(role));
      if (!want.linear(role).weight.defined()) {
        EXPECT_FALSE(e.blocks[layer].linear(role).defined()) << what;
        continue;
      }
      expect_same_linear(e.blocks[layer].linear(role), blocks[layer].linear(role), what);
      // Dequantized weights: q * scale in f32, bit for bit what the pipeline evaluated.
      EXPECT_EQ(floats(got.linear(role).weight), floats(want.linear(role).weight)) << what;
      if (want.linear(role).bias.defined()) {
        expect_rounded(got.linear(role).bias, want.linear(role).bias, scheme.dtype, what + " bias");
      } else {
        EXPECT_FALSE(got.linear(role).bias.defined()) << what;
      }
    }
  }

  // Tokenizer and generation files come through byte for byte; the source's weights, config and
  // hidden files do not.
  for (const auto& [file, content] : kExtraFiles)
    EXPECT_EQ(read_bytes(fs::path(out) / file), content) << file;
  for (const auto& entry : fs::directory_iterator(out))
    EXPECT_FALSE(entry.path().filename().string().starts_with(".")) << entry.path();
}

ExportScheme w8a8_token(DType dtype) {
  ExportScheme s;
  s.dtype = dtype;
  return s;
}

TEST(Export, W8A8PerChannelDynamicTokenRoundTripsLlama) {
  round_trip("llama_w8a8", io::Arch::llama, DType::f32, w8a8_token(DType::bf16));
}

TEST(Export, W8A8PerTensorStaticRoundTripsOptWithBiases) {
  ExportScheme s;
  s.weight_strategy = Strategy::tensor;
  s.activation_strategy = ActStrategy::tensor;
  s.activation_dynamic = false;
  s.dtype = DType::f32;
  round_trip("opt_static", io::Arch::opt, DType::bf16, s);
}

TEST(Export, W8A16RoundTripsAsPackQuantized) {
  ExportScheme s;
  s.quantize_activations = false;
  s.dtype = DType::f16;
  round_trip("llama_w8a16", io::Arch::llama, DType::bf16, s);
  EXPECT_EQ(export_format(s), "pack-quantized");
}

TEST(Export, WritesTheConfigAndTensorLayoutCompressedTensorsExpects) {
  const std::string src = synth_model("layout_src", io::Arch::llama, DType::f32);
  const auto m = model::Model::open(src);
  const ExportScheme scheme = w8a8_token(DType::bf16);
  const std::string out = scratch("layout_out");
  export_compressed_tensors(m, quantize_by_hand(m, scheme), scheme, out);

  const json config = json::parse(io::read_text_file(out + "/config.json"));
  EXPECT_EQ(config.at("torch_dtype"), "bfloat16");
  EXPECT_EQ(config.at("hidden_size"), 64);
  const json args_w = {{"num_bits", 8},         {"type", "int"},         {"symmetric", true},
                       {"strategy", "channel"}, {"group_size", nullptr}, {"dynamic", false}};
  const json args_a = {{"num_bits", 8},       {"type", "int"},         {"symmetric", true},
                       {"strategy", "token"}, {"group_size", nullptr}, {"dynamic", true}};
  const json want = {{"quant_method", "compressed-tensors"},
                     {"format", "int-quantized"},
                     {"quantization_status", "compressed"},
                     {"ignore", {"lm_head"}},
                     {"kv_cache_scheme", nullptr},
                     {"global_compression_ratio", nullptr},
                     {"config_groups",
                      {{"group_0",
                        {{"targets", {"Linear"}},
                         {"weights", args_w},
                         {"input_activations", args_a},
                         {"format", "int-quantized"}}}}}};
  EXPECT_EQ(config.at("quantization_config"), want) << config.at("quantization_config").dump(2);

  // One shard (default size): names, dtypes and shapes as transformers' loader wants them.
  const auto st = io::SafetensorsFile::open(out + "/model.safetensors");
  const auto& q = st.entry("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(q.dtype_name, "I8");
  EXPECT_EQ(q.shape, (Shape{64, 64}));
  const auto& s = st.entry("model.layers.1.mlp.down_proj.weight_scale");
  EXPECT_EQ(s.dtype_name, "BF16");
  EXPECT_EQ(s.shape, (Shape{64, 1}));
  EXPECT_EQ(st.entry("model.norm.weight").dtype_name, "BF16");
  EXPECT_EQ(st.entry("lm_head.weight").dtype_name, "BF16");
  EXPECT_FALSE(st.contains("model.layers.0.self_attn.q_proj.input_scale"));
  EXPECT_FALSE(st.contains("model.layers.0.self_attn.q_proj.weight_zero_point"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  // Token files of the synth directory are not weights: they come through too.
  EXPECT_TRUE(fs::exists(out + "/eval.npy"));
}

TEST(Export, StaticInputScaleIsStoredAsOneElement) {
  const std::string src = synth_model("static_src", io::Arch::llama, DType::f32);
  const auto m = model::Model::open(src);
  ExportScheme scheme;
  scheme.activation_strategy = ActStrategy::tensor;
  scheme.activation_dynamic = false;
  const std::string out = scratch("static_out");
  export_compressed_tensors(m, quantize_by_hand(m, scheme), scheme, out);
  const auto st = io::SafetensorsFile::open(out + "/model.safetensors");
  const auto& e = st.entry("model.layers.0.mlp.up_proj.input_scale");
  EXPECT_EQ(e.shape, (Shape{1}));
  EXPECT_EQ(e.dtype_name, "BF16");
  EXPECT_EQ(bf16_to_f32(st.tensor("model.layers.0.mlp.up_proj.input_scale").half_bits()[0]),
            0.0234375f);
}

TEST(Export, CheckExportableRefusesWhatVllmCannotRun) {
  EXPECT_NO_THROW(check_exportable(w8a8_token(DType::bf16)));
  struct Case {
    std::string name;
    std::function<void(ExportScheme&)> change;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"W4A16",
       [](ExportScheme& s) {
         s.weight_bits = 4;
         s.quantize_activations = false;
       },
       "weights.bits = 4"},
      {"W6A6",
       [](ExportScheme& s) {
         s.weight_bits = 6;
         s.activation_bits = 6;
       },
       "the native format arrives with RPTQ/QLLM"},
      {"W8A4", [](ExportScheme& s) { s.activation_bits = 4; }, "activations.bits = 4"},
      {"asym weights", [](ExportScheme& s) { s.weight_symmetric = false; }, "asymmetric weights"},
      {"asym activations", [](ExportScheme& s) { s.activation_symmetric = false; },
       "asymmetric activations"},
      {"group",
       [](ExportScheme& s) {
         s.weight_strategy = Strategy::group;
         s.group_size = 128;
       },
       "group-wise weights"},
      {"static token", [](ExportScheme& s) { s.activation_dynamic = false; }, "static per-token"},
      {"dynamic tensor", [](ExportScheme& s) { s.activation_strategy = ActStrategy::tensor; },
       "dynamic per-tensor"},
      {"tensor W8A16",
       [](ExportScheme& s) {
         s.quantize_activations = false;
         s.weight_strategy = Strategy::tensor;
       },
       "per-tensor weights without activation quantization"},
      {"i8 dtype", [](ExportScheme& s) { s.dtype = DType::i8; }, "dtype i8"},
  };
  for (const auto& c : cases) {
    ExportScheme s = w8a8_token(DType::bf16);
    c.change(s);
    try {
      check_exportable(s);
      ADD_FAILURE() << c.name << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos)
          << c.name << ": " << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  // Accepted besides: per-tensor weights with token activations, static per-tensor, W8A16.
  ExportScheme s = w8a8_token(DType::f16);
  s.weight_strategy = Strategy::tensor;
  EXPECT_NO_THROW(check_exportable(s));
  s.activation_strategy = ActStrategy::tensor;
  s.activation_dynamic = false;
  EXPECT_NO_THROW(check_exportable(s));
  s = w8a8_token(DType::f32);
  s.quantize_activations = false;
  EXPECT_NO_THROW(check_exportable(s));
}

// Expects export to throw with `message` and to leave `out` absent.
void expect_refused(const model::Model& m, const std::vector<QuantizedBlock>& blocks,
                    const ExportScheme& scheme, const std::string& out,
                    const std::string& message) {
  try {
    export_compressed_tensors(m, blocks, scheme, out);
    ADD_FAILURE() << "accepted; expected: " << message;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out)) << out;
}

TEST(Export, RefusesAScaleTheExportDtypeCannotHold) {
  const std::string src = synth_model("unrep_src", io::Arch::llama, DType::f32);
  const auto m = model::Model::open(src);
  ExportScheme scheme = w8a8_token(DType::bf16);
  // Quantized with f32 scales, exported as bf16: the scales would be rounded on the way out.
  ExportScheme f32_scheme = scheme;
  f32_scheme.dtype = DType::f32;
  auto blocks = quantize_by_hand(m, f32_scheme);
  expect_refused(m, blocks, scheme, scratch("unrep_out"), "exactly representable in bf16");

  // A single static input scale that bf16 cannot hold is enough.
  scheme.activation_strategy = ActStrategy::tensor;
  scheme.activation_dynamic = false;
  blocks = quantize_by_hand(m, scheme);
  const float odd = 1.0f + 1.0f / 1024.0f;  // 11 significant bits: f16 yes, bf16 no
  for (LinearRole role : {LinearRole::q, LinearRole::k, LinearRole::v})
    blocks[1].linear(role).input_scale = Tensor::from_f32(std::vector<float>{odd}, {1});
  expect_refused(m, blocks, scheme, scratch("unrep_in_out"), "input_scale[0]");
}

TEST(Export, RefusesBlocksThatDoNotMatchTheirIntegerWeights) {
  const std::string src = synth_model("mismatch_src", io::Arch::llama, DType::f32);
  const auto m = model::Model::open(src);
  ExportScheme scheme = w8a8_token(DType::bf16);
  auto blocks = quantize_by_hand(m, scheme);

  auto changed = blocks;
  changed[0].weights.o.weight = changed[0].weights.o.weight.clone();
  changed[0].weights.o.weight.mutable_data<float>()[5] += 1e-3f;
  expect_refused(m, changed, scheme, scratch("mismatch_w"), "is not weight_q * weight_scale");

  changed = blocks;
  changed.pop_back();
  expect_refused(m, changed, scheme, scratch("mismatch_n"), "1 blocks for a model with 2 layers");

  changed = blocks;
  changed[1].linear(LinearRole::up).weight_zero_point = Tensor::zeros(DType::i32, {64});
  expect_refused(m, changed, scheme, scratch("mismatch_zp"), "weight_zero_point");

  changed = blocks;
  changed[0].weights.attn_norm.map.index = {0, 1};
  changed[0].weights.attn_norm.map.merge = {0, 1};
  changed[0].weights.attn_norm.map.out_channels = 2;
  expect_refused(m, changed, scheme, scratch("mismatch_map"), "channel map");

  // Static: an input scale where the scheme is dynamic, and q/k/v scales that disagree.
  changed = blocks;
  changed[0].linear(LinearRole::k).input_scale = Tensor::from_f32(std::vector<float>{1}, {1});
  expect_refused(m, changed, scheme, scratch("mismatch_dyn"), "has an input_scale");
  ExportScheme st = scheme;
  st.activation_strategy = ActStrategy::tensor;
  st.activation_dynamic = false;
  changed = quantize_by_hand(m, st);
  changed[1].linear(LinearRole::v).input_scale = Tensor::from_f32(std::vector<float>{0.5f}, {1});
  expect_refused(m, changed, st, scratch("mismatch_qkv"), "vLLM fuses these layers");
}

TEST(Export, RefusesANonEmptyOutputDirectory) {
  const std::string src = synth_model("nonempty_src", io::Arch::llama, DType::f32);
  const auto m = model::Model::open(src);
  const ExportScheme scheme = w8a8_token(DType::bf16);
  const auto blocks = quantize_by_hand(m, scheme);
  const std::string out = scratch("nonempty_out");
  fs::create_directories(out);
  write_text(fs::path(out) / "old.txt", "x");
  try {
    export_compressed_tensors(m, blocks, scheme, out);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not empty"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_bytes(fs::path(out) / "old.txt"), "x");
  EXPECT_FALSE(fs::exists(fs::path(out) / "config.json"));
  // An existing empty directory is fine.
  fs::remove(fs::path(out) / "old.txt");
  EXPECT_NO_THROW(export_compressed_tensors(m, blocks, scheme, out));
  EXPECT_NO_THROW(load_compressed_tensors(out));
}

// Rewrites quantization_config of an export and expects the reader to refuse it, naming `key`.
void expect_load_refused(const std::string& dir, const std::function<void(json&)>& change,
                         const std::string& key, const std::string& message = "") {
  const std::string path = dir + "/config.json";
  const std::string original = io::read_text_file(path);
  json config = json::parse(original);
  change(config.at("quantization_config"));
  io::write_file_atomic(path, config.dump(2));
  try {
    load_compressed_tensors(dir);
    ADD_FAILURE() << "accepted; expected a refusal naming " << key;
  } catch (const Error& e) {
    EXPECT_EQ(e.context().key, key) << e.what();
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
  io::write_file_atomic(path, original);
}

TEST(Load, RefusesQuantizationConfigsItDoesNotUnderstand) {
  const std::string src = synth_model("strict_src", io::Arch::llama, DType::f32);
  const auto m = model::Model::open(src);
  const ExportScheme scheme = w8a8_token(DType::bf16);
  const std::string out = scratch("strict_out");
  export_compressed_tensors(m, quantize_by_hand(m, scheme), scheme, out);
  ASSERT_NO_THROW(load_compressed_tensors(out));

  const std::string g = "quantization_config.config_groups.group_0";
  expect_load_refused(
      out, [](json& q) { q["config_groups"]["group_0"]["weights"]["foo"] = 1; }, g + ".weights.foo",
      "unknown key");
  expect_load_refused(
      out, [](json& q) { q["bar"] = true; }, "quantization_config.bar", "unknown key");
  expect_load_refused(
      out, [](json& q) { q["format"] = "float-quantized"; }, "quantization_config.format");
  expect_load_refused(
      out, [](json& q) { q["quantization_status"] = "frozen"; },
      "quantization_config.quantization_status");
  expect_load_refused(
      out, [](json& q) { q["config_groups"]["group_0"]["weights"]["num_bits"] = 4; }, g,
      "weights.bits = 4");
  expect_load_refused(
      out, [](json& q) { q["config_groups"]["group_0"]["input_activations"]["type"] = "float"; },
      g + ".input_activations.type");
  expect_load_refused(
      out, [](json& q) { q["ignore"] = json::array(); }, "quantization_config.ignore", "lm_head");
  expect_load_refused(
      out, [](json& q) { q["ignore"].push_back("model.layers.0.mlp.up_proj"); },
      "quantization_config.ignore", "not understood");
  expect_load_refused(
      out, [](json& q) { q["kv_cache_scheme"] = json::object(); },
      "quantization_config.kv_cache_scheme");
  expect_load_refused(
      out, [](json& q) { q["config_groups"]["group_0"]["targets"] = {"re:.*proj"}; },
      g + ".targets");
  // Static activations need input_scale tensors this checkpoint does not have.
  try {
    json config = json::parse(io::read_text_file(out + "/config.json"));
    auto& a = config["quantization_config"]["config_groups"]["group_0"]["input_activations"];
    a["strategy"] = "tensor";
    a["dynamic"] = false;
    const std::string original = io::read_text_file(out + "/config.json");
    io::write_file_atomic(out + "/config.json", config.dump(2));
    EXPECT_THROW(load_compressed_tensors(out), Error);
    io::write_file_atomic(out + "/config.json", original);
  } catch (...) {
    ADD_FAILURE() << "unexpected exception";
  }
  // Fields llm-compressor writes that do not change the stored tensors are accepted.
  const std::string path = out + "/config.json";
  json config = json::parse(io::read_text_file(path));
  auto& q = config["quantization_config"];
  q["version"] = "0.20.0";
  q["sparsity_config"] = json::object();
  q["transform_config"] = json::object();
  q["config_groups"]["group_0"]["weights"]["observer"] = "minmax";
  q["config_groups"]["group_0"]["weights"]["observer_kwargs"] = json::object();
  q["config_groups"]["group_0"]["weights"]["actorder"] = nullptr;
  q["config_groups"]["group_0"]["output_activations"] = nullptr;
  io::write_file_atomic(path, config.dump(2));
  EXPECT_NO_THROW(load_compressed_tensors(out));
}

}  // namespace
}  // namespace sq::stages
