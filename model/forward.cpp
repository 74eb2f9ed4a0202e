#include "model/forward.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "kernels/cpu/ops.h"

namespace sq::model {

using i64 = std::int64_t;

KVCache::KVCache(const io::ModelConfig& config, i64 n_seq_, i64 max_len_)
    : n_seq(n_seq_), max_len(max_len_) {
  for (i64 l = 0; l < config.num_layers; ++l) {
    k.push_back(Tensor::zeros(DType::f32, {n_seq, max_len, config.kv_dim()}));
    v.push_back(Tensor::zeros(DType::f32, {n_seq, max_len, config.kv_dim()}));
  }
}

std::vector<float> rope_inv_freq(const io::ModelConfig& c) {
  if (c.positions != io::PositionKind::rope) return {};
  const i64 d = c.head_dim;
  std::vector<float> inv(static_cast<std::size_t>(d / 2));
  for (i64 i = 0; i < d / 2; ++i) {
    // HF computes base ** (2i / d) in fp32; computing in double and rounding once differs by at
    // most one ulp.
    inv[i] = static_cast<float>(1.0 / std::pow(c.rope.theta, double(2 * i) / double(d)));
  }
  const auto& r = c.rope;
  switch (r.scaling) {
    case io::RopeScaling::none:
      break;
    case io::RopeScaling::linear:
      for (auto& f : inv) f = static_cast<float>(f / r.factor);
      break;
    case io::RopeScaling::llama3: {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band in
      // between interpolated smoothly.
      const double old_len = double(r.original_max_position_embeddings);
      const double low_wavelen = old_len / r.low_freq_factor;
      const double high_wavelen = old_len / r.high_freq_factor;
      for (auto& f : inv) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f = static_cast<float>(f / r.factor);
        } else if (wavelen >= high_wavelen) {
          const double smooth =
              (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
          f = static_cast<float>((1.0 - smooth) * f / r.factor + smooth * f);
        }
      }
      break;
    }
  }
  return inv;
}

namespace {
// A norm with an output map (weights.h): statistics over the original width, then each slot
// gathers its input channel, applies its own weight and bias, and is averaged into its output
// channel, in one pass over the slots (RPTQ's reorder-LayerNorm, QLLM's reassembly).
void apply_mapped_norm(const io::ModelConfig& c, const Norm& norm, const float* x, i64 rows,
                       i64 cols, float* out) {
  const NormOutputMap& map = norm.map;
  const i64 slots = map.slots(), n_out = map.out_channels;
  SQ_CHECK(norm.weight.numel() == slots && static_cast<i64>(map.merge.size()) == slots,
           "norm map of {} slots with weight {}", slots, norm.weight.describe());
  SQ_CHECK(!norm.bias.defined() || norm.bias.numel() == slots, "norm bias {} for {} slots",
           norm.bias.describe(), slots);
  std::vector<float> inv_count(static_cast<std::size_t>(n_out), 0.0f);
  for (i64 k = 0; k < slots; ++k) {
    SQ_CHECK(map.index[k] >= 0 && map.index[k] < cols && map.merge[k] >= 0 && map.merge[k] < n_out,
             "norm map slot {} out of range", k);
    inv_count[map.merge[k]] += 1.0f;
  }
  for (auto& n : inv_count) n = n > 0.0f ? 1.0f / n : 0.0f;
  const float* weight = norm.weight.data<float>();
  const float* bias = norm.bias_or_null();
  const float eps = static_cast<float>(c.norm_eps);
  for (i64 r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* o = out + r * n_out;
    // The same statistics as cpu::rms_norm / cpu::layer_norm, so an identity map matches them.
    float m = 0.0f, inv = 1.0f;
    switch (c.norm) {
      case io::NormKind::rms: {
        double ss = 0.0;
        for (i64 j = 0; j < cols; ++j) ss += double(xr[j]) * xr[j];
        inv = 1.0f / std::sqrt(static_cast<float>(ss / double(cols)) + eps);
        break;
      }
      case io::NormKind::layer: {
        double mean = 0.0;
        for (i64 j = 0; j < cols; ++j) mean += xr[j];
        mean /= double(cols);
        double var = 0.0;
        for (i64 j = 0; j < cols; ++j) var += (xr[j] - mean) * (xr[j] - mean);
        var /= double(cols);
        inv = 1.0f / std::sqrt(static_cast<float>(var) + eps);
        m = static_cast<float>(mean);
        break;
      }
    }
    std::fill(o, o + n_out, 0.0f);
    for (i64 k = 0; k < slots; ++k) {
      const float b = bias != nullptr ? bias[k] : 0.0f;
      o[map.merge[k]] += (xr[map.index[k]] - m) * inv * weight[k] + b;
    }
    for (i64 i = 0; i < n_out; ++i) o[i] *= inv_count[i];
  }
}
}  // namespace

