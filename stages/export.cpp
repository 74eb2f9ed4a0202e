// compressed-tensors export and read-back. What the formats mean to their readers (transformers
// with compressed-tensors 0.20, vLLM) is recorded in tests/interop/README.md; the interop test
// checks that transformers computes the same logits from an export as ShardQuant does.
#include "stages/export.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <utility>

#include "core/error.h"
#include "core/half.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "kernels/cpu/quant.h"

namespace sq::stages {
namespace {

namespace fs = std::filesystem;
using model::LinearRole;
using model::NormRole;
using model::TensorKind;
using model::TensorSpec;
using nlohmann::json;
using Strategy = ExportScheme::WeightStrategy;
using ActStrategy = ExportScheme::ActivationStrategy;

constexpr const char* kIntQuantized = "int-quantized";
constexpr const char* kPackQuantized = "pack-quantized";
constexpr const char* kNoNativeFormat =
    "no compressed-tensors form; the native format arrives with RPTQ/QLLM";

std::string show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

bool is_attention(LinearRole role) {
  return role == LinearRole::q || role == LinearRole::k || role == LinearRole::v ||
         role == LinearRole::o;
}

bool has_linear(const io::ModelConfig& config, LinearRole role) {
  return role != LinearRole::gate || config.gated_mlp();
}

// BlockWeights::norm has no const overload.
const model::Norm& norm_of(const model::BlockWeights& weights, NormRole role) {
  return role == NormRole::attn ? weights.attn_norm : weights.mlp_norm;
}

bool has_bias(const io::ModelConfig& config, LinearRole role) {
  return is_attention(role) ? config.attention_bias : config.mlp_bias;
}

// "model.layers.0.self_attn.q_proj.weight" -> "model.layers.0.self_attn.q_proj".
std::string module_of(const std::string& weight_name) {
  constexpr std::string_view suffix = ".weight";
  SQ_CHECK(weight_name.size() > suffix.size() && weight_name.ends_with(suffix), "{}", weight_name);
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

// Whether `value` survives a round trip through `dtype` unchanged (and is a usable scale).
bool representable(float value, DType dtype) {
  if (!(value > 0.0f) || !std::isfinite(value)) return false;
  switch (dtype) {
    case DType::f32:
      return true;
    case DType::f16:
      return f16_to_f32(f32_to_f16(value)) == value;
    case DType::bf16:
      return bf16_to_f32(f32_to_bf16(value)) == value;
    default:
      return false;
  }
}

// Module names (not tensor names) of the Linear layers outside the blocks that stay in high
// precision. transformers builds project_in/out as nn.Linear too, so a "Linear" target would
// claim them unless they are ignored.
std::vector<std::string> ignored_modules(const io::ModelConfig& config,
                                         const model::TensorNames& names) {
  std::vector<std::string> ignore = {"lm_head"};
  if (config.has_projections()) {
    ignore.push_back(module_of(names.project_in()));
    ignore.push_back(module_of(names.project_out()));
  }
  return ignore;
}

json quantization_args(int bits, bool symmetric, std::string_view strategy, bool dynamic) {
  // Exactly the QuantizationArgs fields compressed-tensors' pydantic model declares (it forbids
  // any other); group_size is written as null, which the model reads as "no groups".
  return json{{"num_bits", bits},       {"type", "int"},
              {"symmetric", symmetric}, {"strategy", std::string(strategy)},
              {"group_size", nullptr},  {"dynamic", dynamic}};
}

json quantization_config(const ExportScheme& scheme, const std::vector<std::string>& ignore) {
  const std::string format = export_format(scheme);
  json group = json::object();
  group["targets"] = json::array({"Linear"});
  group["weights"] =
      quantization_args(scheme.weight_bits, scheme.weight_symmetric,
                        scheme.weight_strategy == Strategy::channel ? "channel" : "tensor", false);
  if (scheme.quantize_activations) {
    group["input_activations"] =
        quantization_args(scheme.activation_bits, scheme.activation_symmetric,
                          scheme.activation_strategy == ActStrategy::token ? "token" : "tensor",
                          scheme.activation_dynamic);
  } else {
    group["input_activations"] = nullptr;
  }
  // The group's own format: transformers (with compressed-tensors >= 0.15) decompresses each
  // module with the format its scheme names and otherwise infers one, ignoring the top-level
  // field; vLLM also prefers the group's format. Stating it removes the guesswork.
  group["format"] = format;
  json q = json::object();
  q["quant_method"] = "compressed-tensors";
  q["format"] = format;
  q["quantization_status"] = "compressed";
  q["ignore"] = ignore;
  q["kv_cache_scheme"] = nullptr;
  q["global_compression_ratio"] = nullptr;
  q["config_groups"] = json{{"group_0", group}};
  return q;
}

// ---------------------------------------------------------------------------------------------
// Checks on what the pipeline hands over, all done before the first byte is written.

void check_vector(const Tensor& t, std::int64_t n, const std::string& what,
                  const ErrorContext& at) {
  if (!t.defined()) fail(at, "{} is missing", what);
  if (t.dtype() != DType::f32) fail(at, "{} must be f32, got {}", what, t.describe());
  if (t.numel() != n) fail(at, "{} must have {} elements, got {}", what, n, t.describe());
}

void check_scales(const Tensor& t, DType dtype, const std::string& what, const ErrorContext& at) {
  const auto values = t.values<float>();
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!representable(values[i], dtype)) {
      fail(at,
           "{}[{}] = {} is not a positive value exactly representable in {}: the pipeline must "
           "round scales to the export dtype before quantizing, so that the checkpoint is what "
           "ShardQuant evaluated",
           what, i, values[i], dtype_name(dtype));
    }
  }
}

void check_linear(const model::Linear& linear, const QuantizedLinear& q, const Shape& shape,
                  bool bias, const ExportScheme& scheme, const ErrorContext& at) {
  const std::int64_t rows = shape[0], cols = shape[1];
  if (!q.weight_q.defined()) fail(at, "the linear was not quantized (no weight_q)");
  if (q.weight_q.dtype() != DType::i8 || q.weight_q.shape() != shape)
    fail(at, "weight_q must be i8{}, got {}", shape_str(shape), q.weight_q.describe());
  const std::int64_t n_scales = scheme.weight_strategy == Strategy::channel ? rows : 1;
  check_vector(q.weight_scale, n_scales, "weight_scale", at);
  check_scales(q.weight_scale, scheme.dtype, "weight_scale", at);
  if (q.weight_zero_point.defined())
    fail(at, "has a weight_zero_point, but the exported weights are symmetric");
  if (q.input_zero_point.defined())
    fail(at, "has an input_zero_point, but the exported activations are symmetric");
  const bool static_input = scheme.quantize_activations && !scheme.activation_dynamic;
  if (static_input) {
    check_vector(q.input_scale, 1, "input_scale", at);
    check_scales(q.input_scale, scheme.dtype, "input_scale", at);
  } else if (q.input_scale.defined()) {
    fail(at, "has an input_scale, but the scheme's activations are {}",
         scheme.quantize_activations ? "dynamic" : "not quantized");
  }
  if (bias != linear.bias.defined())
    fail(at, "bias {} but the config says {}", linear.bias.defined() ? "present" : "missing",
         bias ? "it has one" : "it has none");
  if (bias) check_vector(linear.bias, rows, "bias", at);
  // The dequantized weights are what the quantized forward ran; they must be q * scale exactly,
  // or the checkpoint would not be the model ShardQuant evaluated.
  if (linear.weight.defined()) {
    if (linear.weight.dtype() != DType::f32 || linear.weight.shape() != shape)
      fail(at, "weight must be f32{}, got {}", shape_str(shape), linear.weight.describe());
    const float* w = linear.weight.data<float>();
    const std::int8_t* qv = q.weight_q.data<std::int8_t>();
    const float* s = q.weight_scale.data<float>();
    for (std::int64_t r = 0; r < rows; ++r) {
      const float scale = s[n_scales == 1 ? 0 : r];
      for (std::int64_t c = 0; c < cols; ++c) {
        const float expected = static_cast<float>(qv[r * cols + c]) * scale;
        if (w[r * cols + c] != expected) {
          fail(at,
               "weight[{}, {}] = {} is not weight_q * weight_scale = {}: the block's weights are "
               "not the dequantized integer weights",
               r, c, w[r * cols + c], expected);
        }
      }
    }
  }
}

void check_norm(const model::Norm& norm, const io::ModelConfig& config, const ErrorContext& at) {
  if (!norm.map.empty()) fail(at, "carries a channel map (reorder/split); {}", kNoNativeFormat);
  check_vector(norm.weight, config.hidden_size, "weight", at);
  if (config.norm_bias) {
    check_vector(norm.bias, config.hidden_size, "bias", at);
  } else if (norm.bias.defined()) {
    fail(at, "has a bias, but the model's norms have none (an OS+ shift on an RMSNorm model?)");
  }
}

// The checks of one block, layer `layer` of a model with `config`; `linear_shapes`: the shape of
// every linear weight, by canonical name.
void check_block(const QuantizedBlock& block, int layer, const io::ModelConfig& config,
                 const model::TensorNames& names, const std::map<std::string, Shape>& linear_shapes,
                 const ExportScheme& scheme) {
  for (NormRole role : {NormRole::attn, NormRole::mlp})
    check_norm(norm_of(block.weights, role), config,
               ErrorContext{.tensor = names.norm(layer, role, false)});
  for (LinearRole role : model::kAllLinearRoles) {
    if (!has_linear(config, role)) {
      if (block.linear(role).defined())
        fail("block {} has a quantized gate projection, but the model has none", layer);
      continue;
    }
    const std::string name = names.linear(layer, role, false);
    const ErrorContext at{.tensor = name};
    check_linear(block.weights.linear(role), block.linear(role), linear_shapes.at(name),
                 has_bias(config, role), scheme, at);
  }
  // vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj and runs each fused layer with
  // the largest of its static input scales: they must agree, or vLLM would run other numbers.
  if (scheme.quantize_activations && !scheme.activation_dynamic) {
    std::vector<std::vector<LinearRole>> fused = {{LinearRole::q, LinearRole::k, LinearRole::v}};
    if (config.gated_mlp()) fused.push_back({LinearRole::gate, LinearRole::up});
    for (const auto& group : fused) {
      const float first = block.linear(group[0]).input_scale.data<float>()[0];
      for (LinearRole role : group) {
        const float s = block.linear(role).input_scale.data<float>()[0];
        if (s != first)
          fail(ErrorContext{.tensor = names.linear(layer, role, false)},
               "input_scale {} differs from {}_proj's {}: vLLM fuses these layers and would "
               "run them all with the largest scale",
               s, model::role_name(group[0]), first);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

// Files of a model directory that are weights or config (never copied through), by name.
bool is_weights_or_config(const std::string& name) {
  if (name == "config.json") return true;
  for (std::string_view suffix :
       {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
        ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx"})
    if (name.ends_with(suffix)) return true;
  return false;
}

void copy_file_atomic(const fs::path& from, const fs::path& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) fail(ErrorContext{.file = from.string()}, "cannot open for reading");
  io::write_file_atomic(to.string(), [&](const io::ByteSink& sink) {
    std::vector<char> buffer(std::size_t{1} << 20);
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const std::streamsize got = in.gcount();
      if (got > 0) sink(buffer.data(), static_cast<std::size_t>(got));
    }
    if (in.bad()) fail(ErrorContext{.file = from.string()}, "read error");
  });
}

// Removes what an interrupted export wrote, so that out_dir is as it was: empty, or absent.
class ExportCleanup {
 public:
  ExportCleanup(fs::path dir, bool created) : dir_(std::move(dir)), created_(created) {}
  ~ExportCleanup() {
    if (done_) return;
    // The directory was empty when the export started: all that is in it now is ours. Error
    // codes throughout: a destructor must not throw.
    std::error_code ec;
    std::vector<fs::path> files;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec))
      if (it->is_regular_file(ec)) files.push_back(it->path());
    for (const auto& file : files) fs::remove(file, ec);
    if (created_) fs::remove(dir_, ec);  // only removes it when empty
  }
  ExportCleanup(const ExportCleanup&) = delete;
  ExportCleanup& operator=(const ExportCleanup&) = delete;
  void dismiss() { done_ = true; }

 private:
  fs::path dir_;
  bool created_;
  bool done_ = false;
};

Tensor converted(const Tensor& t, DType dtype) { return t.dtype() == dtype ? t : t.to(dtype); }

// Scales as compressed-tensors stores them: [out, 1] per channel, [1] per tensor.
Tensor stored_scale(const Tensor& scale, Strategy strategy, DType dtype) {
  const Tensor s = scale.to(dtype);
  return strategy == Strategy::channel ? s.reshape({s.numel(), 1}) : s.reshape({1});
}

Tensor pack_weight(const Tensor& q) {
  const std::int64_t rows = q.dim(0), cols = q.dim(1);
  Tensor packed = Tensor::zeros(DType::i32, {rows, cpu::packed_words(cols, 8)});
  cpu::pack_quantized(q.data<std::int8_t>(), rows, cols, 8, packed.mutable_data<std::int32_t>());
  return packed;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void check_exportable(const ExportScheme& s) {
  const ErrorContext at{.key = "export"};
  if (s.dtype != DType::f32 && s.dtype != DType::f16 && s.dtype != DType::bf16)
    fail(at, "dtype {}: scales and unquantized tensors are stored as float32, float16 or bfloat16",
         dtype_name(s.dtype));
  if (s.weight_bits != 8)
    fail(at, "weights.bits = {}: only 8-bit weights are exported; {}", s.weight_bits,
         kNoNativeFormat);
  if (!s.weight_symmetric)
    fail(at, "asymmetric weights: vLLM's int8 kernels take symmetric weights only; {}",
         kNoNativeFormat);
  if (s.weight_strategy == Strategy::group)
    fail(at,
         "group-wise weights (group size {}): vLLM's int8 kernels take per-channel or "
         "per-tensor weight scales; {}",
         s.group_size, kNoNativeFormat);
  if (!s.quantize_activations) {
    if (s.weight_strategy != Strategy::channel)
      fail(at,
           "per-tensor weights without activation quantization: vLLM runs int8 weight-only "
           "models per channel or group only (pack-quantized); quantize the weights per channel");
    return;
  }
  if (s.activation_bits != 8)
    fail(at, "activations.bits = {}: vLLM's int8 kernels take 8-bit activations; {}",
         s.activation_bits, kNoNativeFormat);
  if (!s.activation_symmetric)
    fail(at, "asymmetric activations: only symmetric 8-bit activations are exported; {}",
         kNoNativeFormat);
  if (s.activation_strategy == ActStrategy::token && !s.activation_dynamic)
    fail(at,
         "static per-token activations: per-token scales exist only at run time "
         "(compressed-tensors requires dynamic=true for the token strategy)");
  if (s.activation_strategy == ActStrategy::tensor && s.activation_dynamic)
    fail(at,
         "dynamic per-tensor activations: vLLM has no int8 kernel for them (only dynamic "
         "per-token or static per-tensor); use granularity token, or tensor with dynamic false");
}

std::string export_format(const ExportScheme& scheme) {
  check_exportable(scheme);
  return scheme.quantize_activations ? kIntQuantized : kPackQuantized;
}

void export_compressed_tensors(const model::Model& source, const BlockLoader& load_block,
                               const ExportScheme& scheme, const std::string& out_dir,
                               std::uint64_t max_shard_bytes) {
  check_exportable(scheme);
  SQ_CHECK(static_cast<bool>(load_block), "export needs a block loader");
  const io::ModelConfig& config = source.config();
  io::ModelConfig out_config = config;
  out_config.torch_dtype = scheme.dtype;
  const auto names = model::TensorNames::canonical(config);
  json hf = io::to_hf_config(out_config);
  hf["quantization_config"] = quantization_config(scheme, ignored_modules(config, names));
  const auto specs = model::model_tensors(config, names);
  const auto source_specs = model::model_tensors(config, source.names());
  SQ_CHECK(specs.size() == source_specs.size(), "{} vs {}", specs.size(), source_specs.size());
  std::map<std::string, Shape> linear_shapes;
  for (const auto& spec : specs)
    if (spec.kind == TensorKind::linear_weight) linear_shapes[spec.name] = spec.shape;

  const fs::path dir(out_dir);
  std::error_code ec;
  bool created = false;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec))
      fail(ErrorContext{.file = out_dir}, "exists and is not a directory");
    if (!fs::is_empty(dir, ec))
      fail(ErrorContext{.file = out_dir},
           "the export directory exists and is not empty; "
           "refusing to mix two checkpoints");
  } else {
    fs::create_directories(dir, ec);
    if (ec) fail(ErrorContext{.file = out_dir}, "cannot create the directory: {}", ec.message());
    created = true;
  }
  ExportCleanup cleanup(dir, created);

  {
    io::ShardedCheckpointWriter writer(out_dir, max_shard_bytes);
    const bool static_input = scheme.quantize_activations && !scheme.activation_dynamic;
    // The block of layer `loaded`; model_tensors lists each layer's tensors together, layers in
    // increasing order, so each block is loaded once and released before the next is loaded
    // (its tensors that went to the writer stay alive with the shard being written).
    std::optional<QuantizedBlock> block;
    int loaded = -1;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const TensorSpec& spec = specs[i];
      if (spec.layer != loaded) {
        block.reset();
        if (spec.layer >= 0) {
          SQ_CHECK(spec.layer == loaded + 1, "layer {} after layer {}", spec.layer, loaded);
          loaded = spec.layer;
          block.emplace(load_block(loaded));
          check_block(*block, loaded, config, names, linear_shapes, scheme);
        }
      }
      switch (spec.kind) {
        case TensorKind::norm_weight:
          writer.add(spec.name, norm_of(block->weights, spec.norm).weight.to(scheme.dtype));
          break;
        case TensorKind::norm_bias:
          writer.add(spec.name, norm_of(block->weights, spec.norm).bias.to(scheme.dtype));
          break;
        case TensorKind::linear_bias:
          writer.add(spec.name, block->weights.linear(spec.linear).bias.to(scheme.dtype));
          break;
        case TensorKind::linear_weight: {
          const QuantizedLinear& q = block->linear(spec.linear);
          const std::string module = module_of(spec.name);
          if (scheme.quantize_activations) {
            writer.add(spec.name, q.weight_q);
          } else {
            writer.add(module + ".weight_packed", pack_weight(q.weight_q));
            Tensor shape = Tensor::zeros(DType::i64, {2});
            shape.mutable_data<std::int64_t>()[0] = spec.shape[0];
            shape.mutable_data<std::int64_t>()[1] = spec.shape[1];
            writer.add(module + ".weight_shape", shape);
          }
          writer.add(module + ".weight_scale",
                     stored_scale(q.weight_scale, scheme.weight_strategy, scheme.dtype));
          if (static_input)
            writer.add(module + ".input_scale", q.input_scale.to(scheme.dtype).reshape({1}));
          break;
        }
        default:  // outside the blocks: as the source has it, in the export dtype
          writer.add(spec.name,
                     converted(source.checkpoint().tensor(source_specs[i].name), scheme.dtype));
          break;
      }
    }
    block.reset();
    SQ_CHECK(loaded == config.num_layers - 1, "{} of {} blocks written", loaded + 1,
             config.num_layers);
    writer.finish();
  }

