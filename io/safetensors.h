// safetensors: reader (mmap, zero-copy views, every rule of the format enforced) and writer
// (8-byte padded header, temporary file + fsync + rename).
//
// Format: u64 little-endian N, N bytes of UTF-8 JSON header, then the data buffer. Header
// entries are {"dtype", "shape", "data_offsets": [begin, end]} relative to the buffer start, plus
// an optional "__metadata__" string->string map.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/tensor.h"

namespace sq::io {

inline constexpr std::uint64_t kSafetensorsMaxHeader = 100'000'000;

struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;      // as written in the file ("BF16", "F8_E4M3", ...)
  std::optional<DType> dtype;  // nullopt: a valid safetensors dtype ShardQuant does not compute in
  Shape shape;
  std::uint64_t begin = 0;  // offsets relative to the data buffer
  std::uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates the whole header; throws sq::Error naming the file (and tensor) on any
  // violation: header larger than 100 MB or past the file end, invalid UTF-8/JSON, duplicate
  // keys, a tensor named __metadata__, unknown dtype, shape overflow, byte size != elements x
  // dtype size, entries that do not tile the buffer exactly, buffer end != file size.
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  // Entries in the order of their offsets in the buffer.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  bool contains(std::string_view name) const;
  const SafetensorsEntry& entry(std::string_view name) const;  // throws naming file + tensor
  // Zero-copy read-only view; throws if the dtype is one ShardQuant does not hold. (A tensor whose
  // bytes are not aligned to its element size, possible when a writer mixes dtypes, is copied.)
  Tensor tensor(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::uint64_t header_size() const { return header_size_; }
  std::uint64_t data_offset() const { return 8 + header_size_; }  // file offset of the buffer
  const std::shared_ptr<const MappedFile>& mapping() const { return file_; }

 private:
  std::shared_ptr<const MappedFile> file_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
  std::map<std::string, std::string> metadata_;
  std::uint64_t header_size_ = 0;
};

using NamedTensor = std::pair<std::string, Tensor>;

// Writes `tensors` in the given order, atomically (temp file in the same directory, fsync,
// rename, fsync of the directory). Names must be unique and not "__metadata__".
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Parses JSON refusing duplicate object keys at any depth (nlohmann would keep the last one
// silently). Errors carry `where`; a duplicate's dotted path goes into ErrorContext::key.
nlohmann::json parse_json_strict(std::string_view text, const ErrorContext& where);

}  // namespace sq::io
