#include "pipeline/runner.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <span>

#include "core/error.h"
#include "core/fault.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/token_file.h"
#include "kernels/cpu/ops.h"
#include "pipeline/block_state.h"
#include "pipeline/mpi_world.h"
#include "pipeline/partition.h"
#include "pipeline/run_state.h"
#include "pipeline/stop.h"
#include "stages/calibrate.h"
#include "stages/export.h"
#include "stages/quantize.h"
#include "stages/quantized_source.h"
#include "stages/smooth.h"
#include "stages/suppress.h"
#if SQ_WITH_CUDA
#include "model/device_forward.h"
#include "stages/device_calibrate.h"
#include "stages/device_quantize.h"
#endif

namespace sq::pipeline {
namespace fs = std::filesystem;
using i64 = std::int64_t;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
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

}  // namespace

namespace {

constexpr int kNoValue = -1;

// Sequence and micro-batch geometry of the calibration set. Replicas get whole micro-batches
// (Partition splits the micro-batches), so every micro-batch is computed exactly as in a
// one-rank run whatever the rank count: that is what makes the result byte-identical.
struct Geometry {
  i64 n_seq = 0, seq_len = 0, hidden = 0, micro_batch = 0, micro_batches = 0;
  struct Range {
    i64 first_seq = 0, end_seq = 0, first_mb = 0;
    i64 seqs() const { return end_seq - first_seq; }
  };
  Range of_replica(const Partition& p, int replica) const {
    const auto [m0, m1] = p.samples_of_replica(replica, micro_batches);
    return {m0 * micro_batch, std::min(m1 * micro_batch, n_seq), m0};
  }
};

// What one rank does for one replica pipeline (computed identically on every rank).
struct Work {
  bool active = false;
  int start = 0, end = 0;  // runs the forward of blocks [start, end)
  bool recv = false;       // its input comes from the previous stage (else embedding or files)
  bool send = false;       // its output goes to the next stage
};

std::vector<std::string> stage_names(const io::Recipe& r) {
  std::vector<std::string> out;
  for (const auto& s : r.stages) out.emplace_back(io::recipe_name(s.kind));
  return out;
}

// Peak resident set (VmHWM, mapped file pages included) of this process, in bytes.
i64 peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

// The replica-group view of the stats: max/min merged across the stage's replicas.
void merge_stats(stages::BlockStats& stats, Reducer& reducer) {
  if (reducer.replicas() == 1) return;
  for (auto& st : stats.sites) {
    if (st.empty()) continue;  // the same sites are observed on every replica
    reducer.max_inplace(st.absmax);
    reducer.min_inplace(st.min);
    reducer.max_inplace(st.max);
  }
}

// OpenBLAS's thread count before the first run changed it (its default: the cores it sees).
int library_blas_threads() {
  static const int threads = cpu::blas_threads();
  return threads;
}

class RankRun {
 public:
  RankRun(const io::Recipe& recipe, const RunOptions& options, Communicator& world)
      : recipe_(recipe), options_(options), world_(world) {}

  RunSummary run();

 private:
  // --- set-up (every rank; errors agreed before any work) ---
  void prepare();
  void validate_checkpoints();
  void plan_work();
  // --- work ---
  void process_blocks();
  void process_block(int b);
  void obtain_input();
  void forward(
      const model::BlockWeights& w, i64 first_local_mb,
      const std::function<std::unique_ptr<model::ActivationHook>(i64, const model::Batch&)>&
          make_hook,
      Tensor& hidden);
#if SQ_WITH_CUDA
  using DeviceHookMaker =
      std::function<std::unique_ptr<model::DeviceActivationHook>(i64, const model::Batch&)>;
  void forward_on_device(
      const model::BlockWeights& w, i64 first_local_mb, const DeviceHookMaker& make_hook,
      Tensor& hidden,
      model::DeviceBlockForward::Precision precision = model::DeviceBlockForward::Precision::model);
  // device: cuda: the block forward on this rank's GPU (node-local rank = GPU index).
  std::unique_ptr<model::DeviceBlockForward> device_;
#endif
  void run_stage(int b, int k, BlockState& state, bool in_range, bool writer);
  void commit_block(int b, const BlockState& state);
  BlockState load_block_state(int b, const std::string& digest, model::BlockWeights fp) const;
  void send_output();
  RunSummary finish();

  const io::Recipe& recipe_;
  RunOptions options_;
  Communicator& world_;
  int rank_ = 0;
  int local_rank_ = 0, local_ranks_ = 1;  // on this node (device: cuda only)
  std::optional<Communicator> node_;      // the ranks of this node (device: cuda only)
  int gpu_ = -1;                          // the CUDA device this rank uses

  std::optional<model::Model> model_;
  const io::ModelConfig* c_ = nullptr;
  DType dtype_ = DType::bf16;
  std::optional<stages::QuantScheme> scheme_;
  bool exporting_ = false, quant_inputs_ = false, wants_os_plus_ = false;
  TokenSet calib_;
  Geometry g_;
  std::optional<Partition> part_;
  int stage_ = 0, replica_ = 0;
  BlockRange blocks_;
  Geometry::Range mine_;
  RunIdentity identity_;
  std::optional<RunDirectory> dir_;
  bool resuming_ = false;
  int attempt_ = 0;
  std::optional<Manifest> manifest_;
  std::vector<ManifestEntry> entries_;
  std::unique_ptr<MpiReducer> reducer_;
  // The work phase's communicator: a duplicate of the world whose waits poll the stop control.
  std::optional<Communicator> work_comm_;
  std::optional<StopControl> stop_;

