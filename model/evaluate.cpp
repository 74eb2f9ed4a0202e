#include "model/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/error.h"
#include "core/log.h"
#include "kernels/cpu/ops.h"

namespace sq::model {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void check_lengths(const io::ModelConfig& c, std::int64_t seq_len) {
  if (seq_len < 2) fail("evaluation needs sequences of at least 2 tokens (got {})", seq_len);
  if (seq_len > c.max_position_embeddings)
    fail("sequence length {} exceeds the model's max_position_embeddings {}", seq_len,
         c.max_position_embeddings);
}

// One block of a source over the whole hidden state, with its hook.
void run_block(const BlockSource& source, int layer, const Batch& batch, Tensor& hidden,
               const EvalOptions& options) {
  const auto t0 = Clock::now();
  const BlockWeights w = source.load_block(layer);  // freed when this returns
  const auto hook = source.hook(layer);
  const auto inv_freq = rope_inv_freq(source.config());
  block_forward(source.config(), w, batch, hidden,
                {.inv_freq = inv_freq, .rope = options.rope, .hook = hook.get()});
  const double dt = since(t0);
  log::debug("block {}/{}: {:.3f} s, {:.0f} tokens/s", layer + 1, source.num_layers(), dt,
             double(batch.tokens()) / dt);
}

// Next-token NLL of every position but the last, per sequence, from the final hidden states.
struct HeadOutput {
  std::vector<float> nll;
  Tensor logits;
};
HeadOutput run_head(const BlockSource& source, const Tensor& hidden,
                    std::span<const std::uint32_t> tokens, const Batch& batch, bool keep_logits,
                    const std::function<void(std::int64_t, const Tensor&)>& per_sequence = {}) {
  const auto& c = source.config();
  const std::int64_t H = c.hidden_size, V = c.vocab_size, L = batch.seq_len;
  HeadOutput out;
  out.nll.resize(static_cast<std::size_t>(batch.n_seq * (L - 1)));
  if (keep_logits) out.logits = Tensor::zeros(DType::f32, {batch.n_seq, L, V});
  const HeadWeights head = source.load_head();
  for (std::int64_t s = 0; s < batch.n_seq;
       ++s) {  // one sequence of logits at a time: V can be 250k
    const Tensor logits = head_logits(c, head, hidden.data<float>() + s * L * H, L);
    cpu::cross_entropy(logits.data<float>(), L - 1, V, tokens.data() + s * L + 1,
                       out.nll.data() + s * (L - 1));
    if (keep_logits)
      std::memcpy(out.logits.mutable_data<float>() + s * L * V, logits.data<float>(),
                  logits.nbytes());
    if (per_sequence) per_sequence(s, logits);
  }
  return out;
}

void finish(EvalResult& r, HeadOutput&& head, const Batch& batch, Clock::time_point start) {
  r.n_seq = batch.n_seq;
  r.seq_len = batch.seq_len;
  r.nll = std::move(head.nll);
  r.logits = std::move(head.logits);
  double sum = 0.0;
  for (float v : r.nll) sum += v;
  r.mean_nll = sum / double(r.nll.size());
  r.perplexity = std::exp(r.mean_nll);
  r.seconds = since(start);
  r.tokens_per_second = double(batch.tokens()) / r.seconds;
}

// Log-softmax of one row, in double.
void log_softmax(const float* logits, std::int64_t V, std::vector<double>& out) {
  double mx = logits[0];
  for (std::int64_t j = 1; j < V; ++j) mx = std::max(mx, double(logits[j]));
  double sum = 0.0;
  for (std::int64_t j = 0; j < V; ++j) sum += std::exp(double(logits[j]) - mx);
  const double lse = mx + std::log(sum);
  out.resize(static_cast<std::size_t>(V));
  for (std::int64_t j = 0; j < V; ++j) out[j] = double(logits[j]) - lse;
}

}  // namespace

