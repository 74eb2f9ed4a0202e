// Synthetic Hugging Face models for tests, demos and benchmarks: any dimensions, deterministic by
// seed, with outliers planted the way real LLMs have them, plus calibration and evaluation token
// sets sampled from the model itself.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/model_config.h"

namespace sq::model {

struct SynthSpec {
  io::Arch arch = io::Arch::llama;
  std::int64_t hidden = 128;
  std::int64_t intermediate = 0;  // 0: LLaMA ~8/3 hidden rounded up to 32; OPT 4 x hidden
  std::int64_t layers = 4;
  std::int64_t heads = 4;
  std::int64_t kv_heads = 0;  // 0: LLaMA heads / 2 (GQA) when even, else heads; OPT heads
  std::int64_t vocab = 512;
  std::int64_t max_positions = 512;
  DType dtype = DType::bf16;
  std::uint64_t seed = 0;

  // Outliers: a few hidden channels whose norm weights are `outlier_scale` times the rest, in
  // every block's norms, so the inputs of q/k/v and gate/up (fc1) carry huge activations there.
  double outlier_fraction = 0.01;
  std::int64_t min_outliers = 2;
  double outlier_scale = 50.0;
  // OPT: those channels are also shifted (LayerNorm bias) by this many of their own standard
  // deviations, with a random sign: asymmetric ranges, as in real OPT models.
  double opt_shift_sigmas = 5.0;

  // Token sets sampled from the model at temperature 1 (0 sequences: none written).
  std::int64_t calib_seqs = 32;
  std::int64_t eval_seqs = 16;
  std::int64_t seq_len = 128;
  // The final norm is scaled so that the model's perplexity on its own samples is about this
  // fraction of the vocabulary (far from 1 and far from uniform).
  double target_perplexity_fraction = 0.07;

  std::uint64_t max_shard_bytes = 0;  // 0: about a quarter of the model, within [1 MiB, 5 GB]
};

io::ModelConfig synth_config(const SynthSpec& spec);
// Hidden channels that carry planted outliers, sorted.
std::vector<std::int64_t> synth_outlier_channels(const SynthSpec& spec);

struct SynthResult {
  io::ModelConfig config;
  std::vector<std::int64_t> outlier_channels;
  double logit_scale = 1.0;  // factor applied to the final norm to reach the target perplexity
  std::string calib_tokens, eval_tokens;  // paths, empty when not written
};

// Writes dir/config.json, sharded safetensors with model.safetensors.index.json, and
// dir/calib.npy and dir/eval.npy. Refuses a non-empty existing directory.
SynthResult write_synth_model(const SynthSpec& spec, const std::string& dir);

}  // namespace sq::model
