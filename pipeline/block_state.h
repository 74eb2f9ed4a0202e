// The state of one decoder block between the recipe's stages: what each finished stage produced
// (statistics, the OS+ search inputs, the transforms folded into the weights, the quantized
// weights and scales), and its round trip through the block's HDF5 checkpoint file. A resume
// rebuilds the state from the file plus the original weights: transforms are re-applied in order
// and quantized weights dequantized, which reproduces the first run's FP32 weights bit for bit.
#pragma once

#include <string>
#include <vector>

#include "io/checkpoint_store.h"
#include "io/model_config.h"
#include "stages/calibrate.h"
#include "stages/channel_transform.h"
#include "stages/quantized_block.h"
#include "stages/scheme.h"
#include "stages/suppress.h"

namespace sq::pipeline {

struct BlockState {
  int stages_done = 0;  // recipe stages finished, in recipe order
  stages::BlockStats stats;
  stages::OsPlusInputs os_inputs;  // kept while a later os_plus stage needs them
  std::vector<stages::AppliedTransform> transforms;
  stages::QuantizedBlock block;  // weights: transformed FP32; linears: set by quantize_weights
  bool quantized() const;        // true once any linear has integer weights
};

// A writer holding (by reference) every tensor of `state`; commit() it to the block's file.
io::CheckpointWriter block_checkpoint(const io::CheckpointHeader& header, const BlockState& state);

// Rebuilds the state from a verified checkpoint and the block's original FP32 weights `fp`
// (taken over: transforms allocate new tensors, so views of a mapped file stay untouched).
// Throws sq::Error naming the file and tensor when something in it does not fit the model.
BlockState read_block_state(const io::CheckpointReader& file, const io::ModelConfig& config,
                            model::BlockWeights fp, const stages::QuantScheme& scheme);

}  // namespace sq::pipeline
