// `shardquant plan` (pipeline/plan.h): blocks per rank from Partition, the export disk equal to
// the bytes an export of a synthetic model writes, checkpoint files sized as the runner writes
// them, the 70B recipe planned from configs/models alone, refusals naming the rank (and the
// evaluation key), and the errors for a missing config or calibration size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/model_config.h"
#include "io/recipe.h"
#include "model/forward.h"
#include "model/synth.h"
#include "model/weights.h"
#include "pipeline/partition.h"
#include "pipeline/plan.h"
#include "stages/calibrate.h"
#include "stages/export.h"
#include "stages/quantize.h"
#include "stages/scheme.h"
#include "stages/smooth.h"
#if SQ_WITH_MPI
#include "io/checkpoint_store.h"
#include "pipeline/block_state.h"
#endif

namespace sq::pipeline {
namespace {
namespace fs = std::filesystem;
using u64 = std::uint64_t;

std::string repo_path(const std::string& relative) {
  return std::string(SQ_TEST_DATA_DIR) + "/../../" + relative;
}

std::string scratch(const std::string& name) {
  const fs::path p = fs::path(SQ_TEST_TMP_DIR) / "pipeline_plan" / name;
  fs::remove_all(p);
  fs::create_directories(p.parent_path());
  return p.string();
}

io::ModelConfig llama70b() {
  return io::load_hf_config(repo_path("configs/models/llama-2-70b.json"));
}

io::Recipe recipe70b() { return io::load_recipe(repo_path("configs/llama2-70b-w8a8.yaml")); }

// A recipe from YAML text; paths relative to `base`.
io::Recipe recipe_from(const std::string& yaml, const std::string& base = "/nonexistent") {
  return io::parse_recipe(yaml, "test.yaml", base);
}

const char* kScheme = R"(
scheme:
  weights: {bits: 8, symmetric: true, granularity: channel, clip: minmax}
  activations: {bits: 8, symmetric: true, granularity: token, dynamic: true, scale_rule: half_range}
calibration: {inputs: fp}
stages:
  - smoothquant: {alpha: 0.85}
  - quantize_weights
export: {format: compressed-tensors, dtype: model}
)";

TEST(plan, BlocksPerRankAndReplicasComeFromPartition) {
  const auto config = llama70b();
  const auto recipe = recipe70b();
  for (const auto& [ranks, replicas] : std::vector<std::pair<int, std::optional<int>>>{
           {64, std::nullopt}, {16, 4}, {160, 2}, {8, std::nullopt}}) {
    SCOPED_TRACE(ranks);
    PlanOptions o;
    o.ranks = ranks;
    o.replicas = replicas;
    const RunPlan plan = plan_run(config, recipe, o);
    const Partition p = Partition::for_model(
        config, ranks,
        replicas.value_or(Partition::default_replicas(int(config.num_layers), ranks)));
    ASSERT_EQ(plan.ranks.size(), static_cast<std::size_t>(ranks));
    EXPECT_EQ(plan.partition.stages(), p.stages());
    std::vector<std::int64_t> per_stage(static_cast<std::size_t>(p.stages()), 0);
    for (const auto& r : plan.ranks) {
      EXPECT_EQ(r.stage, p.stage_of(r.rank));
      EXPECT_EQ(r.replica, p.replica_of(r.rank));
      EXPECT_EQ(r.blocks.begin, p.blocks_of(r.rank).begin);
      EXPECT_EQ(r.blocks.end, p.blocks_of(r.rank).end);
      per_stage[static_cast<std::size_t>(r.stage)] += r.sequences;
    }
    // Every stage's replicas hold the calibration set between them.
    for (auto n : per_stage) EXPECT_EQ(n, 512);
  }
}

TEST(plan, ReplicasGetWholeMicroBatchesFirstOnesOneMore) {
  const auto config = llama70b();
  auto recipe = recipe_from(std::string(R"(
model: m
output: o
data: {calibration: c.npy, seq_len: 16, calibration_sequences: 10, micro_batch: 4}
)") + kScheme);
  PlanOptions o;
  o.ranks = 160;  // 80 stages x 2 replicas
  o.replicas = 2;
  const RunPlan plan = plan_run(config, recipe, o);
  EXPECT_EQ(plan.micro_batches, 3);
  // micro-batches [0, 2) = sequences [0, 8) to replica 0, [2, 3) = [8, 10) to replica 1.
  EXPECT_EQ(plan.ranks[0].sequences, 8);
  EXPECT_EQ(plan.ranks[0].micro_batches, 2);
  EXPECT_EQ(plan.ranks[80].first_sequence, 8);
  EXPECT_EQ(plan.ranks[80].sequences, 2);
  EXPECT_EQ(plan.ranks[80].term("hidden_states")->bytes, u64{2} * 16 * 8192 * 4);
  o.replicas = 4;  // 3 micro-batches cannot feed 4 replicas: the runner refuses, so does plan
  o.ranks = 320;
  try {
    plan_run(config, recipe, o);
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.micro_batch"), std::string::npos) << e.what();
  }
}

TEST(plan, SeventyBillionRecipeAt64RanksFromTheConfigAlone) {
  const auto config = llama70b();
  const auto recipe = recipe70b();  // its model directory and token files do not exist here
  PlanOptions o;
  o.ranks = 64;
  o.ranks_per_node = 8;
  const RunPlan plan = plan_run(config, recipe, o);
  EXPECT_EQ(plan.partition.stages(), 64);
  EXPECT_EQ(plan.partition.replicas(), 1);
  EXPECT_EQ(plan.calibration.sequences, 512);
  EXPECT_EQ(plan.calibration.seq_len, 512);
  EXPECT_FALSE(plan.evaluation.has_value());  // the 70B recipe evaluates the export separately
  EXPECT_FALSE(plan.notes.empty());           // the token file was not read: sized by the recipe
  EXPECT_TRUE(plan.fits());                   // no memory given: nothing to refuse

  const u64 H = 8192, F = 28672, KV = 1024, V = 32000;
  const u64 hidden = u64{512} * 512 * H * 4;  // 8 GiB per rank
  for (const auto& r : plan.ranks) {
    ASSERT_NE(r.term("hidden_states"), nullptr);
    EXPECT_EQ(r.term("hidden_states")->bytes, hidden);
    EXPECT_EQ(r.term("baseline")->bytes, kProcessBaselineBytes);
    EXPECT_GT(r.peak_host, hidden);
    // Peaks are phase sums of the terms.
    u64 best = 0;
    for (auto v : r.host_by_phase) best = std::max(best, v);
    EXPECT_EQ(r.peak_host, best);
  }
  // device: cuda (one rank per GPU): the block forward's working set is on the device, as
  // model/device_forward.cpp allocates it; the stages and the FP32 block stay on the host.
  EXPECT_TRUE(plan.on_gpu);
  {
    const RankPlan& r = plan.ranks[1];
    const u64 T = 4 * 512, QD = H, gemm_weights = H * (H + KV + KV + H) + 3 * H * F;
    const u64 block_all = 2 * H + gemm_weights;
    EXPECT_EQ(r.term("device_block_weights")->bytes,
              gemm_weights * 2 + (block_all - gemm_weights) * 4);
    EXPECT_EQ(r.term("device_block_weights")->memory, Memory::device);
    EXPECT_EQ(r.term("device_weight_staging")->bytes, F * H * 4);
    EXPECT_EQ(r.term("device_activations")->bytes,
              T * ((3 * H + 2 * QD + 2 * KV + 3 * F) * 4 + F * 2 + 8));
    EXPECT_EQ(r.term("block_activations"), nullptr);  // no CPU forward
    EXPECT_EQ(r.term("block_fp32")->memory, Memory::host);
    u64 device = 0;
    for (const auto& t : r.terms)
      if (t.memory == Memory::device && t.live_in(Phase::calibrate)) device += t.bytes;
    EXPECT_EQ(r.peak_device, device);
    EXPECT_LT(r.peak_device, u64{20} << 30);  // ~1.7 GB of weights, ~2 GB of activations
  }
  PlanOptions fits = o, tight = o;
  fits.device_memory_per_gpu = u64{141} << 30;
  EXPECT_TRUE(plan_run(config, recipe, fits).fits());
  tight.device_memory_per_gpu = u64{2} << 30;
  const RunPlan refused = plan_run(config, recipe, tight);
  ASSERT_FALSE(refused.fits());
  EXPECT_NE(refused.ranks[1].refusal.find("of device memory, has 2.0 GiB per GPU"),
            std::string::npos)
      << refused.ranks[1].refusal;
  // f16 checkpoint: each block is converted to FP32 (4 B per parameter).
  const u64 block_params = 2 * H + H * (H + KV + KV + H) + 3 * H * F;
  EXPECT_EQ(plan.ranks[1].term("block_fp32")->bytes, block_params * 4);
  // Mapped pages: the blocks' stay mapped unless released once converted, by the plan's model.
  if (const auto* t = plan.ranks[50].term("mapped_blocks")) {
    EXPECT_EQ(t->bytes, block_params * 2 * u64(plan.ranks[50].blocks.size()));
  }
  EXPECT_EQ(plan.ranks[0].term("mapped_embedding")->bytes, V * H * 2);
  EXPECT_TRUE(plan.ranks[0].term("mapped_embedding")->mapped);
  // Export: int8 linears, per-channel scales, norms, embedding, head in f16 (the model's dtype).
  const u64 linear_weights = H * (H + KV + KV + H) + 3 * H * F;
  const u64 scales = H + KV + KV + H + F + F + H;
  const u64 per_block = linear_weights + scales * 2 + 2 * H * 2;
  EXPECT_EQ(plan.export_disk.tensor_bytes, 80 * per_block + 2 * V * H * 2 + H * 2);
  EXPECT_EQ(plan.export_disk.shards, 14);
  // Hidden states are checkpointed at the input of stages 1..63.
  EXPECT_GT(plan.hidden_checkpoint_disk, 63 * hidden);
  EXPECT_LT(plan.hidden_checkpoint_disk, 63 * (hidden + (hidden >> 10)));
  EXPECT_EQ(plan.ranks[0].hidden_checkpoint_disk, 0u);
  EXPECT_GT(plan.block_checkpoint_disk, 80 * linear_weights);
  // Only rank 0 exports; nobody evaluates (the recipe has no evaluation tokens).
  EXPECT_EQ(plan.ranks[0].evaluation_peak_host, 0u);
  EXPECT_EQ(plan.ranks[1].evaluation_peak_host, 0u);
  EXPECT_NE(plan.ranks[0].term("export_block"), nullptr);
  EXPECT_EQ(plan.ranks[1].term("export_block"), nullptr);

  const auto j = plan_json(plan);
  EXPECT_EQ(j["rank_plans"].size(), 64u);
  EXPECT_EQ(j["rank_plans"][5]["blocks"][0], plan.ranks[5].blocks.begin);
}

TEST(plan, OptOneSeventyFiveBillionPlans) {
  const auto config = io::load_hf_config(repo_path("configs/models/opt-175b.json"));
  const auto recipe = io::load_recipe(repo_path("configs/opt-175b-w8a8.yaml"));
  PlanOptions o;
  o.ranks = 96;
  const RunPlan plan = plan_run(config, recipe, o);
  EXPECT_EQ(plan.partition.stages(), 96);
  // Static per-tensor activations: an input_scale per linear in the export.
  EXPECT_GT(plan.export_disk.tensor_bytes, u64{96} * 12 * 12288 * 12288);
}

TEST(plan, RankThatDoesNotFitIsRefusedByName) {
  const auto config = llama70b();
  auto recipe = recipe70b();
  recipe.data.evaluation.reset();
  PlanOptions o;
  o.ranks = 64;  // 32 stages x 2 replicas: replica 1 only calibrates, replica 0 quantizes
  o.replicas = 2;
  const RunPlan unlimited = plan_run(config, recipe, o);
  u64 low = UINT64_MAX, high = 0;
  for (const auto& r : unlimited.ranks) {
    low = std::min(low, r.peak_host);
    high = std::max(high, r.peak_host);
  }
  ASSERT_LT(low, high);
  o.host_memory_per_rank = (low + high) / 2;
  const RunPlan plan = plan_run(config, recipe, o);
  EXPECT_FALSE(plan.fits());
  std::size_t refused = 0;
  for (const auto& r : plan.ranks) {
    EXPECT_EQ(r.fits(), r.peak_host <= o.host_memory_per_rank) << "rank " << r.rank;
    if (r.fits()) continue;
    ++refused;
    const std::string head = "rank " + std::to_string(r.rank) + " (stage " +
                             std::to_string(r.stage) + ", replica " + std::to_string(r.replica) +
                             ") does not fit: needs ";
    EXPECT_EQ(r.refusal.rfind(head, 0), 0u) << r.refusal;
    EXPECT_NE(r.refusal.find("has "), std::string::npos) << r.refusal;
    EXPECT_EQ(r.refusal.find('\n'), std::string::npos);
  }
  EXPECT_EQ(plan.refusals().size(), refused);
  EXPECT_GT(refused, 0u);
  EXPECT_LT(refused, plan.ranks.size());
}

TEST(plan, EvaluationThatDoesNotFitRankZeroNamesTheRecipeKey) {
  const auto config = llama70b();
  auto recipe = recipe70b();
  recipe.data.evaluation = "/models/Llama-2-70b-hf/eval.npy";  // in-run evaluation of a 70B
  PlanOptions o;
  o.ranks = 64;
  o.evaluation = TokenShape{8, 512};
  const RunPlan unlimited = plan_run(config, recipe, o);
  const auto& r0 = unlimited.ranks[0];
  ASSERT_GT(r0.evaluation_peak_host, r0.run_peak_host);
  u64 run_max = 0;
  for (const auto& r : unlimited.ranks) run_max = std::max(run_max, r.run_peak_host);
  o.host_memory_per_rank = run_max;  // every run fits; the evaluation does not
  const RunPlan plan = plan_run(config, recipe, o);
  ASSERT_EQ(plan.refusals().size(), 1u);
  EXPECT_NE(plan.ranks[0].refusal.find("rank 0 "), std::string::npos);
  EXPECT_NE(plan.ranks[0].refusal.find("data.evaluation"), std::string::npos)
      << plan.ranks[0].refusal;
}

TEST(plan, MissingConfigSaysConfigIsRequiredNamingTheFile) {
  const auto recipe = recipe70b();
  try {
    plan_config_file(recipe, "");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/models/Llama-2-70b-hf/config.json"), std::string::npos) << what;
    EXPECT_NE(what.find("--config"), std::string::npos) << what;
    EXPECT_NE(what.find("required"), std::string::npos) << what;
  }
  EXPECT_EQ(plan_config_file(recipe, "x.json"), "x.json");
}

TEST(plan, MissingCalibrationSizeWithUnreadableTokensNamesTheKey) {
  const auto config = llama70b();
  PlanOptions o;
  o.ranks = 8;
  for (const char* key : {"seq_len", "calibration_sequences"}) {
    const std::string other =
        std::string(key) == "seq_len" ? "calibration_sequences: 64" : "seq_len: 512";
    const auto recipe =
        recipe_from("model: m\noutput: o\ndata: {calibration: c.npy, " + other + "}\n" + kScheme);
    std::string why;
    o.calibration = probe_token_file(recipe.data.calibration, recipe.data.seq_len,
                                     recipe.data.calibration_sequences, config, why);
    ASSERT_FALSE(o.calibration.has_value());
    o.calibration_unreadable = why;
    try {
      plan_run(config, recipe, o);
      FAIL() << "expected a refusal for data." << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("data.") + key), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("c.npy"), std::string::npos) << e.what();
    }
  }
}

