// SmoothQuant: migrate activation outliers into the weights with a per-channel scale
// s_j = max|X_j|^alpha / max|W_j|^(1-alpha), folded into the norm and its consumer linears.
#pragma once

#include <vector>

#include "io/model_config.h"
#include "model/weights.h"
#include "stages/calibrate.h"
#include "stages/channel_transform.h"

namespace sq::stages {

// s_j = clamp(act_absmax_j^alpha / w_j^(1-alpha), min 1e-5), with w_j the largest |W[:, j]| over
// every consumer's rows, clamped to >= 1e-5 (the reference implementation's formula).
std::vector<float> smoothquant_scales(const std::vector<float>& act_absmax,
                                      const std::vector<const model::Linear*>& consumers,
                                      double alpha);

// Smooths norm->q,k,v and norm->gate,up (fc1); o and down are not smoothed. Updates `stats` at
// the smoothed sites to what the smoothed block will see. Returns the transforms it folded.
std::vector<AppliedTransform> smoothquant_block(const io::ModelConfig& config,
                                                model::BlockWeights& weights, BlockStats& stats,
                                                double alpha);

// After x' = (x - shift) / scale at a site, the statistics are known without recalibrating.
void transform_stats(ChannelStats& stats, const std::vector<float>& shift,
                     const std::vector<float>& scale);

}  // namespace sq::stages