  // Gathered checkpoint state: stages done per block; per replica and block, whether saved
  // hidden states cover the replica's sequences at that block's input.
  std::vector<int> stages_done_;
  std::vector<std::vector<int>> hidden_saved_;
  std::map<int, std::string> block_digest_;                   // blocks this rank verified
  std::map<int, std::vector<ManifestEntry>> hidden_sources_;  // by block, for my replica
  std::vector<std::vector<Work>> work_;                       // [stage][replica]
  Work my_;

  Tensor hidden_;  // my replica's hidden states [seqs * seq_len, hidden]
  std::vector<float> inv_freq_;
  Clock::time_point start_ = Clock::now();
  std::map<std::string, double> seconds_;  // per stage / activity, for the summary
  int units_done_ = 0, units_todo_ = 0;    // (block, stage) units and propagations, for the ETA
  void unit_done(int b, std::string_view what, double seconds, i64 tokens);
};

// Runs `step` on every rank and agrees on the outcome before anyone goes on: the first failing
// rank rethrows its error, the others throw Stopped. Nothing can then wait in a collective for a
// rank that already left.
template <typename Step>
void agreed(const Communicator& world, Step step) {
  std::optional<Error> error;
  try {
    step();
  } catch (const Error& e) {
    error = e;
  } catch (const std::exception& e) {
    error = Error(e.what());
  }
  const int failed = world.first_failed_rank(error.has_value());
  if (failed < 0) return;
  if (failed == world.rank()) throw world.size() > 1 ? error->with_rank(failed) : *error;
  throw Stopped();
}

RunSummary RankRun::run() {
  rank_ = world_.rank();
  if (recipe_.device == io::Device::cuda) {
    node_.emplace(world_.split_node());
    local_rank_ = node_->rank();
    local_ranks_ = node_->size();
  }
  agreed(world_, [&] { prepare(); });
#if SQ_WITH_CUDA
  if (device_) {  // one rank per GPU, also when the launcher chose the devices
    i64 my_pci = -1;
    agreed(world_, [&] { my_pci = model::device_pci_id(gpu_); });
    const std::vector<i64> pci = node_->allgather({my_pci});
    agreed(world_, [&] {
      for (int other = 0; other < local_rank_; ++other)
        if (pci[static_cast<std::size_t>(other)] == pci[static_cast<std::size_t>(local_rank_)])
          fail(ErrorContext{.file = recipe_.file},
               "device: cuda: node-local ranks {} and {} use the same GPU (PCI id {:#x}); run one "
               "rank per GPU",
               other, local_rank_, pci[static_cast<std::size_t>(local_rank_)]);
    });
  }
#endif
  std::vector<i64> attempt = {0};
  agreed(world_, [&] {
    if (rank_ != 0) return;  // one rank creates the directory; the others learn the outcome
    if (!resuming_) dir_->create(identity_);
    attempt[0] = dir_->next_attempt();
  });
  world_.broadcast(attempt, 0);
  attempt_ = static_cast<int>(attempt[0]);
  manifest_.emplace(*dir_, attempt_, rank_);
  stop_.emplace(world_.dup());
  work_comm_.emplace(world_.dup());
  if (options_.chunk_bytes > 0) work_comm_->set_chunk_bytes(options_.chunk_bytes);
  work_comm_->set_wait_hook([this] { stop_->in_wait(); });
  if (rank_ == 0) {
    log::info("run {}: {} ({} blocks), {} x {} calibration tokens in micro-batches of {}; {}",
              recipe_.file, recipe_.model_dir, c_->num_layers, g_.n_seq, g_.seq_len, g_.micro_batch,
              resuming_ ? fmt::format("resuming {} (attempt {})", dir_->root(), attempt_)
                        : fmt::format("run directory {}", dir_->root()));
    log::info("{}", part_->describe());
  }
  try {
    validate_checkpoints();
    plan_work();
    process_blocks();
    return finish();
  } catch (const StopNow&) {
    // Every rank stops at a unit boundary (or abandons its unit); committed work stays.
    const bool clean = stop_->stop_all();
    if (rank_ == 0)
      log::warn(
          "stopped; every unit finished so far is checkpointed: continue with `shardquant "
          "run --resume {}`",
          dir_->root());
    if (!clean) {  // a send or collective was left behind: MPI_Finalize could wait for it
      std::fflush(stdout);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, kStoppedExitCode);
    }
    throw Interrupted();
  } catch (const Error& e) {
    if (world_.size() > 1) abort_all(e.with_rank(rank_));
    throw;
  } catch (const std::exception& e) {
    if (world_.size() > 1) abort_all(Error(e.what(), {.rank = rank_}));
    throw;
  }
}

