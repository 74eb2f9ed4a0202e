// The quantization scheme as the stages use it: integer formats and layouts of the kernels,
// independent of how a recipe spells them.
#pragma once

#include <optional>

#include "core/dtype.h"
#include "kernels/cpu/quant.h"

namespace sq::stages {

struct WeightQuant {
  cpu::IntFormat format;
  cpu::QuantLayout layout;  // row = per output channel
  bool mse_clip = false;    // search a clipping range per slice instead of min-max
};

struct ActivationQuant {
  cpu::IntFormat format;
  bool per_token = true;  // else per tensor
  bool dynamic = true;    // per-token is always dynamic; per-tensor may be static (calibrated)
};

struct QuantScheme {
  WeightQuant weights;
  std::optional<ActivationQuant> activations;  // none: weight-only
  bool attention_inputs = false;               // also quantize q/k/v before the attention matmuls
  // Scales are rounded to this dtype before they are used, because that is how an exported
  // checkpoint stores them: what ShardQuant evaluates is exactly what a serving engine runs.
  DType scale_dtype = DType::f32;
};

// Rounds a positive scale to `dtype` (round to nearest even), keeping it nonzero.
float round_scale(float scale, DType dtype);

}  // namespace sq::stages

namespace sq::io {
struct Scheme;
}

namespace sq::stages {
// The recipe's scheme in kernel terms; scales will be stored as `scale_dtype`.
QuantScheme scheme_from_recipe(const io::Scheme& scheme, DType scale_dtype);
}  // namespace sq::stages
