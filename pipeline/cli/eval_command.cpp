// `shardquant eval`: perplexity of a model (a Hugging Face checkpoint, or a compressed-tensors
// export ShardQuant wrote) on a token file; with --reference, its distance from the FP model.
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/token_file.h"
#include "model/evaluate.h"
#include "pipeline/cli/commands.h"
#include "pipeline/runner.h"
#include "stages/export.h"
#include "stages/quantized_source.h"

namespace sq::cli {
namespace {

bool is_compressed_tensors_export(const std::string& dir) {
  const auto text = io::read_text_file(dir + "/config.json");
  return nlohmann::json::parse(text, nullptr, false).contains("quantization_config");
}

// How the activations of an export are quantized when ShardQuant runs it: per-token dynamic
// scales follow transformers' emulation (absmax / 127.5); static per-tensor ones are the file's.
stages::QuantScheme run_scheme(const stages::ExportScheme& e) {
  stages::QuantScheme s;
  s.scale_dtype = e.dtype;
  if (e.quantize_activations) {
    stages::ActivationQuant a;
    a.format.bits = e.activation_bits;
    a.format.symmetric = e.activation_symmetric;
    a.format.divisor = cpu::IntFormat::Divisor::half_range;
    a.per_token = e.activation_strategy == stages::ExportScheme::ActivationStrategy::token;
    a.dynamic = e.activation_dynamic;
    s.activations = a;
  }
  return s;
}

// A model directory as something evaluation can run.
struct LoadedModel {
  std::unique_ptr<model::Model> checkpoint;  // kept alive for CheckpointSource
  std::unique_ptr<model::BlockSource> source;
};

LoadedModel load_model(const std::string& dir) {
  LoadedModel m;
  if (is_compressed_tensors_export(dir)) {
    auto e = stages::load_compressed_tensors(dir);
    const auto scheme = run_scheme(e.scheme);
    m.source = std::make_unique<stages::QuantizedSource>(e.config, e.embedding, e.head,
                                                         std::move(e.blocks), scheme);
    log::info("eval: {} is a compressed-tensors export (W{}A{})", dir, e.scheme.weight_bits,
              e.scheme.quantize_activations ? std::to_string(e.scheme.activation_bits) : "16");
  } else {
    m.checkpoint = std::make_unique<model::Model>(model::Model::open(dir));
    m.source = std::make_unique<model::CheckpointSource>(*m.checkpoint);
  }
  return m;
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval",
      "Perplexity of a model on evaluation tokens; with --reference, KL divergence, "
      "top-1 agreement and per-block error against the FP model");
  struct Options {
    std::string model_dir, tokens, json, reference, dump_logits;
    std::int64_t seq_len = 0, max_seqs = 0;
    int threads = 0;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("MODEL_DIR", o->model_dir,
                  "Model directory (config.json + safetensors), or a compressed-tensors export")
      ->required();
  cmd->add_option("--tokens", o->tokens, "Token file: .u16, .u32 (raw) or .npy")->required();
  cmd->add_option("--reference", o->reference, "FP model directory to compare with");
  cmd->add_option("--seq-len", o->seq_len,
                  "Tokens per sequence (default: the .npy's second dim, else min(2048, "
                  "max_position_embeddings))");
  cmd->add_option("--max-seqs", o->max_seqs, "Evaluate at most this many sequences (0: all)");
  cmd->add_option("--json", o->json, "Also write the metrics to this JSON file");
  cmd->add_option("--dump-logits", o->dump_logits,
                  "Write the model's logits as a float32 .npy [sequences, seq_len, vocab]");
  cmd->add_option("--threads", o->threads, "BLAS threads (0: library default)");
  cmd->callback([o] {
    set_threads(o->threads);
    const LoadedModel m = load_model(o->model_dir);
    const auto& c = m.source->config();
    const auto data = pipeline::load_token_set(
        o->tokens, o->seq_len > 0 ? std::optional(o->seq_len) : std::nullopt,
        o->max_seqs > 0 ? std::optional(o->max_seqs) : std::nullopt, c);
    const std::int64_t n_seq = data.n_seq, seq_len = data.seq_len;
    log::info("eval: {} ({} layers, hidden {}) on {} x {} tokens from {}", o->model_dir,
              c.num_layers, c.hidden_size, n_seq, seq_len, o->tokens);
    const std::span<const std::uint32_t> tokens(data.ids);
    const model::EvalOptions options{.keep_logits = !o->dump_logits.empty()};

    if (!o->reference.empty()) {
      const LoadedModel ref = load_model(o->reference);
      const auto cmp = model::compare(*m.source, *ref.source, tokens, n_seq, seq_len, options);
      pipeline::report_comparison(cmp, "model", "reference", o->json);
      if (!o->dump_logits.empty()) io::write_npy_f32(o->dump_logits, cmp.test.logits);
      return;
    }
    const auto r = model::evaluate(*m.source, tokens, n_seq, seq_len, options);
    fmt::print("| metric            | value        |\n|-------------------|--------------|\n");
    fmt::print("| perplexity        | {:12.4f} |\n", r.perplexity);
    fmt::print("| mean NLL (nats)   | {:12.6f} |\n", r.mean_nll);
    fmt::print("| vocabulary        | {:12d} |\n", c.vocab_size);
    fmt::print("| sequences x len   | {:>12} |\n", fmt::format("{} x {}", n_seq, seq_len));
    fmt::print("| seconds           | {:12.3f} |\n", r.seconds);
    fmt::print("| tokens/s          | {:12.1f} |\n", r.tokens_per_second);
    std::fflush(stdout);
    if (!o->dump_logits.empty()) io::write_npy_f32(o->dump_logits, r.logits);
    if (!o->json.empty()) {
      nlohmann::json j = {{"model", o->model_dir},
                          {"tokens", o->tokens},
                          {"n_seq", n_seq},
                          {"seq_len", seq_len},
                          {"perplexity", r.perplexity},
                          {"mean_nll", r.mean_nll},
                          {"vocab_size", c.vocab_size},
                          {"seconds", r.seconds},
                          {"tokens_per_second", r.tokens_per_second}};
      io::write_file_atomic(o->json, j.dump(2) + "\n");
      log::info("eval: metrics written to {}", o->json);
    }
  });
}

}  // namespace sq::cli