void RankRun::prepare() {
  if (!options_.resume_dir.empty() && !options_.output_dir.empty())
    fail("run: --output is for a new run; --resume continues the run in its own directory");
  const std::string root = !options_.resume_dir.empty()   ? options_.resume_dir
                           : !options_.output_dir.empty() ? options_.output_dir
                                                          : recipe_.output_dir;
  resuming_ = !options_.resume_dir.empty();
  dir_.emplace(root);
  std::error_code ec;
  if (!resuming_ && fs::exists(root, ec) && !fs::is_empty(root, ec))
    fail(ErrorContext{.file = root},
         "run directory exists and is not empty; continue it with --resume or choose a new "
         "output");
  library_blas_threads();  // remember the default before changing it
  // One BLAS thread per rank unless the recipe says otherwise: OpenBLAS's results depend on its
  // thread count, and ranks share a node's cores anyway.
  cpu::set_blas_threads(recipe_.threads > 0 ? recipe_.threads : 1);
  model_.emplace(model::Model::open(recipe_.model_dir));
  c_ = &model_->config();
  if (recipe_.device == io::Device::cuda) {
#if SQ_WITH_CUDA
    try {
      gpu_ = model::select_device(local_rank_, local_ranks_);
      device_ = std::make_unique<model::DeviceBlockForward>(*c_);
      log::info(
          "rank {}: block forward on CUDA device {} (node-local rank {} of {}), linears in {} "
          "(from config.json torch_dtype)",
          rank_, gpu_, local_rank_, local_ranks_, dtype_name(device_->gemm_dtype()));
    } catch (const Error& e) {
      throw e.with_file(recipe_.file);
    }
#else
    fail(ErrorContext{.file = recipe_.file, .key = "device"},
         "device: cuda, but this build has no CUDA backend (build on a machine with the CUDA "
         "toolkit, or set device: cpu)");
#endif
  }
  dtype_ = recipe_.export_.dtype.value_or(c_->torch_dtype);
  scheme_.emplace(stages::scheme_from_recipe(recipe_.scheme, dtype_));
  exporting_ = recipe_.export_.format == io::ExportFormat::compressed_tensors;
  if (exporting_) {
    try {
      stages::check_exportable(export_scheme(recipe_.scheme, dtype_));
    } catch (const Error& e) {
      throw e.with_file(recipe_.file);
    }
  }
  quant_inputs_ = recipe_.calibration.inputs == io::CalibrationInputs::quant;
  wants_os_plus_ = recipe_.find_stage(io::StageKind::os_plus) != nullptr;
  calib_ = load_token_set(recipe_.data.calibration, recipe_.data.seq_len,
                          recipe_.data.calibration_sequences, *c_);
  if (recipe_.data.evaluation)
    load_token_set(*recipe_.data.evaluation, recipe_.data.seq_len, {}, *c_);
  g_ = {.n_seq = calib_.n_seq,
        .seq_len = calib_.seq_len,
        .hidden = c_->hidden_size,
        .micro_batch = recipe_.data.micro_batch,
        .micro_batches = (calib_.n_seq + recipe_.data.micro_batch - 1) / recipe_.data.micro_batch};
  const int size = world_.size();
  const int replicas =
      options_.replicas > 0 ? options_.replicas : Partition::default_replicas(c_->num_layers, size);
  part_.emplace(Partition::for_model(*c_, size, replicas));
  if (g_.micro_batches < replicas)
    fail(ErrorContext{.file = recipe_.file, .key = "data.micro_batch"},
         "{} calibration micro-batches of {} sequences cannot feed {} data-parallel replicas; use "
         "smaller micro-batches or fewer replicas",
         g_.micro_batches, g_.micro_batch, replicas);
  stage_ = part_->stage_of(rank_);
  replica_ = part_->replica_of(rank_);
  blocks_ = part_->blocks_of(rank_);
  mine_ = g_.of_replica(*part_, replica_);
  identity_ = identify_run(recipe_);
  if (resuming_) dir_->check_resume(identity_);
  inv_freq_ = model::rope_inv_freq(*c_);
}

void RankRun::validate_checkpoints() {
  const int L = c_->num_layers;
  // Every rank reads every manifest (small); each verifies only the files it owns.
  if (resuming_) entries_ = dir_->read_manifests();
  std::vector<i64> mine(static_cast<std::size_t>(2 * L), kNoValue);
  const bool writer = replica_ == 0;
  for (int b = blocks_.begin; b < blocks_.end; ++b) {
    if (writer) {
      mine[b] = 0;
      if (resuming_) {
        if (auto e = verified_entry(*dir_, entries_, dir_->block_file(b))) {
          mine[b] = std::min<i64>(e->stages_done, static_cast<i64>(recipe_.stages.size()));
          block_digest_[b] = e->digest;
        }
      }
    }
    // Saved hidden states entering block b that cover my replica's sequences.
    mine[L + b] = 0;
    if (!resuming_ || b == 0) continue;
    std::vector<ManifestEntry> sources;
    std::set<std::string> seen;
    for (const auto& e : entries_) {
      if (e.kind != "hidden" || e.block != b || e.end_seq <= mine_.first_seq ||
          e.first_seq >= mine_.end_seq || !seen.insert(e.file).second)
        continue;
      if (auto v = verified_entry(*dir_, entries_, e.file)) sources.push_back(*v);
    }
    std::sort(sources.begin(), sources.end(),
              [](const auto& x, const auto& y) { return x.first_seq < y.first_seq; });
    i64 covered = mine_.first_seq;
    std::vector<ManifestEntry> used;
    for (const auto& s : sources) {
      if (s.first_seq > covered) break;
      if (s.end_seq > covered) {
        used.push_back(s);
        covered = s.end_seq;
      }
    }
    if (covered >= mine_.end_seq) {
      mine[L + b] = 1;
      hidden_sources_[b] = std::move(used);
    }
  }
  const auto all = world_.allgather(mine);
  stages_done_.assign(static_cast<std::size_t>(L), 0);
  hidden_saved_.assign(static_cast<std::size_t>(part_->replicas()),
                       std::vector<int>(static_cast<std::size_t>(L), 0));
  for (int b = 0; b < L; ++b) {
    const int stage = part_->stage_owning(b);
    stages_done_[b] = static_cast<int>(all[part_->rank_of(stage, 0) * 2 * L + b]);
    for (int r = 0; r < part_->replicas(); ++r)
      hidden_saved_[r][b] = static_cast<int>(all[part_->rank_of(stage, r) * 2 * L + L + b]);
  }
  if (resuming_ && rank_ == 0) {
    int complete = 0;
    for (int b = 0; b < L; ++b) complete += stages_done_[b] == int(recipe_.stages.size());
    log::info("resume: {} of {} blocks complete in the checkpoints", complete, L);
  }
}