TEST(plan, ParsesSizes) {
  EXPECT_EQ(parse_bytes("123"), 123u);
  EXPECT_EQ(parse_bytes("512G"), u64{512} << 30);
  EXPECT_EQ(parse_bytes("1.5TiB"), u64{3} << 39);
  EXPECT_EQ(parse_bytes("64GB"), u64{64'000'000'000});
  EXPECT_EQ(parse_bytes("80 GiB"), u64{80} << 30);
  EXPECT_THROW(parse_bytes("lots"), Error);
  EXPECT_THROW(parse_bytes("5X"), Error);
}

// --- against what the code writes ------------------------------------------------------------

struct Synth {
  std::string dir;
  io::ModelConfig config;
};

Synth synth(const std::string& name, io::Arch arch, DType dtype) {
  model::SynthSpec s;
  s.arch = arch;
  s.hidden = 64;
  s.layers = 3;
  s.heads = 4;
  s.vocab = 256;
  s.max_positions = 64;
  s.dtype = dtype;
  s.calib_seqs = 4;
  s.eval_seqs = 2;
  s.seq_len = 16;
  s.seed = 3;
  s.max_shard_bytes = 64 * 1024;
  const std::string dir = scratch(name);
  const auto r = model::write_synth_model(s, dir);
  std::ofstream(fs::path(dir) / "tokenizer.json", std::ios::binary) << "{\"version\": \"1.0\"}\n";
  return {dir, r.config};
}

// The block as the recipe's stages leave it: statistics from a forward, the transforms, codes.
struct Quantized {
  stages::BlockStats stats;
  std::vector<stages::AppliedTransform> transforms;
  stages::QuantizedBlock block;
};
Quantized quantize(const model::Model& m, int layer, const io::Recipe& recipe,
                   const stages::QuantScheme& scheme) {
  const auto& c = m.config();
  Quantized q;
  q.block.weights = m.load_block(layer);
  std::vector<std::uint32_t> ids(32);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::uint32_t>(i * 7 % 256);
  const model::Batch batch{.n_seq = 2, .seq_len = 16};
  Tensor hidden = model::embed(c, m.load_embedding(), ids, batch);
  const auto inv_freq = model::rope_inv_freq(c);
  stages::StatsObserver observer(q.stats);
  model::block_forward(c, q.block.weights, batch, hidden,
                       {.inv_freq = inv_freq, .hook = &observer});
  for (const auto& s : recipe.stages)
    if (s.kind == io::StageKind::smoothquant)
      q.transforms = stages::smoothquant_block(c, q.block.weights, q.stats, *s.alpha);
  stages::set_static_activation_params(q.block, q.stats, scheme);
  stages::quantize_block_weights(q.block, scheme);
  return q;
}

struct Case {
  std::string name;
  io::Arch arch;
  DType dtype;
  std::string scheme;  // scheme: and export: of the recipe
};

std::vector<Case> cases() {
  return {
      {"llama_w8a8_bf16", io::Arch::llama, DType::bf16,
       "scheme:\n  weights: {bits: 8, granularity: channel}\n  activations: {bits: 8, "
       "granularity: token, dynamic: true}\nexport: {dtype: model}\n"},
      {"opt_static_f16_to_bf16", io::Arch::opt, DType::f16,
       "scheme:\n  weights: {bits: 8, granularity: tensor}\n  activations: {bits: 8, "
       "granularity: tensor, dynamic: false, scale_rule: max_int}\nexport: {dtype: bfloat16}\n"},
      {"llama_w8a16_f32_to_f16", io::Arch::llama, DType::f32,
       "scheme:\n  weights: {bits: 8, granularity: channel}\nexport: {dtype: float16}\n"},
  };
}

u64 dir_bytes(const std::string& dir) {
  u64 n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.file_size();
  return n;
}

TEST(plan, ExportDiskIsTheBytesAnExportWrites) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Synth s = synth(c.name, c.arch, c.dtype);
    const auto recipe =
        recipe_from("model: " + s.dir + "\noutput: o\ndata: {calibration: " + s.dir +
                    "/calib.npy, micro_batch: 2}\nstages:\n  - "
                    "smoothquant: {alpha: 0.5}\n  - quantize_weights\n" +
                    c.scheme);
    const auto m = model::Model::open(s.dir);
    const DType out = recipe.export_.dtype.value_or(m.config().torch_dtype);
    const auto scheme = stages::scheme_from_recipe(recipe.scheme, out);
    stages::ExportScheme es;
    es.weight_strategy = recipe.scheme.weights.granularity == io::WeightGranularity::channel
                             ? stages::ExportScheme::WeightStrategy::channel
                             : stages::ExportScheme::WeightStrategy::tensor;
    es.quantize_activations = recipe.scheme.activations.has_value();
    if (es.quantize_activations) {
      es.activation_strategy =
          recipe.scheme.activations->granularity == io::ActivationGranularity::token
              ? stages::ExportScheme::ActivationStrategy::token
              : stages::ExportScheme::ActivationStrategy::tensor;
      es.activation_dynamic = recipe.scheme.activations->dynamic;
    }
    es.dtype = out;
    std::vector<stages::QuantizedBlock> blocks;
    for (int layer = 0; layer < m.num_layers(); ++layer)
      blocks.push_back(quantize(m, layer, recipe, scheme).block);

    for (u64 shard : {u64{16} << 10, stages::kExportMaxShardBytes}) {
      SCOPED_TRACE(shard);
      const std::string out_dir = scratch(c.name + "_export_" + std::to_string(shard));
      stages::export_compressed_tensors(m, blocks, es, out_dir, shard);

      PlanOptions o;
      o.ranks = 3;
      std::string why;
      o.calibration = probe_token_file(recipe.data.calibration, recipe.data.seq_len,
                                       recipe.data.calibration_sequences, m.config(), why);
      ASSERT_TRUE(o.calibration.has_value()) << why;
      o.export_copied_bytes = export_copied_bytes(s.dir);
      o.max_shard_bytes = shard;
      const RunPlan plan = plan_run(m.config(), recipe, o);
      const ExportDiskPlan& d = plan.export_disk;
      u64 safetensors = 0, index = 0, config = 0;
      int shards = 0;
      for (const auto& e : fs::directory_iterator(out_dir)) {
        const std::string name = e.path().filename().string();
        if (name.ends_with(".safetensors")) {
          safetensors += e.file_size();
          ++shards;
        } else if (name == "model.safetensors.index.json") {
          index = e.file_size();
        } else if (name == "config.json") {
          config = e.file_size();
        }
      }
      EXPECT_EQ(d.shards, shards);
      EXPECT_EQ(d.tensor_bytes + d.header_bytes, safetensors);
      EXPECT_EQ(d.index_bytes, index);
      EXPECT_EQ(d.config_bytes, config);
      EXPECT_EQ(d.total(), dir_bytes(out_dir));
    }
  }
}

