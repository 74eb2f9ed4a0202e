#include "model/synth.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/random.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/token_file.h"
#include "model/forward.h"
#include "model/generate.h"
#include "model/weights.h"

namespace sq::model {
namespace fs = std::filesystem;
using i64 = std::int64_t;

io::ModelConfig synth_config(const SynthSpec& s) {
  io::ModelConfig c;
  c.arch = s.arch;
  c.hidden_size = s.hidden;
  c.num_layers = s.layers;
  c.num_heads = s.heads;
  c.vocab_size = s.vocab;
  c.max_position_embeddings = s.max_positions;
  c.torch_dtype = s.dtype;
  if (s.heads <= 0 || s.hidden % s.heads != 0)
    fail("synth: hidden {} is not a multiple of heads {}", s.hidden, s.heads);
  c.head_dim = s.hidden / s.heads;
  if (c.head_dim % 2 != 0) fail("synth: head_dim {} must be even", c.head_dim);
  c.word_embed_proj_dim = s.hidden;
  switch (s.arch) {
    case io::Arch::llama:
      c.model_type = "llama";
      c.intermediate_size = s.intermediate > 0 ? s.intermediate : (8 * s.hidden / 3 + 31) / 32 * 32;
      c.num_kv_heads = s.kv_heads > 0 ? s.kv_heads : (s.heads % 2 == 0 ? s.heads / 2 : s.heads);
      c.norm_eps = 1e-5;
      c.norm = io::NormKind::rms;
      c.activation = io::Activation::silu;
      c.positions = io::PositionKind::rope;
      c.rope.theta = 10000.0;
      break;
    case io::Arch::opt:
      c.model_type = "opt";
      c.intermediate_size = s.intermediate > 0 ? s.intermediate : 4 * s.hidden;
      if (s.kv_heads > 0 && s.kv_heads != s.heads) fail("synth: OPT has no grouped KV heads");
      c.num_kv_heads = s.heads;
      c.norm_eps = 1e-5;
      c.norm = io::NormKind::layer;
      c.norm_bias = true;
      c.activation = io::Activation::relu;
      c.positions = io::PositionKind::learned;
      c.learned_position_offset = 2;
      c.attention_bias = c.mlp_bias = true;
      c.tie_word_embeddings = true;
      break;
    case io::Arch::bloom:
      fail("synth: BLOOM models are not supported yet");
  }
  if (c.num_heads % c.num_kv_heads != 0)
    fail("synth: kv_heads {} does not divide heads {}", c.num_kv_heads, c.num_heads);
  return c;
}

std::vector<i64> synth_outlier_channels(const SynthSpec& s) {
  const i64 n = std::min<i64>(
      s.hidden, std::max<i64>(s.min_outliers, std::llround(s.outlier_fraction * double(s.hidden))));
  Rng rng(s.seed ^ 0x0077713E5ull);
  std::vector<i64> channels(static_cast<std::size_t>(s.hidden));
  for (i64 i = 0; i < s.hidden; ++i) channels[i] = i;
  for (i64 i = 0; i < n; ++i)  // partial Fisher-Yates: the first n are a uniform random subset
    std::swap(channels[i], channels[i + static_cast<i64>(rng.below(s.hidden - i))]);
  channels.resize(static_cast<std::size_t>(n));
  std::sort(channels.begin(), channels.end());
  return channels;
}

namespace {

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// Generates one tensor's FP32 values; a pure function of (spec, tensor), so a block can be
// regenerated for calibration and then again, identically, for writing.
class TensorFactory {
 public:
  TensorFactory(const SynthSpec& spec, const io::ModelConfig& config)
      : spec_(spec), config_(config), outliers_(synth_outlier_channels(spec)) {
    // One sign per outlier channel for OPT's shift, shared by every norm (real models shift a
    // channel the same way in every layer).
    Rng rng(spec.seed ^ 0x5A1F7ull);
    for (std::size_t i = 0; i < outliers_.size(); ++i)
      signs_.push_back(rng.uniform() < 0.5 ? -1 : 1);
  }

  const std::vector<i64>& outliers() const { return outliers_; }
  double logit_scale = 1.0;