// Which blocks each rank must run forward, and where their inputs come from. A block needs its
// input hidden states while its calibration is not done; a stage runs forward from the latest
// point it can start from (the embedding, saved hidden states, or the previous stage's output)
// up to its last such block, or to its end when the next stage needs its output.
void RankRun::plan_work() {
  const int S = part_->stages(), R = part_->replicas();
  work_.assign(static_cast<std::size_t>(S), std::vector<Work>(static_cast<std::size_t>(R)));
  for (int r = 0; r < R; ++r) {
    bool need_out = false;
    for (int s = S - 1; s >= 0; --s) {
      const BlockRange range = part_->blocks_of_stage(s);
      int first = range.end, last = -1;
      for (int b = range.begin; b < range.end; ++b) {
        if (stages_done_[b] >= 1) continue;  // calibrated: the remaining stages need no input
        first = std::min(first, b);
        last = b;
      }
      Work w;
      const int end = need_out ? range.end : last + 1;
      if (end > range.begin) {
        w.active = true;
        w.end = end;
        w.send = need_out;
        w.start = -1;
        for (int b = std::min(first, end - 1); b >= range.begin && w.start < 0; --b)
          if (b == 0 || hidden_saved_[r][b]) w.start = b;
        if (w.start < 0) {
          w.start = range.begin;
          w.recv = true;
        }
      }
      need_out = w.recv;
      work_[s][r] = w;
    }
  }
  my_ = work_[stage_][replica_];
  const int n_stages = static_cast<int>(recipe_.stages.size());
  for (int b = blocks_.begin; b < blocks_.end; ++b) {
    const int done = stages_done_[b];
    const bool in_range = my_.active && b >= my_.start && b < my_.end;
    units_todo_ += replica_ == 0 ? n_stages - done : done == 0;
    units_todo_ += in_range && (quant_inputs_ || done >= 1);  // a propagation pass
  }
  if (my_.active)
    log::info("blocks {}-{}: forward of blocks {}-{} on sequences [{}, {}), input from {}{}",
              blocks_.begin, blocks_.end - 1, my_.start, my_.end - 1, mine_.first_seq,
              mine_.end_seq,
              my_.recv         ? fmt::format("rank {}", part_->prev_rank(rank_))
              : my_.start == 0 ? std::string("the embedding")
                               : std::string("saved hidden states"),
              my_.send ? fmt::format(", output to rank {}", part_->next_rank(rank_)) : "");
  else
    log::info("blocks {}-{}: no forward needed", blocks_.begin, blocks_.end - 1);
}

void RankRun::forward(
    const model::BlockWeights& w, i64 first_local_mb,
    const std::function<std::unique_ptr<model::ActivationHook>(i64, const model::Batch&)>&
        make_hook,
    Tensor& hidden) {
#if SQ_WITH_CUDA
  if (device_) {  // the device path takes device hooks (forward_on_device)
    SQ_CHECK(!make_hook, "a host activation hook on the CUDA block forward");
    forward_on_device(w, first_local_mb, nullptr, hidden);
    return;
  }
#endif
  const i64 H = g_.hidden, n = mine_.seqs();
  const auto t0 = Clock::now();
  for (i64 first = 0, mb = first_local_mb; first < n; first += g_.micro_batch, ++mb) {
    fault::point("forward.micro_batch");
    if (first > 0) stop_->in_unit(since(t0), double(first) / double(n));
    const i64 count = std::min(g_.micro_batch, n - first);
    const model::Batch batch{.n_seq = count, .seq_len = g_.seq_len};
    Tensor slice = Tensor::zeros(DType::f32, {count * g_.seq_len, H});
    float* dst = hidden.mutable_data<float>() + first * g_.seq_len * H;
    std::memcpy(slice.mutable_data<float>(), dst, slice.nbytes());
    auto hook = make_hook ? make_hook(mb, batch) : nullptr;
    model::block_forward(*c_, w, batch, slice, {.inv_freq = inv_freq_, .hook = hook.get()});
    std::memcpy(dst, slice.data<float>(), slice.nbytes());
  }
}

