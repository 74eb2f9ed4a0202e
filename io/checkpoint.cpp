// Hugging Face weight directories: opening (index checked against every shard) and sharded writing.
#include "io/checkpoint.h"

#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "io/atomic_file.h"

namespace sq::io {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

bool exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

// total_size as written by transformers is an integer; some converters write 1234.0.
std::optional<std::uint64_t> as_size(const json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    return static_cast<std::uint64_t>(v.get<std::int64_t>());
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= 0 && d < 1.8e19 && d == static_cast<double>(static_cast<std::uint64_t>(d))) {
      return static_cast<std::uint64_t>(d);
    }
  }
  return std::nullopt;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& dir) {
  Checkpoint c;
  c.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(ErrorContext{.file = dir}, "not a directory");

  const std::string index_path = join(dir, kIndexName);
  const std::string single_path = join(dir, kSingleName);
  if (exists(index_path)) {
    const ErrorContext at{.file = index_path};
    const json index = parse_json_strict(read_text_file(index_path), at);
    if (!index.is_object()) fail(at, "the index is not a JSON object");
    const auto wm = index.find("weight_map");
    if (wm == index.end()) fail(ErrorContext{.file = index_path}, "missing 'weight_map'");
    if (!wm->is_object()) {
      fail(ErrorContext{.file = index_path, .key = "weight_map"},
           "'weight_map' must map tensor names to shard files, found a JSON {}", wm->type_name());
    }
    std::map<std::string, std::set<std::string>> expected;  // shard -> the tensors it must hold
    for (const auto& [name, file] : wm->items()) {
      const ErrorContext et{.file = index_path, .key = "weight_map", .tensor = name};
      if (!file.is_string()) {
        fail(et, "shard file must be a string, found a JSON {}", file.type_name());
      }
      const std::string f = file.get<std::string>();
      // Shards live in the directory itself; refusing paths keeps the index from reaching out.
      if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos) {
        fail(et, "shard file '{}' must be a plain file name in the checkpoint directory", f);
      }
      c.weight_map_.emplace(name, f);
      expected[f].insert(name);
    }
    std::optional<std::uint64_t> total_size;
    if (const auto md = index.find("metadata"); md != index.end()) {
      if (!md->is_object()) {
        fail(ErrorContext{.file = index_path, .key = "metadata"},
             "'metadata' must be a JSON object, found a JSON {}", md->type_name());
      }
      if (const auto ts = md->find("total_size"); ts != md->end()) {
        total_size = as_size(*ts);
        if (!total_size) {
          fail(ErrorContext{.file = index_path, .key = "metadata.total_size"},
               "must be a non-negative integer, found {}", ts->dump());
        }
      }
    }

    std::uint64_t sum = 0;
    for (const auto& [file, tensors] : expected) {
      const std::string shard_path = join(dir, file);
      if (!exists(shard_path)) {
        fail(ErrorContext{.file = shard_path}, "shard listed in {} does not exist", kIndexName);
      }
      auto shard = std::make_unique<SafetensorsFile>(SafetensorsFile::open(shard_path));
      for (const auto& e : shard->entries()) {
        const ErrorContext et{.file = shard_path, .tensor = e.name};
        const auto it = c.weight_map_.find(e.name);
        if (it == c.weight_map_.end()) {
          fail(et, "tensor is in this shard but not in {}", kIndexName);
        }
        if (it->second != file) {
          fail(et, "tensor is in this shard but {} assigns it to {}", kIndexName, it->second);
        }
        sum += e.end - e.begin;
      }
      for (const auto& name : tensors) {
        if (!shard->contains(name)) {
          fail(ErrorContext{.file = shard_path, .tensor = name},
               "{} lists the tensor in this shard but the shard does not hold it", kIndexName);
        }
      }
      c.shards_.emplace(file, std::move(shard));
    }
    if (total_size && *total_size != sum) {
      fail(ErrorContext{.file = index_path, .key = "metadata.total_size"},
           "total_size {} != {} bytes, the sum of the tensors' sizes", *total_size, sum);
    }
  } else if (exists(single_path)) {
    auto shard = std::make_unique<SafetensorsFile>(SafetensorsFile::open(single_path));
    for (const auto& e : shard->entries()) c.weight_map_.emplace(e.name, kSingleName);
    c.shards_.emplace(kSingleName, std::move(shard));
  } else {
    fail(ErrorContext{.file = dir}, "no model.safetensors or model.safetensors.index.json");
  }
  return c;
}

