// `shardquant plan RECIPE --ranks N`: what every rank of a run will need, before anything runs
// (pipeline/plan.h). Works from a model's config.json alone, so a 70B or 175B run can be planned
// on a login node without its weights.
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/model_config.h"
#include "io/recipe.h"
#include "pipeline/cli/commands.h"
#include "pipeline/plan.h"

namespace sq::cli {
using pipeline::Phase;

namespace {

struct PlanArgs {
  std::string recipe, config, host_per_node, host_per_rank, device_memory, json;
  int ranks = 0, gpus_per_node = 1, replicas = 0;
};

// MemTotal of this machine, or 0 when /proc/meminfo cannot be read.
std::uint64_t this_machine_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemTotal:") return kb * 1024;
  return 0;
}

void print_terms(const pipeline::RankPlan& r, Phase phase, const std::string& title) {
  fmt::print("\n{} (rank {}, phase {}: {}):\n", title, r.rank, pipeline::phase_name(phase),
             format_bytes(double(r.host_by_phase[static_cast<int>(phase)])));
  for (const auto& t : r.terms) {
    if (!t.live_in(phase)) continue;
    fmt::print("  {:<22} {:>10}  {}{}{}\n", t.name, format_bytes(double(t.bytes)), t.formula,
               t.mapped ? " [mapped file pages]" : "",
               t.memory == pipeline::Memory::device ? " [device]" : "");
  }
}

void run_plan(const PlanArgs& a) {
  const io::Recipe recipe = io::load_recipe(a.recipe);
  // The model's shape: the recipe's model directory, or --config when the weights are elsewhere.
  const std::string config_file = pipeline::plan_config_file(recipe, a.config);
  const io::ModelConfig config = io::load_hf_config(config_file);

  pipeline::PlanOptions o;
  o.ranks = a.ranks;
  o.ranks_per_node = std::max(1, std::min(a.gpus_per_node, a.ranks));
  if (a.replicas > 0) o.replicas = a.replicas;
  std::string memory_source;
  if (!a.host_per_rank.empty()) {
    o.host_memory_per_rank = pipeline::parse_bytes(a.host_per_rank);
    memory_source = fmt::format("{} per rank (--host-memory-per-rank)",
                                format_bytes(double(o.host_memory_per_rank)));
  } else {
    std::uint64_t node = 0;
    std::string from;
    if (!a.host_per_node.empty()) {
      node = pipeline::parse_bytes(a.host_per_node);
      from = "--host-memory-per-node";
    } else {
      node = this_machine_memory();
      from = "this machine's MemTotal; give the cluster's with --host-memory-per-node";
    }
    o.host_memory_per_rank = node / static_cast<std::uint64_t>(o.ranks_per_node);
    memory_source = node == 0 ? std::string("unknown (not checked)")
                              : fmt::format("{} per node ({}) / {} ranks per node = {} per rank",
                                            format_bytes(double(node)), from, o.ranks_per_node,
                                            format_bytes(double(o.host_memory_per_rank)));
  }
  if (!a.device_memory.empty()) o.device_memory_per_gpu = pipeline::parse_bytes(a.device_memory);

  std::string why;
  o.calibration = pipeline::probe_token_file(recipe.data.calibration, recipe.data.seq_len,
                                             recipe.data.calibration_sequences, config, why);
  o.calibration_unreadable = why;
  if (recipe.data.evaluation) {
    std::string eval_why;
    o.evaluation = pipeline::probe_token_file(*recipe.data.evaluation, recipe.data.seq_len, {},
                                              config, eval_why);
  }
  o.export_copied_bytes = pipeline::export_copied_bytes(recipe.model_dir);

  const pipeline::RunPlan plan = pipeline::plan_run(config, recipe, o);
  const auto& p = plan.partition;

  fmt::print("plan {}: {} ranks = {} pipeline stage{} x {} replica{}, {} rank{} per node\n",
             recipe.file, p.world_size(), p.stages(), p.stages() == 1 ? "" : "s", p.replicas(),
             p.replicas() == 1 ? "" : "s", plan.ranks_per_node,
             plan.ranks_per_node == 1 ? "" : "s");
  fmt::print("model: {} ({}), {} blocks, hidden {}, ffn {}, {}/{} heads, vocab {}; weights {}\n",
             io::arch_name(config.arch), config_file, config.num_layers, config.hidden_size,
             config.intermediate_size, config.num_heads, config.num_kv_heads, config.vocab_size,
             dtype_name(plan.weights_dtype));
  fmt::print("calibration: {} sequences x {} tokens in {} micro-batches of {}{}\n",
             plan.calibration.sequences, plan.calibration.seq_len, plan.micro_batches,
             plan.micro_batch,
             plan.evaluation ? fmt::format("; evaluation on rank 0: {} x {} tokens",
                                           plan.evaluation->sequences, plan.evaluation->seq_len)
                             : "");
  fmt::print("host memory: {}\n", memory_source);
  fmt::print("device: {}\n\n",
             plan.on_gpu ? fmt::format("GPU, {} per GPU",
                                       plan.device_memory_per_gpu
                                           ? format_bytes(double(*plan.device_memory_per_gpu))
                                           : "unknown")
                         : "CPU (the recipe has no device; no device memory is used)");

  fmt::print("{:>5} {:>5} {:>7} {:>14} {:>6} {:>10} {:<10} {:>10} {:>10} {:>11}  {}\n", "rank",
             "stage", "replica", "blocks", "seqs", "host peak", "phase", "eval peak", "device",
             "ckpt disk", "fits");
  for (const auto& r : plan.ranks) {
    fmt::print(
        "{:>5} {:>5} {:>7} {:>14} {:>6} {:>10} {:<10} {:>10} {:>10} {:>11}  {}\n", r.rank, r.stage,
        r.replica, fmt::format("[{}, {}) {}", r.blocks.begin, r.blocks.end, r.blocks.size()),
        r.sequences, format_bytes(double(r.run_peak_host)), pipeline::phase_name(r.run_peak_phase),
        r.evaluation_peak_host > 0 ? format_bytes(double(r.evaluation_peak_host)) : "-",
        format_bytes(double(r.peak_device)), format_bytes(double(r.checkpoint_disk())),
        r.fits() ? "yes" : "NO");
  }
  fmt::print("\ncheckpoint disk: {} ({} block files, {} hidden states at stage inputs)\n",
             format_bytes(double(plan.checkpoint_disk())),
             format_bytes(double(plan.block_checkpoint_disk)),
             format_bytes(double(plan.hidden_checkpoint_disk)));
  if (plan.exporting) {
    const auto& e = plan.export_disk;
    fmt::print(
        "export disk: {} ({} shard{}: tensors {}, headers {} B, index {} B, config.json {} B, "
        "copied files {} B)\n",
        format_bytes(double(e.total())), e.shards, e.shards == 1 ? "" : "s",
        format_bytes(double(e.tensor_bytes)), e.header_bytes, e.index_bytes, e.config_bytes,
        e.copied_bytes);
  } else {
    fmt::print("export disk: none (export.format: none)\n");
  }

  // Where the memory goes: the largest rank at its peak, and rank 0's export and evaluation.
  const auto largest = std::max_element(
      plan.ranks.begin(), plan.ranks.end(),
      [](const auto& x, const auto& y) { return x.run_peak_host < y.run_peak_host; });
  print_terms(*largest, largest->run_peak_phase, "largest rank at its peak");
  const auto& r0 = plan.ranks.front();
  if (plan.exporting && largest->run_peak_phase != Phase::export_model)
    print_terms(r0, Phase::export_model, "export");
  if (r0.evaluation_peak_host > 0) {
    const Phase ev =
        r0.host_by_phase[int(Phase::evaluate_blocks)] >= r0.host_by_phase[int(Phase::evaluate_head)]
            ? Phase::evaluate_blocks
            : Phase::evaluate_head;
    print_terms(r0, ev, "evaluation (recipe key data.evaluation)");
  }
  if (!plan.notes.empty()) {
    fmt::print("\nnotes:\n");
    for (const auto& n : plan.notes) fmt::print("  - {}\n", n);
  }
  std::fflush(stdout);

  if (!a.json.empty()) {
    nlohmann::json j = pipeline::plan_json(plan);
    j["recipe"] = recipe.file;
    j["config"] = config_file;
    io::write_file_atomic(a.json, j.dump(2) + "\n");
  }
  if (!plan.fits()) {
    const auto refusals = plan.refusals();
    for (const auto& line : refusals) fmt::print(stderr, "error: {}\n", line);
    fmt::print(stderr, "error: {} of {} ranks do not fit; nothing was run\n", refusals.size(),
               plan.ranks.size());
    throw CLI::RuntimeError(1);
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "plan",
      "Before a run: per rank its stage and replica, blocks, calibration sequences, predicted "
      "peak host and device memory and checkpoint disk; totals of checkpoint and export disk. "
      "Exits non-zero, one line per rank, when a rank does not fit");
  auto a = std::make_shared<PlanArgs>();
  cmd->add_option("RECIPE", a->recipe, "Recipe file (see configs/*.yaml)")->required();
  cmd->add_option("--ranks", a->ranks, "MPI ranks of the run")
      ->required()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--gpus-per-node", a->gpus_per_node,
                  "Ranks per node (one per GPU); node memory is shared among them")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--replicas", a->replicas,
                  "Data-parallel replicas (default: as many pipeline stages as there are blocks "
                  "to fill them)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--config", a->config,
                  "The model's config.json, when the recipe's model directory is not here "
                  "(e.g. configs/models/llama-2-70b.json)");
  auto* per_node = cmd->add_option("--host-memory-per-node", a->host_per_node,
                                   "Host memory of a node, e.g. 512G (default: this machine's)");
  cmd->add_option("--host-memory-per-rank", a->host_per_rank,
                  "Host memory one rank may use, instead of a node's share")
      ->excludes(per_node);
  cmd->add_option("--device-memory", a->device_memory, "Memory of one GPU, e.g. 80G");
  cmd->add_option("--json", a->json, "Also write the whole plan, every term, as JSON");
  cmd->callback([a] { run_plan(*a); });
}

}  // namespace sq::cli
