// A Hugging Face weight directory: a single model.safetensors, or shards listed by
// model.safetensors.index.json ({"metadata": {"total_size": N}, "weight_map": {name: file}}).
// open() maps every shard to validate its header against the index; pages are read only when a
// tensor's bytes are touched.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"

namespace sq::io {

class Checkpoint {
 public:
  // Reads the index (or the single file's header). Checks that every shard named by the index
  // exists, holds exactly the tensors the index gives it, and that total_size (when present)
  // equals the sum of tensor bytes. Errors name the directory, file and tensor.
  static Checkpoint open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool contains(std::string_view name) const;
  std::vector<std::string> names() const;                   // sorted
  const std::string& file_of(std::string_view name) const;  // shard file name, relative to dir
  const SafetensorsEntry& entry(std::string_view name) const;
  Tensor tensor(std::string_view name) const;  // zero-copy view into the mapped shard
  // Drops the tensor's mapped pages from this process (after a converted copy was made): they
  // would otherwise stay resident, and counted, for as long as the shard is mapped.
  void release(std::string_view name) const;
  std::vector<std::string> shard_files() const;  // relative names, sorted

 private:
  const SafetensorsFile& shard(const std::string& file) const;
  std::string dir_;
  std::map<std::string, std::string, std::less<>> weight_map_;  // tensor -> shard file
  // Filled by open(); shard() also opens on first use (mutable: a cache, not a state change).
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
};

// Writes a sharded checkpoint tensor by tensor without holding it all in memory: tensors are
// buffered until the shard would exceed `max_shard_bytes`, then written; finish() gives the shards
// their final names model-0000i-of-0000N.safetensors and writes model.safetensors.index.json
// (with one shard: model.safetensors and no index, as transformers does).
class ShardedCheckpointWriter {
 public:
  ShardedCheckpointWriter(std::string dir, std::uint64_t max_shard_bytes);
  ~ShardedCheckpointWriter();  // removes temporary shards if finish() was not reached
  ShardedCheckpointWriter(const ShardedCheckpointWriter&) = delete;
  ShardedCheckpointWriter& operator=(const ShardedCheckpointWriter&) = delete;
  void add(std::string name, Tensor tensor);
  void finish();

 private:
  void flush_shard();
  std::string dir_;
  std::uint64_t max_shard_bytes_;
  std::vector<NamedTensor> pending_;
  std::uint64_t pending_bytes_ = 0;
  std::vector<std::string> temp_shards_;
  std::vector<std::vector<std::string>> shard_tensors_;
  std::set<std::string, std::less<>> names_;  // every name added, to refuse duplicates early
  std::uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

}  // namespace sq::io
