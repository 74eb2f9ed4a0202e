#include "stages/quantized_source.h"

#include "core/error.h"
#include "stages/quantize.h"

namespace sq::stages {

QuantizedSource::QuantizedSource(io::ModelConfig config, model::EmbeddingWeights embedding,
                                 model::HeadWeights head, std::vector<QuantizedBlock> blocks,
                                 QuantScheme scheme)
    : config_(std::move(config)),
      embedding_(std::move(embedding)),
      head_(std::move(head)),
      blocks_(std::move(blocks)),
      scheme_(std::move(scheme)) {
  if (static_cast<std::int64_t>(blocks_.size()) != config_.num_layers)
    fail("a quantized model with {} blocks for a config of {} layers", blocks_.size(),
         config_.num_layers);
}

model::BlockWeights QuantizedSource::load_block(int layer) const {
  return blocks_.at(static_cast<std::size_t>(layer)).weights;
}

std::unique_ptr<model::ActivationHook> QuantizedSource::hook(int layer) const {
  return std::make_unique<QuantizeActivations>(blocks_.at(static_cast<std::size_t>(layer)),
                                               scheme_);
}

}  // namespace sq::stages
