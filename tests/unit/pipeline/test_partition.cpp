// Partition: every block owned by exactly one stage, balance equal to a brute force over all split
// points, the rank grid's arithmetic, the calibration sample split, and the real 70B/175B configs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/model_config.h"
#include "pipeline/partition.h"

namespace sq::pipeline {
namespace {

using Params = std::vector<std::uint64_t>;

std::string config_path(const std::string& name) {
  return std::string(SQ_TEST_DATA_DIR) + "/../../configs/models/" + name;
}

std::vector<int> counts_of(const Partition& p) {
  std::vector<int> counts;
  for (int s = 0; s < p.stages(); ++s) counts.push_back(p.blocks_of_stage(s).size());
  return counts;
}

std::uint64_t max_load(const Partition& p) {
  std::uint64_t m = 0;
  for (int s = 0; s < p.stages(); ++s) m = std::max(m, p.stage_params(s));
  return m;
}

// Ranges start at 0, follow one another without gaps, are non-empty, end at num_blocks, and
// stage_owning agrees with them for every block.
void expect_exact_cover(const Partition& p) {
  int next = 0;
  for (int s = 0; s < p.stages(); ++s) {
    const BlockRange r = p.blocks_of_stage(s);
    EXPECT_EQ(r.begin, next) << "stage " << s;
    EXPECT_FALSE(r.empty()) << "stage " << s;
    next = r.end;
  }
  EXPECT_EQ(next, p.num_blocks());
  for (int b = 0; b < p.num_blocks(); ++b) {
    int owners = 0;
    for (int s = 0; s < p.stages(); ++s) owners += p.blocks_of_stage(s).contains(b) ? 1 : 0;
    EXPECT_EQ(owners, 1) << "block " << b;
    EXPECT_TRUE(p.blocks_of_stage(p.stage_owning(b)).contains(b)) << "block " << b;
  }
}

// The split make() promises, by enumerating every composition of n blocks into `stages` parts:
// smallest max load, then smallest sum of squared loads, then lexicographically smallest counts
// (enumeration runs in lexicographic order, so the first strictly better split wins).
struct Best {
  std::uint64_t max = UINT64_MAX;
  std::uint64_t squares = UINT64_MAX;  // small test values: no overflow
  std::vector<int> counts;
};
void brute_force(const Params& blocks, std::uint64_t emb, std::uint64_t head, int stages,
                 std::vector<int>& counts, int used, Best& best) {
  const int n = static_cast<int>(blocks.size());
  const int s = static_cast<int>(counts.size());
  if (s == stages) {
    if (used != n) return;
    std::uint64_t mx = 0, sq = 0;
    int b = 0;
    for (int i = 0; i < stages; ++i) {
      std::uint64_t l = 0;
      for (int j = 0; j < counts[i]; ++j) l += blocks[b++];
      if (i == 0) l += emb;
      if (i == stages - 1) l += head;
      mx = std::max(mx, l);
      sq += l * l;
    }
    if (mx < best.max || (mx == best.max && sq < best.squares)) best = {mx, sq, counts};
    return;
  }
  for (int c = 1; used + c + (stages - s - 1) <= n; ++c) {
    counts.push_back(c);
    brute_force(blocks, emb, head, stages, counts, used + c, best);
    counts.pop_back();
  }
}

TEST(PartitionTest, BlockRangeBasics) {
  const BlockRange r{3, 7};
  EXPECT_EQ(r.size(), 4);
  EXPECT_TRUE(r.contains(3));
  EXPECT_TRUE(r.contains(6));
  EXPECT_FALSE(r.contains(7));
  EXPECT_FALSE(r.contains(2));
  EXPECT_FALSE(r.empty());
  EXPECT_TRUE((BlockRange{5, 5}).empty());
}

TEST(PartitionTest, BalanceMatchesBruteForceOnRandomSmallCases) {
  std::mt19937 rng(20261123);
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 8);
    const int stages = 1 + static_cast<int>(rng() % std::min(5, n));
    const int replicas = 1 + static_cast<int>(rng() % 3);
    // Small values with zeros included: many ties, which is where the tie-break matters.
    Params blocks(n);
    for (auto& b : blocks) b = rng() % 20;
    const std::uint64_t emb = rng() % 30, head = rng() % 30;
    const auto p = Partition::make(blocks, emb, head, stages * replicas, replicas);
    SCOPED_TRACE(p.describe());
    ASSERT_EQ(p.stages(), stages);
    ASSERT_EQ(p.replicas(), replicas);
    ASSERT_EQ(p.num_blocks(), n);
    expect_exact_cover(p);

