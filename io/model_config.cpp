// Hugging Face config.json <-> ModelConfig for the LLaMA family and OPT. Parsing is strict: a
// value ShardQuant cannot honour is refused with one line naming the file, the key and the value;
// keys that do not change the forward pass (token ids, dropout, versions) are ignored.
#include "io/model_config.h"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"

namespace sq::io {
namespace {

using nlohmann::json;

// Upper bound on every size: keeps the product of two sizes (a weight's element count) far from
// int64 overflow, and no real model comes near it.
constexpr std::int64_t kMaxSize = std::int64_t{1} << 31;

// A value as it appears in the file, shortened so an error stays one readable line.
std::string show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// Typed, checked access to the fields of one JSON object; `prefix` makes nested keys read as
// "rope_scaling.factor" in errors.
class Fields {
 public:
  Fields(const json& object, const std::string& source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  const json* find(const std::string& key) const {
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }
  // Absent and null both mean "not given" (transformers writes None as null).
  const json* find_set(const std::string& key) const {
    const json* value = find(key);
    return value == nullptr || value->is_null() ? nullptr : value;
  }

  template <typename... Args>
  [[noreturn]] void refuse(const std::string& key, fmt::format_string<Args...> format,
                           Args&&... args) const {
    fail(ErrorContext{.file = source_, .key = prefix_ + key}, format, std::forward<Args>(args)...);
  }

  std::int64_t size(const std::string& key) const {
    const json* value = find(key);
    if (value == nullptr) refuse(key, "required key is missing");
    return size_value(key, *value);
  }
  std::int64_t size(const std::string& key, std::int64_t fallback) const {
    const json* value = find_set(key);
    return value == nullptr ? fallback : size_value(key, *value);
  }

  double positive(const std::string& key) const {
    const json* value = find(key);
    if (value == nullptr) refuse(key, "required key is missing");
    return positive_value(key, *value);
  }
  double positive(const std::string& key, double fallback) const {
    const json* value = find(key);
    return value == nullptr ? fallback : positive_value(key, *value);
  }

  bool flag(const std::string& key, bool fallback) const {
    const json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) refuse(key, "must be true or false, got {}", show(*value));
    return value->get<bool>();
  }

  std::string text(const std::string& key, const std::string& fallback) const {
    const json* value = find(key);
    if (value == nullptr) return fallback;
    if (!value->is_string()) refuse(key, "must be a string, got {}", show(*value));
    return value->get<std::string>();
  }

 private:
  std::int64_t size_value(const std::string& key, const json& value) const {
    // The parser stores non-negative integers as unsigned; code-built JSON may hold signed ones.
    if (value.is_number_integer()) {
      if (value.is_number_unsigned() ? value.get<std::uint64_t>() > std::uint64_t(kMaxSize)
                                     : value.get<std::int64_t>() > kMaxSize) {
        refuse(key, "{} is larger than ShardQuant supports (at most {})", show(value), kMaxSize);
      }
      const std::int64_t n = value.get<std::int64_t>();
      if (n > 0) return n;
    }
    refuse(key, "must be a positive integer, got {}", show(value));
  }

  double positive_value(const std::string& key, const json& value) const {
    if (value.is_number()) {
      const double x = value.get<double>();
      if (std::isfinite(x) && x > 0) return x;
    }
    refuse(key, "must be a positive number, got {}", show(value));
  }

  const json& object_;
  const std::string& source_;
  std::string prefix_;
};

// --- dtype ------------------------------------------------------------------------------------

std::optional<DType> dtype_from_hf(std::string_view name) {
  if (name == "float32") return DType::f32;
  if (name == "float16") return DType::f16;
  if (name == "bfloat16") return DType::bf16;
  return std::nullopt;
}

std::string hf_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "float32";
    case DType::f16:
      return "float16";
    case DType::bf16:
      return "bfloat16";
    default:
      fail("cannot write dtype {} as a config.json torch_dtype", dtype_name(dtype));
  }
}