void apply_norm(const io::ModelConfig& c, const Norm& norm, const float* x, i64 rows, i64 cols,
                float* out) {
  if (!norm.map.empty()) {
    apply_mapped_norm(c, norm, x, rows, cols, out);
    return;
  }
  switch (c.norm) {
    case io::NormKind::rms:
      cpu::rms_norm(x, rows, cols, norm.weight.data<float>(), static_cast<float>(c.norm_eps), out);
      return;
    case io::NormKind::layer:
      cpu::layer_norm(x, rows, cols, norm.weight.data<float>(), norm.bias_or_null(),
                      static_cast<float>(c.norm_eps), out);
      return;
  }
}

Tensor embed(const io::ModelConfig& c, const EmbeddingWeights& w,
             std::span<const std::uint32_t> ids, const Batch& batch) {
  const i64 n = batch.tokens();
  if (static_cast<i64>(ids.size()) != n)
    fail("embed: {} ids for a batch of {} x {} tokens", ids.size(), batch.n_seq, batch.seq_len);
  for (i64 i = 0; i < n; ++i)
    if (ids[i] >= static_cast<std::uint64_t>(c.vocab_size))
      fail("token id {} at position {} is outside the vocabulary of {}", ids[i], i, c.vocab_size);

  const i64 p = c.word_embed_proj_dim, h = c.hidden_size;
  Tensor words = Tensor::zeros(DType::f32, {n, p});
  cpu::embedding(w.tokens.data<float>(), p, ids.data(), n, words.mutable_data<float>());
  Tensor hidden = words;
  if (c.has_projections()) {
    hidden = Tensor::zeros(DType::f32, {n, h});
    cpu::linear(words.data<float>(), n, p, w.project_in.weight.data<float>(), nullptr, h,
                hidden.mutable_data<float>());
  }
  if (c.positions == io::PositionKind::learned) {
    const float* table = w.positions.data<float>();
    float* out = hidden.mutable_data<float>();
    const i64 rows = w.positions.dim(0);
    for (i64 s = 0; s < batch.n_seq; ++s)
      for (i64 t = 0; t < batch.seq_len; ++t) {
        const i64 pos = batch.past + t + c.learned_position_offset;
        if (pos >= rows)
          fail("position {} exceeds max_position_embeddings {}", batch.past + t,
               c.max_position_embeddings);
        cpu::add(table + pos * h, h, out + (s * batch.seq_len + t) * h);
      }
  }
  return hidden;
}

std::string_view site_name(Site site) {
  switch (site) {
    case Site::qkv_in:
      return "qkv_in";
    case Site::o_in:
      return "o_in";
    case Site::mlp_in:
      return "mlp_in";
    case Site::down_in:
      return "down_in";
    case Site::attn_q:
      return "attn_q";
    case Site::attn_k:
      return "attn_k";
    case Site::attn_v:
      return "attn_v";
  }
  return "?";
}

namespace {
void run_hook(const BlockContext& ctx, Site site, Tensor& t) {
  if (ctx.hook != nullptr) ctx.hook->at(site, t.mutable_data<float>(), t.dim(0), t.dim(1));
}
}  // namespace

cpu::AttentionShape attention_shape(const io::ModelConfig& c, i64 tq, i64 tk, i64 q_width,
                                    i64 kv_width) {
  return {.tq = tq,
          .tk = tk,
          .q_heads = c.num_heads,
          .kv_heads = c.num_kv_heads,
          .head_dim = c.head_dim,
          .q_stride = q_width,
          .kv_stride = kv_width,
          .out_stride = q_width,
          .scale = static_cast<float>(1.0 / std::sqrt(double(c.head_dim)))};
}