    Best best;
    std::vector<int> counts;
    brute_force(blocks, emb, head, stages, counts, 0, best);
    EXPECT_EQ(max_load(p), best.max) << "trial " << trial;
    EXPECT_EQ(counts_of(p), best.counts) << "trial " << trial;

    // stage_params is what the ranges say it is.
    std::uint64_t total = 0;
    for (int s = 0; s < stages; ++s) {
      const BlockRange r = p.blocks_of_stage(s);
      std::uint64_t l =
          std::accumulate(blocks.begin() + r.begin, blocks.begin() + r.end, std::uint64_t{0});
      if (s == 0) l += emb;
      if (s == stages - 1) l += head;
      EXPECT_EQ(p.stage_params(s), l);
      total += p.stage_params(s);
    }
    EXPECT_EQ(total, std::accumulate(blocks.begin(), blocks.end(), emb + head));
  }
}

TEST(PartitionTest, UnevenDivisionPutsTheExtraBlockLast) {
  // 7 identical blocks over 3 stages: max 3 blocks; the most even split with earlier stages
  // taking fewer blocks is 2+2+3 (1+3+3 has the same max but is less even).
  const auto p = Partition::make(Params(7, 100), 0, 0, 3, 1);
  EXPECT_EQ(counts_of(p), (std::vector<int>{2, 2, 3}));
  EXPECT_EQ(max_load(p), 300u);
  expect_exact_cover(p);
}

TEST(PartitionTest, EmbeddingAndHeadWeighOnTheEndStages) {
  // Without them 8 blocks over 3 stages go 2+3+3; an embedding and a head of 2.5 blocks each
  // push blocks off the end stages: 2+4+2 (loads 45, 40, 45) beats 3+3+2 (55, 30, 45).
  EXPECT_EQ(counts_of(Partition::make(Params(8, 10), 0, 0, 3, 1)), (std::vector<int>{2, 3, 3}));
  const auto p = Partition::make(Params(8, 10), 25, 25, 3, 1);
  EXPECT_EQ(counts_of(p), (std::vector<int>{2, 4, 2}));
  EXPECT_EQ(p.stage_params(0), 45u);
  EXPECT_EQ(p.stage_params(1), 40u);
  EXPECT_EQ(p.stage_params(2), 45u);
}

TEST(PartitionTest, OneStageOwnsEverything) {
  const auto p = Partition::make({5, 6, 7}, 10, 20, 1, 1);
  EXPECT_EQ(p.stages(), 1);
  EXPECT_EQ(p.blocks_of_stage(0).begin, 0);
  EXPECT_EQ(p.blocks_of_stage(0).end, 3);
  EXPECT_EQ(p.stage_params(0), 48u);  // embedding and head both on the only stage
  EXPECT_TRUE(p.first_stage(0));
  EXPECT_TRUE(p.last_stage(0));
  EXPECT_EQ(p.next_rank(0), -1);
  EXPECT_EQ(p.prev_rank(0), -1);
}

TEST(PartitionTest, AsManyStagesAsBlocksGivesOneBlockEach) {
  const auto p = Partition::make({9, 1, 1, 9, 4}, 3, 3, 5, 1);
  EXPECT_EQ(counts_of(p), (std::vector<int>{1, 1, 1, 1, 1}));
  for (int b = 0; b < 5; ++b) EXPECT_EQ(p.stage_owning(b), b);
}

