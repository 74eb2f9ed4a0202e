#include "stages/smooth.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "stages/channel_transform.h"

namespace sq::stages {

using model::LinearRole;
using model::Site;

std::vector<float> smoothquant_scales(const std::vector<float>& act_absmax,
                                      const std::vector<const model::Linear*>& consumers,
                                      double alpha) {
  const std::size_t C = act_absmax.size();
  std::vector<float> w(C, 0.0f);
  for (const model::Linear* l : consumers) {
    SQ_CHECK(static_cast<std::size_t>(l->in_features()) == C, "consumer width {} vs {}",
             l->in_features(), C);
    const float* W = l->weight.data<float>();
    for (std::int64_t r = 0; r < l->out_features(); ++r)
      for (std::size_t j = 0; j < C; ++j) w[j] = std::max(w[j], std::abs(W[r * C + j]));
  }
  std::vector<float> s(C);
  for (std::size_t j = 0; j < C; ++j) {
    const double wj = std::max(double(w[j]), 1e-5);
    s[j] = static_cast<float>(
        std::max(std::pow(double(act_absmax[j]), alpha) / std::pow(wj, 1.0 - alpha), 1e-5));
  }
  return s;
}

void transform_stats(ChannelStats& st, const std::vector<float>& shift,
                     const std::vector<float>& scale) {
  for (std::int64_t c = 0; c < st.channels(); ++c) {
    const float z = shift.empty() ? 0.0f : shift[c], s = scale.empty() ? 1.0f : scale[c];
    float lo = (st.min[c] - z) / s, hi = (st.max[c] - z) / s;
    if (s < 0) std::swap(lo, hi);
    st.min[c] = lo;
    st.max[c] = hi;
    st.absmax[c] = std::max(std::abs(lo), std::abs(hi));
  }
}

std::vector<AppliedTransform> smoothquant_block(const io::ModelConfig& config,
                                                model::BlockWeights& w, BlockStats& stats,
                                                double alpha) {
  if (!(alpha >= 0.0 && alpha <= 1.0)) fail("smoothquant alpha {} is outside [0, 1]", alpha);
  struct Pair {
    Boundary boundary;
    Site site;
    std::vector<const model::Linear*> consumers;
  };
  std::vector<Pair> pairs = {{Boundary::attn_norm_to_qkv, Site::qkv_in, {&w.q, &w.k, &w.v}},
                             {Boundary::mlp_norm_to_mlp, Site::mlp_in, {&w.up}}};
  if (config.gated_mlp()) pairs[1].consumers.push_back(&w.gate);
  std::vector<AppliedTransform> applied;
  for (const auto& p : pairs) {
    ChannelStats& st = stats.at(p.site);
    if (st.empty())
      fail("smoothquant needs calibration statistics at {}", model::site_name(p.site));
    const auto s = smoothquant_scales(st.absmax, p.consumers, alpha);
    auto t = ChannelTransform::scaling(s);
    apply_transform(config, w, p.boundary, t);
    transform_stats(st, {}, s);
    applied.push_back({p.boundary, std::move(t)});
  }
  return applied;
}

}  // namespace sq::stages