bool Checkpoint::contains(std::string_view name) const {
  return weight_map_.find(name) != weight_map_.end();
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(weight_map_.size());
  for (const auto& [name, file] : weight_map_) out.push_back(name);
  return out;
}

const std::string& Checkpoint::file_of(std::string_view name) const {
  const auto it = weight_map_.find(name);
  if (it == weight_map_.end()) {
    fail(ErrorContext{.file = dir_, .tensor = std::string(name)},
         "no such tensor in the checkpoint");
  }
  return it->second;
}

const SafetensorsEntry& Checkpoint::entry(std::string_view name) const {
  return shard(file_of(name)).entry(name);
}

void Checkpoint::release(std::string_view name) const {
  const SafetensorsFile& f = shard(file_of(name));
  const SafetensorsEntry& e = f.entry(name);
  f.mapping()->release_pages(f.data_offset() + e.begin, e.end - e.begin);
}

Tensor Checkpoint::tensor(std::string_view name) const { return shard(file_of(name)).tensor(name); }

std::vector<std::string> Checkpoint::shard_files() const {
  std::set<std::string> files;
  for (const auto& [name, file] : weight_map_) files.insert(file);
  return {files.begin(), files.end()};
}

const SafetensorsFile& Checkpoint::shard(const std::string& file) const {
  auto it = shards_.find(file);
  if (it == shards_.end()) {
    auto opened = std::make_unique<SafetensorsFile>(SafetensorsFile::open(join(dir_, file)));
    it = shards_.emplace(file, std::move(opened)).first;
  }
  return *it->second;
}

ShardedCheckpointWriter::ShardedCheckpointWriter(std::string dir, std::uint64_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail(ErrorContext{.file = dir_}, "cannot create the directory: {}", ec.message());
}

ShardedCheckpointWriter::~ShardedCheckpointWriter() {
  if (finished_) return;
  for (const auto& temp : temp_shards_) ::unlink(temp.c_str());  // best effort: no throwing here
}

void ShardedCheckpointWriter::add(std::string name, Tensor tensor) {
  const ErrorContext at{.file = dir_, .tensor = name};
  if (finished_) fail(at, "add() after finish()");
  if (name == "__metadata__") fail(at, "the name __metadata__ is reserved for the metadata");
  if (!tensor.defined()) fail(at, "cannot write an undefined tensor");
  if (names_.count(name) != 0) fail(at, "tensor added twice");
  const std::uint64_t bytes = tensor.nbytes();
  // As transformers does: a tensor larger than the limit gets a shard of its own.
  if (!pending_.empty() && pending_bytes_ + bytes > max_shard_bytes_) flush_shard();
  names_.insert(name);
  pending_.emplace_back(std::move(name), std::move(tensor));
  pending_bytes_ += bytes;
  total_bytes_ += bytes;
}

void ShardedCheckpointWriter::flush_shard() {
  // Hidden, pid-tagged names: never mistaken for a finished shard, never shared by two writers.
  const std::string temp = join(dir_, fmt::format(".model-{:05d}.safetensors.partial.{}",
                                                  temp_shards_.size() + 1, ::getpid()));
  write_safetensors(temp, pending_, {{"format", "pt"}});
  temp_shards_.push_back(temp);
  std::vector<std::string> names;
  names.reserve(pending_.size());
  for (const auto& [name, tensor] : pending_) names.push_back(name);
  shard_tensors_.push_back(std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

void ShardedCheckpointWriter::finish() {
  if (finished_) fail(ErrorContext{.file = dir_}, "finish() called twice");
  if (!pending_.empty() || temp_shards_.empty()) flush_shard();  // no tensors: one empty file
  const std::size_t n = temp_shards_.size();
  const std::string index_path = join(dir_, kIndexName);
  if (n == 1) {
    rename_durable(temp_shards_[0], join(dir_, kSingleName));
    // A stale index from an earlier sharded write would shadow model.safetensors.
    std::error_code ec;
    fs::remove(index_path, ec);
    if (ec) {
      fail(ErrorContext{.file = index_path}, "cannot remove the stale index: {}", ec.message());
    }
  } else {
    // The shards are renamed first and the index written last: it is what makes them a checkpoint.
    json weight_map = json::object();
    for (std::size_t i = 0; i < n; ++i) {
      const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, n);
      rename_durable(temp_shards_[i], join(dir_, name));
      for (const auto& tensor : shard_tensors_[i]) weight_map[tensor] = name;
    }
    const json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
    write_file_atomic(index_path, index.dump(2) + "\n");
  }
  finished_ = true;
}

}  // namespace sq::io
