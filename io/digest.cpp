// SHA-256 through OpenSSL's EVP interface (the low-level SHA256_* calls are deprecated in 3.0).
#include "io/digest.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace sq::io {

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
  bool finished = false;
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  if (impl_->ctx == nullptr || EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr) != 1) {
    fail("OpenSSL: cannot initialise a SHA-256 context");
  }
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, std::size_t size) {
  SQ_CHECK(impl_ && !impl_->finished, "Sha256::update after finish_hex");
  if (size == 0) return;
  if (EVP_DigestUpdate(impl_->ctx, data, size) != 1) fail("OpenSSL: SHA-256 update failed");
}

std::string Sha256::finish_hex() {
  SQ_CHECK(impl_ && !impl_->finished, "Sha256::finish_hex called twice");
  impl_->finished = true;
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(impl_->ctx, md.data(), &length) != 1) {
    fail("OpenSSL: SHA-256 finalisation failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[md[i] >> 4]);
    hex.push_back(kHex[md[i] & 0xF]);
  }
  return hex;
}

std::string sha256_hex(std::string_view bytes) {
  Sha256 sha;
  sha.update(bytes.data(), bytes.size());
  return sha.finish_hex();
}

std::string sha256_hex(std::span<const std::byte> bytes) {
  Sha256 sha;
  sha.update(bytes.data(), bytes.size());
  return sha.finish_hex();
}

std::string sha256_file_hex(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail(ErrorContext{.file = path}, "cannot open to digest it: {}", std::strerror(errno));
  Sha256 sha;
  std::vector<char> buffer(std::size_t{1} << 20);
  for (;;) {
    const ssize_t r = ::read(fd, buffer.data(), buffer.size());
    if (r == 0) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail(ErrorContext{.file = path}, "cannot read to digest it: {}", std::strerror(err));
    }
    sha.update(buffer.data(), static_cast<std::size_t>(r));
  }
  ::close(fd);
  return sha.finish_hex();
}

}  // namespace sq::io
