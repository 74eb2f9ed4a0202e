// Who owns which layer: the one type that maps MPI ranks onto a grid of pipeline stages
// (contiguous block ranges, balanced by parameter count) x data-parallel replicas (disjoint
// calibration samples). Everything else asks it rather than recomputing the split (STYLE.md
// lesson 10: FasterTransformer recomputed it in four places and they drifted apart).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/model_config.h"

namespace sq::pipeline {

// Blocks [begin, end) of the decoder.
struct BlockRange {
  int begin = 0, end = 0;
  int size() const { return end - begin; }
  bool contains(int block) const { return block >= begin && block < end; }
  bool empty() const { return end <= begin; }
};

class Partition {
 public:
  // world_size ranks = stages * replicas exactly (throws sq::Error naming the numbers otherwise);
  // replicas >= 1. Blocks are split into `stages` contiguous, non-empty ranges minimising the
  // largest stage load, where a load is the stage's block parameters plus the embedding for stage
  // 0 and the head (final norm, lm_head) for the last stage. The split is exact (dynamic
  // programming over split points). Deterministic tie-break among the optimal splits: first the
  // smallest sum of squared stage loads (the most even: 7 identical blocks over 3 stages give
  // 2+2+3, not 1+3+3), then the lexicographically smallest block counts (stage 0, stage 1, ...),
  // i.e. earlier stages take fewer blocks. More stages than blocks is refused: a stage with no
  // block would have nothing to do.
  static Partition make(const std::vector<std::uint64_t>& block_params,
                        std::uint64_t embedding_params, std::uint64_t head_params, int world_size,
                        int replicas);
  // Parameter counts from model::model_tensors. A tied lm_head counts in the head's load too: the
  // last stage holds its own copy of the embedding matrix to compute logits.
  static Partition for_model(const io::ModelConfig& config, int world_size, int replicas);
  // The replica count when the user gives none: the smallest divisor r of world_size with
  // world_size / r <= num_blocks, i.e. as many pipeline stages as there are blocks to fill them
  // (more stages = less memory per rank), and replicas only for ranks beyond that.
  static int default_replicas(int num_blocks, int world_size);

  int world_size() const { return stages() * replicas_; }
  int stages() const { return static_cast<int>(stage_params_.size()); }
  int replicas() const { return replicas_; }
  int num_blocks() const { return stage_begin_.back(); }

  // Rank layout: rank = replica * stages + stage (a replica is a full pipeline of consecutive
  // ranks, so neighbouring stages are usually neighbouring ranks on a node).
  int stage_of(int rank) const;
  int replica_of(int rank) const;
  int rank_of(int stage, int replica) const;

  BlockRange blocks_of_stage(int stage) const;
  BlockRange blocks_of(int rank) const;
  int stage_owning(int block) const;

  bool first_stage(int rank) const { return stage_of(rank) == 0; }
  bool last_stage(int rank) const { return stage_of(rank) == stages() - 1; }
  // Neighbours in the same replica's pipeline; -1 at the ends.
  int next_rank(int rank) const;
  int prev_rank(int rank) const;

  // The stage's load: its blocks, plus the embedding (stage 0) and the head (last stage).
  std::uint64_t stage_params(int stage) const;

  // Calibration samples [0, n_samples) split between replicas as contiguous, near-equal, disjoint
  // [begin, end) ranges (the first n_samples % replicas replicas get one more); sample order
  // inside a range is preserved. A replica may get an empty range when n_samples < replicas.
  std::pair<std::int64_t, std::int64_t> samples_of_replica(int replica,
                                                           std::int64_t n_samples) const;

  // Multi-line human summary: the grid, each stage's blocks and load, each rank's place.
  std::string describe() const;

 private:
  Partition() = default;
  void check_rank(int rank) const;
  void check_stage(int stage) const;

  int replicas_ = 1;
  std::vector<int> stage_begin_;             // stages + 1 boundaries: stage s has [b[s], b[s + 1])
  std::vector<std::uint64_t> stage_params_;  // per stage, embedding and head included
  std::uint64_t embedding_params_ = 0, head_params_ = 0;
};

}  // namespace sq::pipeline
