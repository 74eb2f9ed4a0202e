// A quantized model as evaluation sees it: embedding and head as they were, every block's
// transformed and dequantized weights, and activation quantization hooked in per block.
#pragma once

#include <vector>

#include "model/evaluate.h"
#include "stages/quantized_block.h"
#include "stages/scheme.h"

namespace sq::stages {

class QuantizedSource : public model::BlockSource {
 public:
  QuantizedSource(io::ModelConfig config, model::EmbeddingWeights embedding,
                  model::HeadWeights head, std::vector<QuantizedBlock> blocks, QuantScheme scheme);
  const io::ModelConfig& config() const override { return config_; }
  model::EmbeddingWeights load_embedding() const override { return embedding_; }
  model::BlockWeights load_block(int layer) const override;
  model::HeadWeights load_head() const override { return head_; }
  std::unique_ptr<model::ActivationHook> hook(int layer) const override;
  const std::vector<QuantizedBlock>& blocks() const { return blocks_; }
  const QuantScheme& scheme() const { return scheme_; }

 private:
  io::ModelConfig config_;
  model::EmbeddingWeights embedding_;
  model::HeadWeights head_;
  std::vector<QuantizedBlock> blocks_;
  QuantScheme scheme_;
};

}  // namespace sq::stages
