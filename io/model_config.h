// The architecture of a model as ShardQuant computes it, parsed from a Hugging Face config.json.
// Parsing is strict: a field whose value ShardQuant cannot honour is refused with an error naming
// the file, the field and the value; it is never silently ignored.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "core/dtype.h"

namespace sq::io {

// BLOOM configs parse (so plans and sizes work from configs/models alone); its forward pass
// (fused QKV, ALiBi) is refused by model/ until it lands.
enum class Arch { llama, opt, bloom };
enum class NormKind { rms, layer };
enum class Activation { silu, relu, gelu_tanh };
enum class PositionKind { rope, learned, alibi };
enum class RopeScaling { none, linear, llama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::none;
  double factor = 1.0;                                   // linear and llama3
  double low_freq_factor = 1.0;                          // llama3
  double high_freq_factor = 4.0;                         // llama3
  std::int64_t original_max_position_embeddings = 8192;  // llama3
  double partial_rotary_factor = 1.0;                    // only 1.0 is accepted today
};

struct ModelConfig {
  Arch arch = Arch::llama;
  std::string model_type;  // "llama", "mistral"... as written in the file
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;  // OPT: ffn_dim
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;  // = num_heads without GQA; OPT always = num_heads
  std::int64_t head_dim = 0;      // LLaMA may set it explicitly; else hidden / heads
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double norm_eps = 1e-6;
  NormKind norm = NormKind::rms;
  Activation activation = Activation::silu;
  PositionKind positions = PositionKind::rope;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v/o biases (OPT: enable_bias)
  bool mlp_bias = false;        // gate/up/down or fc1/fc2 biases (OPT: enable_bias)
  bool norm_bias = false;       // LayerNorm has a bias (OPT: elementwise affine with bias)
  // OPT: width of the token embedding when it differs from hidden_size (project_in/out exist).
  std::int64_t word_embed_proj_dim = 0;
  std::int64_t learned_position_offset = 0;  // OPT looks positions up at pos + 2
  bool embedding_norm = false;               // BLOOM: LayerNorm right after the embedding
  DType torch_dtype = DType::f32;            // the dtype the weights are stored in

  bool gated_mlp() const { return activation == Activation::silu; }
  bool has_projections() const { return word_embed_proj_dim != hidden_size; }
  std::int64_t q_dim() const { return num_heads * head_dim; }
  std::int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// `source` names the file in error messages.
ModelConfig parse_hf_config(const nlohmann::json& json, const std::string& source);
// Reads DIR/config.json, or the file itself when `path` is a file.
ModelConfig load_hf_config(const std::string& path);
// The config.json transformers would write for this model (used by synth and export).
nlohmann::json to_hf_config(const ModelConfig& config);

std::string arch_name(Arch arch);

}  // namespace sq::io
