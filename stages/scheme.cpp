#include "stages/scheme.h"

#include "io/recipe.h"

namespace sq::stages {

QuantScheme scheme_from_recipe(const io::Scheme& r, DType scale_dtype) {
  QuantScheme s;
  s.scale_dtype = scale_dtype;
  s.weights.format.bits = r.weights.bits;
  s.weights.format.symmetric = r.weights.symmetric;
  // Weights: SmoothQuant's absmax / (2^(b-1) - 1); the exported scale is what dequantizes them,
  // so the rule only decides how the range maps onto the integer grid.
  s.weights.format.divisor = cpu::IntFormat::Divisor::max_int;
  switch (r.weights.granularity) {
    case io::WeightGranularity::channel:
      s.weights.layout = {cpu::Granularity::row, 0};
      break;
    case io::WeightGranularity::tensor:
      s.weights.layout = {cpu::Granularity::tensor, 0};
      break;
    case io::WeightGranularity::group:
      s.weights.layout = {cpu::Granularity::group, r.weights.group_size};
      break;
  }
  s.weights.mse_clip = r.weights.clip == io::WeightClip::mse;
  if (r.activations) {
    ActivationQuant a;
    a.format.bits = r.activations->bits;
    a.format.symmetric = r.activations->symmetric;
    a.format.divisor = r.activations->scale_rule == io::ScaleRule::half_range
                           ? cpu::IntFormat::Divisor::half_range
                           : cpu::IntFormat::Divisor::max_int;
    a.per_token = r.activations->granularity == io::ActivationGranularity::token;
    a.dynamic = r.activations->dynamic;
    s.activations = a;
  }
  s.attention_inputs = r.attention_inputs;
  return s;
}

}  // namespace sq::stages