#if SQ_WITH_CUDA
void RankRun::forward_on_device(const model::BlockWeights& w, i64 first_local_mb,
                                const DeviceHookMaker& make_hook, Tensor& hidden,
                                model::DeviceBlockForward::Precision precision) {
  const i64 H = g_.hidden, n = mine_.seqs();
  const auto t0 = Clock::now();
  device_->load(w, precision);
  for (i64 first = 0, mb = first_local_mb; first < n; first += g_.micro_batch, ++mb) {
    fault::point("forward.micro_batch");
    if (first > 0) stop_->in_unit(since(t0), double(first) / double(n));
    const i64 count = std::min(g_.micro_batch, n - first);
    const model::Batch batch{.n_seq = count, .seq_len = g_.seq_len};
    auto hook = make_hook ? make_hook(mb, batch) : nullptr;
    device_->forward(batch, hidden.mutable_data<float>() + first * g_.seq_len * H, hook.get());
  }
}
#endif

void RankRun::obtain_input() {
  const auto t0 = Clock::now();
  const i64 H = g_.hidden, rows = mine_.seqs() * g_.seq_len;
  if (my_.start == 0) {
    const auto ids = std::span<const std::uint32_t>(calib_.ids)
                         .subspan(static_cast<std::size_t>(mine_.first_seq * g_.seq_len),
                                  static_cast<std::size_t>(rows));
    hidden_ = model::embed(*c_, model_->load_embedding(), ids,
                           {.n_seq = mine_.seqs(), .seq_len = g_.seq_len});
  } else if (my_.recv) {
    hidden_ = Tensor::zeros(DType::f32, {rows, H});
    const int prev = part_->prev_rank(rank_);
    for (i64 first = 0; first < mine_.seqs(); first += g_.micro_batch) {
      const i64 count = std::min(g_.micro_batch, mine_.seqs() - first);
      work_comm_->recv(hidden_.mutable_data<float>() + first * g_.seq_len * H,
                       count * g_.seq_len * H, prev, Tag::hidden);
    }
    // Saved where the pipeline crosses ranks, so a resume can start here.
    io::CheckpointHeader header{.kind = "hidden",
                                .recipe_hash = identity_.recipe_hash,
                                .model_fingerprint = identity_.model_fingerprint,
                                .stages = stage_names(recipe_),
                                .block = my_.start};
    io::CheckpointWriter w(header);
    w.put("/hidden", hidden_);
    w.put_attribute("first_seq", std::to_string(mine_.first_seq));
    w.put_attribute("end_seq", std::to_string(mine_.end_seq));
    const std::string file = dir_->hidden_file(my_.start, mine_.first_seq, mine_.end_seq);
    const std::string digest = w.commit(dir_->absolute(file));
    fault::point("checkpoint.committed");
    manifest_->record({.file = file,
                       .digest = digest,
                       .kind = "hidden",
                       .block = my_.start,
                       .first_seq = mine_.first_seq,
                       .end_seq = mine_.end_seq});
  } else {
    hidden_ = Tensor::zeros(DType::f32, {rows, H});
    for (const auto& e : hidden_sources_.at(my_.start)) {
      const auto f = io::CheckpointReader::open(dir_->absolute(e.file), e.digest);
      const Tensor t = f.get("/hidden");
      const i64 lo = std::max(e.first_seq, mine_.first_seq),
                hi = std::min(e.end_seq, mine_.end_seq);
      if (t.ndim() != 2 || t.shape()[1] != H ||
          t.shape()[0] != (e.end_seq - e.first_seq) * g_.seq_len)
        fail(ErrorContext{.file = f.path(), .tensor = "/hidden"},
             "shape does not match {} sequences of {} x {}", e.end_seq - e.first_seq, g_.seq_len,
             H);
      std::memcpy(hidden_.mutable_data<float>() + (lo - mine_.first_seq) * g_.seq_len * H,
                  t.data<float>() + (lo - e.first_seq) * g_.seq_len * H,
                  static_cast<std::size_t>((hi - lo) * g_.seq_len * H) * sizeof(float));
    }
  }
  seconds_["input"] += since(t0);
}

void RankRun::send_output() {
  const auto t0 = Clock::now();
  const i64 H = g_.hidden;
  const int next = part_->next_rank(rank_);
  for (i64 first = 0; first < mine_.seqs(); first += g_.micro_batch) {
    const i64 count = std::min(g_.micro_batch, mine_.seqs() - first);
    work_comm_->send(hidden_.data<float>() + first * g_.seq_len * H, count * g_.seq_len * H, next,
                     Tag::hidden);
  }
  hidden_ = Tensor();
  seconds_["send"] += since(t0);
}

BlockState RankRun::load_block_state(int b, const std::string& digest,
                                     model::BlockWeights fp) const {
  const auto f = io::CheckpointReader::open(dir_->absolute(dir_->block_file(b)), digest);
  const auto& h = f.header();
  if (h.kind != "block" || h.block != b || h.recipe_hash != identity_.recipe_hash ||
      h.model_fingerprint != identity_.model_fingerprint)
    fail(ErrorContext{.file = f.path()}, "header does not belong to block {} of this run", b);
  return read_block_state(f, *c_, std::move(fp), *scheme_);
}