  Tensor make(const TensorSpec& t) const {
    Rng rng(spec_.seed * 0x9E3779B97F4A7C15ull ^ fnv1a(t.name));
    Tensor out = Tensor::zeros(DType::f32, t.shape);
    float* v = out.mutable_data<float>();
    const i64 n = out.numel();
    auto fill_normal = [&](double mean, double std) {
      for (i64 i = 0; i < n; ++i) v[i] = static_cast<float>(mean + std * rng.normal());
    };
    const double fan_in = t.shape.size() == 2 ? double(t.shape[1]) : 1.0;
    switch (t.kind) {
      case TensorKind::embed_tokens:
        fill_normal(0.0, 1.0);
        break;
      case TensorKind::embed_positions:
        fill_normal(0.0, 0.5);
        break;
      case TensorKind::project_in:
      case TensorKind::project_out:
      case TensorKind::lm_head:
        fill_normal(0.0, 1.0 / std::sqrt(fan_in));
        break;
      case TensorKind::linear_weight: {
        // Residual-writing layers are scaled down by sqrt(2 L), as GPT-2 initialises them, so
        // the residual stream stays in range through the blocks.
        const bool writes_residual = t.linear == LinearRole::o || t.linear == LinearRole::down;
        const double damp = writes_residual ? std::sqrt(2.0 * double(config_.num_layers)) : 1.0;
        fill_normal(0.0, 1.0 / std::sqrt(fan_in) / damp);
        // The consumers of a norm read its outlier channels through columns as much smaller as
        // the activations there are larger, as trained LLMs do: the function stays well
        // conditioned (attention is not driven to one-hot by two channels) while the
        // activations entering q/k/v and gate/up still carry the huge values that make
        // activation quantization hard.
        if (reads_norm(t.linear)) {
          const i64 cols = t.shape[1];
          for (i64 r = 0; r < t.shape[0]; ++r)
            for (i64 ch : outliers_) v[r * cols + ch] /= static_cast<float>(spec_.outlier_scale);
        }
        break;
      }
      case TensorKind::linear_bias:
        fill_normal(0.0, 0.02);
        break;
      case TensorKind::norm_weight:
        fill_normal(1.0, 0.1);
        for (i64 ch : outliers_) v[ch] *= static_cast<float>(spec_.outlier_scale);
        break;
      case TensorKind::norm_bias: {
        fill_normal(0.0, 0.05);
        // The channel's output is gamma * x_hat + beta with x_hat of unit variance: its standard
        // deviation is |gamma|, so the shift is opt_shift_sigmas * |gamma|.
        const Tensor w = make(weight_of(t));
        for (std::size_t i = 0; i < outliers_.size(); ++i) {
          const i64 ch = outliers_[i];
          v[ch] = static_cast<float>(signs_[i] * spec_.opt_shift_sigmas *
                                     std::abs(w.data<float>()[ch]));
        }
        break;
      }
      case TensorKind::final_norm_weight:
        fill_normal(1.0, 0.1);
        for (i64 i = 0; i < n; ++i) v[i] = static_cast<float>(v[i] * logit_scale);
        break;
      case TensorKind::final_norm_bias:
        fill_normal(0.0, 0.05);
        for (i64 i = 0; i < n; ++i) v[i] = static_cast<float>(v[i] * logit_scale);
        break;
    }
    return out;
  }

 private:
  static bool reads_norm(LinearRole role) {
    return role == LinearRole::q || role == LinearRole::k || role == LinearRole::v ||
           role == LinearRole::gate || role == LinearRole::up;
  }
  static TensorSpec weight_of(const TensorSpec& bias) {
    TensorSpec w = bias;
    w.kind = TensorKind::norm_weight;
    w.name = bias.name.substr(0, bias.name.size() - 4) + "weight";
    return w;
  }
  const SynthSpec& spec_;
  const io::ModelConfig& config_;
  std::vector<i64> outliers_;
  std::vector<int> signs_;
};

// Builds FP32 weights of one block / the edges straight from the factory.
struct InMemoryWeights {
  const TensorFactory& factory;
  const std::vector<TensorSpec>& specs;