  // Tokenizer and generation files make the export a complete model directory for vLLM.
  const fs::path source_dir(source.checkpoint().dir());
  for (const auto& entry : fs::directory_iterator(source_dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name.starts_with(".") || is_weights_or_config(name)) continue;
    copy_file_atomic(entry.path(), dir / name);
  }
  // Last: a directory with a config.json is a complete checkpoint.
  io::write_file_atomic((dir / "config.json").string(), hf.dump(2) + "\n");
  cleanup.dismiss();
}

void export_compressed_tensors(const model::Model& source,
                               const std::vector<QuantizedBlock>& blocks,
                               const ExportScheme& scheme, const std::string& out_dir,
                               std::uint64_t max_shard_bytes) {
  check_exportable(scheme);
  const std::int64_t layers = source.config().num_layers;
  if (static_cast<std::int64_t>(blocks.size()) != layers)
    fail("export got {} blocks for a model with {} layers", blocks.size(), layers);
  // A copy of a block shares its tensors' memory: nothing is duplicated.
  export_compressed_tensors(
      source, [&blocks](int layer) { return blocks[static_cast<std::size_t>(layer)]; }, scheme,
      out_dir, max_shard_bytes);
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

// Strict access to one JSON object of quantization_config: every key must be claimed by take()
// or allow(); finish() refuses the rest, naming them with their full path.
class Keys {
 public:
  Keys(const json& object, std::string file, std::string path)
      : object_(object), file_(std::move(file)), path_(std::move(path)) {
    if (!object_.is_object()) fail(at(""), "must be an object, got {}", show(object_));
  }
  ErrorContext at(const std::string& key) const {
    return ErrorContext{.file = file_, .key = key.empty() ? path_ : path_ + "." + key};
  }
  // The value, or nullptr when absent (a JSON null is returned as is).
  const json* take(const std::string& key) {
    seen_.insert(key);
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }
  const json& require(const std::string& key) {
    const json* v = take(key);
    if (v == nullptr) fail(at(key), "required key is missing");
    return *v;
  }
  // Absent or null.
  void null_only(const std::string& key, std::string_view why) {
    const json* v = take(key);
    if (v != nullptr && !v->is_null()) fail(at(key), "{} is not supported: {}", show(*v), why);
  }
  std::string string(const std::string& key) {
    const json& v = require(key);
    if (!v.is_string()) fail(at(key), "must be a string, got {}", show(v));
    return v.get<std::string>();
  }
  bool boolean(const std::string& key) {
    const json& v = require(key);
    if (!v.is_boolean()) fail(at(key), "must be true or false, got {}", show(v));
    return v.get<bool>();
  }
  void finish() const {
    for (auto it = object_.begin(); it != object_.end(); ++it)
      if (!seen_.count(it.key()))
        fail(at(it.key()), "unknown key (value {}): ShardQuant does not know what it means",
             show(it.value()));
  }
  const std::string& path() const { return path_; }

 private:
  const json& object_;
  std::string file_, path_;
  std::set<std::string> seen_;
};

struct ParsedArgs {
  int bits = 8;
  bool symmetric = true;
  std::string strategy;
  bool dynamic = false;
};

// One QuantizationArgs object. Fields that only steer calibration (observer, actorder) do not
// change what is stored and are accepted; anything else must be what the export writes.
ParsedArgs parse_args(const json& value, const std::string& file, const std::string& path,
                      bool weights) {
  Keys k(value, file, path);
  ParsedArgs a;
  const json& bits = k.require("num_bits");
  if (!bits.is_number_integer()) fail(k.at("num_bits"), "must be an integer, got {}", show(bits));
  a.bits = bits.get<int>();
  const json* type = k.take("type");
  if (type != nullptr && *type != "int")
    fail(k.at("type"), "{}: only integer quantization is read", show(*type));
  a.symmetric = k.take("symmetric") == nullptr ? true : k.boolean("symmetric");
  const json* group_size = k.take("group_size");
  const json* strategy = k.take("strategy");
  if (strategy != nullptr && !strategy->is_null()) {
    if (!strategy->is_string()) fail(k.at("strategy"), "must be a string, got {}", show(*strategy));
    a.strategy = strategy->get<std::string>();
  } else {
    // compressed-tensors infers the strategy from group_size: none -> tensor, -1 -> channel.
    a.strategy = group_size == nullptr || group_size->is_null() ? "tensor" : "";
    if (group_size != nullptr && *group_size == -1) a.strategy = "channel";
    if (a.strategy.empty())
      fail(k.at("group_size"), "{}: group-wise scales are not read", show(*group_size));
  }
  if (group_size != nullptr && !group_size->is_null() &&
      !(*group_size == -1 && a.strategy == "channel"))
    fail(k.at("group_size"), "{}: group-wise scales are not read", show(*group_size));
  const json* dynamic = k.take("dynamic");
  if (dynamic != nullptr) {
    if (!dynamic->is_boolean())
      fail(k.at("dynamic"), "{}: only true or false is read", show(*dynamic));
    a.dynamic = dynamic->get<bool>();
  }
  k.null_only("block_structure", "block-wise scales are not read");
  k.null_only("scale_dtype", "scales are read in the dtype they are stored in");
  k.null_only("zp_dtype", "zero points are not read (symmetric schemes only)");
  const json* actorder = k.take("actorder");
  if (actorder != nullptr && !actorder->is_null() && *actorder != false &&
      !(weights && (*actorder == "weight" || *actorder == "static")))
    fail(k.at("actorder"), "{} is not supported", show(*actorder));
  const json* observer = k.take("observer");
  if (observer != nullptr && !observer->is_null() && !observer->is_string())
    fail(k.at("observer"), "must be a string, got {}", show(*observer));
  const json* observer_kwargs = k.take("observer_kwargs");
  if (observer_kwargs != nullptr && !observer_kwargs->is_object())
    fail(k.at("observer_kwargs"), "must be an object, got {}", show(*observer_kwargs));
  k.finish();
  return a;
}

struct ParsedQuantization {
  ExportScheme scheme;
  std::string format;
};

ParsedQuantization parse_quantization_config(const json& value, const std::string& file,
                                             const io::ModelConfig& config,
                                             const model::TensorNames& names) {
  Keys k(value, file, "quantization_config");
  ParsedQuantization p;
  if (k.string("quant_method") != "compressed-tensors")
    fail(k.at("quant_method"), "{}: not a compressed-tensors checkpoint",
         show(*k.take("quant_method")));
  p.format = k.string("format");
  if (p.format != kIntQuantized && p.format != kPackQuantized)
    fail(k.at("format"), "\"{}\": only int-quantized and pack-quantized are read", p.format);
  const std::string status = k.string("quantization_status");
  if (status != "compressed")
    fail(k.at("quantization_status"),
         "\"{}\": only \"compressed\" checkpoints (integer weights on disk) are read", status);
  k.null_only("kv_cache_scheme", "KV-cache quantization is not read");
  k.null_only("moe_sparsity_config", "sparse experts are not read");
  if (const json* ratio = k.take("global_compression_ratio");
      ratio != nullptr && !ratio->is_null() && !ratio->is_number())
    fail(k.at("global_compression_ratio"), "must be a number, got {}", show(*ratio));
  if (const json* version = k.take("version");
      version != nullptr && !version->is_null() && !version->is_string())
    fail(k.at("version"), "must be a string, got {}", show(*version));
  for (const std::string key : {"sparsity_config", "transform_config"}) {
    const json* v = k.take(key);
    if (v != nullptr && !v->is_null() && !(v->is_object() && v->empty()))
      fail(k.at(key), "{} is not supported: only dense, untransformed weights are read", show(*v));
  }

  // ignore: exactly the high-precision Linear modules outside the blocks.
  const json& ignore = k.require("ignore");
  if (!ignore.is_array()) fail(k.at("ignore"), "must be a list, got {}", show(ignore));
  std::set<std::string> expected_ignore;
  for (const auto& m : ignored_modules(config, names)) expected_ignore.insert(m);
  std::set<std::string> got_ignore;
  for (const auto& entry : ignore) {
    if (!entry.is_string()) fail(k.at("ignore"), "entries must be strings, got {}", show(entry));
    const std::string name = entry.get<std::string>();
    if (!expected_ignore.count(name))
      fail(k.at("ignore"),
           "entry \"{}\" is not understood: only the Linear modules outside the "
           "decoder blocks ({}) may stay unquantized",
           name, fmt::join(expected_ignore, ", "));
    got_ignore.insert(name);
  }
  for (const auto& name : expected_ignore)
    if (!got_ignore.count(name))
      fail(k.at("ignore"), "\"{}\" is not ignored: a quantized {} is not read", name, name);

  const json& groups = k.require("config_groups");
  if (!groups.is_object() || groups.size() != 1)
    fail(k.at("config_groups"), "must hold exactly one group, got {}", show(groups));
  const std::string group_path = "quantization_config.config_groups." + groups.begin().key();
  Keys g(groups.begin().value(), file, group_path);
  const json& targets = g.require("targets");
  if (targets != json::array({"Linear"}))
    fail(g.at("targets"), "{}: only [\"Linear\"] is read", show(targets));
  const ParsedArgs w = parse_args(g.require("weights"), file, group_path + ".weights", true);
  const json* input = g.take("input_activations");
  std::optional<ParsedArgs> a;
  if (input != nullptr && !input->is_null())
    a = parse_args(*input, file, group_path + ".input_activations", false);
  g.null_only("output_activations", "output quantization is not read");
  if (const json* f = g.take("format"); f != nullptr && !f->is_null() && *f != p.format)
    fail(g.at("format"), "{} differs from the top-level format \"{}\"", show(*f), p.format);
  g.finish();
  k.finish();

  ExportScheme& s = p.scheme;
  s.weight_bits = w.bits;
  s.weight_symmetric = w.symmetric;
  if (w.dynamic) fail(g.at("weights.dynamic"), "dynamic weight quantization is not read");
  if (w.strategy == "channel") {
    s.weight_strategy = Strategy::channel;
  } else if (w.strategy == "tensor") {
    s.weight_strategy = Strategy::tensor;
  } else {
    fail(g.at("weights.strategy"), "\"{}\": only channel and tensor are read", w.strategy);
  }
  s.quantize_activations = a.has_value();
  if (a) {
    s.activation_bits = a->bits;
    s.activation_symmetric = a->symmetric;
    s.activation_dynamic = a->dynamic;
    if (a->strategy == "token") {
      s.activation_strategy = ActStrategy::token;
    } else if (a->strategy == "tensor") {
      s.activation_strategy = ActStrategy::tensor;
    } else {
      fail(g.at("input_activations.strategy"), "\"{}\": only token and tensor are read",
           a->strategy);
    }
  }
  try {
    check_exportable(s);
  } catch (const Error& e) {
    fail(ErrorContext{.file = file, .key = group_path}, "{}", e.message());
  }
  if (export_format(s) != p.format)
    fail(k.at("format"), "\"{}\" is not the format of this scheme (\"{}\")", p.format,
         export_format(s));
  return p;
}

}  // namespace