// torch_dtype (transformers 4) or dtype (transformers 5); float32 when neither is given, as
// transformers assumes.
DType parse_dtype(const Fields& f) {
  std::optional<DType> result;
  std::string seen_key, seen_name;
  for (const std::string key : {"torch_dtype", "dtype"}) {
    const json* value = f.find_set(key);
    if (value == nullptr) continue;
    if (!value->is_string()) f.refuse(key, "must be a string, got {}", show(*value));
    const std::string name = value->get<std::string>();
    const std::optional<DType> dtype = dtype_from_hf(name);
    if (!dtype) {
      f.refuse(key, "unsupported weight dtype {}: ShardQuant reads float32, float16 and bfloat16",
               show(*value));
    }
    if (result && *result != *dtype) {
      f.refuse(key, "{} disagrees with {} \"{}\"", show(*value), seen_key, seen_name);
    }
    result = dtype;
    seen_key = key;
    seen_name = name;
  }
  return result.value_or(DType::f32);
}

// --- RoPE -------------------------------------------------------------------------------------

// What one rope_scaling or rope_parameters object says.
struct RopeSpec {
  RopeConfig rope;
  std::optional<double> theta;  // rope_theta inside the object (transformers 5 puts it there)
};

std::string describe_scaling(const RopeConfig& r) {
  switch (r.scaling) {
    case RopeScaling::none:
      return "default";
    case RopeScaling::linear:
      return fmt::format("linear (factor {})", r.factor);
    case RopeScaling::llama3:
      return fmt::format(
          "llama3 (factor {}, low_freq_factor {}, high_freq_factor {}, "
          "original_max_position_embeddings {})",
          r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_position_embeddings);
  }
  return "?";
}

bool same_scaling(const RopeConfig& a, const RopeConfig& b) {
  if (a.scaling != b.scaling) return false;
  if (a.scaling == RopeScaling::none) return true;
  if (a.factor != b.factor) return false;
  return a.scaling == RopeScaling::linear ||
         (a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
          a.original_max_position_embeddings == b.original_max_position_embeddings);
}

void check_partial_rotary(const Fields& f) {
  const json* value = f.find("partial_rotary_factor");
  if (value == nullptr) return;
  if (!value->is_number() || value->get<double>() != 1.0) {
    f.refuse("partial_rotary_factor",
             "partial rotary embeddings are not supported (only 1.0), got {}", show(*value));
  }
}

RopeSpec parse_rope_object(const json& value, const std::string& source, const std::string& name) {
  if (!value.is_object()) {
    fail(ErrorContext{.file = source, .key = name}, "must be an object or null, got {}",
         show(value));
  }
  const Fields f(value, source, name + ".");
  RopeSpec spec;
  // "type" is the legacy spelling of "rope_type"; when both are written they must agree.
  const json* rope_type = f.find("rope_type");
  const json* legacy = f.find("type");
  if (rope_type != nullptr && legacy != nullptr && *rope_type != *legacy) {
    f.refuse("type", "{} disagrees with rope_type {}", show(*legacy), show(*rope_type));
  }
  const std::string type_key = rope_type != nullptr ? "rope_type" : "type";
  const std::string type = f.text(type_key, "default");
  if (type == "default") {
    spec.rope.scaling = RopeScaling::none;
  } else if (type == "linear") {
    spec.rope.scaling = RopeScaling::linear;
    spec.rope.factor = f.positive("factor");
  } else if (type == "llama3") {
    spec.rope.scaling = RopeScaling::llama3;
    spec.rope.factor = f.positive("factor");
    spec.rope.low_freq_factor = f.positive("low_freq_factor");
    spec.rope.high_freq_factor = f.positive("high_freq_factor");
    spec.rope.original_max_position_embeddings = f.size("original_max_position_embeddings");
    // The llama3 rule interpolates between the two wavelength bounds; equal bounds divide by 0.
    if (spec.rope.high_freq_factor <= spec.rope.low_freq_factor) {
      f.refuse("high_freq_factor", "{} must be greater than low_freq_factor {}",
               spec.rope.high_freq_factor, spec.rope.low_freq_factor);
    }
  } else {
    f.refuse(type_key,
             "unsupported RoPE type \"{}\": ShardQuant supports default, linear and llama3", type);
  }
  if (f.find("rope_theta") != nullptr) spec.theta = f.positive("rope_theta");
  check_partial_rotary(f);
  return spec;
}

