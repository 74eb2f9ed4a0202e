#include "stages/suppress.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "io/recipe.h"
#include "kernels/cpu/ops.h"
#include "stages/channel_transform.h"
#include "stages/smooth.h"

namespace sq::stages {

using i64 = std::int64_t;
using model::Site;

void CaptureOsPlusInputs::at(Site site, float* x, i64 rows, i64 cols) {
  Tensor* slot = site == Site::qkv_in   ? &out_.qkv_in
                 : site == Site::mlp_in ? &out_.mlp_in
                                        : nullptr;
  if (slot != nullptr && !slot->defined()) {
    *slot = Tensor::from_f32({x, static_cast<std::size_t>(rows * cols)}, {rows, cols});
    out_.batch = batch_;
  }
  if (next_ != nullptr) next_->at(site, x, rows, cols);
}

namespace {

// A consumer linear as the candidate transform would make it: columns scaled by s, bias
// absorbing the shift (b' = b + W z), then the weights fake-quantized by the scheme.
model::Linear transformed_linear(const model::Linear& l, const std::vector<float>& z,
                                 const std::vector<float>& s, const QuantScheme& scheme) {
  const i64 rows = l.out_features(), cols = l.in_features();
  model::Linear out;
  out.weight = Tensor::zeros(DType::f32, {rows, cols});
  out.bias = Tensor::zeros(DType::f32, {rows});
  const float* W = l.weight.data<float>();
  float* Wn = out.weight.mutable_data<float>();
  float* b = out.bias.mutable_data<float>();
  for (i64 r = 0; r < rows; ++r) {
    double acc = l.bias.defined() ? l.bias.data<float>()[r] : 0.0;
    for (i64 c = 0; c < cols; ++c) {
      Wn[r * cols + c] = W[r * cols + c] * s[c];
      acc += double(W[r * cols + c]) * z[c];
    }
    b[r] = static_cast<float>(acc);
  }
  const auto& wq = scheme.weights;
  const i64 n = cpu::num_qparams(rows, cols, wq.layout);
  std::vector<float> scale(static_cast<std::size_t>(n));
  std::vector<std::int32_t> zp(static_cast<std::size_t>(n));
  cpu::qparams_minmax(Wn, rows, cols, wq.layout, wq.format, scale.data(), zp.data());
  cpu::fake_quantize(Wn, rows, cols, wq.layout, wq.format, scale.data(), zp.data());
  return out;
}

// x' = (x - z) / s, fake-quantized as the activations will be: dynamic as configured, or static
// per tensor with the range the (transformed) calibration statistics give.
Tensor transformed_input(const Tensor& x, const std::vector<float>& z, const std::vector<float>& s,
                         const ChannelStats& stats, const QuantScheme& scheme) {
  const i64 rows = x.dim(0), cols = x.dim(1);
  Tensor out = Tensor::zeros(DType::f32, {rows, cols});
  float* o = out.mutable_data<float>();
  const float* in = x.data<float>();
  for (i64 r = 0; r < rows; ++r)
    for (i64 c = 0; c < cols; ++c) o[r * cols + c] = (in[r * cols + c] - z[c]) / s[c];
  if (!scheme.activations) return out;
  const auto& a = *scheme.activations;
  if (a.dynamic) {
    cpu::fake_quantize_dynamic(
        o, rows, cols,
        {.granularity = a.per_token ? cpu::Granularity::row : cpu::Granularity::tensor}, a.format);
    return out;
  }
  ChannelStats t = stats;
  transform_stats(t, z, s);
  const float lo = t.tensor_min(), hi = t.tensor_max();
  float scale = 0;
  std::int32_t zp = 0;
  cpu::qparams_from_range(&lo, &hi, 1, a.format, &scale, &zp);
  cpu::fake_quantize(o, rows, cols, {.granularity = cpu::Granularity::tensor}, a.format, &scale,
                     &zp);
  return out;
}

Tensor apply_linear(const model::Linear& l, const Tensor& x) {
  Tensor y = Tensor::zeros(DType::f32, {x.dim(0), l.out_features()});
  cpu::linear(x.data<float>(), x.dim(0), x.dim(1), l.weight.data<float>(), l.bias_or_null(),
              l.out_features(), y.mutable_data<float>());
  return y;
}

// softmax(Q K^T / sqrt(d) + causal mask) V per sequence, with RoPE and GQA: the output the
// q/k/v projections serve (before o_proj).
Tensor attention_output(const io::ModelConfig& c, const model::Linear& q, const model::Linear& k,
                        const model::Linear& v, const Tensor& x, const model::Batch& batch) {
  Tensor Q = apply_linear(q, x), K = apply_linear(k, x), V = apply_linear(v, x);
  const auto inv_freq = model::rope_inv_freq(c);
  return model::attend(c, Q, K, V, batch, {.inv_freq = inv_freq});
}

// The MLP's first half: fc1 output (OPT) or silu(gate) * up (LLaMA), what down/fc2 consumes
// before its activation for OPT.
Tensor mlp_output(const io::ModelConfig& c, const model::Linear* gate, const model::Linear& up,
                  const Tensor& x) {
  Tensor u = apply_linear(up, x);
  if (c.gated_mlp()) {
    const Tensor g = apply_linear(*gate, x);
    cpu::silu_mul(g.data<float>(), u.data<float>(), u.numel(), u.mutable_data<float>());
  }
  return u;
}

double squared_error(const Tensor& a, const Tensor& b) {
  double e = 0.0;
  const float *x = a.data<float>(), *y = b.data<float>();
  for (i64 i = 0; i < a.numel(); ++i) e += double(x[i] - y[i]) * (x[i] - y[i]);
  return e / double(a.numel());
}

// s_j for threshold t: channels outside [-t, t] are squeezed back inside, the rest untouched.
std::vector<float> threshold_scales(const ChannelStats& st, const std::vector<float>& z, double t) {
  std::vector<float> s(static_cast<std::size_t>(st.channels()));
  for (i64 j = 0; j < st.channels(); ++j) {
    const double cmax = st.max[j] - z[j], cmin = st.min[j] - z[j];
    s[j] = static_cast<float>(std::max(cmax > t ? cmax / t : 1.0, cmin < -t ? cmin / -t : 1.0));
  }
  return s;
}

struct SearchResult {
  std::vector<float> scale;
  double threshold, loss, loss_unscaled;
};

template <typename Loss>
SearchResult search(const ChannelStats& st, const std::vector<float>& z, const OsPlusOptions& o,
                    double floor, Loss loss) {
  double t_max = 0.0;
  for (i64 j = 0; j < st.channels(); ++j)
    t_max = std::max({t_max, double(st.max[j] - z[j]), double(z[j] - st.min[j])});
  SearchResult best{std::vector<float>(static_cast<std::size_t>(st.channels()), 1.0f), t_max, 0, 0};
  best.loss = best.loss_unscaled = loss(best.scale);
  if (t_max <= floor) return best;
  for (int i = 1; i <= o.grid; ++i) {
    const double t = t_max - (t_max - floor) * double(i) / double(o.grid);
    auto s = threshold_scales(st, z, t);
    const double l = loss(s);
    if (l < best.loss) best = {std::move(s), t, l, best.loss_unscaled};
  }
  return best;
}

}  // namespace

OsPlusReport os_plus_block(const io::ModelConfig& c, model::BlockWeights& w, BlockStats& stats,
                           const OsPlusInputs& in, const QuantScheme& scheme,
                           const OsPlusOptions& o) {
  if (!in.captured()) fail("os_plus needs the first calibration micro-batch's inputs");
  if (o.grid < 1) fail("os_plus grid {} must be >= 1", o.grid);
  const double floor = o.floor.value_or(io::default_os_plus_floor(c.arch));
  OsPlusReport report;
  // Shift only where the producer (a LayerNorm with bias) can absorb it.
  const bool can_shift = c.norm_bias;
  report.shifted = can_shift;
  auto shift_of = [&](const ChannelStats& st) {
    std::vector<float> z(static_cast<std::size_t>(st.channels()), 0.0f);
    if (can_shift)
      for (i64 j = 0; j < st.channels(); ++j) z[j] = 0.5f * (st.max[j] + st.min[j]);
    return z;
  };

  // One site: shift, threshold search with the site's loss, fold, update the statistics.
  // make_loss(st, z) returns the loss of a candidate scale vector.
  auto suppress_site = [&](Site site, Boundary boundary, auto make_loss) {
    ChannelStats& st = stats.at(site);
    const auto z = shift_of(st);
    const auto r = search(st, z, o, floor, make_loss(st, z));
    auto t = ChannelTransform::shifting(z, r.scale);
    apply_transform(c, w, boundary, t);
    transform_stats(st, z, r.scale);
    report.transforms.push_back({boundary, std::move(t)});
    return OsPlusSearch{r.threshold, r.loss, r.loss_unscaled};
  };
  // norm -> q, k, v: the loss is the whole attention output.
  report.qkv = suppress_site(
      Site::qkv_in, Boundary::attn_norm_to_qkv,
      [&](const ChannelStats& st, const std::vector<float>& z) {
        const Tensor ref = attention_output(c, w.q, w.k, w.v, in.qkv_in, in.batch);
        return [&, ref](const std::vector<float>& s) {
          const Tensor x = transformed_input(in.qkv_in, z, s, st, scheme);
          return squared_error(attention_output(c, transformed_linear(w.q, z, s, scheme),
                                                transformed_linear(w.k, z, s, scheme),
                                                transformed_linear(w.v, z, s, scheme), x, in.batch),
                               ref);
        };
      });
  // norm -> gate, up (fc1): the loss is what the down projection consumes.
  report.mlp = suppress_site(
      Site::mlp_in, Boundary::mlp_norm_to_mlp,
      [&](const ChannelStats& st, const std::vector<float>& z) {
        const model::Linear* gate = c.gated_mlp() ? &w.gate : nullptr;
        const Tensor ref = mlp_output(c, gate, w.up, in.mlp_in);
        return [&, gate, ref](const std::vector<float>& s) {
          const Tensor x = transformed_input(in.mlp_in, z, s, st, scheme);
          model::Linear g;
          if (gate != nullptr) g = transformed_linear(*gate, z, s, scheme);
          return squared_error(
              mlp_output(c, gate ? &g : nullptr, transformed_linear(w.up, z, s, scheme), x), ref);
        };
      });
  return report;
}

}  // namespace sq::stages
