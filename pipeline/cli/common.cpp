#include <fmt/format.h>

#include "kernels/cpu/ops.h"
#include "pipeline/cli/commands.h"

namespace sq::cli {

void set_threads(int threads) {
  if (threads > 0) cpu::set_blas_threads(threads);
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return fmt::format("{:.1f} {}", bytes, units[u]);
}

}  // namespace sq::cli