void RankRun::commit_block(int b, const BlockState& state) {
  const auto t0 = Clock::now();
  io::CheckpointHeader header{.kind = "block",
                              .recipe_hash = identity_.recipe_hash,
                              .model_fingerprint = identity_.model_fingerprint,
                              .stages = stage_names(recipe_),
                              .block = b};
  const std::string file = dir_->block_file(b);
  const std::string digest = block_checkpoint(header, state).commit(dir_->absolute(file));
  fault::point("checkpoint.committed");  // renamed into place, not yet in the manifest
  manifest_->record({.file = file,
                     .digest = digest,
                     .kind = "block",
                     .block = b,
                     .stages_done = state.stages_done});
  block_digest_[b] = digest;
  seconds_["checkpoint"] += since(t0);
}

void RankRun::run_stage(int b, int k, BlockState& state, bool in_range, bool writer) {
  stop_->at_boundary();
  const auto& stage = recipe_.stages[static_cast<std::size_t>(k)];
  const auto t0 = Clock::now();
  switch (stage.kind) {
    case io::StageKind::calibrate: {
      SQ_CHECK(in_range, "block {} needs calibration but has no input", b);
      // With FP inputs the calibration pass is also the propagation: its outputs are the next
      // block's inputs. With quantized inputs they come from the quantized block afterwards.
      Tensor scratch = quant_inputs_ ? hidden_.clone() : Tensor();
      Tensor& h = quant_inputs_ ? scratch : hidden_;
#if SQ_WITH_CUDA
      if (device_) {
        // Statistics stay on the GPU for the whole pass; the OS+ search inputs (first
        // micro-batch only) are copied to the host.
        stages::DeviceBlockStats device_stats;
        forward_on_device(
            state.block.weights, mine_.first_mb,
            [&](i64 global_mb,
                const model::Batch& batch) -> std::unique_ptr<model::DeviceActivationHook> {
              struct Hooks : model::DeviceActivationHook {
                std::unique_ptr<stages::CaptureOsPlusInputs> capture;
                std::optional<model::HostHookBridge> bridge;
                std::optional<stages::DeviceStatsObserver> observer;
                void at(model::Site s, float* x, i64 r, i64 cc, cudaStream_t st) override {
                  observer->at(s, x, r, cc, st);
                }
              };
              auto hooks = std::make_unique<Hooks>();
              if (global_mb == 0 && wants_os_plus_) {
                hooks->capture =
                    std::make_unique<stages::CaptureOsPlusInputs>(state.os_inputs, batch);
                hooks->bridge.emplace(
                    *hooks->capture, false,
                    std::initializer_list<model::Site>{model::Site::qkv_in, model::Site::mlp_in});
              }
              hooks->observer.emplace(device_stats, hooks->bridge ? &*hooks->bridge : nullptr);
              return hooks;
            },
            h);
        device_stats.merge_into(state.stats, device_->stream());
        merge_stats(state.stats, *reducer_);
        break;
      }
#endif
      forward(
          state.block.weights, mine_.first_mb,
          [&](i64 global_mb, const model::Batch& batch) -> std::unique_ptr<model::ActivationHook> {
            auto observer = std::make_unique<stages::StatsObserver>(state.stats);
            if (global_mb != 0 || !wants_os_plus_) return observer;
            struct Both : model::ActivationHook {
              std::unique_ptr<stages::StatsObserver> obs;
              std::unique_ptr<stages::CaptureOsPlusInputs> cap;
              void at(model::Site s, float* x, i64 r, i64 cc) override { cap->at(s, x, r, cc); }
            };
            auto both = std::make_unique<Both>();
            both->obs = std::move(observer);
            both->cap = std::make_unique<stages::CaptureOsPlusInputs>(state.os_inputs, batch,
                                                                      both->obs.get());
            return both;
          },
          h);
      merge_stats(state.stats, *reducer_);
      break;
    }
    case io::StageKind::smoothquant: {
      auto t =
          stages::smoothquant_block(*c_, state.block.weights, state.stats,
                                    stage.alpha.value_or(io::default_smoothquant_alpha(c_->arch)));
      for (auto& x : t) state.transforms.push_back(std::move(x));
      break;
    }
    case io::StageKind::os_plus: {
      auto r = stages::os_plus_block(*c_, state.block.weights, state.stats, state.os_inputs,
                                     *scheme_, {.grid = stage.grid, .floor = stage.floor});
      for (auto& x : r.transforms) state.transforms.push_back(std::move(x));
      log::info(
          "block {}/{} os_plus: qkv threshold {:.3g} (loss {:.3g} -> {:.3g}), mlp threshold "
          "{:.3g} (loss {:.3g} -> {:.3g}){}",
          b + 1, c_->num_layers, r.qkv.threshold, r.qkv.loss_unscaled, r.qkv.loss, r.mlp.threshold,
          r.mlp.loss_unscaled, r.mlp.loss, r.shifted ? ", shifted" : "");
      break;
    }
    case io::StageKind::quantize_weights:
      stages::set_static_activation_params(state.block, state.stats, *scheme_);
      stages::quantize_block_weights(state.block, *scheme_);
      break;
  }
  state.stages_done = k + 1;
  // The OS+ search inputs are kept only while an os_plus stage is still to come.
  bool os_plus_ahead = false;
  for (std::size_t j = static_cast<std::size_t>(k) + 1; j < recipe_.stages.size(); ++j)
    os_plus_ahead |= recipe_.stages[j].kind == io::StageKind::os_plus;
  if (!os_plus_ahead) state.os_inputs = {};
  const double dt = since(t0);
  const std::string name(io::recipe_name(stage.kind));
  seconds_[name] += dt;
  if (writer) commit_block(b, state);
  unit_done(
      b, name, since(t0),
      stage.kind == io::StageKind::calibrate ? mine_.seqs() * g_.seq_len : g_.n_seq * g_.seq_len);
}