TEST(PartitionTest, MoreRanksThanBlocksGoToReplicas) {
  EXPECT_EQ(Partition::default_replicas(4, 8), 2);
  EXPECT_EQ(Partition::default_replicas(80, 64), 1);
  EXPECT_EQ(Partition::default_replicas(3, 8), 4);  // 8 / 2 = 4 stages would be too many
  EXPECT_EQ(Partition::default_replicas(1, 6), 6);
  EXPECT_EQ(Partition::default_replicas(5, 7), 7);  // prime world: one stage or seven

  const auto p = Partition::make(Params(4, 1), 0, 0, 8, Partition::default_replicas(4, 8));
  EXPECT_EQ(p.stages(), 4);
  EXPECT_EQ(p.replicas(), 2);

  try {
    Partition::make(Params(4, 1), 0, 0, 8, 1);
    FAIL() << "8 stages over 4 blocks was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("8 ranks"), std::string::npos) << what;
    EXPECT_NE(what.find("4 blocks"), std::string::npos) << what;
  }
}

TEST(PartitionTest, BadGridsAreRefused) {
  try {
    Partition::make(Params(8, 1), 0, 0, 6, 4);
    FAIL() << "6 ranks over 4 replicas was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find('6'), std::string::npos) << what;
    EXPECT_NE(what.find('4'), std::string::npos) << what;
  }
  EXPECT_THROW(Partition::make(Params(8, 1), 0, 0, 4, 0), Error);
  EXPECT_THROW(Partition::make(Params(8, 1), 0, 0, 0, 1), Error);
  EXPECT_THROW(Partition::make({}, 0, 0, 1, 1), Error);
  EXPECT_THROW(Partition::default_replicas(0, 4), Error);
}

TEST(PartitionTest, RankGridRoundTripsAndNeighbours) {
  const auto p = Partition::make(Params(10, 3), 1, 1, 12, 3);  // 4 stages x 3 replicas
  ASSERT_EQ(p.stages(), 4);
  ASSERT_EQ(p.world_size(), 12);
  for (int rank = 0; rank < 12; ++rank) {
    const int s = p.stage_of(rank), r = p.replica_of(rank);
    EXPECT_EQ(rank, r * 4 + s);  // a replica is a full pipeline of consecutive ranks
    EXPECT_EQ(p.rank_of(s, r), rank);
    EXPECT_EQ(p.first_stage(rank), s == 0);
    EXPECT_EQ(p.last_stage(rank), s == 3);
    EXPECT_EQ(p.next_rank(rank), s == 3 ? -1 : p.rank_of(s + 1, r));
    EXPECT_EQ(p.prev_rank(rank), s == 0 ? -1 : p.rank_of(s - 1, r));
    const BlockRange a = p.blocks_of(rank), b = p.blocks_of_stage(s);
    EXPECT_EQ(a.begin, b.begin);
    EXPECT_EQ(a.end, b.end);
  }
  EXPECT_EQ(p.next_rank(5), 6);
  EXPECT_EQ(p.prev_rank(4), -1);
  EXPECT_EQ(p.next_rank(7), -1);
  EXPECT_THROW(p.stage_of(12), Error);
  EXPECT_THROW(p.stage_of(-1), Error);
  EXPECT_THROW(p.rank_of(4, 0), Error);
  EXPECT_THROW(p.rank_of(0, 3), Error);
  EXPECT_THROW(p.stage_owning(10), Error);
  EXPECT_THROW(p.blocks_of_stage(4), Error);
}

TEST(PartitionTest, SamplesCoverAllDisjointlyInOrder) {
  for (int replicas : {1, 3, 4}) {
    const auto p = Partition::make(Params(4, 1), 0, 0, 2 * replicas, replicas);
    for (std::int64_t n : {std::int64_t{0}, std::int64_t{2}, std::int64_t{replicas},
                           std::int64_t{replicas + 1}, std::int64_t{1001}}) {
      std::int64_t next = 0, smallest = n, largest = 0;
      for (int r = 0; r < replicas; ++r) {
        const auto [begin, end] = p.samples_of_replica(r, n);
        EXPECT_EQ(begin, next) << "replica " << r << " of " << replicas << ", n " << n;
        EXPECT_LE(begin, end);
        // The first n % replicas replicas get the extra sample.
        EXPECT_EQ(end - begin, n / replicas + (r < n % replicas ? 1 : 0));
        smallest = std::min(smallest, end - begin);
        largest = std::max(largest, end - begin);
        next = end;
      }
      EXPECT_EQ(next, n);
      EXPECT_LE(largest - smallest, 1);
    }
  }
  const auto p = Partition::make(Params(4, 1), 0, 0, 8, 2);
  EXPECT_THROW(p.samples_of_replica(2, 10), Error);
  EXPECT_THROW(p.samples_of_replica(0, -1), Error);
}

