// Tests for io/checkpoint: sharded and single-file writes read back exactly, the index JSON as
// transformers writes it, and the refusals when an index and its shards disagree.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace sq::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fresh scratch directory named after the running test.
std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir =
      std::string(SQ_TEST_TMP_DIR) + "/checkpoint/" + info->test_suite_name() + "." + info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Six 64-byte tensors (f32[16]) with distinct values, in the order they are added.
std::vector<NamedTensor> six_tensors() {
  std::vector<NamedTensor> out;
  const char* names[] = {"model.embed_tokens.weight",
                         "model.layers.0.mlp.up_proj.weight",
                         "model.layers.0.input_layernorm.weight",
                         "model.layers.1.x",
                         "lm_head.weight",
                         "model.norm.weight"};
  for (int t = 0; t < 6; ++t) {
    std::vector<float> v(16);
    for (int i = 0; i < 16; ++i) v[static_cast<std::size_t>(i)] = static_cast<float>(t * 100 + i);
    out.emplace_back(names[t], Tensor::from_f32(v, {4, 4}));
  }
  return out;
}

// Writes six_tensors() with at most two per shard: three shards.
void write_three_shards(const std::string& dir) {
  ShardedCheckpointWriter writer(dir, 128);
  for (const auto& [name, t] : six_tensors()) writer.add(name, t);
  writer.finish();
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.bytes(), b.bytes(), a.nbytes()) == 0);
}

json read_index(const std::string& dir) {
  return json::parse(read_text_file(dir + "/model.safetensors.index.json"));
}

void write_index(const std::string& dir, const json& index) {
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2);
}

// Asserts Checkpoint::open(dir) throws an error naming `file` (and `tensor` when given) and
// containing `phrase`.
void expect_refused(const std::string& dir, const std::string& file, const std::string& phrase,
                    const std::string& tensor = "") {
  try {
    Checkpoint::open(dir);
    ADD_FAILURE() << "accepted " << dir;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.context().file, file) << what;
    EXPECT_NE(what.find(file), std::string::npos) << what;
    EXPECT_NE(what.find(phrase), std::string::npos) << "'" << phrase << "' not in: " << what;
    if (!tensor.empty()) {
      EXPECT_EQ(e.context().tensor, tensor) << what;
    }
  }
}

TEST(Checkpoint, ShardedWriteReadsBackExactly) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  EXPECT_EQ(files_in(dir),
            (std::vector<std::string>{
                "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));

  const auto ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.dir(), dir);
  EXPECT_EQ(ckpt.shard_files().size(), 3u);
  const auto tensors = six_tensors();
  std::vector<std::string> names;
  for (const auto& [name, t] : tensors) names.push_back(name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(ckpt.names(), names);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    ASSERT_TRUE(ckpt.contains(name));
    EXPECT_TRUE(same_bytes(ckpt.tensor(name), t)) << name;
    // Two tensors per shard, in the order they were added.
    EXPECT_EQ(ckpt.file_of(name), fmt::format("model-{:05d}-of-00003.safetensors", i / 2 + 1));
    EXPECT_EQ(ckpt.entry(name).dtype_name, "F32");
  }
  // Each shard carries {"format": "pt"} as transformers writes it.
  for (const auto& file : ckpt.shard_files()) {
    const auto shard = SafetensorsFile::open(dir + "/" + file);
    EXPECT_EQ(shard.metadata().at("format"), "pt");
  }
}

TEST(Checkpoint, IndexIsPrettySortedWithTotalSize) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  const std::string text = read_text_file(dir + "/model.safetensors.index.json");
  EXPECT_EQ(text.rfind("{\n  \"metadata\": {\n    \"total_size\": 384\n  },\n", 0), 0u) << text;
  EXPECT_EQ(text.back(), '\n');
  const json index = json::parse(text);
  EXPECT_EQ(index["metadata"]["total_size"], 384);
  ASSERT_EQ(index["weight_map"].size(), 6u);
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], "model-00003-of-00003.safetensors");
  // Sorted keys: "lm_head.weight" comes first although it was added fifth.
  EXPECT_NE(text.find("\"lm_head.weight\""), std::string::npos);
  EXPECT_LT(text.find("\"lm_head.weight\""), text.find("\"model.embed_tokens.weight\""));
}

TEST(Checkpoint, SingleShardWritesModelSafetensorsWithoutIndex) {
  const std::string dir = test_dir();
  {
    ShardedCheckpointWriter writer(dir, 1 << 20);
    for (const auto& [name, t] : six_tensors()) writer.add(name, t);
    writer.finish();
  }
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"model.safetensors"});
  const auto ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.shard_files(), std::vector<std::string>{"model.safetensors"});
  for (const auto& [name, t] : six_tensors()) {
    EXPECT_EQ(ckpt.file_of(name), "model.safetensors");
    EXPECT_TRUE(same_bytes(ckpt.tensor(name), t)) << name;
  }
}

TEST(Checkpoint, SingleShardReplacesStaleIndex) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  {
    ShardedCheckpointWriter writer(dir, 1 << 20);
    writer.add("only", Tensor::from_f32(std::vector<float>{7.0f}, {1}));
    writer.finish();
  }
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  const auto ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.names(), std::vector<std::string>{"only"});
}