  BlockWeights block(int layer) const {
    BlockWeights b;
    for (const auto& t : specs) {
      if (t.layer != layer) continue;
      switch (t.kind) {
        case TensorKind::norm_weight:
          b.norm(t.norm).weight = factory.make(t);
          break;
        case TensorKind::norm_bias:
          b.norm(t.norm).bias = factory.make(t);
          break;
        case TensorKind::linear_weight:
          b.linear(t.linear).weight = factory.make(t);
          break;
        case TensorKind::linear_bias:
          b.linear(t.linear).bias = factory.make(t);
          break;
        default:
          break;
      }
    }
    return b;
  }
  Tensor find(TensorKind kind) const {
    for (const auto& t : specs)
      if (t.kind == kind) return factory.make(t);
    return {};
  }
};

// Mean over rows of the entropy of softmax(scale * logits), in nats.
double mean_entropy(const Tensor& logits, double scale) {
  const i64 rows = logits.dim(0), V = logits.dim(1);
  double total = 0.0;
  for (i64 r = 0; r < rows; ++r) {
    const float* l = logits.data<float>() + r * V;
    double mx = -INFINITY;
    for (i64 j = 0; j < V; ++j) mx = std::max(mx, scale * l[j]);
    double z = 0.0, ez = 0.0;
    for (i64 j = 0; j < V; ++j) {
      const double a = scale * l[j] - mx, e = std::exp(a);
      z += e;
      ez += e * a;
    }
    total += std::log(z) - ez / z;  // H = log Z - E[a]
  }
  return total / double(rows);
}

// Finds the factor on the final norm that gives the target perplexity on random inputs.
double calibrate_logit_scale(const SynthSpec& spec, const io::ModelConfig& c,
                             const TensorFactory& factory, const std::vector<TensorSpec>& specs) {
  const InMemoryWeights w{factory, specs};
  const Batch batch{.n_seq = 4, .seq_len = std::min<i64>(64, c.max_position_embeddings)};
  Rng rng(spec.seed ^ 0xCA11B7ull);
  std::vector<std::uint32_t> ids(static_cast<std::size_t>(batch.tokens()));
  for (auto& id : ids) id = static_cast<std::uint32_t>(rng.below(c.vocab_size));
  EmbeddingWeights emb;
  emb.tokens = w.find(TensorKind::embed_tokens);
  emb.positions = w.find(TensorKind::embed_positions);
  emb.project_in.weight = w.find(TensorKind::project_in);
  Tensor hidden = embed(c, emb, ids, batch);
  const auto inv_freq = rope_inv_freq(c);
  for (int l = 0; l < c.num_layers; ++l)
    block_forward(c, w.block(l), batch, hidden, {.inv_freq = inv_freq});
  HeadWeights head;
  head.final_norm.weight = w.find(TensorKind::final_norm_weight);
  head.final_norm.bias = w.find(TensorKind::final_norm_bias);
  head.project_out.weight = w.find(TensorKind::project_out);
  head.lm_head = w.find(c.tie_word_embeddings ? TensorKind::embed_tokens : TensorKind::lm_head);
  const Tensor logits = head_logits(c, head, hidden.data<float>(), batch.tokens());

  // Entropy falls monotonically as the scale grows: bisect in log space.
  const double target = std::log(spec.target_perplexity_fraction * double(c.vocab_size));
  double lo = std::log(1e-4), hi = std::log(1e4);
  for (int it = 0; it < 60; ++it) {
    const double mid = 0.5 * (lo + hi);
    (mean_entropy(logits, std::exp(mid)) > target ? lo : hi) = mid;
  }
  return std::exp(0.5 * (lo + hi));
}

}  // namespace

SynthResult write_synth_model(const SynthSpec& spec, const std::string& dir) {
  const io::ModelConfig config = synth_config(spec);
  if (spec.calib_seqs + spec.eval_seqs > 0 && spec.seq_len > config.max_position_embeddings)
    fail("synth: seq_len {} exceeds max_positions {}", spec.seq_len,
         config.max_position_embeddings);
  std::error_code ec;
  if (fs::exists(dir) && !fs::is_empty(dir, ec))
    fail(ErrorContext{.file = dir},
         "output directory exists and is not empty; refusing to mix "
         "a new model into it");
  fs::create_directories(dir, ec);
  if (ec) fail(ErrorContext{.file = dir}, "cannot create directory: {}", ec.message());

  const auto specs = model_tensors(config, TensorNames::canonical(config));
  TensorFactory factory(spec, config);
  SynthResult result;
  result.config = config;
  result.outlier_channels = factory.outliers();
  const bool tokens = spec.calib_seqs + spec.eval_seqs > 0;
  if (tokens) {
    log::ScopedTimer timer("synth: logit scale calibration");
    factory.logit_scale = result.logit_scale = calibrate_logit_scale(spec, config, factory, specs);
  }

  std::uint64_t total = 0;
  for (const auto& t : specs) total += std::uint64_t(shape_numel(t.shape)) * dtype_size(spec.dtype);
  std::uint64_t shard = spec.max_shard_bytes;
  if (shard == 0) shard = std::clamp<std::uint64_t>(total / 4, 1ull << 20, 5'000'000'000ull);
  {
    log::ScopedTimer timer(fmt::format("synth: writing {:.1f} MB of weights", total / 1e6));
    io::ShardedCheckpointWriter writer(dir, shard);
    for (const auto& t : specs) writer.add(t.name, factory.make(t).to(spec.dtype));
    writer.finish();
  }
  nlohmann::json cfg = io::to_hf_config(config);
  io::write_file_atomic((fs::path(dir) / "config.json").string(), cfg.dump(2) + "\n");

  if (tokens) {
    const Model model = Model::open(dir);  // sample from the model as stored (rounded weights)
    auto write = [&](const char* name, i64 n_seq, std::uint64_t seed) -> std::string {
      if (n_seq == 0) return {};
      log::ScopedTimer timer(
          fmt::format("synth: sampling {} x {} tokens for {}", n_seq, spec.seq_len, name));
      const auto ids = sample_sequences(
          model, {.n_seq = n_seq, .seq_len = spec.seq_len, .seed = seed, .temperature = 1.0});
      const std::string path = (fs::path(dir) / name).string();
      io::write_tokens_npy(path, ids, n_seq, spec.seq_len);
      return path;
    };
    result.calib_tokens = write("calib.npy", spec.calib_seqs, spec.seed * 2 + 1);
    result.eval_tokens = write("eval.npy", spec.eval_seqs, spec.seed * 2 + 2);
  }
  return result;
}

}  // namespace sq::model