// rope_theta + rope_scaling (transformers 4) or rope_parameters (transformers 5); when a file has
// both spellings they must say the same thing.
RopeConfig parse_rope(const Fields& f, const std::string& source) {
  RopeConfig rope;
  std::optional<RopeSpec> params, scaling;
  if (const json* v = f.find_set("rope_parameters")) {
    params = parse_rope_object(*v, source, "rope_parameters");
  }
  if (const json* v = f.find_set("rope_scaling")) {
    scaling = parse_rope_object(*v, source, "rope_scaling");
  }
  if (params && scaling && !same_scaling(params->rope, scaling->rope)) {
    f.refuse("rope_scaling", "{} disagrees with rope_parameters: {}",
             describe_scaling(scaling->rope), describe_scaling(params->rope));
  }
  if (params || scaling) {
    const RopeConfig& chosen = params ? params->rope : scaling->rope;
    rope.scaling = chosen.scaling;
    if (chosen.scaling != RopeScaling::none) rope.factor = chosen.factor;
    if (chosen.scaling == RopeScaling::llama3) {
      rope.low_freq_factor = chosen.low_freq_factor;
      rope.high_freq_factor = chosen.high_freq_factor;
      rope.original_max_position_embeddings = chosen.original_max_position_embeddings;
    }
  }
  // Every place that states rope_theta must agree.
  std::optional<double> theta;
  std::string theta_key;
  const auto take_theta = [&](std::optional<double> value, const std::string& key) {
    if (!value) return;
    if (theta && *theta != *value) {
      f.refuse(key, "{} disagrees with {} {}", *value, theta_key, *theta);
    }
    theta = value;
    theta_key = key;
  };
  if (f.find("rope_theta") != nullptr) take_theta(f.positive("rope_theta"), "rope_theta");
  if (params) take_theta(params->theta, "rope_parameters.rope_theta");
  if (scaling) take_theta(scaling->theta, "rope_scaling.rope_theta");
  rope.theta = theta.value_or(10000.0);
  check_partial_rotary(f);
  return rope;
}

// --- architectures ----------------------------------------------------------------------------

std::string causal_lm_class(Arch arch) {
  switch (arch) {
    case Arch::llama:
      return "LlamaForCausalLM";
    case Arch::opt:
      return "OPTForCausalLM";
    case Arch::bloom:
      return "BloomForCausalLM";
  }
  return "?";
}

Arch detect_arch(const Fields& f) {
  std::optional<Arch> arch;
  if (const json* type = f.find("model_type")) {
    if (!type->is_string()) f.refuse("model_type", "must be a string, got {}", show(*type));
    const std::string name = type->get<std::string>();
    if (name == "llama") {
      arch = Arch::llama;
    } else if (name == "opt") {
      arch = Arch::opt;
    } else if (name == "bloom") {
      arch = Arch::bloom;
    } else {
      f.refuse("model_type", "unsupported model type {}: ShardQuant supports llama, opt and bloom",
               show(*type));
    }
  }
  // architectures names the head class; only the causal-LM head has the weights we compute.
  if (const json* list = f.find_set("architectures")) {
    if (!list->is_array() || list->empty()) {
      f.refuse("architectures", "must be a non-empty list of class names, got {}", show(*list));
    }
    for (const json& entry : *list) {
      std::optional<Arch> named;
      if (entry == causal_lm_class(Arch::llama)) named = Arch::llama;
      if (entry == causal_lm_class(Arch::opt)) named = Arch::opt;
      if (entry == causal_lm_class(Arch::bloom)) named = Arch::bloom;
      if (!named) {
        f.refuse("architectures",
                 "unsupported architecture {}: ShardQuant supports LlamaForCausalLM, "
                 "OPTForCausalLM and BloomForCausalLM",
                 show(entry));
      }
      if (arch && *arch != *named) {
        f.refuse("architectures", "{} disagrees with model_type \"{}\"", show(entry),
                 arch_name(*arch));
      }
      arch = named;
    }
  }
  if (!arch) f.refuse("model_type", "required key is missing (and no architectures are given)");
  return *arch;
}

void refuse_already_quantized(const Fields& f) {
  if (const json* q = f.find_set("quantization_config")) {
    f.refuse("quantization_config",
             "the checkpoint is already quantized ({}); ShardQuant starts from full-precision "
             "weights",
             show(*q));
  }
}

