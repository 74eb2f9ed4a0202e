// Perplexity of a model on token sequences, and the comparison of a (quantized) model with a
// reference, computed block-outer: each block's weights are mapped and converted once and
// applied to every sequence, so peak memory is one block plus the hidden states of the
// evaluation set, whatever the model size.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/tensor.h"
#include "model/forward.h"
#include "model/weights.h"

namespace sq::model {

// Where evaluation gets a model's pieces from: a checkpoint (Model), or quantized blocks in
// memory or read back from an export. A source may attach an activation hook per block (the
// quantized forward's activation quantization).
class BlockSource {
 public:
  virtual ~BlockSource() = default;
  virtual const io::ModelConfig& config() const = 0;
  virtual EmbeddingWeights load_embedding() const = 0;
  virtual BlockWeights load_block(int layer) const = 0;
  virtual HeadWeights load_head() const = 0;
  virtual std::unique_ptr<ActivationHook> hook(int layer) const { return nullptr; }
  int num_layers() const { return static_cast<int>(config().num_layers); }
};

class CheckpointSource : public BlockSource {
 public:
  explicit CheckpointSource(const Model& model) : model_(model) {}
  const io::ModelConfig& config() const override { return model_.config(); }
  EmbeddingWeights load_embedding() const override { return model_.load_embedding(); }
  BlockWeights load_block(int layer) const override { return model_.load_block(layer); }
  HeadWeights load_head() const override { return model_.load_head(); }

 private:
  const Model& model_;
};

struct EvalOptions {
  bool keep_logits = false;  // return all logits (tests and comparisons; V x tokens floats)
  RopeKernel rope = &cpu::rope_rotate_half;
};

struct EvalResult {
  std::int64_t n_seq = 0, seq_len = 0;
  std::vector<float> nll;  // [n_seq, seq_len - 1]: -log p(token t+1 | tokens <= t)
  double mean_nll = 0.0;   // summed in sequence order in double
  double perplexity = 0.0;
  Tensor logits;  // f32 [n_seq, seq_len, vocab] when keep_logits
  double seconds = 0.0;
  double tokens_per_second = 0.0;
};

// tokens: n_seq x seq_len ids, sequence-major.
EvalResult evaluate(const BlockSource& source, std::span<const std::uint32_t> tokens,
                    std::int64_t n_seq, std::int64_t seq_len, const EvalOptions& options = {});
EvalResult evaluate(const Model& model, std::span<const std::uint32_t> tokens, std::int64_t n_seq,
                    std::int64_t seq_len, const EvalOptions& options = {});

// How far a model's outputs are from a reference's on the same tokens.
struct Comparison {
  EvalResult test, reference;       // perplexities (logits kept when asked)
  double kl_mean = 0.0;             // KL(reference || test) per token, nats, mean over tokens
  double kl_p99 = 0.0;              // its 99th percentile (nearest rank)
  double top1_agreement = 0.0;      // fraction of tokens whose argmax agrees
  std::vector<double> block_error;  // per block: ||h_test - h_ref||_2 / ||h_ref||_2 after it
};

Comparison compare(const BlockSource& test, const BlockSource& reference,
                   std::span<const std::uint32_t> tokens, std::int64_t n_seq, std::int64_t seq_len,
                   const EvalOptions& options = {});

}  // namespace sq::model
