#include "model/weights.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"
#include "io/atomic_file.h"

namespace sq::model {

std::string_view role_name(LinearRole role) {
  switch (role) {
    case LinearRole::q:
      return "q";
    case LinearRole::k:
      return "k";
    case LinearRole::v:
      return "v";
    case LinearRole::o:
      return "o";
    case LinearRole::gate:
      return "gate";
    case LinearRole::up:
      return "up";
    case LinearRole::down:
      return "down";
  }
  return "?";
}

std::string_view role_name(NormRole role) {
  switch (role) {
    case NormRole::attn:
      return "attn_norm";
    case NormRole::mlp:
      return "mlp_norm";
  }
  return "?";
}

Linear& BlockWeights::linear(LinearRole role) {
  switch (role) {
    case LinearRole::q:
      return q;
    case LinearRole::k:
      return k;
    case LinearRole::v:
      return v;
    case LinearRole::o:
      return o;
    case LinearRole::gate:
      return gate;
    case LinearRole::up:
      return up;
    case LinearRole::down:
      return down;
  }
  return q;
}
const Linear& BlockWeights::linear(LinearRole role) const {
  return const_cast<BlockWeights*>(this)->linear(role);
}

// ---------------------------------------------------------------------------------------------
// Names

namespace {
std::string_view hf_linear(io::Arch arch, LinearRole role) {
  // q/k/v are spelled alike; o and the MLP differ between the families.
  const bool opt = arch == io::Arch::opt;
  switch (role) {
    case LinearRole::q:
      return "self_attn.q_proj";
    case LinearRole::k:
      return "self_attn.k_proj";
    case LinearRole::v:
      return "self_attn.v_proj";
    case LinearRole::o:
      return opt ? "self_attn.out_proj" : "self_attn.o_proj";
    case LinearRole::gate:
      if (opt) fail("OPT has no gate projection");
      return "mlp.gate_proj";
    case LinearRole::up:
      return opt ? "fc1" : "mlp.up_proj";
    case LinearRole::down:
      return opt ? "fc2" : "mlp.down_proj";
  }
  return "?";
}

std::string_view hf_norm(io::Arch arch, NormRole role) {
  switch (arch) {
    case io::Arch::llama:
      return role == NormRole::attn ? "input_layernorm" : "post_attention_layernorm";
    case io::Arch::opt:
      // Careful: a layer's final_layer_norm is the norm before fc1, not the model's last norm.
      return role == NormRole::attn ? "self_attn_layer_norm" : "final_layer_norm";
    case io::Arch::bloom:
      break;  // refused by TensorNames::canonical
  }
  return "?";
}
}  // namespace

TensorNames TensorNames::canonical(const io::ModelConfig& config) {
  if (config.arch == io::Arch::bloom)
    fail(
        "BLOOM configs parse, but the BLOOM forward (fused query_key_value, ALiBi) is not "
        "implemented yet");
  TensorNames n;
  n.arch_ = config.arch;
  n.prefix_ = config.arch == io::Arch::llama ? "model." : "model.decoder.";
  return n;
}

TensorNames TensorNames::detect(const io::ModelConfig& config, const io::Checkpoint& checkpoint) {
  TensorNames n = canonical(config);
  if (config.arch == io::Arch::opt && !checkpoint.contains(n.embed_tokens()) &&
      checkpoint.contains("decoder.embed_tokens.weight")) {
    n.prefix_ = "decoder.";  // some OPT files were saved from OPTModel, without "model."
  }
  if (!checkpoint.contains(n.embed_tokens()))
    fail(ErrorContext{.file = checkpoint.dir(), .tensor = n.embed_tokens()},
         "the {} token embedding is missing: not a {} checkpoint, or an unknown naming",
         io::arch_name(config.arch), io::arch_name(config.arch));
  return n;
}

std::string TensorNames::linear(int layer, LinearRole role, bool bias) const {
  return fmt::format("{}layers.{}.{}.{}", prefix_, layer, hf_linear(arch_, role),
                     bias ? "bias" : "weight");
}
std::string TensorNames::norm(int layer, NormRole role, bool bias) const {
  return fmt::format("{}layers.{}.{}.{}", prefix_, layer, hf_norm(arch_, role),
                     bias ? "bias" : "weight");
}
std::string TensorNames::embed_tokens() const { return prefix_ + "embed_tokens.weight"; }
std::string TensorNames::embed_positions() const { return prefix_ + "embed_positions.weight"; }
std::string TensorNames::project_in() const { return prefix_ + "project_in.weight"; }
std::string TensorNames::project_out() const { return prefix_ + "project_out.weight"; }
std::string TensorNames::final_norm(bool bias) const {
  return prefix_ + (arch_ == io::Arch::llama ? "norm." : "final_layer_norm.") +
         (bias ? "bias" : "weight");
}
std::string TensorNames::lm_head() const { return "lm_head.weight"; }

// ---------------------------------------------------------------------------------------------
// Model

Model Model::open(const std::string& dir) {
  return Model(io::load_hf_config(dir), io::Checkpoint::open(dir));
}

Model::Model(io::ModelConfig config, io::Checkpoint checkpoint)
    : config_(std::move(config)),
      checkpoint_(std::move(checkpoint)),
      names_(TensorNames::detect(config_, checkpoint_)) {
  // Check every tensor from the headers now, so a broken checkpoint fails in seconds rather
  // than hours into a run.
  std::set<std::string> expected;
  for (const auto& e : model_tensors(config_, names_)) {
    expected.insert(e.name);
    const ErrorContext where{.file = checkpoint_.dir(), .tensor = e.name};
    if (!checkpoint_.contains(e.name))
      fail(where, "missing from the checkpoint (expected shape {})", shape_str(e.shape));
    const auto& entry = checkpoint_.entry(e.name);
    if (entry.shape != e.shape)
      fail(ErrorContext{.file = checkpoint_.file_of(e.name), .tensor = e.name},
           "shape {} does not match the config (expected {})", shape_str(entry.shape),
           shape_str(e.shape));
    if (!entry.dtype || !is_floating(*entry.dtype))
      fail(ErrorContext{.file = checkpoint_.file_of(e.name), .tensor = e.name},
           "dtype {} is not a float type (F32, F16, BF16)", entry.dtype_name);
  }
  for (const auto& name : checkpoint_.names()) {
    if (expected.count(name)) continue;
    // Harmless extras: rotary buffers some exporters save, and lm_head beside tied embeddings.
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (name == names_.lm_head() && config_.tie_word_embeddings) continue;
    fail(ErrorContext{.file = checkpoint_.file_of(name), .tensor = name},
         "unexpected tensor for a {} model with this config (wrong architecture or config?)",
         io::arch_name(config_.arch));
  }
}

std::vector<TensorSpec> model_tensors(const io::ModelConfig& c, const TensorNames& names) {
  const std::int64_t h = c.hidden_size, ff = c.intermediate_size, p = c.word_embed_proj_dim;
  std::vector<TensorSpec> e;
  e.push_back({names.embed_tokens(), {c.vocab_size, p}, TensorKind::embed_tokens});
  if (c.positions == io::PositionKind::learned)
    e.push_back({names.embed_positions(),
                 {c.max_position_embeddings + c.learned_position_offset, h},
                 TensorKind::embed_positions});
  if (c.has_projections()) {
    e.push_back({names.project_in(), {h, p}, TensorKind::project_in});
    e.push_back({names.project_out(), {p, h}, TensorKind::project_out});
  }
  for (int i = 0; i < c.num_layers; ++i) {
    for (NormRole r : {NormRole::attn, NormRole::mlp}) {
      e.push_back({names.norm(i, r, false), {h}, TensorKind::norm_weight, i, LinearRole::q, r});
      if (c.norm_bias)
        e.push_back({names.norm(i, r, true), {h}, TensorKind::norm_bias, i, LinearRole::q, r});
    }
    for (LinearRole r : kAllLinearRoles) {
      if (r == LinearRole::gate && !c.gated_mlp()) continue;
      Shape shape;
      switch (r) {
        case LinearRole::q:
          shape = {c.q_dim(), h};
          break;
        case LinearRole::k:
        case LinearRole::v:
          shape = {c.kv_dim(), h};
          break;
        case LinearRole::o:
          shape = {h, c.q_dim()};
          break;
        case LinearRole::gate:
        case LinearRole::up:
          shape = {ff, h};
          break;
        case LinearRole::down:
          shape = {h, ff};
          break;
      }
      e.push_back({names.linear(i, r, false), shape, TensorKind::linear_weight, i, r});
      const bool attn =
          r == LinearRole::q || r == LinearRole::k || r == LinearRole::v || r == LinearRole::o;
      if (attn ? c.attention_bias : c.mlp_bias)
        e.push_back({names.linear(i, r, true), {shape[0]}, TensorKind::linear_bias, i, r});
    }
  }
  e.push_back({names.final_norm(false), {h}, TensorKind::final_norm_weight});
  if (c.norm_bias) e.push_back({names.final_norm(true), {h}, TensorKind::final_norm_bias});
  if (!c.tie_word_embeddings)
    e.push_back({names.lm_head(), {c.vocab_size, p}, TensorKind::lm_head});
  return e;
}

Tensor Model::load(const std::string& name) const {
  Tensor t = checkpoint_.tensor(name);
  if (t.dtype() == DType::f32) return t;
  Tensor converted = t.to_f32();
  checkpoint_.release(name);  // the bf16/f16 pages are not needed again
  return converted;
}

Linear Model::load_linear(int layer, LinearRole role, bool has_bias) const {
  Linear l;
  l.weight = load(names_.linear(layer, role, false));
  if (has_bias) l.bias = load(names_.linear(layer, role, true));
  return l;
}

Norm Model::load_norm(int layer, NormRole role) const {
  Norm n;
  n.weight = load(names_.norm(layer, role, false));
  if (config_.norm_bias) n.bias = load(names_.norm(layer, role, true));
  return n;
}

BlockWeights Model::load_block(int layer) const {
  if (layer < 0 || layer >= num_layers())
    fail(ErrorContext{.file = checkpoint_.dir()}, "layer {} out of range [0, {})", layer,
         num_layers());
  BlockWeights b;
  b.attn_norm = load_norm(layer, NormRole::attn);
  b.mlp_norm = load_norm(layer, NormRole::mlp);
  for (LinearRole r : kAllLinearRoles) {
    if (r == LinearRole::gate && !config_.gated_mlp()) continue;
    const bool attn =
        r == LinearRole::q || r == LinearRole::k || r == LinearRole::v || r == LinearRole::o;
    b.linear(r) = load_linear(layer, r, attn ? config_.attention_bias : config_.mlp_bias);
  }
  return b;
}

EmbeddingWeights Model::load_embedding() const {
  EmbeddingWeights e;
  e.tokens = load(names_.embed_tokens());
  if (config_.positions == io::PositionKind::learned) e.positions = load(names_.embed_positions());
  if (config_.has_projections()) e.project_in.weight = load(names_.project_in());
  return e;
}

HeadWeights Model::load_head() const {
  HeadWeights h;
  h.final_norm.weight = load(names_.final_norm(false));
  if (config_.norm_bias) h.final_norm.bias = load(names_.final_norm(true));
  if (config_.has_projections()) h.project_out.weight = load(names_.project_out());
  h.lm_head = load(config_.tie_word_embeddings ? names_.embed_tokens() : names_.lm_head());
  return h;
}

std::uint64_t Model::block_bytes(int layer) const {
  const std::string prefix = names_.linear(layer, LinearRole::q, false);
  const std::string layer_prefix = prefix.substr(0, prefix.find(".self_attn") + 1);
  std::uint64_t bytes = 0;
  for (const auto& name : checkpoint_.names())
    if (name.rfind(layer_prefix, 0) == 0) {
      const auto& e = checkpoint_.entry(name);
      bytes += e.end - e.begin;
    }
  return bytes;
}

}  // namespace sq::model
