#include "pipeline/evaluation_io.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/token_file.h"

namespace sq::pipeline {

using i64 = std::int64_t;

TokenSet load_token_set(const std::string& path, std::optional<i64> seq_len, std::optional<i64> cap,
                        const io::ModelConfig& c) {
  auto data = io::read_tokens(path);
  TokenSet t;
  t.seq_len = seq_len.value_or(data.seq_len > 0 ? data.seq_len
                                                : std::min<i64>(2048, c.max_position_embeddings));
  if (t.seq_len > c.max_position_embeddings)
    fail(ErrorContext{.file = path}, "sequence length {} exceeds max_position_embeddings {}",
         t.seq_len, c.max_position_embeddings);
  t.n_seq = static_cast<i64>(data.tokens.size()) / t.seq_len;
  if (cap) t.n_seq = std::min(t.n_seq, *cap);
  if (t.n_seq == 0)
    fail(ErrorContext{.file = path}, "{} tokens are fewer than one sequence of {}",
         data.tokens.size(), t.seq_len);
  const auto dropped = data.tokens.size() - static_cast<std::size_t>(t.n_seq * t.seq_len);
  if (dropped > 0) log::info("{}: {} trailing tokens not used", path, dropped);
  data.tokens.resize(static_cast<std::size_t>(t.n_seq * t.seq_len));
  for (std::size_t i = 0; i < data.tokens.size(); ++i)
    if (data.tokens[i] >= static_cast<std::uint64_t>(c.vocab_size))
      fail(ErrorContext{.file = path}, "token {} at index {} is outside the vocabulary ({} ids)",
           data.tokens[i], i, c.vocab_size);
  t.ids = std::move(data.tokens);
  return t;
}

void report_comparison(const model::Comparison& c, const std::string& test_name,
                       const std::string& reference_name, const std::string& json_path) {
  fmt::print(
      "| metric                    | value        |\n|---------------------------|"
      "--------------|\n");
  fmt::print("| perplexity ({:<12}) | {:12.4f} |\n", test_name, c.test.perplexity);
  fmt::print("| perplexity ({:<12}) | {:12.4f} |\n", reference_name, c.reference.perplexity);
  fmt::print("| KL mean (nats/token)      | {:12.6f} |\n", c.kl_mean);
  fmt::print("| KL p99 (nats/token)       | {:12.6f} |\n", c.kl_p99);
  fmt::print("| top-1 agreement           | {:12.4f} |\n", c.top1_agreement);
  for (std::size_t b = 0; b < c.block_error.size(); ++b)
    fmt::print("| block {:<4} rel. error     | {:12.6f} |\n", b, c.block_error[b]);
  std::fflush(stdout);
  if (json_path.empty()) return;
  nlohmann::json j = {{"perplexity", c.test.perplexity},
                      {"reference_perplexity", c.reference.perplexity},
                      {"kl_mean", c.kl_mean},
                      {"kl_p99", c.kl_p99},
                      {"top1_agreement", c.top1_agreement},
                      {"block_relative_error", c.block_error},
                      {"n_seq", c.test.n_seq},
                      {"seq_len", c.test.seq_len}};
  io::write_file_atomic(json_path, j.dump(2) + "\n");
  log::info("metrics written to {}", json_path);
}

}  // namespace sq::pipeline
