#include "pipeline/block_state.h"

#include <fmt/format.h>

#include <string>

#include "core/error.h"
#include "stages/quantize.h"

namespace sq::pipeline {
namespace {

using model::LinearRole;
using model::Site;
using i64 = std::int64_t;

constexpr std::array<Site, model::kSiteCount> kSites = {Site::qkv_in,  Site::o_in,   Site::mlp_in,
                                                        Site::down_in, Site::attn_q, Site::attn_k,
                                                        Site::attn_v};

Tensor f32_tensor(const std::vector<float>& v) {
  return Tensor::from_f32(v, {static_cast<i64>(v.size())});
}

Tensor i64_tensor(const std::vector<i64>& v) {
  Tensor t = Tensor::zeros(DType::i64, {static_cast<i64>(v.size())});
  std::copy(v.begin(), v.end(), t.mutable_data<i64>());
  return t;
}

std::vector<float> f32_values(const io::CheckpointReader& f, const std::string& path) {
  const Tensor t = f.get(path);
  if (t.dtype() != DType::f32 || t.ndim() != 1)
    fail(ErrorContext{.file = f.path(), .tensor = path}, "expected a 1-D f32 tensor");
  const auto v = t.values<float>();
  return {v.begin(), v.end()};
}

std::vector<i64> i64_values(const io::CheckpointReader& f, const std::string& path) {
  const Tensor t = f.get(path);
  if (t.dtype() != DType::i64 || t.ndim() != 1)
    fail(ErrorContext{.file = f.path(), .tensor = path}, "expected a 1-D i64 tensor");
  const auto v = t.values<i64>();
  return {v.begin(), v.end()};
}

i64 int_attribute(const io::CheckpointReader& f, const std::string& key) {
  const std::string text = f.attribute(key);
  try {
    std::size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return v;
  } catch (const std::exception&) {
    fail(ErrorContext{.file = f.path(), .key = key}, "attribute '{}' is not an integer", text);
  }
}

std::string stats_path(Site site, const char* what) {
  return fmt::format("/stats/{}/{}", model::site_name(site), what);
}

std::string linear_path(LinearRole role, const char* what) {
  return fmt::format("/quantized/{}/{}", model::role_name(role), what);
}

}  // namespace

bool BlockState::quantized() const {
  for (const auto& l : block.linears)
    if (l.defined()) return true;
  return false;
}

io::CheckpointWriter block_checkpoint(const io::CheckpointHeader& header, const BlockState& state) {
  io::CheckpointWriter w(header);
  w.put_attribute("stages_done", std::to_string(state.stages_done));
  for (Site site : kSites) {
    const auto& st = state.stats.at(site);
    if (st.empty()) continue;
    w.put(stats_path(site, "absmax"), f32_tensor(st.absmax));
    w.put(stats_path(site, "min"), f32_tensor(st.min));
    w.put(stats_path(site, "max"), f32_tensor(st.max));
  }
  if (state.os_inputs.captured()) {
    w.put("/os_plus/qkv_in", state.os_inputs.qkv_in);
    w.put("/os_plus/mlp_in", state.os_inputs.mlp_in);
    w.put_attribute("os_plus.n_seq", std::to_string(state.os_inputs.batch.n_seq));
    w.put_attribute("os_plus.seq_len", std::to_string(state.os_inputs.batch.seq_len));
  }
  w.put_attribute("transforms", std::to_string(state.transforms.size()));
  for (std::size_t i = 0; i < state.transforms.size(); ++i) {
    const auto& [boundary, t] = state.transforms[i];
    const std::string base = fmt::format("/transforms/{}", i);
    w.put_attribute(fmt::format("transform.{}.boundary", i),
                    std::string(stages::boundary_name(boundary)));
    w.put_attribute(fmt::format("transform.{}.in_channels", i), std::to_string(t.in_channels));
    if (!t.index.empty()) w.put(base + "/index", i64_tensor(t.index));
    if (!t.merge.empty()) w.put(base + "/merge", i64_tensor(t.merge));
    if (!t.scale.empty()) w.put(base + "/scale", f32_tensor(t.scale));
    if (!t.shift.empty()) w.put(base + "/shift", f32_tensor(t.shift));
  }
  for (LinearRole role : model::kAllLinearRoles) {
    const auto& q = state.block.linear(role);
    if (q.weight_q.defined()) {
      w.put(linear_path(role, "weight_q"), q.weight_q);
      w.put(linear_path(role, "weight_scale"), q.weight_scale);
    }
    if (q.weight_zero_point.defined())
      w.put(linear_path(role, "weight_zero_point"), q.weight_zero_point);
    if (q.input_scale.defined()) w.put(linear_path(role, "input_scale"), q.input_scale);
    if (q.input_zero_point.defined())
      w.put(linear_path(role, "input_zero_point"), q.input_zero_point);
  }
  return w;
}

BlockState read_block_state(const io::CheckpointReader& f, const io::ModelConfig& config,
                            model::BlockWeights fp, const stages::QuantScheme& scheme) {
  BlockState s;
  s.stages_done = static_cast<int>(int_attribute(f, "stages_done"));
  for (Site site : kSites) {
    if (!f.contains(stats_path(site, "absmax"))) continue;
    auto& st = s.stats.at(site);
    st.absmax = f32_values(f, stats_path(site, "absmax"));
    st.min = f32_values(f, stats_path(site, "min"));
    st.max = f32_values(f, stats_path(site, "max"));
    if (st.min.size() != st.absmax.size() || st.max.size() != st.absmax.size())
      fail(ErrorContext{.file = f.path(), .tensor = stats_path(site, "min")},
           "statistics of different lengths");
  }
  if (f.contains("/os_plus/qkv_in")) {
    s.os_inputs.qkv_in = f.get("/os_plus/qkv_in");
    s.os_inputs.mlp_in = f.get("/os_plus/mlp_in");
    s.os_inputs.batch = {.n_seq = int_attribute(f, "os_plus.n_seq"),
                         .seq_len = int_attribute(f, "os_plus.seq_len")};
  }
  s.block.weights = std::move(fp);
  const i64 n_transforms = int_attribute(f, "transforms");
  for (i64 i = 0; i < n_transforms; ++i) {
    const std::string base = fmt::format("/transforms/{}", i);
    stages::ChannelTransform t;
    t.in_channels = int_attribute(f, fmt::format("transform.{}.in_channels", i));
    if (f.contains(base + "/index")) t.index = i64_values(f, base + "/index");
    if (f.contains(base + "/merge")) t.merge = i64_values(f, base + "/merge");
    if (f.contains(base + "/scale")) t.scale = f32_values(f, base + "/scale");
    if (f.contains(base + "/shift")) t.shift = f32_values(f, base + "/shift");
    const auto boundary =
        stages::boundary_from_name(f.attribute(fmt::format("transform.{}.boundary", i)));
    try {
      t.validate();
      stages::apply_transform(config, s.block.weights, boundary, t);
    } catch (const Error& e) {
      throw e.with_file(f.path()).with_tensor(base);
    }
    s.transforms.push_back({boundary, std::move(t)});
  }
  for (LinearRole role : model::kAllLinearRoles) {
    auto& q = s.block.linear(role);
    auto get = [&](const char* what) {
      const std::string p = linear_path(role, what);
      return f.contains(p) ? f.get(p) : Tensor();
    };
    q.weight_q = get("weight_q");
    q.weight_scale = get("weight_scale");
    q.weight_zero_point = get("weight_zero_point");
    q.input_scale = get("input_scale");
    q.input_zero_point = get("input_zero_point");
    if (!q.weight_q.defined()) continue;
    auto& linear = s.block.weights.linear(role);
    if (!linear.weight.defined() || q.weight_q.dtype() != DType::i8 ||
        q.weight_q.shape() != linear.weight.shape())
      fail(ErrorContext{.file = f.path(), .tensor = linear_path(role, "weight_q")},
           "does not match the model's {} weight", model::role_name(role));
    try {
      linear.weight = stages::dequantized_weight(q, scheme);
    } catch (const Error& e) {
      throw e.with_file(f.path()).with_tensor(linear_path(role, "weight_scale"));
    }
  }
  return s;
}

}  // namespace sq::pipeline
