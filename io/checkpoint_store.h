// HDF5 checkpoint files of the distributed pipeline (DESIGN.md §5): one file per block (stats,
// quantized weights) or per rank boundary (hidden states), written crash-safely and verified
// before it replaces anything. Only built when SQ_DISTRIBUTED is ON (HDF5 is found only there).
//
// File layout (format_version 1):
//   Root group attributes:
//     format_version     int32 scalar, 1
//     kind               string, "block" | "hidden"
//     recipe_hash        string
//     model_fingerprint  string
//     stages             1-D array of strings (null dataspace when there are no stages)
//     block              int64 scalar, -1 when the file is not about one block
//     user.<key>         string, one per put_attribute(key, value)
//   Strings are fixed-length, NUL-terminated ASCII/UTF-8 (no NUL allowed inside a value).
//   One dataset per tensor, at its path ("/stats/qkv_in/absmax"); intermediate groups are created
//   as needed. A path is never both a tensor and a group. Every dataset:
//     - is chunked (chunks of at most ~1 MiB, whole trailing rows where they fit) with the
//       fletcher32 filter, so a flipped bit in tensor data fails the read of its chunk;
//     - has the attribute dtype (string: f32 f16 bf16 i8 u8 i32 i64) and the attribute shape
//       (1-D int64 array; null dataspace for a scalar). shape is authoritative;
//     - stores f32 as IEEE F32LE, i8/u8/i32/i64 as STD I8LE/U8LE/I32LE/I64LE, and f16 and bf16 as
//       STD U16LE bit patterns (HDF5 1.10 has no 16-bit float type; dtype tells them apart);
//     - has the tensor's shape as its dataspace when the tensor has >= 1 dim and >= 1 element.
//       A scalar is stored as a 1-D dataset of 1 element; a 0-element tensor as a 1-D dataset of
//       0 elements with an unlimited max dim (HDF5 cannot chunk a fixed 0-size dim).
//   The file is written with HDF5's 1.8+ object format (libver low = V18), so object headers
//   carry their own checksums too. fletcher32 does not cover the superblock, B-trees or heaps:
//   the whole-file SHA-256 from commit() (kept in the manifest) is what protects those, and
//   CheckpointReader::open checks it before HDF5 parses anything.
//
// HDF5 (Debian's serial build) is not thread-safe; every entry point here takes one process-wide
// lock, so readers and writers may be used from several threads (they run one at a time). Other
// code calling HDF5 directly is not covered by that lock. HDF5's automatic error printing is
// switched off process-wide on first use; failures become sq::Error with HDF5's own messages.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace sq::io {

inline constexpr int kCheckpointFormatVersion = 1;

// Root attributes every checkpoint file carries.
struct CheckpointHeader {
  int format_version = kCheckpointFormatVersion;
  std::string kind;  // "block" | "hidden"
  std::string recipe_hash;
  std::string model_fingerprint;
  std::vector<std::string> stages;
  std::int64_t block = -1;

  bool operator==(const CheckpointHeader&) const = default;
};

// A set of named tensors in groups, written to one HDF5 file by commit().
class CheckpointWriter {
 public:
  // Throws sq::Error on a header that could not be read back (bad version or kind, NUL in a
  // string, block < -1).
  explicit CheckpointWriter(CheckpointHeader header);

  // Keeps a reference to the tensor's bytes (no copy: a block's weights are GiBs) until commit;
  // the caller must not modify them in between. Paths are "/a/b/c" or "a/b/c" (same thing);
  // throws on an empty component, "." or "..", a path put twice, or a path that would be both a
  // tensor and a group ("/a" and "/a/b").
  void put(const std::string& path, const Tensor& tensor);
  // Replaces an earlier value of the same key.
  void put_attribute(const std::string& key, const std::string& value);

  // Writes to a temporary file in the same directory, closes, fsyncs, re-opens and verifies
  // (every dataset read back through the fletcher32 filter and compared byte for byte with what
  // was put, header and attributes checked), renames over `path`, fsyncs the directory; returns
  // the SHA-256 (lowercase hex) of the final file, for the manifest. Throws sq::Error naming the
  // file on any failure, leaving no temporary file and never a partial `path` (an existing
  // `path` is left as it was). The writer keeps its content: commit may be called again.
  std::string commit(const std::string& path) const;

 private:
  CheckpointHeader header_;
  std::map<std::string, Tensor> tensors_;  // by normalized path "/a/b"
  std::map<std::string, std::string> attributes_;
};

class CheckpointReader {
 public:
  // Checks the whole-file SHA-256 against `expected_digest` (if non-empty) BEFORE HDF5 opens the
  // file (fletcher32 does not cover HDF5's own metadata), then opens it, checks format_version
  // and reads the header, attributes and the list of tensors (dtype and shape of each). Throws
  // sq::Error naming the file and what is wrong (digest mismatch, truncated, not HDF5, bad
  // version, malformed dataset). Chunk checksums are checked by get(), which reads the data.
  static CheckpointReader open(const std::string& path, const std::string& expected_digest);

  const std::string& path() const { return path_; }
  const CheckpointHeader& header() const { return header_; }
  bool contains(const std::string& path) const;
  // Reads the whole tensor (owning). Throws sq::Error naming the file and tensor when it is
  // missing or a chunk fails its fletcher32 checksum.
  Tensor get(const std::string& path) const;
  DType dtype_of(const std::string& path) const;
  const Shape& shape_of(const std::string& path) const;
  std::vector<std::string> paths() const;  // sorted, each with a leading '/'
  // Value of put_attribute(key, ...); throws naming the key when absent.
  std::string attribute(const std::string& key) const;
  bool has_attribute(const std::string& key) const;
  const std::map<std::string, std::string>& attributes() const { return attributes_; }

  struct File;  // the open HDF5 file (defined in the .cpp)

 private:
  friend class CheckpointWriter;  // commit() verifies through a reader
  struct Entry {
    DType dtype = DType::f32;
    Shape shape;
  };
  const Entry& entry(const std::string& path) const;  // throws naming the tensor
  // Reads [first_row, first_row + rows) along the stored dataset's first dim into `dst`.
  void read_rows(const std::string& path, std::int64_t first_row, std::int64_t rows,
                 std::byte* dst) const;

  std::string path_;
  std::shared_ptr<File> file_;
  CheckpointHeader header_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> attributes_;
};

}  // namespace sq::io