EvalResult evaluate(const BlockSource& source, std::span<const std::uint32_t> tokens,
                    std::int64_t n_seq, std::int64_t seq_len, const EvalOptions& options) {
  const auto& c = source.config();
  check_lengths(c, seq_len);
  const auto start = Clock::now();
  const Batch batch{.n_seq = n_seq, .seq_len = seq_len};
  Tensor hidden = embed(c, source.load_embedding(), tokens, batch);
  for (int layer = 0; layer < source.num_layers(); ++layer)
    run_block(source, layer, batch, hidden, options);
  EvalResult r;
  finish(r, run_head(source, hidden, tokens, batch, options.keep_logits), batch, start);
  return r;
}

EvalResult evaluate(const Model& model, std::span<const std::uint32_t> tokens, std::int64_t n_seq,
                    std::int64_t seq_len, const EvalOptions& options) {
  return evaluate(CheckpointSource(model), tokens, n_seq, seq_len, options);
}

Comparison compare(const BlockSource& test, const BlockSource& ref,
                   std::span<const std::uint32_t> tokens, std::int64_t n_seq, std::int64_t seq_len,
                   const EvalOptions& options) {
  const auto& c = test.config();
  const auto& rc = ref.config();
  if (c.vocab_size != rc.vocab_size || c.hidden_size != rc.hidden_size ||
      c.num_layers != rc.num_layers)
    fail(
        "cannot compare models of different shapes (vocab {} vs {}, hidden {} vs {}, layers {} "
        "vs {})",
        c.vocab_size, rc.vocab_size, c.hidden_size, rc.hidden_size, c.num_layers, rc.num_layers);
  check_lengths(c, seq_len);
  const Batch batch{.n_seq = n_seq, .seq_len = seq_len};
  Comparison out;
  const auto start = Clock::now();
  Tensor h_test = embed(c, test.load_embedding(), tokens, batch);
  Tensor h_ref = embed(rc, ref.load_embedding(), tokens, batch);
  for (int layer = 0; layer < test.num_layers(); ++layer) {
    run_block(test, layer, batch, h_test, options);
    run_block(ref, layer, batch, h_ref, options);
    double diff = 0.0, norm = 0.0;
    const float *a = h_test.data<float>(), *b = h_ref.data<float>();
    for (std::int64_t i = 0; i < h_ref.numel(); ++i) {
      diff += double(a[i] - b[i]) * (a[i] - b[i]);
      norm += double(b[i]) * b[i];
    }
    out.block_error.push_back(std::sqrt(diff / std::max(norm, 1e-300)));
  }
  // Reference logits first (kept per sequence), then the test head compares against them.
  const std::int64_t V = c.vocab_size, L = seq_len;
  std::vector<Tensor> ref_logits(static_cast<std::size_t>(n_seq));
  auto ref_head = run_head(ref, h_ref, tokens, batch, options.keep_logits,
                           [&](std::int64_t s, const Tensor& l) { ref_logits[s] = l.clone(); });
  std::vector<double> kl;
  kl.reserve(static_cast<std::size_t>(n_seq * L));
  std::int64_t agree = 0;
  std::vector<double> lp, lq;
  auto test_head = run_head(
      test, h_test, tokens, batch, options.keep_logits, [&](std::int64_t s, const Tensor& l) {
        for (std::int64_t t = 0; t < L; ++t) {
          const float* p = ref_logits[s].data<float>() + t * V;
          const float* q = l.data<float>() + t * V;
          log_softmax(p, V, lp);
          log_softmax(q, V, lq);
          double k = 0.0;
          for (std::int64_t j = 0; j < V; ++j) k += std::exp(lp[j]) * (lp[j] - lq[j]);
          kl.push_back(std::max(k, 0.0));  // rounding can make a zero KL slightly negative
          agree += std::max_element(p, p + V) - p == std::max_element(q, q + V) - q;
        }
        ref_logits[s] = Tensor();
      });
  finish(out.reference, std::move(ref_head), batch, start);
  finish(out.test, std::move(test_head), batch, start);
  double sum = 0.0;
  for (double k : kl) sum += k;
  out.kl_mean = sum / double(kl.size());
  std::vector<double> sorted = kl;
  const std::size_t rank = static_cast<std::size_t>(std::ceil(0.99 * double(sorted.size()))) - 1;
  std::nth_element(sorted.begin(), sorted.begin() + rank, sorted.end());
  out.kl_p99 = sorted[rank];
  out.top1_agreement = double(agree) / double(kl.size());
  return out;
}

}  // namespace sq::model
