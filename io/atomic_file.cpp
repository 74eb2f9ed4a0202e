// Crash-safe file replacement (temp file + fsync + rename + directory fsync) and whole-file reads.
#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace sq::io {
namespace {

std::string parent_dir(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// Makes a rename in `dir` durable; `path` is the file the caller is about, for the message.
void fsync_dir(const std::string& dir, const std::string& path) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    fail(ErrorContext{.file = path}, "cannot open directory {} to fsync it: {}", dir,
         std::strerror(errno));
  }
  // EINVAL: the file system cannot fsync directories (some network mounts); nothing to do.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    const int err = errno;
    ::close(fd);
    fail(ErrorContext{.file = path}, "cannot fsync directory {}: {}", dir, std::strerror(err));
  }
  ::close(fd);
}

void write_all(int fd, const void* data, std::size_t size, const std::string& path,
               const std::string& temp) {
  const auto* p = static_cast<const char*>(data);
  // write(2) moves at most ~2 GiB per call on Linux; a shard is much larger.
  constexpr std::size_t kChunk = std::size_t{1} << 30;
  while (size > 0) {
    const ssize_t w = ::write(fd, p, std::min(size, kChunk));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(ErrorContext{.file = path}, "cannot write {}: {}", temp, std::strerror(errno));
    }
    p += w;
    size -= static_cast<std::size_t>(w);
  }
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(const ByteSink&)>& write) {
  const std::string name = std::filesystem::path(path).filename().string();
  if (name.empty() || name == "." || name == "..") {
    fail(ErrorContext{.file = path}, "not a file path");
  }
  const std::string dir = parent_dir(path);
  const std::string base =
      (std::filesystem::path(dir) / ("." + name + ".tmp.")).string() + std::to_string(::getpid());
  // O_EXCL never clobbers another writer's temp; a stale one (same pid reused) gets a suffix.
  std::string temp = base;
  int fd = -1;
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp = attempt == 0 ? base : base + "." + std::to_string(attempt);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    fail(ErrorContext{.file = path}, "cannot create temporary file {}: {}", temp,
         std::strerror(errno));
  }
  try {
    write([&](const void* data, std::size_t size) { write_all(fd, data, size, path, temp); });
    if (::fsync(fd) != 0) {
      fail(ErrorContext{.file = path}, "cannot fsync {}: {}", temp, std::strerror(errno));
    }
    const int rc = ::close(fd);
    fd = -1;
    // close() can report a deferred write error (NFS); the data may not be on disk.
    if (rc != 0) {
      fail(ErrorContext{.file = path}, "cannot close {}: {}", temp, std::strerror(errno));
    }
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      fail(ErrorContext{.file = path}, "cannot rename {} over it: {}", temp, std::strerror(errno));
    }
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(temp.c_str());
    throw;
  }
  fsync_dir(dir, path);
}

void write_file_atomic(const std::string& path, std::string_view content) {
  write_file_atomic(path, [&](const ByteSink& sink) { sink(content.data(), content.size()); });
}

void rename_durable(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    fail(ErrorContext{.file = to}, "cannot rename {} to it: {}", from, std::strerror(errno));
  }
  fsync_dir(parent_dir(to), to);
}

std::string read_text_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ErrorContext{.file = path}, "cannot open: {}", std::strerror(errno));
  std::string text;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) text.reserve(static_cast<std::size_t>(st.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t r = ::read(fd, buffer, sizeof buffer);
    if (r == 0) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail(ErrorContext{.file = path}, "cannot read: {}", std::strerror(err));
    }
    text.append(buffer, static_cast<std::size_t>(r));
  }
  ::close(fd);
  return text;
}

}  // namespace sq::io
