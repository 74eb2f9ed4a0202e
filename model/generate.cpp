#include "model/generate.h"

#include <cmath>

#include "core/error.h"
#include "core/random.h"
#include "model/forward.h"

namespace sq::model {

std::vector<std::uint32_t> sample_sequences(const Model& model, const SampleOptions& o) {
  const auto& c = model.config();
  if (o.seq_len > c.max_position_embeddings)
    fail("cannot sample {} tokens: max_position_embeddings is {}", o.seq_len,
         c.max_position_embeddings);
  if (!(o.temperature > 0.0)) fail("sampling temperature must be > 0 (got {})", o.temperature);
  // Generation is token-outer, so every block stays loaded: meant for small models.
  std::vector<BlockWeights> blocks;
  for (int l = 0; l < model.num_layers(); ++l) blocks.push_back(model.load_block(l));
  const EmbeddingWeights emb = model.load_embedding();
  const HeadWeights head = model.load_head();
  const auto inv_freq = rope_inv_freq(c);
  KVCache cache(c, o.n_seq, o.seq_len);

  Rng rng(o.seed);
  std::vector<std::uint32_t> out(static_cast<std::size_t>(o.n_seq * o.seq_len));
  std::vector<std::uint32_t> current(static_cast<std::size_t>(o.n_seq));
  for (auto& t : current) t = static_cast<std::uint32_t>(rng.below(c.vocab_size));
  std::vector<double> p(static_cast<std::size_t>(c.vocab_size));
  for (std::int64_t t = 0; t < o.seq_len; ++t) {
    for (std::int64_t s = 0; s < o.n_seq; ++s) out[s * o.seq_len + t] = current[s];
    if (t + 1 == o.seq_len) break;
    const Batch batch{.n_seq = o.n_seq, .seq_len = 1, .past = t};
    Tensor hidden = embed(c, emb, current, batch);
    for (int l = 0; l < model.num_layers(); ++l)
      block_forward(c, blocks[l], batch, hidden,
                    {.inv_freq = inv_freq, .cache = &cache, .layer = l});
    const Tensor logits = head_logits(c, head, hidden.data<float>(), o.n_seq);
    for (std::int64_t s = 0; s < o.n_seq; ++s) {
      const float* l = logits.data<float>() + s * c.vocab_size;
      double mx = l[0];
      for (std::int64_t j = 1; j < c.vocab_size; ++j) mx = std::max(mx, double(l[j]));
      double sum = 0.0;
      for (std::int64_t j = 0; j < c.vocab_size; ++j)
        sum += (p[j] = std::exp((double(l[j]) - mx) / o.temperature));
      double u = rng.uniform() * sum;
      std::int64_t pick = c.vocab_size - 1;
      for (std::int64_t j = 0; j < c.vocab_size; ++j) {
        u -= p[j];
        if (u < 0.0) {
          pick = j;
          break;
        }
      }
      current[s] = static_cast<std::uint32_t>(pick);
    }
  }
  return out;
}

}  // namespace sq::model
