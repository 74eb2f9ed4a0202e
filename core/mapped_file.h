// A read-only memory map of a whole file. Tensors viewing its bytes hold a shared_ptr to it, so
// the mapping lives exactly as long as something still reads it; pages are touched on demand,
// which is what lets a rank map a 100 GB shard and read only its own blocks.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace sq {

class MappedFile {
 public:
  // Maps `path` read-only; throws sq::Error naming the file when it cannot.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel these pages will not be needed again soon (frees page cache pressure).
  void release_pages(std::size_t offset, std::size_t length) const;

 private:
  MappedFile() = default;
  std::string path_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace sq