TEST(Checkpoint, OversizedTensorGetsItsOwnShard) {
  const std::string dir = test_dir();
  {
    ShardedCheckpointWriter writer(dir, 100);
    writer.add("small.a", Tensor::zeros(DType::f32, {4}));  // 16 bytes
    writer.add("big", Tensor::zeros(DType::f32, {64}));     // 256 bytes > 100
    writer.add("small.b", Tensor::zeros(DType::f32, {4}));
    writer.finish();
  }
  const auto ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.shard_files().size(), 3u);
  EXPECT_EQ(ckpt.file_of("big"), "model-00002-of-00003.safetensors");
}

TEST(Checkpoint, NoTensorsWritesAnEmptyModelSafetensors) {
  const std::string dir = test_dir();
  {
    ShardedCheckpointWriter writer(dir, 100);
    writer.finish();
  }
  const auto ckpt = Checkpoint::open(dir);
  EXPECT_TRUE(ckpt.names().empty());
}

TEST(Checkpoint, WriterWithoutFinishLeavesNothingBehind) {
  const std::string dir = test_dir();
  {
    ShardedCheckpointWriter writer(dir, 128);
    for (const auto& [name, t] : six_tensors()) writer.add(name, t);  // two shards flushed
    EXPECT_EQ(files_in(dir).size(), 2u);
  }
  EXPECT_TRUE(files_in(dir).empty());
}

TEST(Checkpoint, WriterRefusesDuplicateAndReservedNames) {
  const std::string dir = test_dir();
  ShardedCheckpointWriter writer(dir, 128);
  writer.add("w", Tensor::zeros(DType::f32, {2}));
  try {
    writer.add("w", Tensor::zeros(DType::f32, {2}));
    ADD_FAILURE() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().tensor, "w");
    EXPECT_NE(std::string(e.what()).find("added twice"), std::string::npos) << e.what();
  }
  EXPECT_THROW(writer.add("__metadata__", Tensor::zeros(DType::f32, {2})), Error);
  writer.finish();
  EXPECT_THROW(writer.add("late", Tensor::zeros(DType::f32, {2})), Error);
}

TEST(Checkpoint, UnknownTensorNamesDirectoryAndTensor) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  const auto ckpt = Checkpoint::open(dir);
  EXPECT_FALSE(ckpt.contains("nope"));
  try {
    ckpt.tensor("nope");
    ADD_FAILURE() << "tensor() of a missing name did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, dir);
    EXPECT_EQ(e.context().tensor, "nope");
  }
}

// --- Refusals ---------------------------------------------------------------------------------

TEST(CheckpointRefuses, DirectoryWithoutWeights) {
  const std::string dir = test_dir();
  expect_refused(dir, dir, "no model.safetensors or model.safetensors.index.json");
}

TEST(CheckpointRefuses, MissingDirectory) {
  const std::string dir = test_dir() + "/absent";
  expect_refused(dir, dir, "not a directory");
}

TEST(CheckpointRefuses, MissingShardFile) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  fs::remove(dir + "/model-00002-of-00003.safetensors");
  expect_refused(dir, dir + "/model-00002-of-00003.safetensors", "does not exist");
}

TEST(CheckpointRefuses, TensorInIndexButAbsentFromShard) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  json index = read_index(dir);
  index["weight_map"]["ghost.weight"] = "model-00002-of-00003.safetensors";
  write_index(dir, index);
  expect_refused(dir, dir + "/model-00002-of-00003.safetensors", "the shard does not hold it",
                 "ghost.weight");
}

TEST(CheckpointRefuses, TensorInShardButNotInIndex) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  json index = read_index(dir);
  index["weight_map"].erase("lm_head.weight");
  index["metadata"]["total_size"] = 320;
  write_index(dir, index);
  expect_refused(dir, dir + "/model-00003-of-00003.safetensors", "not in model.safetensors.index",
                 "lm_head.weight");
}

TEST(CheckpointRefuses, TensorInShardTheIndexAssignsElsewhere) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  json index = read_index(dir);
  index["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors";
  write_index(dir, index);
  // Shards are checked in name order: shard 1 lacks it first.
  expect_refused(dir, dir + "/model-00001-of-00003.safetensors", "the shard does not hold it",
                 "lm_head.weight");
}

TEST(CheckpointRefuses, WrongTotalSize) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  json index = read_index(dir);
  index["metadata"]["total_size"] = 385;
  write_index(dir, index);
  expect_refused(dir, dir + "/model.safetensors.index.json", "total_size 385 != 384");
}

TEST(CheckpointRefuses, IndexWithoutWeightMap) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  write_index(dir, json{{"metadata", {{"total_size", 384}}}});
  expect_refused(dir, dir + "/model.safetensors.index.json", "missing 'weight_map'");
}

TEST(CheckpointRefuses, IndexWithDuplicateTensor) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"weight_map": {"lm_head.weight": "model-00003-of-00003.safetensors",
                            "lm_head.weight": "model-00001-of-00003.safetensors"}})";
  expect_refused(dir, dir + "/model.safetensors.index.json", "duplicate key 'lm_head.weight'");
}

TEST(CheckpointRefuses, ShardPathOutsideTheDirectory) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  json index = read_index(dir);
  index["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors";
  write_index(dir, index);
  expect_refused(dir, dir + "/model.safetensors.index.json", "must be a plain file name",
                 "lm_head.weight");
}

TEST(CheckpointRefuses, CorruptShard) {
  const std::string dir = test_dir();
  write_three_shards(dir);
  std::ofstream(dir + "/model-00003-of-00003.safetensors", std::ios::binary) << "garbage!";
  try {
    Checkpoint::open(dir);
    ADD_FAILURE() << "accepted a corrupt shard";
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, dir + "/model-00003-of-00003.safetensors") << e.what();
  }
}

}  // namespace
}  // namespace sq::io
