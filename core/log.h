// Logging for long cluster jobs: every line carries the time since start and, under MPI, the
// rank, so a Slurm log reads as a timeline. Lines are written whole (one write per line).
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <string>
#include <string_view>

namespace sq::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

void set_level(Level level);
Level level();
// Rank prefix for every line ("[r3] "); -1 (the default) prints none.
void set_rank(int rank);
// Seconds since the process started logging.
double elapsed_seconds();
void write(Level level, std::string_view message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::info) write(Level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write(Level::error, fmt::format(f, std::forward<Args>(args)...));
}

// Measures a scope; logs "<what> done in 1.23 s" at info level when it ends.
class ScopedTimer {
 public:
  explicit ScopedTimer(std::string what);
  ~ScopedTimer();
  double seconds() const;
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  std::string what_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace sq::log
