#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace sq::log {
namespace {
std::atomic<Level> g_level{Level::info};
std::atomic<int> g_rank{-1};
const auto g_start = std::chrono::steady_clock::now();

const char* level_tag(Level l) {
  switch (l) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info ";
    case Level::warn:
      return "WARN ";
    case Level::error:
      return "ERROR";
  }
  return "?";
}
}  // namespace

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }
void set_rank(int rank) { g_rank = rank; }

double elapsed_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

void write(Level l, std::string_view message) {
  const int rank = g_rank;
  std::string line =
      rank >= 0
          ? fmt::format("[{:9.3f}s] [r{}] {} {}\n", elapsed_seconds(), rank, level_tag(l), message)
          : fmt::format("[{:9.3f}s] {} {}\n", elapsed_seconds(), level_tag(l), message);
  // One write(2) per line keeps lines from different ranks whole in a shared Slurm log.
  const int fd = l >= Level::warn ? STDERR_FILENO : STDOUT_FILENO;
  std::fflush(stdout);
  std::size_t off = 0;
  while (off < line.size()) {
    const ssize_t w = ::write(fd, line.data() + off, line.size() - off);
    if (w <= 0) break;
    off += static_cast<std::size_t>(w);
  }
}

ScopedTimer::ScopedTimer(std::string what)
    : what_(std::move(what)), start_(std::chrono::steady_clock::now()) {}
double ScopedTimer::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}
ScopedTimer::~ScopedTimer() { info("{} done in {:.3f} s", what_, seconds()); }

}  // namespace sq::log
