#include "pipeline/runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/token_file.h"
#include "kernels/cpu/ops.h"
#include "stages/calibrate.h"
#include "stages/export.h"
#include "stages/quantize.h"
#include "stages/quantized_source.h"
#include "stages/smooth.h"
#include "stages/suppress.h"

namespace sq::pipeline {
namespace fs = std::filesystem;
using i64 = std::int64_t;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Deep copy: stages transform weights in place, and a block of an F32 checkpoint is a read-only
// view of the mapped file.
model::BlockWeights own(const model::BlockWeights& w) {
  model::BlockWeights o = w;
  for (auto role : model::kAllLinearRoles) {
    auto& l = o.linear(role);
    if (l.weight.defined()) l.weight = l.weight.clone();
    if (l.bias.defined()) l.bias = l.bias.clone();
  }
  for (auto* n : {&o.attn_norm, &o.mlp_norm}) {
    n->weight = n->weight.clone();
    if (n->bias.defined()) n->bias = n->bias.clone();
  }
  return o;
}

// Runs a block over the hidden states micro-batch by micro-batch, in place, with a hook made
// per micro-batch (so the first one can be told apart).
template <typename MakeHook>
void run_micro_batches(const io::ModelConfig& c, const model::BlockWeights& w, Tensor& hidden,
                       i64 n_seq, i64 seq_len, i64 micro_batch, MakeHook make_hook) {
  const auto inv_freq = model::rope_inv_freq(c);
  const i64 H = c.hidden_size;
  for (i64 first = 0, mb = 0; first < n_seq; first += micro_batch, ++mb) {
    const i64 count = std::min(micro_batch, n_seq - first);
    const model::Batch batch{.n_seq = count, .seq_len = seq_len};
    Tensor slice = Tensor::zeros(DType::f32, {count * seq_len, H});
    float* dst = hidden.mutable_data<float>() + first * seq_len * H;
    std::memcpy(slice.mutable_data<float>(), dst, slice.nbytes());
    auto hook = make_hook(mb, batch);
    model::block_forward(c, w, batch, slice, {.inv_freq = inv_freq, .hook = hook.get()});
    std::memcpy(dst, slice.data<float>(), slice.nbytes());
  }
}

stages::ExportScheme export_scheme(const io::Scheme& s, DType dtype) {
  stages::ExportScheme e;
  e.weight_bits = s.weights.bits;
  e.weight_symmetric = s.weights.symmetric;
  switch (s.weights.granularity) {
    case io::WeightGranularity::channel:
      e.weight_strategy = stages::ExportScheme::WeightStrategy::channel;
      break;
    case io::WeightGranularity::tensor:
      e.weight_strategy = stages::ExportScheme::WeightStrategy::tensor;
      break;
    case io::WeightGranularity::group:
      e.weight_strategy = stages::ExportScheme::WeightStrategy::group;
      e.group_size = s.weights.group_size;
      break;
  }
  e.quantize_activations = s.activations.has_value();
  if (s.activations) {
    e.activation_bits = s.activations->bits;
    e.activation_symmetric = s.activations->symmetric;
    e.activation_strategy = s.activations->granularity == io::ActivationGranularity::token
                                ? stages::ExportScheme::ActivationStrategy::token
                                : stages::ExportScheme::ActivationStrategy::tensor;
    e.activation_dynamic = s.activations->dynamic;
  }
  e.dtype = dtype;
  return e;
}

// One progress line per (block, stage), readable in a Slurm log.
class Progress {
 public:
  Progress(int blocks, i64 tokens) : blocks_(blocks), tokens_(tokens), start_(Clock::now()) {}
  void stage_done(int block, std::string_view stage, Clock::time_point began) {
    const double dt = since(began), elapsed = since(start_);
    const double eta = elapsed / double(block + 1) * double(blocks_ - block - 1);
    log::info("block {}/{} {:<16} {:7.3f} s  {:9.0f} tokens/s  elapsed {:.1f} s  ETA {:.1f} s",
              block + 1, blocks_, stage, dt, double(tokens_) / std::max(dt, 1e-9), elapsed, eta);
  }

 private:
  int blocks_;
  i64 tokens_;
  Clock::time_point start_;
};

}  // namespace

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

