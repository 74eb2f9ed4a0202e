// Partition: the rank grid (pipeline stages x data-parallel replicas) and the balanced split of
// decoder blocks into contiguous stage ranges.
#include "pipeline/partition.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/tensor.h"
#include "model/weights.h"

namespace sq::pipeline {
namespace {

constexpr std::uint64_t kInfeasible = std::numeric_limits<std::uint64_t>::max();
// Sums of squared loads; __extension__ keeps -Wpedantic quiet about the GCC/Clang type.
__extension__ typedef unsigned __int128 u128;

// Parameters in billions, for the human summary.
std::string billions(std::uint64_t params) {
  return fmt::format("{:.3f}B", static_cast<double>(params) / 1e9);
}

}  // namespace

Partition Partition::make(const std::vector<std::uint64_t>& block_params,
                          std::uint64_t embedding_params, std::uint64_t head_params, int world_size,
                          int replicas) {
  const int n = static_cast<int>(block_params.size());
  if (n == 0) fail("cannot partition a model with no decoder blocks");
  if (world_size < 1) fail("cannot partition over {} ranks: at least one is needed", world_size);
  if (replicas < 1) fail("cannot partition with {} replicas: at least one is needed", replicas);
  if (world_size % replicas != 0)
    fail("{} ranks cannot form {} data-parallel replicas: {} is not a multiple of {}", world_size,
         replicas, world_size, replicas);
  const int stages = world_size / replicas;
  if (stages > n)
    fail(
        "{} ranks with {} replicas make {} pipeline stages, more than the {} blocks of the model "
        "(a stage with no block has nothing to do); use at least {} replicas",
        world_size, replicas, stages, n, default_replicas(n, world_size));

  std::vector<std::uint64_t> prefix(n + 1, 0);
  for (int b = 0; b < n; ++b) prefix[b + 1] = prefix[b] + block_params[b];
  // Stage s over blocks [a, b): the embedding rides with stage 0, the head with the last stage
  // (both may be the same stage).
  auto load = [&](int s, int a, int b) {
    std::uint64_t l = prefix[b] - prefix[a];
    if (s == 0) l += embedding_params;
    if (s == stages - 1) l += head_params;
    return l;
  };

  // best[k][i]: the smallest possible largest load when blocks [i, n) form the last k stages
  // (stages - k .. stages - 1), each non-empty; kInfeasible when too few blocks remain. Exact, and
  // O(stages * n^2), which is nothing for the hundred-odd blocks of real models.
  std::vector<std::vector<std::uint64_t>> best(stages + 1,
                                               std::vector<std::uint64_t>(n + 1, kInfeasible));
  for (int i = 0; i < n; ++i) best[1][i] = load(stages - 1, i, n);
  for (int k = 2; k <= stages; ++k) {
    const int s = stages - k;
    for (int i = 0; i + k <= n; ++i) {
      std::uint64_t b = kInfeasible;
      for (int e = i + 1; e + (k - 1) <= n; ++e)
        b = std::min(b, std::max(load(s, i, e), best[k - 1][e]));
      best[k][i] = b;
    }
  }
  const std::uint64_t optimum = best[stages][0];

  // Many splits often reach the optimum (identical blocks: 7 blocks over 3 stages is met by
  // 1+3+3 as well as 2+2+3), and the bare min-max would happily leave stage 0 nearly idle. So
  // among the optimal splits take the one with the smallest sum of squared loads (the most even),
  // and among those the lexicographically smallest block counts (stage 0, stage 1, ...): earlier
  // stages take fewer blocks. evenness[k][i] is that smallest sum for blocks [i, n) as the last k
  // stages, each load <= optimum. Squares of loads near 1e12 overflow 64 bits, hence 128.
  constexpr u128 kNoSplit = ~u128{0};
  auto square = [](std::uint64_t x) { return static_cast<u128>(x) * x; };
  std::vector<std::vector<u128>> evenness(stages + 1, std::vector<u128>(n + 1, kNoSplit));
  for (int i = 0; i < n; ++i) {
    const std::uint64_t l = load(stages - 1, i, n);
    if (l <= optimum) evenness[1][i] = square(l);
  }
  for (int k = 2; k <= stages; ++k) {
    const int s = stages - k;
    for (int i = 0; i + k <= n; ++i) {
      for (int e = i + 1; e + (k - 1) <= n; ++e) {
        const std::uint64_t l = load(s, i, e);
        if (l > optimum || evenness[k - 1][e] == kNoSplit) continue;
        evenness[k][i] = std::min(evenness[k][i], square(l) + evenness[k - 1][e]);
      }
    }
  }

  // Each stage ends as early as it can while staying on a split that reaches both minima; the
  // first such end gives the lexicographically smallest counts.
  Partition p;
  p.replicas_ = replicas;
  p.embedding_params_ = embedding_params;
  p.head_params_ = head_params;
  p.stage_begin_.push_back(0);
  int begin = 0;
  for (int s = 0; s + 1 < stages; ++s) {
    const int k = stages - s;  // stages from this one to the last
    int end = begin + 1;
    for (; end + (k - 1) <= n; ++end) {
      const std::uint64_t l = load(s, begin, end);
      if (l <= optimum && evenness[k - 1][end] != kNoSplit &&
          square(l) + evenness[k - 1][end] == evenness[k][begin])
        break;
    }
    SQ_CHECK(end + (k - 1) <= n, "stage {} found no end within the optimum", s);
    p.stage_params_.push_back(load(s, begin, end));
    p.stage_begin_.push_back(end);
    begin = end;
  }
  p.stage_params_.push_back(load(stages - 1, begin, n));
  p.stage_begin_.push_back(n);
  return p;
}

Partition Partition::for_model(const io::ModelConfig& config, int world_size, int replicas) {
  std::vector<std::uint64_t> blocks(static_cast<std::size_t>(config.num_layers), 0);
  std::uint64_t embedding = 0, head = 0;
  for (const auto& t : model::model_tensors(config, model::TensorNames::canonical(config))) {
    const auto numel = static_cast<std::uint64_t>(shape_numel(t.shape));
    if (t.layer >= 0) {
      blocks.at(static_cast<std::size_t>(t.layer)) += numel;
      continue;
    }
    switch (t.kind) {
      case model::TensorKind::embed_tokens:
        embedding += numel;
        // Tied embeddings list no lm_head tensor, yet the last stage needs the matrix for the
        // logits all the same, so it weighs on that stage too.
        if (config.tie_word_embeddings) head += numel;
        break;
      case model::TensorKind::embed_positions:
      case model::TensorKind::project_in:
        embedding += numel;
        break;
      default:  // project_out, final norm, lm_head: what runs after the last block
        head += numel;
        break;
    }
  }
  return make(blocks, embedding, head, world_size, replicas);
}

int Partition::default_replicas(int num_blocks, int world_size) {
  if (num_blocks < 1 || world_size < 1)
    fail("cannot choose replicas for {} blocks over {} ranks", num_blocks, world_size);
  // r = world_size always qualifies (one stage), so the loop returns.
  for (int r = 1;; ++r)
    if (world_size % r == 0 && world_size / r <= num_blocks) return r;
}

void Partition::check_rank(int rank) const {
  if (rank < 0 || rank >= world_size())
    fail("rank {} is outside the partition's {} ranks", rank, world_size());
}

void Partition::check_stage(int stage) const {
  if (stage < 0 || stage >= stages())
    fail("stage {} is outside the partition's {} stages", stage, stages());
}

int Partition::stage_of(int rank) const {
  check_rank(rank);
  return rank % stages();
}

int Partition::replica_of(int rank) const {
  check_rank(rank);
  return rank / stages();
}

int Partition::rank_of(int stage, int replica) const {
  check_stage(stage);
  if (replica < 0 || replica >= replicas_)
    fail("replica {} is outside the partition's {} replicas", replica, replicas_);
  return replica * stages() + stage;
}

BlockRange Partition::blocks_of_stage(int stage) const {
  check_stage(stage);
  return {stage_begin_[stage], stage_begin_[stage + 1]};
}

BlockRange Partition::blocks_of(int rank) const { return blocks_of_stage(stage_of(rank)); }

int Partition::stage_owning(int block) const {
  if (block < 0 || block >= num_blocks())
    fail("block {} is outside the model's {} blocks", block, num_blocks());
  // The last boundary <= block starts the owning stage.
  const auto it = std::upper_bound(stage_begin_.begin(), stage_begin_.end(), block);
  return static_cast<int>(it - stage_begin_.begin()) - 1;
}

int Partition::next_rank(int rank) const { return last_stage(rank) ? -1 : rank + 1; }

int Partition::prev_rank(int rank) const { return first_stage(rank) ? -1 : rank - 1; }

std::uint64_t Partition::stage_params(int stage) const {
  check_stage(stage);
  return stage_params_[stage];
}

std::pair<std::int64_t, std::int64_t> Partition::samples_of_replica(int replica,
                                                                    std::int64_t n_samples) const {
  if (replica < 0 || replica >= replicas_)
    fail("replica {} is outside the partition's {} replicas", replica, replicas_);
  if (n_samples < 0) fail("cannot split {} calibration samples", n_samples);
  const std::int64_t base = n_samples / replicas_, extra = n_samples % replicas_;
  const std::int64_t begin = replica * base + std::min<std::int64_t>(replica, extra);
  return {begin, begin + base + (replica < extra ? 1 : 0)};
}

std::string Partition::describe() const {
  std::uint64_t total = 0;
  for (auto p : stage_params_) total += p;
  std::string out = fmt::format(
      "partition: {} ranks = {} stages x {} replicas, {} blocks, {} params "
      "(embedding {} on stage 0, head {} on stage {})\n",
      world_size(), stages(), replicas_, num_blocks(), billions(total), billions(embedding_params_),
      billions(head_params_), stages() - 1);
  for (int s = 0; s < stages(); ++s) {
    const auto r = blocks_of_stage(s);
    out += fmt::format("  stage {}: blocks [{}, {}) ({} blocks), {} params\n", s, r.begin, r.end,
                       r.size(), billions(stage_params_[s]));
  }
  for (int rank = 0; rank < world_size(); ++rank) {
    const auto r = blocks_of(rank);
    out += fmt::format("  rank {} -> stage {}, replica {}, blocks [{}, {})\n", rank, stage_of(rank),
                       replica_of(rank), r.begin, r.end);
  }
  return out;
}

}  // namespace sq::pipeline
