// `shardquant synth`: write a synthetic HF-format model with planted outliers and token sets.
#include <fmt/format.h>

#include <map>

#include "core/log.h"
#include "model/synth.h"
#include "pipeline/cli/commands.h"

namespace sq::cli {

void add_synth_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "synth",
      "Write a synthetic Hugging Face model (config.json, sharded safetensors + index) "
      "with planted outliers, plus calib.npy/eval.npy sampled from it");
  auto spec = std::make_shared<model::SynthSpec>();
  auto out = std::make_shared<std::string>();
  auto arch = std::make_shared<std::string>("llama");
  auto dtype = std::make_shared<std::string>("bf16");
  auto shard_mb = std::make_shared<double>(0.0);
  auto threads = std::make_shared<int>(0);
  cmd->add_option("--arch", *arch, "Architecture")
      ->check(CLI::IsMember({"llama", "opt"}))
      ->capture_default_str();
  cmd->add_option("--out,-o", *out, "Output directory (must not exist or be empty)")->required();
  cmd->add_option("--hidden", spec->hidden, "Hidden size")->capture_default_str();
  cmd->add_option("--intermediate", spec->intermediate,
                  "MLP width (0: LLaMA ~8/3 hidden, OPT 4 x hidden)")
      ->capture_default_str();
  cmd->add_option("--layers", spec->layers, "Number of decoder blocks")->capture_default_str();
  cmd->add_option("--heads", spec->heads, "Attention heads")->capture_default_str();
  cmd->add_option("--kv-heads", spec->kv_heads, "KV heads (0: LLaMA heads/2, OPT heads)")
      ->capture_default_str();
  cmd->add_option("--vocab", spec->vocab, "Vocabulary size")->capture_default_str();
  cmd->add_option("--max-positions", spec->max_positions, "max_position_embeddings")
      ->capture_default_str();
  cmd->add_option("--dtype", *dtype, "Stored weight dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--seed", spec->seed, "Seed: same seed, same bytes")->capture_default_str();
  cmd->add_option("--outlier-fraction", spec->outlier_fraction,
                  "Fraction of hidden channels with outlier norm weights")
      ->capture_default_str();
  cmd->add_option("--min-outliers", spec->min_outliers, "At least this many outlier channels")
      ->capture_default_str();
  cmd->add_option("--outlier-scale", spec->outlier_scale, "Norm weight factor of outliers")
      ->capture_default_str();
  cmd->add_option("--opt-shift-sigmas", spec->opt_shift_sigmas,
                  "OPT: shift of outlier channels, in their standard deviations")
      ->capture_default_str();
  cmd->add_option("--calib-seqs", spec->calib_seqs, "Calibration sequences (0: none)")
      ->capture_default_str();
  cmd->add_option("--eval-seqs", spec->eval_seqs, "Evaluation sequences (0: none)")
      ->capture_default_str();
  cmd->add_option("--seq-len", spec->seq_len, "Tokens per sampled sequence")->capture_default_str();
  cmd->add_option("--shard-mb", *shard_mb, "Max shard size in MB (0: about a quarter of the model)")
      ->capture_default_str();
  cmd->add_option("--threads", *threads, "BLAS threads (0: library default)");
  cmd->callback([=] {
    spec->arch = *arch == "opt" ? io::Arch::opt : io::Arch::llama;
    spec->dtype = *dtype == "f32" ? DType::f32 : *dtype == "f16" ? DType::f16 : DType::bf16;
    spec->max_shard_bytes = static_cast<std::uint64_t>(*shard_mb * 1e6);
    set_threads(*threads);
    log::info("synth: {} hidden={} layers={} heads={} vocab={} dtype={} seed={} -> {}", *arch,
              spec->hidden, spec->layers, spec->heads, spec->vocab, *dtype, spec->seed, *out);
    const auto r = model::write_synth_model(*spec, *out);
    log::info("synth: intermediate={} kv_heads={} outlier channels {} (x{}), logit scale {:.4f}",
              r.config.intermediate_size, r.config.num_kv_heads, fmt::join(r.outlier_channels, ","),
              spec->outlier_scale, r.logit_scale);
    if (!r.calib_tokens.empty()) log::info("synth: calibration tokens {}", r.calib_tokens);
    if (!r.eval_tokens.empty()) log::info("synth: evaluation tokens {}", r.eval_tokens);
  });
}

}  // namespace sq::cli
