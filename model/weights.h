// Which tensors make up a model, under which Hugging Face names, and loading them as FP32.
// Every architecture maps onto the same roles (attention norm, q/k/v/o, MLP norm, gate/up/down),
// which is what lets quantization stages be written once for all of them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/checkpoint.h"
#include "io/model_config.h"

namespace sq::model {

// The linear layers of a decoder block. OPT's fc1/fc2 are `up`/`down`; it has no `gate`.
enum class LinearRole { q, k, v, o, gate, up, down };
inline constexpr std::array kAllLinearRoles = {LinearRole::q,   LinearRole::k,    LinearRole::v,
                                               LinearRole::o,   LinearRole::gate, LinearRole::up,
                                               LinearRole::down};
enum class NormRole { attn, mlp };
std::string_view role_name(LinearRole role);
std::string_view role_name(NormRole role);

struct Linear {
  Tensor weight;  // f32 [out, in]
  Tensor bias;    // f32 [out], or undefined
  std::int64_t out_features() const { return weight.dim(0); }
  std::int64_t in_features() const { return weight.dim(1); }
  const float* bias_or_null() const { return bias.defined() ? bias.data<float>() : nullptr; }
};

// A runtime gather/merge on a norm's output, for channel transforms that cannot fold into the
// norm's weights (RPTQ's permutation, QLLM's split and merge: output channel j of a plain norm is
// always weight_j * xhat_j). Maps only arise inside the pipeline; checkpoints never carry one.
// Slot k reads normalised input channel index[k], applies the slot's weight and bias, and output
// channel i is the mean of the slots with merge[k] == i.
struct NormOutputMap {
  std::vector<std::int64_t> index;  // per slot: input channel read (repeats allowed)
  std::vector<std::int64_t> merge;  // per slot: output channel it is averaged into
  std::int64_t out_channels = 0;
  bool empty() const { return index.empty(); }
  std::int64_t slots() const { return static_cast<std::int64_t>(index.size()); }
};

struct Norm {
  Tensor weight;      // f32 [hidden], or [map.slots()] with a map
  Tensor bias;        // f32, same size as weight (LayerNorm), or undefined
  NormOutputMap map;  // empty: output channel j = weight_j * xhat_j + bias_j
  const float* bias_or_null() const { return bias.defined() ? bias.data<float>() : nullptr; }
  // Width of the norm's output (what its consumers read).
  std::int64_t out_features() const { return map.empty() ? weight.dim(0) : map.out_channels; }
};

struct BlockWeights {
  Norm attn_norm, mlp_norm;
  Linear q, k, v, o, gate, up, down;  // gate is empty for non-gated MLPs
  Linear& linear(LinearRole role);
  const Linear& linear(LinearRole role) const;
  Norm& norm(NormRole role) { return role == NormRole::attn ? attn_norm : mlp_norm; }
};

// What runs before the first block.
struct EmbeddingWeights {
  Tensor tokens;      // f32 [vocab, word_embed_proj_dim]
  Tensor positions;   // OPT learned positions f32 [max_pos + offset, hidden], else undefined
  Linear project_in;  // OPT project_in when word_embed_proj_dim != hidden, else empty
};

// What runs after the last block.
struct HeadWeights {
  Norm final_norm;
  Linear project_out;  // OPT project_out, else empty
  Tensor lm_head;      // f32 [vocab, word_embed_proj_dim] (the embedding when tied)
};

// Names of a model's tensors in its checkpoint, for one layout (LLaMA; OPT with or without the
// "model." prefix).
class TensorNames {
 public:
  // Picks the naming the checkpoint uses; throws naming the directory when none fits.
  static TensorNames detect(const io::ModelConfig& config, const io::Checkpoint& checkpoint);
  static TensorNames canonical(const io::ModelConfig& config);  // as transformers writes them

  std::string linear(int layer, LinearRole role, bool bias) const;
  std::string norm(int layer, NormRole role, bool bias) const;
  std::string embed_tokens() const;
  std::string embed_positions() const;
  std::string project_in() const;
  std::string project_out() const;
  std::string final_norm(bool bias) const;
  std::string lm_head() const;

 private:
  io::Arch arch_ = io::Arch::llama;
  std::string prefix_;  // "model." or "model.decoder." or "decoder."
};

// One tensor an architecture needs, with what it is for.
enum class TensorKind {
  embed_tokens,
  embed_positions,
  project_in,
  project_out,
  norm_weight,
  norm_bias,
  linear_weight,
  linear_bias,
  final_norm_weight,
  final_norm_bias,
  lm_head
};
struct TensorSpec {
  std::string name;
  Shape shape;
  TensorKind kind;
  int layer = -1;                     // -1 outside the blocks
  LinearRole linear = LinearRole::q;  // for linear_weight / linear_bias
  NormRole norm = NormRole::attn;     // for norm_weight / norm_bias
};
// Every tensor of a model with this config, in the order transformers writes them.
std::vector<TensorSpec> model_tensors(const io::ModelConfig& config, const TensorNames& names);

// A model directory: config.json + safetensors weights. Opening checks, from the safetensors
// headers alone, that every tensor the architecture needs is present with the right shape and a
// float dtype (and that nothing unexpected is there); loading a block maps and converts only that
// block's tensors.
class Model {
 public:
  static Model open(const std::string& dir);
  Model(io::ModelConfig config, io::Checkpoint checkpoint);

  const io::ModelConfig& config() const { return config_; }
  const io::Checkpoint& checkpoint() const { return checkpoint_; }
  const TensorNames& names() const { return names_; }
  int num_layers() const { return static_cast<int>(config_.num_layers); }

  BlockWeights load_block(int layer) const;
  EmbeddingWeights load_embedding() const;
  HeadWeights load_head() const;
  // Bytes of the stored tensors of one block (for plans and logs).
  std::uint64_t block_bytes(int layer) const;

 private:
  Tensor load(const std::string& name) const;  // f32; a zero-copy view when stored as f32
  Linear load_linear(int layer, LinearRole role, bool has_bias) const;
  Norm load_norm(int layer, NormRole role) const;

  io::ModelConfig config_;
  io::Checkpoint checkpoint_;
  TensorNames names_;
};

}  // namespace sq::model