RunSummary run_recipe(const io::Recipe& recipe) {
  const auto start = Clock::now();
  // Everything that can be refused is refused before the run directory is created: nothing
  // already written may be lost or mixed, and a bad recipe leaves no trace.
  std::error_code ec;
  if (fs::exists(recipe.output_dir) && !fs::is_empty(recipe.output_dir, ec))
    fail(ErrorContext{.file = recipe.output_dir},
         "run directory exists and is not empty; choose a new output");
  if (recipe.threads > 0) cpu::set_blas_threads(recipe.threads);
  const model::Model model = model::Model::open(recipe.model_dir);
  const auto& c = model.config();
  const DType dtype = recipe.export_.dtype.value_or(c.torch_dtype);
  const stages::QuantScheme scheme = stages::scheme_from_recipe(recipe.scheme, dtype);
  const bool exporting = recipe.export_.format == io::ExportFormat::compressed_tensors;
  if (exporting) {
    try {
      stages::check_exportable(export_scheme(recipe.scheme, dtype));
    } catch (const Error& e) {
      throw e.with_file(recipe.file);
    }
  }
  const TokenSet calib = load_token_set(recipe.data.calibration, recipe.data.seq_len,
                                        recipe.data.calibration_sequences, c);
  if (recipe.data.evaluation) load_token_set(*recipe.data.evaluation, recipe.data.seq_len, {}, c);
  fs::create_directories(recipe.output_dir, ec);
  if (ec) fail(ErrorContext{.file = recipe.output_dir}, "cannot create: {}", ec.message());
  const i64 mb = recipe.data.micro_batch;
  log::info("run {}: {} ({} blocks) with {} x {} calibration tokens, micro-batches of {}",
            recipe.file, recipe.model_dir, c.num_layers, calib.n_seq, calib.seq_len, mb);
  Tensor hidden = model::embed(c, model.load_embedding(), calib.ids,
                               {.n_seq = calib.n_seq, .seq_len = calib.seq_len});
  const bool quant_inputs = recipe.calibration.inputs == io::CalibrationInputs::quant;
  const bool wants_os_plus = recipe.find_stage(io::StageKind::os_plus) != nullptr;

  Progress progress(model.num_layers(), calib.n_seq * calib.seq_len);
  std::vector<stages::QuantizedBlock> blocks;
  for (int layer = 0; layer < model.num_layers(); ++layer) {
    const model::BlockWeights fp = model.load_block(layer);
    stages::QuantizedBlock qb;
    qb.weights = own(fp);
    stages::BlockStats stats;
    stages::OsPlusInputs os_inputs;
    for (const auto& stage : recipe.stages) {
      const auto t0 = Clock::now();
      switch (stage.kind) {
        case io::StageKind::calibrate: {
          // With FP inputs, the calibration pass is also the FP propagation: its outputs are
          // the next block's inputs. With quantized inputs they are recomputed below.
          Tensor scratch = quant_inputs ? hidden.clone() : Tensor();
          Tensor& h = quant_inputs ? scratch : hidden;
          run_micro_batches(
              c, fp, h, calib.n_seq, calib.seq_len, mb,
              [&](i64 index, const model::Batch& batch) -> std::unique_ptr<model::ActivationHook> {
                auto observer = std::make_unique<stages::StatsObserver>(stats);
                if (index != 0 || !wants_os_plus) return observer;
                struct Both : model::ActivationHook {
                  std::unique_ptr<stages::StatsObserver> obs;
                  std::unique_ptr<stages::CaptureOsPlusInputs> cap;
                  void at(model::Site s, float* x, i64 r, i64 cc) override { cap->at(s, x, r, cc); }
                };
                auto both = std::make_unique<Both>();
                both->obs = std::move(observer);
                both->cap = std::make_unique<stages::CaptureOsPlusInputs>(os_inputs, batch,
                                                                          both->obs.get());
                return both;
              });
          break;
        }
        case io::StageKind::smoothquant:
          stages::smoothquant_block(c, qb.weights, stats,
                                    stage.alpha.value_or(io::default_smoothquant_alpha(c.arch)));
          break;
        case io::StageKind::os_plus: {
          const auto r = stages::os_plus_block(c, qb.weights, stats, os_inputs, scheme,
                                               {.grid = stage.grid, .floor = stage.floor});
          log::info(
              "block {}/{} os_plus: qkv threshold {:.3g} (loss {:.3g} -> {:.3g}), mlp "
              "threshold {:.3g} (loss {:.3g} -> {:.3g}){}",
              layer + 1, model.num_layers(), r.qkv.threshold, r.qkv.loss_unscaled, r.qkv.loss,
              r.mlp.threshold, r.mlp.loss_unscaled, r.mlp.loss, r.shifted ? ", shifted" : "");
          break;
        }
        case io::StageKind::quantize_weights:
          stages::set_static_activation_params(qb, stats, scheme);
          stages::quantize_block_weights(qb, scheme);
          break;
      }
      progress.stage_done(layer, io::recipe_name(stage.kind), t0);
    }
    if (quant_inputs) {  // next block sees this block quantized
      run_micro_batches(c, qb.weights, hidden, calib.n_seq, calib.seq_len, mb,
                        [&](i64, const model::Batch&) -> std::unique_ptr<model::ActivationHook> {
                          return std::make_unique<stages::QuantizeActivations>(qb, scheme);
                        });
    }
    blocks.push_back(std::move(qb));
  }
  log::info("run: all {} blocks quantized in {:.1f} s", model.num_layers(), since(start));

  RunSummary summary;
  std::unique_ptr<model::BlockSource> quantized;
  if (exporting) {
    summary.export_dir = (fs::path(recipe.output_dir) / "export").string();
    {
      log::ScopedTimer t("export (compressed-tensors)");
      stages::export_compressed_tensors(model, blocks, export_scheme(recipe.scheme, dtype),
                                        summary.export_dir);
    }
    // Evaluate what was exported, with every rounding the file holds.
    auto loaded = stages::load_compressed_tensors(summary.export_dir);
    quantized = std::make_unique<stages::QuantizedSource>(
        loaded.config, loaded.embedding, loaded.head, std::move(loaded.blocks), scheme);
  } else {
    quantized = std::make_unique<stages::QuantizedSource>(
        c, model.load_embedding(), model.load_head(), std::move(blocks), scheme);
  }
  if (recipe.data.evaluation) {
    const TokenSet eval = load_token_set(*recipe.data.evaluation, recipe.data.seq_len, {}, c);
    log::info("evaluation: {} x {} tokens from {}", eval.n_seq, eval.seq_len,
              *recipe.data.evaluation);
    summary.comparison = model::compare(*quantized, model::CheckpointSource(model), eval.ids,
                                        eval.n_seq, eval.seq_len);
    summary.evaluated = true;
    summary.metrics_file = (fs::path(recipe.output_dir) / "metrics.json").string();
    report_comparison(summary.comparison, "quantized", "fp", summary.metrics_file);
  }
  log::info("run: done in {:.1f} s{}", since(start),
            exporting ? fmt::format("; export in {}", summary.export_dir) : "");
  return summary;
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