TEST(PartitionTest, Llama2_70bOver64RanksAnd8Replicas) {
  const auto config = io::load_hf_config(config_path("llama-2-70b.json"));
  const auto p = Partition::for_model(config, 64, 8);
  SCOPED_TRACE(p.describe());
  ASSERT_EQ(p.stages(), 8);
  ASSERT_EQ(p.num_blocks(), 80);
  expect_exact_cover(p);
  // Identical blocks and an embedding/head lighter than a block: an 11th block anywhere would
  // outweigh 10 blocks plus the embedding, so every stage takes 10.
  EXPECT_EQ(counts_of(p), std::vector<int>(8, 10));
  const std::uint64_t block = p.stage_params(1) / 10;
  EXPECT_EQ(p.stage_params(1), p.stage_params(6));
  EXPECT_GT(p.stage_params(0), p.stage_params(1));  // the embedding rides on stage 0
  EXPECT_GT(p.stage_params(7), p.stage_params(1));  // final norm and lm_head on stage 7
  std::uint64_t total = 0;
  for (int s = 0; s < 8; ++s) total += p.stage_params(s);
  EXPECT_GT(total, 68'000'000'000u);  // LLaMA-2-70B: 68.98B parameters
  EXPECT_LT(total, 70'000'000'000u);
  EXPECT_LE(max_load(p), total / 8 + block);
  EXPECT_EQ(p.stage_of(63), 7);
  EXPECT_EQ(p.replica_of(63), 7);
}

TEST(PartitionTest, Opt175b) {
  const auto config = io::load_hf_config(config_path("opt-175b.json"));
  const int replicas = Partition::default_replicas(96, 128);
  EXPECT_EQ(replicas, 2);
  const auto p = Partition::for_model(config, 128, replicas);
  SCOPED_TRACE(p.describe());
  ASSERT_EQ(p.stages(), 64);
  ASSERT_EQ(p.num_blocks(), 96);
  expect_exact_cover(p);
  // 96 blocks over 64 stages: some stages must take 2 blocks, and the end stages, which carry
  // the embedding and the (tied) lm_head, take 1.
  const auto counts = counts_of(p);
  EXPECT_EQ(counts.front(), 1);
  EXPECT_EQ(counts.back(), 1);
  EXPECT_EQ(*std::max_element(counts.begin(), counts.end()), 2);
  std::uint64_t total = 0;
  for (int s = 0; s < p.stages(); ++s) total += p.stage_params(s);
  const std::uint64_t block = p.stage_params(1) / counts[1];  // stage 1 carries blocks only
  EXPECT_EQ(max_load(p), 2 * block);
  EXPECT_LE(max_load(p), total / p.stages() + block);

  // 8 stages x 4 replicas: 12 blocks each, within one block of the ideal.
  const auto q = Partition::for_model(config, 32, 4);
  SCOPED_TRACE(q.describe());
  expect_exact_cover(q);
  EXPECT_EQ(counts_of(q), std::vector<int>(8, 12));
  std::uint64_t q_total = 0;
  for (int s = 0; s < q.stages(); ++s) q_total += q.stage_params(s);
  EXPECT_GT(q_total, 174'000'000'000u);  // OPT-175B, tied lm_head counted on the last stage too
  EXPECT_LE(max_load(q), q_total / 8 + q.stage_params(3) / 12);
}

}  // namespace
}  // namespace sq::pipeline