ModelConfig parse_llama(const Fields& f, const std::string& source) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.model_type = "llama";
  c.hidden_size = f.size("hidden_size");
  c.intermediate_size = f.size("intermediate_size");
  c.num_layers = f.size("num_hidden_layers");
  c.num_heads = f.size("num_attention_heads");
  c.num_kv_heads = f.size("num_key_value_heads", c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0) {
    f.refuse("num_key_value_heads", "{} does not divide num_attention_heads {}", c.num_kv_heads,
             c.num_heads);
  }
  if (f.find_set("head_dim") != nullptr) {
    c.head_dim = f.size("head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      f.refuse("num_attention_heads", "{} does not divide hidden_size {} and head_dim is not given",
               c.num_heads, c.hidden_size);
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  // rotate-half RoPE pairs dimension i with i + head_dim/2.
  if (c.head_dim % 2 != 0) {
    f.refuse(f.find_set("head_dim") ? "head_dim" : "num_attention_heads",
             "head_dim {} is odd; rotary embeddings need an even head_dim", c.head_dim);
  }
  c.vocab_size = f.size("vocab_size");
  c.max_position_embeddings = f.size("max_position_embeddings", 2048);
  const std::string act = f.text("hidden_act", "silu");
  if (act != "silu") {
    f.refuse("hidden_act", "unsupported activation \"{}\": LLaMA blocks in ShardQuant use silu",
             act);
  }
  c.norm_eps = f.positive("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.flag("tie_word_embeddings", false);
  c.attention_bias = f.flag("attention_bias", false);
  c.mlp_bias = f.flag("mlp_bias", false);
  if (const json* window = f.find_set("sliding_window")) {
    f.refuse("sliding_window", "sliding-window attention is not supported, got {}", show(*window));
  }
  // pretraining_tp > 1 only splits transformers' matmuls into slices: same math, so ignored.
  c.rope = parse_rope(f, source);
  c.torch_dtype = parse_dtype(f);
  c.norm = NormKind::rms;
  c.activation = Activation::silu;
  c.positions = PositionKind::rope;
  c.norm_bias = false;
  c.word_embed_proj_dim = c.hidden_size;
  c.learned_position_offset = 0;
  return c;
}

ModelConfig parse_opt(const Fields& f) {
  ModelConfig c;
  c.arch = Arch::opt;
  c.model_type = "opt";
  c.hidden_size = f.size("hidden_size");
  c.intermediate_size = f.size("ffn_dim");
  c.num_layers = f.size("num_hidden_layers");
  c.num_heads = f.size("num_attention_heads");
  if (c.hidden_size % c.num_heads != 0) {
    f.refuse("num_attention_heads", "{} does not divide hidden_size {}", c.num_heads,
             c.hidden_size);
  }
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  c.vocab_size = f.size("vocab_size");
  c.max_position_embeddings = f.size("max_position_embeddings", 2048);
  if (!f.flag("do_layer_norm_before", true)) {
    f.refuse("do_layer_norm_before",
             "do_layer_norm_before is false: post-LN OPT (like opt-350m) is unsupported; "
             "ShardQuant computes pre-LN blocks only");
  }
  const std::string act = f.text("activation_function", "relu");
  if (act != "relu") {
    f.refuse("activation_function", "unsupported activation \"{}\": OPT blocks use relu", act);
  }
  const bool bias = f.flag("enable_bias", true);
  c.attention_bias = bias;
  c.mlp_bias = bias;
  if (!f.flag("layer_norm_elementwise_affine", true)) {
    f.refuse("layer_norm_elementwise_affine",
             "false is not supported: ShardQuant's LayerNorm has a weight and a bias");
  }
  if (f.flag("_remove_final_layer_norm", false)) {
    f.refuse("_remove_final_layer_norm",
             "true is not supported: ShardQuant applies the decoder's final LayerNorm");
  }
  c.word_embed_proj_dim = f.size("word_embed_proj_dim", c.hidden_size);
  c.tie_word_embeddings = f.flag("tie_word_embeddings", true);
  c.torch_dtype = parse_dtype(f);
  c.norm = NormKind::layer;
  c.norm_bias = true;
  c.norm_eps = 1e-5;  // OPT has no eps key: transformers uses nn.LayerNorm's default
  c.activation = Activation::relu;
  c.positions = PositionKind::learned;
  c.learned_position_offset = 2;
  return c;
}

// BLOOM: n_embed/hidden_size, n_layer, n_head (older and newer spellings), MLP 4 x hidden with
// tanh GELU, ALiBi positions, LayerNorm after the embedding, biases everywhere, tied lm_head.
ModelConfig parse_bloom(const Fields& f) {
  ModelConfig c;
  c.arch = Arch::bloom;
  c.model_type = "bloom";
  auto either = [&](const char* newer, const char* older) -> std::int64_t {
    const bool has_newer = f.find_set(newer) != nullptr, has_older = f.find_set(older) != nullptr;
    if (has_newer && has_older && f.size(newer) != f.size(older))
      f.refuse(older, "{} disagrees with {} {}", f.size(older), newer, f.size(newer));
    return has_newer ? f.size(newer) : f.size(older);
  };
  c.hidden_size = either("hidden_size", "n_embed");
  c.num_layers = either("num_hidden_layers", "n_layer");
  c.num_heads = either("num_attention_heads", "n_head");
  if (c.hidden_size % c.num_heads != 0) {
    f.refuse("n_head", "{} does not divide hidden_size {}", c.num_heads, c.hidden_size);
  }
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  if (const json* inner = f.find_set("n_inner")) {
    if (f.size("n_inner") != 4 * c.hidden_size)
      f.refuse("n_inner", "{} is not 4 x hidden_size: BLOOM's MLP is 4 x hidden", show(*inner));
  }
  c.intermediate_size = 4 * c.hidden_size;
  c.vocab_size = f.size("vocab_size");
  // ALiBi has no position table; seq_length (when given) is the trained context.
  c.max_position_embeddings = f.size("seq_length", 2048);
  if (f.flag("apply_residual_connection_post_layernorm", false)) {
    f.refuse("apply_residual_connection_post_layernorm",
             "true is not supported: ShardQuant's BLOOM blocks add the residual before the norm");
  }
  c.norm_eps = f.positive("layer_norm_epsilon", 1e-5);
  c.tie_word_embeddings = f.flag("tie_word_embeddings", true);
  c.torch_dtype = parse_dtype(f);
  c.norm = NormKind::layer;
  c.norm_bias = true;
  c.activation = Activation::gelu_tanh;
  c.positions = PositionKind::alibi;
  c.attention_bias = c.mlp_bias = true;
  c.embedding_norm = true;
  c.word_embed_proj_dim = c.hidden_size;
  return c;
}

// The first field where two configs differ in what a config.json can express, or "".
std::string first_difference(const ModelConfig& a, const ModelConfig& b) {
  if (a.arch != b.arch) return "arch";
  if (a.hidden_size != b.hidden_size) return "hidden_size";
  if (a.intermediate_size != b.intermediate_size) return "intermediate_size";
  if (a.num_layers != b.num_layers) return "num_layers";
  if (a.num_heads != b.num_heads) return "num_heads";
  if (a.num_kv_heads != b.num_kv_heads) return "num_kv_heads";
  if (a.head_dim != b.head_dim) return "head_dim";
  if (a.vocab_size != b.vocab_size) return "vocab_size";
  if (a.max_position_embeddings != b.max_position_embeddings) return "max_position_embeddings";
  if (a.norm_eps != b.norm_eps) return "norm_eps";
  if (a.norm != b.norm) return "norm";
  if (a.activation != b.activation) return "activation";
  if (a.positions != b.positions) return "positions";
  if (a.tie_word_embeddings != b.tie_word_embeddings) return "tie_word_embeddings";
  if (a.attention_bias != b.attention_bias) return "attention_bias";
  if (a.mlp_bias != b.mlp_bias) return "mlp_bias";
  if (a.norm_bias != b.norm_bias) return "norm_bias";
  if (a.learned_position_offset != b.learned_position_offset) return "learned_position_offset";
  if (a.embedding_norm != b.embedding_norm) return "embedding_norm";
  if (a.torch_dtype != b.torch_dtype) return "torch_dtype";
  if (a.arch == Arch::opt && a.word_embed_proj_dim != b.word_embed_proj_dim) {
    return "word_embed_proj_dim";
  }
  if (a.positions == PositionKind::rope) {
    if (a.rope.theta != b.rope.theta) return "rope.theta";
    if (!same_scaling(a.rope, b.rope)) return "rope.scaling";
    if (a.rope.partial_rotary_factor != b.rope.partial_rotary_factor) {
      return "rope.partial_rotary_factor";
    }
  }
  return "";
}

json write_json(const ModelConfig& c) {
  json j = json::object();
  j["architectures"] = json::array({causal_lm_class(c.arch)});
  j["model_type"] = arch_name(c.arch);
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = hf_dtype_name(c.torch_dtype);
  if (c.arch == Arch::llama) {
    j["intermediate_size"] = c.intermediate_size;
    j["num_key_value_heads"] = c.num_kv_heads;
    j["head_dim"] = c.head_dim;
    j["hidden_act"] = "silu";
    j["rms_norm_eps"] = c.norm_eps;
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = c.mlp_bias;
    j["rope_theta"] = c.rope.theta;
    json scaling = nullptr;  // legacy spelling: transformers 4 and 5 both read it
    if (c.rope.scaling == RopeScaling::linear) {
      scaling = {{"rope_type", "linear"}, {"factor", c.rope.factor}};
    } else if (c.rope.scaling == RopeScaling::llama3) {
      scaling = {{"rope_type", "llama3"},
                 {"factor", c.rope.factor},
                 {"low_freq_factor", c.rope.low_freq_factor},
                 {"high_freq_factor", c.rope.high_freq_factor},
                 {"original_max_position_embeddings", c.rope.original_max_position_embeddings}};
    }
    j["rope_scaling"] = scaling;
    if (c.rope.partial_rotary_factor != 1.0) {
      j["partial_rotary_factor"] = c.rope.partial_rotary_factor;  // parse refuses it: caught below
    }
  } else if (c.arch == Arch::bloom) {
    j["n_layer"] = c.num_layers;
    j["n_head"] = c.num_heads;
    j.erase("num_hidden_layers");
    j.erase("num_attention_heads");
    j.erase("max_position_embeddings");
    j["seq_length"] = c.max_position_embeddings;
    j["layer_norm_epsilon"] = c.norm_eps;
    j["apply_residual_connection_post_layernorm"] = false;
  } else {
    j["ffn_dim"] = c.intermediate_size;
    j["word_embed_proj_dim"] = c.word_embed_proj_dim;
    j["do_layer_norm_before"] = true;
    j["activation_function"] = "relu";
    j["enable_bias"] = c.attention_bias;
    j["layer_norm_elementwise_affine"] = true;
    j["_remove_final_layer_norm"] = false;
  }
  return j;
}

}  // namespace