Tensor attend(const io::ModelConfig& c, Tensor& q, Tensor& k, Tensor& v, const Batch& batch,
              const BlockContext& ctx) {
  KVCache* cache = ctx.cache;
  const int layer = ctx.layer;
  auto hook = [&](Site site, Tensor& t) { run_hook(ctx, site, t); };
  const i64 T = batch.tokens(), D = c.head_dim, qd = q.dim(1), kvd = k.dim(1);
  if (c.positions == io::PositionKind::rope) {
    std::vector<i64> positions(static_cast<std::size_t>(batch.seq_len));
    for (i64 t = 0; t < batch.seq_len; ++t) positions[t] = batch.past + t;
    for (i64 s = 0; s < batch.n_seq; ++s) {
      ctx.rope(q.mutable_data<float>() + s * batch.seq_len * qd, batch.seq_len, c.num_heads, D, qd,
               positions.data(), ctx.inv_freq.data());
      ctx.rope(k.mutable_data<float>() + s * batch.seq_len * kvd, batch.seq_len, c.num_kv_heads, D,
               kvd, positions.data(), ctx.inv_freq.data());
    }
  }
  hook(Site::attn_q, q);
  hook(Site::attn_k, k);
  hook(Site::attn_v, v);

  Tensor attn = Tensor::zeros(DType::f32, {T, qd});
  const i64 tk = batch.past + batch.seq_len;
  std::vector<float> scratch(static_cast<std::size_t>(batch.seq_len * tk));
  const cpu::AttentionShape shape = attention_shape(c, batch.seq_len, tk, qd, kvd);
  for (i64 s = 0; s < batch.n_seq; ++s) {
    const float* ks = k.data<float>() + s * batch.seq_len * kvd;
    const float* vs = v.data<float>() + s * batch.seq_len * kvd;
    if (cache != nullptr) {
      SQ_CHECK(tk <= cache->max_len && s < cache->n_seq, "KV cache too small");
      float* kc = cache->k[layer].mutable_data<float>() + s * cache->max_len * kvd;
      float* vc = cache->v[layer].mutable_data<float>() + s * cache->max_len * kvd;
      std::copy(ks, ks + batch.seq_len * kvd, kc + batch.past * kvd);
      std::copy(vs, vs + batch.seq_len * kvd, vc + batch.past * kvd);
      ks = kc;
      vs = vc;
    }
    cpu::attention(shape, q.data<float>() + s * batch.seq_len * qd, ks, vs,
                   attn.mutable_data<float>() + s * batch.seq_len * qd, scratch.data());
  }
  return attn;
}