LoadedExport load_compressed_tensors(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  json hf =
      io::parse_json_strict(io::read_text_file(config_path), ErrorContext{.file = config_path});
  if (!hf.is_object()) fail(ErrorContext{.file = config_path}, "must be a JSON object");
  auto qit = hf.find("quantization_config");
  if (qit == hf.end())
    fail(ErrorContext{.file = config_path},
         "no quantization_config: not a compressed-tensors checkpoint");
  const json quantization = *qit;
  // parse_hf_config refuses quantized configs (ShardQuant quantizes from full precision); the
  // architecture part is the same either way.
  hf.erase(qit);
  LoadedExport out;
  out.config = io::parse_hf_config(hf, config_path);
  const io::ModelConfig& config = out.config;
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  const auto names = model::TensorNames::detect(config, checkpoint);
  const ParsedQuantization parsed =
      parse_quantization_config(quantization, config_path, config, names);
  out.scheme = parsed.scheme;
  const ExportScheme& scheme = out.scheme;
  const bool packed = parsed.format == kPackQuantized;
  const bool static_input = scheme.quantize_activations && !scheme.activation_dynamic;

  std::set<std::string> expected;
  std::optional<DType> scale_dtype;
  // A stored tensor with the given shape and (when `dtype` is set) dtype, else any float dtype.
  auto stored = [&](const std::string& name, const Shape& shape,
                    std::optional<DType> dtype) -> Tensor {
    expected.insert(name);
    if (!checkpoint.contains(name))
      fail(ErrorContext{.file = dir, .tensor = name}, "missing (expected shape {})",
           shape_str(shape));
    const auto& entry = checkpoint.entry(name);
    const ErrorContext at{.file = checkpoint.file_of(name), .tensor = name};
    if (entry.shape != shape)
      fail(at, "shape {} is not the expected {}", shape_str(entry.shape), shape_str(shape));
    if (!entry.dtype || (dtype ? *entry.dtype != *dtype : !is_floating(*entry.dtype)))
      fail(at, "dtype {} is not {}", entry.dtype_name,
           dtype ? std::string(safetensors_dtype_name(*dtype)) : "a float type (F32, F16, BF16)");
    return checkpoint.tensor(name);
  };
  auto scale = [&](const std::string& name, const Shape& shape) -> Tensor {
    const Tensor t = stored(name, shape, std::nullopt);
    if (scale_dtype && *scale_dtype != t.dtype())
      fail(ErrorContext{.file = checkpoint.file_of(name), .tensor = name},
           "stored as {} while other scales are {}", dtype_name(t.dtype()),
           dtype_name(*scale_dtype));
    scale_dtype = t.dtype();
    Tensor f = t.to_f32().reshape({t.numel()});
    for (float v : f.values<float>())
      if (!(v > 0.0f) || !std::isfinite(v))
        fail(ErrorContext{.file = checkpoint.file_of(name), .tensor = name},
             "holds {}, not a positive finite scale", v);
    return f;
  };
  auto f32 = [&](const TensorSpec& spec) { return stored(spec.name, spec.shape, {}).to_f32(); };

  out.blocks.resize(static_cast<std::size_t>(config.num_layers));
  for (const TensorSpec& spec : model::model_tensors(config, names)) {
    switch (spec.kind) {
      case TensorKind::embed_tokens:
        out.embedding.tokens = f32(spec);
        break;
      case TensorKind::embed_positions:
        out.embedding.positions = f32(spec);
        break;
      case TensorKind::project_in:
        out.embedding.project_in.weight = f32(spec);
        break;
      case TensorKind::project_out:
        out.head.project_out.weight = f32(spec);
        break;
      case TensorKind::final_norm_weight:
        out.head.final_norm.weight = f32(spec);
        break;
      case TensorKind::final_norm_bias:
        out.head.final_norm.bias = f32(spec);
        break;
      case TensorKind::lm_head:
        out.head.lm_head = f32(spec);
        break;
      case TensorKind::norm_weight:
        out.blocks[static_cast<std::size_t>(spec.layer)].weights.norm(spec.norm).weight = f32(spec);
        break;
      case TensorKind::norm_bias:
        out.blocks[static_cast<std::size_t>(spec.layer)].weights.norm(spec.norm).bias = f32(spec);
        break;
      case TensorKind::linear_bias:
        out.blocks[static_cast<std::size_t>(spec.layer)].weights.linear(spec.linear).bias =
            f32(spec);
        break;
      case TensorKind::linear_weight: {
        QuantizedBlock& block = out.blocks[static_cast<std::size_t>(spec.layer)];
        QuantizedLinear& q = block.linear(spec.linear);
        const std::string module = module_of(spec.name);
        const std::int64_t rows = spec.shape[0], cols = spec.shape[1];
        if (packed) {
          const Tensor words =
              stored(module + ".weight_packed", {rows, cpu::packed_words(cols, 8)}, DType::i32);
          const Tensor shape = stored(module + ".weight_shape", {2}, DType::i64);
          const auto dims = shape.values<std::int64_t>();
          if (dims[0] != rows || dims[1] != cols)
            fail(ErrorContext{.file = checkpoint.file_of(module + ".weight_shape"),
                              .tensor = module + ".weight_shape"},
                 "holds [{}, {}], expected [{}, {}]", dims[0], dims[1], rows, cols);
          q.weight_q = Tensor::zeros(DType::i8, spec.shape);
          cpu::unpack_quantized(words.data<std::int32_t>(), rows, cols, 8,
                                q.weight_q.mutable_data<std::int8_t>());
        } else {
          q.weight_q = stored(spec.name, spec.shape, DType::i8);
        }
        const bool channel = scheme.weight_strategy == Strategy::channel;
        q.weight_scale = scale(module + ".weight_scale", channel ? Shape{rows, 1} : Shape{1});
        if (static_input) q.input_scale = scale(module + ".input_scale", {1});
        // Dequantized in FP32, as transformers does when the model is loaded in float32.
        cpu::QuantLayout layout;
        layout.granularity = channel ? cpu::Granularity::row : cpu::Granularity::tensor;
        Tensor w = Tensor::zeros(DType::f32, spec.shape);
        cpu::dequantize(q.weight_q.data<std::int8_t>(), rows, cols, layout,
                        q.weight_scale.data<float>(), nullptr, w.mutable_data<float>());
        block.weights.linear(spec.linear).weight = std::move(w);
        break;
      }
    }
  }
  if (config.tie_word_embeddings) out.head.lm_head = out.embedding.tokens;
  for (const auto& name : checkpoint.names()) {
    if (expected.count(name)) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (name == names.lm_head() && config.tie_word_embeddings) continue;
    fail(ErrorContext{.file = checkpoint.file_of(name), .tensor = name},
         "unexpected tensor for this {} model and quantization_config", io::arch_name(config.arch));
  }
  out.scheme.dtype = scale_dtype.value_or(config.torch_dtype);
  return out;
}

}  // namespace sq::stages
