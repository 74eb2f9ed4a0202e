// `shardquant plan`: what a recipe run will need on every rank before anything runs. A pure model
// of the distributed runner (pipeline/runner.cpp): for each rank its pipeline stage and replica,
// the blocks it owns (Partition decides), the calibration sequences it holds, the peak host (and
// device) memory it will reach and the checkpoint bytes it will write; for the run, the
// checkpoint and export disk. Memory is a list of named terms, each live in some phases of the
// run; a rank's peak is the largest sum over one phase. Every term says how it is computed, so a
// measured run (bench/pipeline_memory.sh) can be compared term by term and the model refined or
// extended (a device term is one more MemoryTerm with Memory::device).
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/model_config.h"
#include "io/recipe.h"
#include "pipeline/partition.h"
#include "stages/export.h"

namespace sq::pipeline {

// Resident set of a rank before any model data: the binary and its libraries, MPI_Init (Open MPI
// 4.1, shared-memory transport), HDF5 initialised by one checkpoint commit, OpenBLAS at one
// thread. Measured as VmHWM (/proc/self/status) of a 2-rank `mpirun` job whose ranks did exactly
// that and rank 0 also ran a one-block hidden-64 recipe end to end: 29.8 MB (31.2 MB per rank
// with 4 ranks), rounded up to 32 MiB. Fabrics that register memory (InfiniBand, UCX) add to it.
inline constexpr std::uint64_t kProcessBaselineBytes = std::uint64_t{32} << 20;

enum class Memory { host, device };

// Moments of a rank's run; a memory term is live in some of them, and the peak of a rank is the
// largest phase total. evaluate_* only happen on rank 0 when the recipe has data.evaluation.
enum class Phase {
  load_embedding,   // stage 0: the embedding converted to FP32
  embed,            // stage 0: the calibration tokens embedded
  receive,          // stage > 0: hidden states received and checkpointed
  calibrate,        // a block's forward over the micro-batches, statistics observed
  transform,        // smoothquant / os_plus fold their transforms (and search, for OS+)
  quantize,         // quantize_weights: integer codes and dequantized weights
  checkpoint,       // the block's HDF5 file committed and verified after quantize_weights
  propagate,        // calibration.inputs = quant: the micro-batches through the quantized block
  export_model,     // rank 0: compressed-tensors export, blocks rebuilt from their checkpoints
  evaluate_blocks,  // rank 0: the quantized and the FP model over the evaluation tokens
  evaluate_head     // rank 0: logits and their comparison
};
inline constexpr int kPhaseCount = 11;
std::string_view phase_name(Phase phase);
bool is_evaluation(Phase phase);

struct MemoryTerm {
  std::string name;     // stable identifier ("hidden_states", "block_fp32", ...)
  std::string formula;  // how `bytes` is computed, with the numbers filled in
  std::uint64_t bytes = 0;
  Memory memory = Memory::host;
  std::uint32_t phases = 0;  // bit (1 << Phase) for each phase the term is live in
  // Pages of memory-mapped checkpoint files: counted in VmHWM, but clean and reclaimable.
  bool mapped = false;
  bool live_in(Phase p) const { return (phases >> static_cast<int>(p)) & 1u; }
};

// Calibration or evaluation tokens as the run cuts them: `sequences` of `seq_len`.
struct TokenShape {
  std::int64_t sequences = 0, seq_len = 0;
};

struct PlanOptions {
  int ranks = 1;
  int ranks_per_node = 1;       // ranks sharing one node's host memory (one per GPU)
  std::optional<int> replicas;  // absent: Partition::default_replicas
  // Host memory one rank may use (node memory / ranks per node); 0: not checked.
  std::uint64_t host_memory_per_rank = 0;
  std::optional<std::uint64_t> device_memory_per_gpu;  // checked when the run uses a GPU
  // The calibration token file as the run will cut it (probe_token_file). Absent: the recipe's
  // data.seq_len and data.calibration_sequences are used, and plan_run refuses, naming the key,
  // when one is missing; `calibration_unreadable` then says why the file could not be read.
  std::optional<TokenShape> calibration;
  std::string calibration_unreadable;
  // The evaluation token file likewise; absent with data.evaluation: sized as the calibration set.
  std::optional<TokenShape> evaluation;
  std::uint64_t export_copied_bytes = 0;  // tokenizer and other files the export copies
  std::uint64_t max_shard_bytes = stages::kExportMaxShardBytes;
};

struct RankPlan {
  int rank = 0, stage = 0, replica = 0;
  BlockRange blocks;
  std::int64_t first_sequence = 0, sequences = 0;  // calibration sequences it holds
  std::int64_t micro_batches = 0;
  std::vector<MemoryTerm> terms;
  // Sum of the live terms per phase; 0 for a phase this rank never enters.
  std::array<std::uint64_t, kPhaseCount> host_by_phase{}, device_by_phase{};
  std::uint64_t peak_host = 0, peak_device = 0;  // over every phase, evaluation included
  Phase peak_phase = Phase::calibrate;           // where peak_host is reached
  std::uint64_t run_peak_host = 0;               // without the evaluation phases
  Phase run_peak_phase = Phase::calibrate;
  std::uint64_t evaluation_peak_host = 0;  // rank 0 with data.evaluation, else 0
  std::uint64_t block_checkpoint_disk = 0, hidden_checkpoint_disk = 0;
  // One line naming the rank, what it needs and what it has; empty when the rank fits.
  std::string refusal;