// One line per unit, whole lines only (a Slurm log is a file: no carriage-return bars).
void RankRun::unit_done(int b, std::string_view what, double seconds, i64 tokens) {
  ++units_done_;
  const double elapsed = since(start_);
  const double eta = elapsed / units_done_ * std::max(0, units_todo_ - units_done_);
  log::info("block {}/{} {:<16} {:7.3f} s {:10.0f} tokens/s  elapsed {:.1f} s  ETA {:.1f} s", b + 1,
            c_->num_layers, what, seconds, double(tokens) / std::max(seconds, 1e-9), elapsed, eta);
}

void RankRun::process_block(int b) {
  const int n_stages = static_cast<int>(recipe_.stages.size());
  const int done = stages_done_[b];
  const bool writer = replica_ == 0;
  const bool in_range = my_.active && b >= my_.start && b < my_.end;
  if (!in_range && (!writer || done == n_stages)) return;
  stop_->at_boundary();
  fault::point("block.start");
  const auto t_block = Clock::now();
  if (in_range && b == my_.start) obtain_input();
  model::BlockWeights fp = model_->load_block(b);
  // FP inputs, calibration already done: propagate through the original FP weights.
  if (in_range && !quant_inputs_ && done >= 1) {
    stop_->at_boundary();
    const auto t0 = Clock::now();
    forward(fp, mine_.first_mb, nullptr, hidden_);
    seconds_["propagate"] += since(t0);
    unit_done(b, "propagate", since(t0), mine_.seqs() * g_.seq_len);
  }
  BlockState state;
  if (done > 0 && writer) {
    state = load_block_state(b, block_digest_.at(b), std::move(fp));
    log::info("block {}/{}: {} of {} stages restored from {}", b + 1, c_->num_layers, done,
              n_stages, dir_->block_file(b));
  } else {
    state.block.weights = fp;
  }
  // The writer's stages replace tensors as they transform them: holding the originals too would
  // double the block's memory. Other replicas keep them to rebuild the finished block later.
  if (writer) fp = {};
  if (done == 0) run_stage(b, 0, state, in_range, writer);  // calibrate: every replica
  if (writer)
    for (int k = std::max(done, 1); k < n_stages; ++k) run_stage(b, k, state, in_range, writer);
  if (in_range && quant_inputs_) {
    // Quantized inputs: the next block sees this block quantized. The writer tells the other
    // replicas which file holds the finished block; they read it rather than recompute it.
    const int stage_rank0 = part_->rank_of(stage_, 0);
    if (writer) {
      const std::string& digest = block_digest_.at(b);
      for (int r = 1; r < part_->replicas(); ++r) {
        const Work& w = work_[stage_][r];
        if (w.active && b >= w.start && b < w.end)
          work_comm_->send(reinterpret_cast<const std::uint8_t*>(digest.data()),
                           static_cast<i64>(digest.size()), part_->rank_of(stage_, r),
                           Tag::control);
      }
    } else {
      std::string digest(64, '\0');
      work_comm_->recv(reinterpret_cast<std::uint8_t*>(digest.data()), 64, stage_rank0,
                       Tag::control);
      state = load_block_state(b, digest, std::move(fp));
    }
    stop_->at_boundary();
    const auto t0 = Clock::now();
#if SQ_WITH_CUDA
    if (device_) {
      // fp32 GEMMs: the dequantized weights and activations need more bits than bf16 / fp16.
      // One hook per micro-batch, as on the CPU (its static scales are a few bytes to upload).
      forward_on_device(
          state.block.weights, mine_.first_mb,
          [&](i64, const model::Batch&) -> std::unique_ptr<model::DeviceActivationHook> {
            return std::make_unique<stages::DeviceQuantizeActivations>(state.block, *scheme_);
          },
          hidden_, model::DeviceBlockForward::Precision::fp32);
    } else
#endif
      forward(
          state.block.weights, mine_.first_mb,
          [&](i64, const model::Batch&) -> std::unique_ptr<model::ActivationHook> {
            return std::make_unique<stages::QuantizeActivations>(state.block, *scheme_);
          },
          hidden_);
    seconds_["propagate"] += since(t0);
    unit_done(b, "propagate", since(t0), mine_.seqs() * g_.seq_len);
  }
  log::debug("block {}/{} done in {:.2f} s", b + 1, c_->num_layers, since(t_block));
  if (in_range && b == my_.end - 1 && my_.send) send_output();
}

void RankRun::process_blocks() {
  Communicator replicas = work_comm_->split(stage_, replica_);
  reducer_ = std::make_unique<MpiReducer>(std::move(replicas));
  fault::arm_timer();
  for (int b = blocks_.begin; b < blocks_.end; ++b) process_block(b);
  hidden_ = Tensor();
}

