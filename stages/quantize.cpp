#include "stages/quantize.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace sq::stages {

using model::LinearRole;
using model::Site;

float round_scale(float scale, DType dtype) {
  float r = scale;
  switch (dtype) {
    case DType::f32:
      break;
    case DType::f16:
      r = f16_to_f32(f32_to_f16(scale));
      break;
    case DType::bf16:
      r = bf16_to_f32(f32_to_bf16(scale));
      break;
    default:
      fail("scales cannot be stored as {}", dtype_name(dtype));
  }
  // A scale that underflows in the storage dtype would divide by zero in the consumer.
  if (!(r > 0.0f) || !std::isfinite(r))
    fail("scale {} is not representable as a positive finite {}", scale, dtype_name(dtype));
  return r;
}

Tensor dequantized_weight(const QuantizedLinear& q, const QuantScheme& scheme) {
  const std::int64_t rows = q.weight_q.shape()[0], cols = q.weight_q.shape()[1];
  const auto& layout = scheme.weights.layout;
  const std::int64_t n = cpu::num_qparams(rows, cols, layout);
  if (q.weight_scale.numel() != n)
    fail("weight_scale has {} values, the scheme needs {}", q.weight_scale.numel(), n);
  std::vector<std::int32_t> zero(static_cast<std::size_t>(n), 0);
  const std::int32_t* zp =
      q.weight_zero_point.defined() ? q.weight_zero_point.data<std::int32_t>() : zero.data();
  Tensor deq = Tensor::zeros(DType::f32, {rows, cols});
  cpu::dequantize(q.weight_q.data<std::int8_t>(), rows, cols, layout, q.weight_scale.data<float>(),
                  zp, deq.mutable_data<float>());
  return deq;
}

namespace {

QuantizedLinear quantize_linear(model::Linear& linear, const QuantScheme& scheme) {
  const auto& wq = scheme.weights;
  const std::int64_t rows = linear.out_features(), cols = linear.in_features();
  const std::int64_t n = cpu::num_qparams(rows, cols, wq.layout);
  QuantizedLinear q;
  q.weight_scale = Tensor::zeros(DType::f32, {n});
  Tensor zero = Tensor::zeros(DType::i32, {n});
  float* scale = q.weight_scale.mutable_data<float>();
  std::int32_t* zp = zero.mutable_data<std::int32_t>();
  const float* w = linear.weight.data<float>();
  if (wq.mse_clip) {
    cpu::qparams_mse(w, rows, cols, wq.layout, wq.format, 100, 0.5, scale, zp);
  } else {
    cpu::qparams_minmax(w, rows, cols, wq.layout, wq.format, scale, zp);
  }
  for (std::int64_t i = 0; i < n; ++i) scale[i] = round_scale(scale[i], scheme.scale_dtype);
  if (wq.layout.granularity == cpu::Granularity::group)
    q.weight_scale = q.weight_scale.reshape({rows, n / rows});
  if (!wq.format.symmetric) q.weight_zero_point = zero.reshape(q.weight_scale.shape());
  q.weight_q = Tensor::zeros(DType::i8, {rows, cols});
  cpu::quantize(w, rows, cols, wq.layout, wq.format, scale, zp,
                q.weight_q.mutable_data<std::int8_t>());
  linear.weight = dequantized_weight(q, scheme);
  return q;
}

Site input_site(LinearRole role) {
  switch (role) {
    case LinearRole::q:
    case LinearRole::k:
    case LinearRole::v:
      return Site::qkv_in;
    case LinearRole::o:
      return Site::o_in;
    case LinearRole::gate:
    case LinearRole::up:
      return Site::mlp_in;
    case LinearRole::down:
      return Site::down_in;
  }
  return Site::qkv_in;
}

}  // namespace

void quantize_block_weights(QuantizedBlock& block, const QuantScheme& scheme) {
  for (LinearRole role : model::kAllLinearRoles) {
    auto& linear = block.weights.linear(role);
    if (!linear.weight.defined()) continue;  // no gate in OPT
    QuantizedLinear q = quantize_linear(linear, scheme);
    // Activation parameters may already be set (static calibration): keep them.
    q.input_scale = block.linear(role).input_scale;
    q.input_zero_point = block.linear(role).input_zero_point;
    block.linear(role) = std::move(q);
  }
}

void set_static_activation_params(QuantizedBlock& block, const BlockStats& stats,
                                  const QuantScheme& scheme) {
  if (!scheme.activations || scheme.activations->dynamic) return;
  const auto& a = *scheme.activations;
  for (LinearRole role : model::kAllLinearRoles) {
    if (!block.weights.linear(role).weight.defined()) continue;
    const ChannelStats& s = stats.at(input_site(role));
    if (s.empty())
      fail("no calibration statistics at {} for static activation scales",
           model::site_name(input_site(role)));
    const float lo = s.tensor_min(), hi = s.tensor_max();
    float scale = 0.0f;
    std::int32_t zp = 0;
    cpu::qparams_from_range(&lo, &hi, 1, a.format, &scale, &zp);
    QuantizedLinear& q = block.linear(role);
    q.input_scale =
        Tensor::from_f32(std::vector<float>{round_scale(scale, scheme.scale_dtype)}, {1});
    if (!a.format.symmetric) {
      q.input_zero_point = Tensor::zeros(DType::i32, {1});
      q.input_zero_point.mutable_data<std::int32_t>()[0] = zp;
    }
  }
}

std::optional<LinearRole> input_role(Site site) {
  switch (site) {
    case Site::qkv_in:
      return LinearRole::q;
    case Site::o_in:
      return LinearRole::o;
    case Site::mlp_in:
      return LinearRole::up;
    case Site::down_in:
      return LinearRole::down;
    case Site::attn_q:
    case Site::attn_k:
    case Site::attn_v:
      return std::nullopt;
  }
  return std::nullopt;
}

void QuantizeActivations::at(Site site, float* x, std::int64_t rows, std::int64_t cols) {
  if (!scheme_.activations) return;
  const auto& a = *scheme_.activations;
  const cpu::QuantLayout per_token{.granularity = cpu::Granularity::row};
  const cpu::QuantLayout per_tensor{.granularity = cpu::Granularity::tensor};
  const std::optional<LinearRole> role = input_role(site);
  if (!role) {
    // Attention matmul inputs: per-token dynamic (no static scales are calibrated for them).
    if (scheme_.attention_inputs) cpu::fake_quantize_dynamic(x, rows, cols, per_token, a.format);
    return;
  }
  if (a.dynamic) {
    cpu::fake_quantize_dynamic(x, rows, cols, a.per_token ? per_token : per_tensor, a.format);
    return;
  }
  const QuantizedLinear& q = block_.linear(*role);
  SQ_CHECK(q.input_scale.defined(), "static activation scale missing at {}",
           model::site_name(site));
  const std::int32_t zp =
      q.input_zero_point.defined() ? q.input_zero_point.data<std::int32_t>()[0] : 0;
  cpu::fake_quantize(x, rows, cols, per_tensor, a.format, q.input_scale.data<float>(), &zp);
}

}  // namespace sq::stages
