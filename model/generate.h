// Sampling token sequences from a model (KV-cached, token by token, all sequences together).
// synth uses it to make calibration and evaluation sets that follow the model's own
// distribution, so that perplexity on them means something.
#pragma once

#include <cstdint>
#include <vector>

#include "model/weights.h"

namespace sq::model {

struct SampleOptions {
  std::int64_t n_seq = 1;
  std::int64_t seq_len = 128;
  std::uint64_t seed = 0;
  double temperature = 1.0;
};

// n_seq x seq_len ids, sequence-major. The first token of each sequence is uniform over the
// vocabulary; every later one is drawn from softmax(logits / temperature).
std::vector<std::uint32_t> sample_sequences(const Model& model, const SampleOptions& options);

}  // namespace sq::model
