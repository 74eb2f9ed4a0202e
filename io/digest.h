// SHA-256 digests as lowercase hex strings: of bytes in memory, of a whole file (streamed, so a
// multi-GiB checkpoint never sits in memory), or incrementally. The manifest keeps one per
// checkpoint file so a resume can reject a corrupt file before any parser touches it.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace sq::io {

// Incremental SHA-256 (OpenSSL EVP underneath). finish_hex() may be called once.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, std::size_t size);
  std::string finish_hex();  // 64 lowercase hex characters

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string sha256_hex(std::string_view bytes);
std::string sha256_hex(std::span<const std::byte> bytes);
// Reads the file in 1 MiB pieces; throws sq::Error naming the file when it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace sq::io
