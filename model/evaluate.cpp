#include "model/evaluate.h"

#include <chrono>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/log.h"
#include "kernels/cpu/ops.h"
#include "model/forward.h"

namespace sq::model {

EvalResult evaluate(const Model& model, std::span<const std::uint32_t> tokens, std::int64_t n_seq,
                    std::int64_t seq_len, const EvalOptions& options) {
  const auto& c = model.config();
  if (seq_len < 2) fail("evaluation needs sequences of at least 2 tokens (got {})", seq_len);
  if (seq_len > c.max_position_embeddings)
    fail("sequence length {} exceeds the model's max_position_embeddings {}", seq_len,
         c.max_position_embeddings);
  const auto start = std::chrono::steady_clock::now();
  const Batch batch{.n_seq = n_seq, .seq_len = seq_len};

  Tensor hidden = embed(c, model.load_embedding(), tokens, batch);
  const auto inv_freq = rope_inv_freq(c);
  for (int layer = 0; layer < model.num_layers(); ++layer) {
    const auto t0 = std::chrono::steady_clock::now();
    const BlockWeights w = model.load_block(layer);  // freed at the end of this iteration
    block_forward(c, w, batch, hidden, {.inv_freq = inv_freq, .rope = options.rope});
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::debug("eval block {}/{}: {:.3f} s, {:.0f} tokens/s", layer + 1, model.num_layers(), dt,
               double(batch.tokens()) / dt);
  }

  EvalResult r;
  r.n_seq = n_seq;
  r.seq_len = seq_len;
  r.nll.resize(static_cast<std::size_t>(n_seq * (seq_len - 1)));
  if (options.keep_logits) r.logits = Tensor::zeros(DType::f32, {n_seq, seq_len, c.vocab_size});
  const HeadWeights head = model.load_head();
  const std::int64_t H = c.hidden_size, V = c.vocab_size;
  for (std::int64_t s = 0; s < n_seq; ++s) {  // one sequence of logits at a time: V can be 250k
    const Tensor logits = head_logits(c, head, hidden.data<float>() + s * seq_len * H, seq_len);
    cpu::cross_entropy(logits.data<float>(), seq_len - 1, V, tokens.data() + s * seq_len + 1,
                       r.nll.data() + s * (seq_len - 1));
    if (options.keep_logits)
      std::memcpy(r.logits.mutable_data<float>() + s * seq_len * V, logits.data<float>(),
                  logits.nbytes());
  }
  double sum = 0.0;
  for (float v : r.nll) sum += v;
  r.mean_nll = sum / double(r.nll.size());
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.tokens_per_second = double(batch.tokens()) / r.seconds;
  return r;
}

}  // namespace sq::model