  bool fits() const { return refusal.empty(); }
  std::uint64_t checkpoint_disk() const { return block_checkpoint_disk + hidden_checkpoint_disk; }
  const MemoryTerm* term(std::string_view name) const;  // nullptr when absent
  // Host bytes of the mapped-file terms live in `phase`.
  std::uint64_t mapped_host(Phase phase) const;
};

// The export directory, from the shapes alone.
struct ExportDiskPlan {
  std::uint64_t tensor_bytes = 0;  // tensor data in the safetensors files
  std::uint64_t header_bytes = 0;  // safetensors length prefixes and JSON headers
  std::uint64_t index_bytes = 0;   // model.safetensors.index.json (0 with one shard)
  std::uint64_t config_bytes = 0;  // config.json with quantization_config
  std::uint64_t copied_bytes = 0;  // tokenizer and other files copied from the model directory
  int shards = 0;
  std::uint64_t total() const {
    return tensor_bytes + header_bytes + index_bytes + config_bytes + copied_bytes;
  }
};

struct RunPlan {
  Partition partition;
  int ranks_per_node = 1;
  std::uint64_t host_memory_per_rank = 0;
  std::optional<std::uint64_t> device_memory_per_gpu{};
  bool on_gpu = false;  // recipes have no device key yet: every run is on CPU
  DType weights_dtype = DType::f32, export_dtype = DType::f32;
  TokenShape calibration{};
  std::int64_t micro_batch = 0, micro_batches = 0;
  std::optional<TokenShape> evaluation{};
  std::vector<RankPlan> ranks{};
  std::uint64_t block_checkpoint_disk = 0, hidden_checkpoint_disk = 0;
  bool exporting = false;
  ExportDiskPlan export_disk{};      // zeros without an export
  std::vector<std::string> notes{};  // assumptions the plan had to make

  std::uint64_t checkpoint_disk() const { return block_checkpoint_disk + hidden_checkpoint_disk; }
  bool fits() const;
  std::vector<std::string> refusals() const;  // one line per rank that does not fit
};

// The plan of `recipe` on `config`. Throws sq::Error (naming the recipe and key) for a run the
// runner would refuse before starting: too many replicas for the micro-batches, a sequence
// longer than max_position_embeddings, an unexportable scheme, missing calibration sizes.
RunPlan plan_run(const io::ModelConfig& config, const io::Recipe& recipe,
                 const PlanOptions& options);

// The token file cut as the runner cuts it (seq_len given, else the .npy's second dim, else
// min(2048, max_position_embeddings); at most `max_sequences`); nullopt with the reason in `why`
// when the file cannot be read.
std::optional<TokenShape> probe_token_file(const std::string& path,
                                           std::optional<std::int64_t> seq_len,
                                           std::optional<std::int64_t> max_sequences,
                                           const io::ModelConfig& config, std::string& why);

// The config.json to plan with: `config_flag` when given, else <recipe.model_dir>/config.json.
// Throws sq::Error naming the missing file and saying that --config is required (plans from
// configs/models/*.json need no weights).
std::string plan_config_file(const io::Recipe& recipe, const std::string& config_flag);

// Bytes of the files of `model_dir` an export copies (not weights, not config.json, not hidden);
// 0 when the directory does not exist.
std::uint64_t export_copied_bytes(const std::string& model_dir);

// "123456", "512G", "1.5TiB", "64GB": K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024 (as Slurm's
// --mem), KB/MB/GB/TB powers of 1000. Throws sq::Error naming the text.
std::uint64_t parse_bytes(std::string_view text);

// Everything in the plan, for --json and for scripts.
nlohmann::json plan_json(const RunPlan& plan);

}  // namespace sq::pipeline