ModelConfig parse_hf_config(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) {
    fail(ErrorContext{.file = source}, "config must be a JSON object, got {}", show(json));
  }
  const Fields f(json, source);
  const Arch arch = detect_arch(f);
  refuse_already_quantized(f);
  switch (arch) {
    case Arch::llama:
      return parse_llama(f, source);
    case Arch::opt:
      return parse_opt(f);
    case Arch::bloom:
      return parse_bloom(f);
  }
  return {};
}

ModelConfig load_hf_config(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    file = (std::filesystem::path(path) / "config.json").string();
  }
  const std::string text = read_text_file(file);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorContext{.file = file}, "invalid JSON: {}", e.what());
  }
  return parse_hf_config(json, file);
}

nlohmann::json to_hf_config(const ModelConfig& config) {
  const std::string source = "to_hf_config";
  json j = write_json(config);
  // A config that does not survive its own round trip would silently change the model.
  ModelConfig back;
  try {
    back = parse_hf_config(j, source);
  } catch (const Error& e) {
    fail(ErrorContext{.key = e.context().key}, "cannot write this {} config as config.json: {}",
         arch_name(config.arch), e.message());
  }
  const std::string field = first_difference(config, back);
  if (!field.empty()) {
    fail("cannot write this {} config as config.json: its {} has no config.json spelling",
         arch_name(config.arch), field);
  }
  return j;
}

std::string arch_name(Arch arch) {
  switch (arch) {
    case Arch::llama:
      return "llama";
    case Arch::opt:
      return "opt";
    case Arch::bloom:
      return "bloom";
  }
  return "unknown";
}

}  // namespace sq::io
