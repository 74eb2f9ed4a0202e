// What quantization produces for one decoder block: the (transformed) FP weights it started from
// and, per linear, the integer weights with their scales and the activation quantization of its
// input. Export writes it; the quantized forward runs it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "core/tensor.h"
#include "model/weights.h"

namespace sq::stages {

// Integer quantization of one linear layer, in compressed-tensors terms.
struct QuantizedLinear {
  Tensor weight_q;           // i8 [out, in]: values of `weight_bits` bits, signed
  Tensor weight_scale;       // f32 [out] (channel), [1] (tensor) or [out, in / group] (group)
  Tensor weight_zero_point;  // i32, same shape as weight_scale; undefined when symmetric
  Tensor input_scale;        // f32 [1] for static per-tensor activations; undefined when dynamic
  Tensor input_zero_point;   // i32 [1] for static asymmetric activations; else undefined
  bool defined() const { return weight_q.defined(); }
};

struct QuantizedBlock {
  // The block's weights after every transform (smoothing, shifts), in FP32. Linear weights here
  // are the dequantized values once weights are quantized: the quantized forward runs these.
  model::BlockWeights weights;
  std::array<QuantizedLinear, model::kAllLinearRoles.size()> linears;  // by LinearRole
  QuantizedLinear& linear(model::LinearRole role) { return linears[static_cast<int>(role)]; }
  const QuantizedLinear& linear(model::LinearRole role) const {
    return linears[static_cast<int>(role)];
  }
};

}  // namespace sq::stages