void block_forward(const io::ModelConfig& c, const BlockWeights& w, const Batch& batch,
                   Tensor& hidden, const BlockContext& ctx) {
  auto hook = [&](Site site, Tensor& t) { run_hook(ctx, site, t); };
  const i64 T = batch.tokens(), H = c.hidden_size, D = c.head_dim;
  // Widths come from the weights: channel transforms (stages/channel_transform.h) may widen or
  // narrow a norm's output (split, merge) and the MLP's inner width.
  const i64 qd = w.q.out_features(), kvd = w.k.out_features();
  const i64 ka = w.attn_norm.out_features(), km = w.mlp_norm.out_features();
  SQ_CHECK(hidden.numel() == T * H, "hidden {} vs {} tokens", hidden.describe(), T);
  SQ_CHECK(qd == c.num_heads * D && kvd == c.num_kv_heads * D && w.v.out_features() == kvd,
           "q/k/v widths {}/{}/{} do not fit {} heads, {} kv heads of {}", qd, kvd,
           w.v.out_features(), c.num_heads, c.num_kv_heads, D);
  SQ_CHECK(w.q.in_features() == ka && w.k.in_features() == ka && w.v.in_features() == ka,
           "q/k/v read {} channels, the attention norm writes {}", w.q.in_features(), ka);
  SQ_CHECK(w.o.in_features() == qd && w.o.out_features() == H, "o {} for q width {}",
           w.o.weight.describe(), qd);
  float* h = hidden.mutable_data<float>();

  // --- attention sub-block ---
  Tensor xn = Tensor::zeros(DType::f32, {T, ka});
  apply_norm(c, w.attn_norm, h, T, H, xn.mutable_data<float>());
  hook(Site::qkv_in, xn);
  Tensor q = Tensor::zeros(DType::f32, {T, qd});
  Tensor k = Tensor::zeros(DType::f32, {T, kvd});
  Tensor v = Tensor::zeros(DType::f32, {T, kvd});
  const float* x = xn.data<float>();
  cpu::linear(x, T, ka, w.q.weight.data<float>(), w.q.bias_or_null(), qd, q.mutable_data<float>());
  cpu::linear(x, T, ka, w.k.weight.data<float>(), w.k.bias_or_null(), kvd, k.mutable_data<float>());
  cpu::linear(x, T, ka, w.v.weight.data<float>(), w.v.bias_or_null(), kvd, v.mutable_data<float>());

  Tensor attn = attend(c, q, k, v, batch, ctx);
  hook(Site::o_in, attn);
  Tensor o = Tensor::zeros(DType::f32, {T, H});
  cpu::linear(attn.data<float>(), T, qd, w.o.weight.data<float>(), w.o.bias_or_null(), H,
              o.mutable_data<float>());
  cpu::add(o.data<float>(), T * H, h);

  // --- MLP sub-block ---
  if (km != ka) xn = Tensor::zeros(DType::f32, {T, km});
  apply_norm(c, w.mlp_norm, h, T, H, xn.mutable_data<float>());
  hook(Site::mlp_in, xn);
  x = xn.data<float>();
  const i64 F = w.up.out_features();
  SQ_CHECK(w.up.in_features() == km && w.down.in_features() == F && w.down.out_features() == H,
           "up {} / down {} for an MLP norm of width {}", w.up.weight.describe(),
           w.down.weight.describe(), km);
  Tensor up = Tensor::zeros(DType::f32, {T, F});
  cpu::linear(x, T, km, w.up.weight.data<float>(), w.up.bias_or_null(), F,
              up.mutable_data<float>());
  switch (c.activation) {
    case io::Activation::silu: {
      SQ_CHECK(w.gate.out_features() == F && w.gate.in_features() == km, "gate {} vs up {}",
               w.gate.weight.describe(), w.up.weight.describe());
      Tensor gate = Tensor::zeros(DType::f32, {T, F});
      cpu::linear(x, T, km, w.gate.weight.data<float>(), w.gate.bias_or_null(), F,
                  gate.mutable_data<float>());
      cpu::silu_mul(gate.data<float>(), up.data<float>(), T * F, up.mutable_data<float>());
      break;
    }
    case io::Activation::relu:
      cpu::relu(up.mutable_data<float>(), T * F);
      break;
    case io::Activation::gelu_tanh:
      cpu::gelu_tanh(up.mutable_data<float>(), T * F);
      break;
  }
  hook(Site::down_in, up);
  cpu::linear(up.data<float>(), T, F, w.down.weight.data<float>(), w.down.bias_or_null(), H,
              o.mutable_data<float>());
  cpu::add(o.data<float>(), T * H, h);
}

Tensor head_logits(const io::ModelConfig& c, const HeadWeights& w, const float* hidden, i64 rows) {
  const i64 H = c.hidden_size, P = c.word_embed_proj_dim;
  SQ_CHECK(w.final_norm.map.empty(), "the final norm cannot carry an output map");
  Tensor xn = Tensor::zeros(DType::f32, {rows, H});
  apply_norm(c, w.final_norm, hidden, rows, H, xn.mutable_data<float>());
  Tensor features = xn;
  if (c.has_projections()) {
    features = Tensor::zeros(DType::f32, {rows, P});
    cpu::linear(xn.data<float>(), rows, H, w.project_out.weight.data<float>(), nullptr, P,
                features.mutable_data<float>());
  }
  Tensor logits = Tensor::zeros(DType::f32, {rows, c.vocab_size});
  cpu::linear(features.data<float>(), rows, P, w.lm_head.data<float>(), nullptr, c.vocab_size,
              logits.mutable_data<float>());
  return logits;
}

}  // namespace sq::model
