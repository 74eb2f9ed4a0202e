// `shardquant eval`: perplexity of a model on a token file.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/token_file.h"
#include "model/evaluate.h"
#include "pipeline/cli/commands.h"

namespace sq::cli {

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Perplexity of a model on evaluation tokens");
  struct Options {
    std::string model_dir, tokens, json;
    std::int64_t seq_len = 0, max_seqs = 0;
    int threads = 0;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("MODEL_DIR", o->model_dir, "Model directory (config.json + safetensors)")
      ->required();
  cmd->add_option("--tokens", o->tokens, "Token file: .u16, .u32 (raw) or .npy")->required();
  cmd->add_option("--seq-len", o->seq_len,
                  "Tokens per sequence (default: the .npy's second dim, else min(2048, "
                  "max_position_embeddings))");
  cmd->add_option("--max-seqs", o->max_seqs, "Evaluate at most this many sequences (0: all)");
  cmd->add_option("--json", o->json, "Also write the metrics to this JSON file");
  cmd->add_option("--threads", o->threads, "BLAS threads (0: library default)");
  cmd->callback([o] {
    set_threads(o->threads);
    const auto model = model::Model::open(o->model_dir);
    const auto& c = model.config();
    auto data = io::read_tokens(o->tokens);
    std::int64_t seq_len = o->seq_len > 0    ? o->seq_len
                           : data.seq_len > 0 ? data.seq_len
                                              : std::min<std::int64_t>(2048, c.max_position_embeddings);
    if (seq_len > c.max_position_embeddings)
      fail(ErrorContext{.file = o->tokens}, "sequence length {} exceeds the model's "
           "max_position_embeddings {}", seq_len, c.max_position_embeddings);
    std::int64_t n_seq = static_cast<std::int64_t>(data.tokens.size()) / seq_len;
    if (n_seq == 0)
      fail(ErrorContext{.file = o->tokens}, "{} tokens are fewer than one sequence of {}",
           data.tokens.size(), seq_len);
    if (o->max_seqs > 0) n_seq = std::min(n_seq, o->max_seqs);
    const auto dropped = data.tokens.size() - static_cast<std::size_t>(n_seq * seq_len);
    if (dropped > 0) log::info("eval: {} trailing tokens not used", dropped);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n_seq * seq_len); ++i)
      if (data.tokens[i] >= static_cast<std::uint64_t>(c.vocab_size))
        fail(ErrorContext{.file = o->tokens}, "token {} at index {} is outside the vocabulary "
             "({} ids)", data.tokens[i], i, c.vocab_size);
    log::info("eval: {} ({} layers, hidden {}) on {} x {} tokens from {}", o->model_dir,
              c.num_layers, c.hidden_size, n_seq, seq_len, o->tokens);
    const auto r = model::evaluate(
        model, std::span(data.tokens.data(), static_cast<std::size_t>(n_seq * seq_len)), n_seq,
        seq_len);
    fmt::print("| metric            | value        |\n|-------------------|--------------|\n");
    fmt::print("| perplexity        | {:12.4f} |\n", r.perplexity);
    fmt::print("| mean NLL (nats)   | {:12.6f} |\n", r.mean_nll);
    fmt::print("| vocabulary        | {:12d} |\n", c.vocab_size);
    fmt::print("| sequences x len   | {:>12} |\n", fmt::format("{} x {}", n_seq, seq_len));
    fmt::print("| seconds           | {:12.3f} |\n", r.seconds);
    fmt::print("| tokens/s          | {:12.1f} |\n", r.tokens_per_second);
    std::fflush(stdout);
    if (!o->json.empty()) {
      nlohmann::json j = {{"model", o->model_dir}, {"tokens", o->tokens},
                          {"n_seq", n_seq},        {"seq_len", seq_len},
                          {"perplexity", r.perplexity}, {"mean_nll", r.mean_nll},
                          {"vocab_size", c.vocab_size}, {"seconds", r.seconds},
                          {"tokens_per_second", r.tokens_per_second}};
      io::write_file_atomic(o->json, j.dump(2) + "\n");
      log::info("eval: metrics written to {}", o->json);
    }
  });
}

}  // namespace sq::cli
