// Perplexity of a model on token sequences, computed block-outer: each block's weights are
// mapped and converted once and applied to every sequence, so peak memory is one block plus the
// hidden states of the evaluation set, whatever the model size.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "model/forward.h"
#include "model/weights.h"

namespace sq::model {

struct EvalOptions {
  bool keep_logits = false;  // return all logits (tests and comparisons; V x tokens floats)
  RopeKernel rope = &cpu::rope_rotate_half;
};

struct EvalResult {
  std::int64_t n_seq = 0, seq_len = 0;
  std::vector<float> nll;  // [n_seq, seq_len - 1]: -log p(token t+1 | tokens <= t)
  double mean_nll = 0.0;   // summed in sequence order in double
  double perplexity = 0.0;
  Tensor logits;           // f32 [n_seq, seq_len, vocab] when keep_logits
  double seconds = 0.0;
  double tokens_per_second = 0.0;
};

// tokens: n_seq x seq_len ids, sequence-major.
EvalResult evaluate(const Model& model, std::span<const std::uint32_t> tokens, std::int64_t n_seq,
                    std::int64_t seq_len, const EvalOptions& options = {});

}  // namespace sq::model
