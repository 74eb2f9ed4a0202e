// libFuzzer target for the safetensors reader: any bytes must give either a valid file or an
// sq::Error, never a crash, a hang or a read outside the mapping.
//
// Build (clang): clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined <include roots>
//   tests/fuzz/fuzz_safetensors.cpp io/safetensors.cpp io/atomic_file.cpp core/*.cpp -lfmt
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"

namespace {

// One scratch file per fuzzing process (libFuzzer -jobs runs several side by side).
const std::string& scratch_path() {
  static const std::string path = [] {
    const char* tmp = std::getenv("TMPDIR");
    return std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/fuzz_safetensors." +
           std::to_string(::getpid()) + ".safetensors";
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = scratch_path();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const bool written = size == 0 || std::fwrite(data, 1, size, f) == size;
  std::fclose(f);
  if (!written) return 0;
  try {
    const auto file = sq::io::SafetensorsFile::open(path);
    // Touch every byte a view exposes so the sanitizer sees any read past the mapping.
    unsigned sum = 0;
    for (const auto& e : file.entries()) {
      if (!e.dtype) continue;
      const sq::Tensor t = file.tensor(e.name);
      for (std::size_t i = 0; i < t.nbytes(); ++i) sum += static_cast<unsigned>(t.bytes()[i]);
    }
    for (const auto& [k, v] : file.metadata()) sum += static_cast<unsigned>(k.size() + v.size());
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const sq::Error&) {
    // Refusing malformed input is the expected outcome.
  }
  return 0;
}