#if SQ_WITH_MPI
// The block file the runner commits after the last stage (pipeline/block_state.cpp), and the
// hidden states it checkpoints at a stage's input: the plan's bytes are the payload exactly plus
// HDF5's overhead, which it estimates.
TEST(plan, CheckpointDiskIsTheBytesTheRunnerWrites) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Synth s = synth(c.name + "_ckpt", c.arch, c.dtype);
    const auto recipe =
        recipe_from("model: " + s.dir + "\noutput: o\ndata: {calibration: " + s.dir +
                    "/calib.npy, micro_batch: 2}\nstages:\n  - "
                    "smoothquant: {alpha: 0.5}\n  - quantize_weights\n" +
                    c.scheme);
    const auto m = model::Model::open(s.dir);
    const auto scheme = stages::scheme_from_recipe(
        recipe.scheme, recipe.export_.dtype.value_or(m.config().torch_dtype));
    Quantized q = quantize(m, 1, recipe, scheme);
    BlockState state;
    state.stages_done = static_cast<int>(recipe.stages.size());
    state.stats = q.stats;
    state.transforms = q.transforms;
    state.block = q.block;
    const io::CheckpointHeader header{.kind = "block",
                                      .recipe_hash = std::string(64, 'a'),
                                      .model_fingerprint = std::string(64, 'b'),
                                      .stages = {"calibrate", "smoothquant", "quantize_weights"},
                                      .block = 1};
    const std::string file = scratch(c.name + "_block.h5");
    block_checkpoint(header, state).commit(file);

    PlanOptions o;
    o.ranks = 3;  // one block per rank
    std::string why;
    o.calibration = probe_token_file(recipe.data.calibration, recipe.data.seq_len,
                                     recipe.data.calibration_sequences, m.config(), why);
    ASSERT_TRUE(o.calibration.has_value()) << why;
    const RunPlan plan = plan_run(m.config(), recipe, o);
    const u64 predicted = plan.ranks[1].block_checkpoint_disk;
    const u64 actual = fs::file_size(file);
    // Tiny blocks: HDF5's overhead is most of the file, and the plan rounds it up.
    EXPECT_GE(predicted, actual) << "HDF5 overhead is rounded up";
    EXPECT_LE(double(predicted), 1.1 * double(actual)) << "predicted " << predicted;

    // Hidden states entering stage 1: [sequences * seq_len, hidden] f32.
    const auto& r1 = plan.ranks[1];
    io::CheckpointWriter w({.kind = "hidden",
                            .recipe_hash = std::string(64, 'a'),
                            .model_fingerprint = std::string(64, 'b'),
                            .stages = header.stages,
                            .block = 1});
    const Tensor h =
        Tensor::zeros(DType::f32, {r1.sequences * plan.calibration.seq_len, s.config.hidden_size});
    w.put("/hidden", h);
    w.put_attribute("first_seq", "0");
    w.put_attribute("end_seq", std::to_string(r1.sequences));
    const std::string hidden_file = scratch(c.name + "_hidden.h5");
    w.commit(hidden_file);
    EXPECT_GE(r1.hidden_checkpoint_disk, fs::file_size(hidden_file));
    EXPECT_LE(r1.hidden_checkpoint_disk, fs::file_size(hidden_file) + 8192);
  }
}
#endif

}  // namespace
}  // namespace sq::pipeline
