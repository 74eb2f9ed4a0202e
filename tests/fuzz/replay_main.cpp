// Runs a libFuzzer target without libFuzzer (any compiler): every seed file given on the command
// line, then a fixed number of deterministic mutations of them (bit flips, byte changes,
// truncations, insertions, splices). Under ctest this keeps each parser's "sq::Error or success,
// never a crash" property checked on every build; with clang, the same target source links
// against -fsanitize=fuzzer for open-ended fuzzing.
//
//   fuzz_<name> [--mutations N] SEED_FILE...
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/random.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {
std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read seed %s\n", path.c_str());
    std::exit(2);
  }
  return {std::istreambuf_iterator<char>(f), {}};
}

void run(const std::vector<std::uint8_t>& input) {
  LLVMFuzzerTestOneInput(input.data(), input.size());
}
}  // namespace

int main(int argc, char** argv) {
  long mutations = 2000;
  std::vector<std::vector<std::uint8_t>> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mutations" && i + 1 < argc) {
      mutations = std::stol(argv[++i]);
    } else {
      seeds.push_back(read_file(a));
    }
  }
  if (seeds.empty()) {
    std::fprintf(stderr, "usage: %s [--mutations N] SEED_FILE...\n", argv[0]);
    return 2;
  }
  for (const auto& s : seeds) run(s);
  sq::Rng rng(2019);
  for (long m = 0; m < mutations; ++m) {
    auto input = seeds[rng.below(seeds.size())];
    const int edits = 1 + static_cast<int>(rng.below(4));
    for (int e = 0; e < edits && !input.empty(); ++e) {
      const std::size_t at = rng.below(input.size());
      switch (rng.below(5)) {
        case 0:
          input[at] ^= std::uint8_t(1u << rng.below(8));
          break;
        case 1:
          input[at] = std::uint8_t(rng.below(256));
          break;
        case 2:
          input.resize(at);
          break;
        case 3:
          input.insert(input.begin() + at, std::uint8_t(rng.below(256)));
          break;
        case 4: {  // splice in a run from another seed (headers into buffers and back)
          const auto& other = seeds[rng.below(seeds.size())];
          const std::size_t from = rng.below(other.size()), len = rng.below(64);
          for (std::size_t k = 0; k < len && from + k < other.size() && at + k < input.size(); ++k)
            input[at + k] = other[from + k];
          break;
        }
      }
    }
    run(input);
  }
  std::printf("%zu seeds and %ld mutations ran without a crash\n", seeds.size(), mutations);
  return 0;
}