RunSummary RankRun::finish() {
  work_comm_->barrier();               // every block file is committed and recorded
  work_comm_->set_wait_hook(nullptr);  // past this point the run finishes: no more stops
  RunSummary summary;
  const int L = c_->num_layers;
  const int n_stages = static_cast<int>(recipe_.stages.size());
  if (rank_ == 0) {
    log::info("run: all {} blocks quantized in {:.1f} s", L, since(start_));
    // The export reads the blocks back from their checkpoints: whatever computed them (this
    // attempt, an earlier one, any rank layout), the bytes exported are the same.
    const auto entries = dir_->read_manifests();
    std::vector<std::string> digests(static_cast<std::size_t>(L));
    for (int b = 0; b < L; ++b) {
      const auto e = verified_entry(*dir_, entries, dir_->block_file(b));
      if (!e || e->stages_done != n_stages)
        fail(ErrorContext{.file = dir_->absolute(dir_->block_file(b))},
             "block {} is not complete after the run", b);
      digests[b] = e->digest;
    }
    auto load = [&](int b) {
      BlockState s = load_block_state(b, digests[b], model_->load_block(b));
      return std::move(s.block);
    };
    std::unique_ptr<model::BlockSource> quantized;
    if (exporting_) {
      summary.export_dir = (fs::path(dir_->root()) / "export").string();
      std::error_code ec;
      fs::remove_all(summary.export_dir, ec);  // an earlier attempt's partial export
      {
        log::ScopedTimer t("export (compressed-tensors)");
        // One block in memory at a time, read back from its checkpoint file.
        stages::export_compressed_tensors(*model_, load, export_scheme(recipe_.scheme, dtype_),
                                          summary.export_dir);
      }
      if (recipe_.data.evaluation) {
        // Evaluate what was exported, with every rounding the file holds.
        auto loaded = stages::load_compressed_tensors(summary.export_dir);
        quantized = std::make_unique<stages::QuantizedSource>(
            loaded.config, loaded.embedding, loaded.head, std::move(loaded.blocks), *scheme_);
      }
    } else if (recipe_.data.evaluation) {
      std::vector<stages::QuantizedBlock> blocks;
      for (int b = 0; b < L; ++b) blocks.push_back(load(b));
      quantized = std::make_unique<stages::QuantizedSource>(
          *c_, model_->load_embedding(), model_->load_head(), std::move(blocks), *scheme_);
    }
    if (recipe_.data.evaluation) {
      // The evaluation runs on rank 0 alone (the others wait), with the thread count `eval`
      // uses, so that `shardquant eval --reference` reproduces these figures exactly.
      cpu::set_blas_threads(recipe_.threads > 0 ? recipe_.threads : library_blas_threads());
      const TokenSet eval = load_token_set(*recipe_.data.evaluation, recipe_.data.seq_len, {}, *c_);
      log::info("evaluation: {} x {} tokens from {}", eval.n_seq, eval.seq_len,
                *recipe_.data.evaluation);
      summary.comparison = model::compare(*quantized, model::CheckpointSource(*model_), eval.ids,
                                          eval.n_seq, eval.seq_len);
      summary.evaluated = true;
      summary.metrics_file = (fs::path(dir_->root()) / "metrics.json").string();
      report_comparison(summary.comparison, "quantized", "fp", summary.metrics_file);
    }
  }
  // Summary per rank and activity: gathered (times in microseconds) and printed by rank 0.
  static const std::vector<std::string> kActivities = {
      "calibrate",  "smoothquant", "os_plus", "quantize_weights",
      "checkpoint", "propagate",   "input",   "send"};
  std::vector<i64> mine;
  for (const auto& a : kActivities) mine.push_back(static_cast<i64>(seconds_[a] * 1e6));
  mine.push_back(peak_rss_bytes());
  const auto all = world_.allgather(mine);
  if (rank_ == 0) {
    const std::size_t n = mine.size();
    for (int r = 0; r < world_.size(); ++r) {
      std::string line = fmt::format("summary rank {} (stage {}, replica {}, blocks {}-{}):", r,
                                     part_->stage_of(r), part_->replica_of(r),
                                     part_->blocks_of(r).begin, part_->blocks_of(r).end - 1);
      for (std::size_t a = 0; a < kActivities.size(); ++a) {
        const double sec = double(all[r * n + a]) / 1e6;
        if (sec > 0) line += fmt::format(" {} {:.2f} s,", kActivities[a], sec);
      }
      log::info("{} peak RSS {:.1f} MiB", line, double(all[r * n + n - 1]) / (1 << 20));
    }
    for (int r = 0; r < world_.size(); ++r)
      fmt::print("rank {} peak RSS (VmHWM) {} bytes\n", r, all[r * n + n - 1]);
    std::fflush(stdout);
    log::info("run: done in {:.1f} s{}", since(start_),
              exporting_ ? fmt::format("; export in {}", summary.export_dir) : "");
  }
  return summary;
}

}  // namespace

RunSummary run_recipe(const io::Recipe& recipe, const RunOptions& options) {
  MpiWorld& mpi = process_world();
  StopControl::install_signal_handlers();
  log::set_rank(mpi.size() > 1 ? mpi.rank() : -1);
  fault::set_rank(mpi.rank());
  struct RestoreThreads {  // callers (tests, benchmarks) get the library's default back
    ~RestoreThreads() { cpu::set_blas_threads(library_blas_threads()); }
  } restore;
  library_blas_threads();
  RankRun run(recipe, options, mpi.comm());
  return run.run();
}

}  // namespace sq::pipeline
