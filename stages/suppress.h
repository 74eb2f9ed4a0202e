// Outlier Suppression+: a per-channel shift z_j = (max_j + min_j) / 2 that centres asymmetric
// channels (only where a norm bias can absorb it), then a per-channel scale chosen by a grid
// search over a threshold t, squeezing only the channels outside [-t, t], with the loss measured
// on the consumers' output (the whole attention output for q, k, v) with quantized inputs and
// weights.
#pragma once

#include <optional>

#include "io/model_config.h"
#include "model/forward.h"
#include "model/weights.h"
#include "stages/calibrate.h"
#include "stages/channel_transform.h"
#include "stages/scheme.h"

namespace sq::stages {

struct OsPlusOptions {
  int grid = 100;               // thresholds tried between the largest range and the floor
  std::optional<double> floor;  // lowest threshold; default io::default_os_plus_floor
};

// The search data: the first calibration micro-batch's inputs of q/k/v and of the MLP.
struct OsPlusInputs {
  Tensor qkv_in, mlp_in;  // f32 [tokens, hidden]
  model::Batch batch;     // their sequence layout (attention is per sequence)
  bool captured() const { return qkv_in.defined() && mlp_in.defined(); }
};

// Copies the activations at qkv_in and mlp_in of the first forward it sees.
class CaptureOsPlusInputs : public model::ActivationHook {
 public:
  CaptureOsPlusInputs(OsPlusInputs& out, const model::Batch& batch,
                      model::ActivationHook* next = nullptr)
      : out_(out), batch_(batch), next_(next) {}
  void at(model::Site site, float* x, std::int64_t rows, std::int64_t cols) override;

 private:
  OsPlusInputs& out_;
  model::Batch batch_;
  model::ActivationHook* next_;
};

// The chosen threshold of one site, with the loss it gives and the loss without scaling.
struct OsPlusSearch {
  double threshold = 0, loss = 0, loss_unscaled = 0;
};

struct OsPlusReport {
  OsPlusSearch qkv, mlp;
  bool shifted = false;
  std::vector<AppliedTransform> transforms;  // folded into the block, in order
};

// Transforms norm->q,k,v and norm->gate,up (fc1) of `weights` and updates `stats` accordingly.
OsPlusReport os_plus_block(const io::ModelConfig& config, model::BlockWeights& weights,
                           BlockStats& stats, const OsPlusInputs& inputs, const QuantScheme& scheme,
                           const OsPlusOptions& options);

}  // namespace sq::stages
