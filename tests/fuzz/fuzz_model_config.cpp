// libFuzzer target for the config.json parser: arbitrary bytes must either parse into a config
// that survives to_hf_config and back unchanged, or be refused with sq::Error / a JSON error.
// Build: clang++ -std=c++20 -fsanitize=fuzzer,address,undefined with io/model_config.cpp,
// io/atomic_file.cpp and the core sources on the include roots.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  sq::io::ModelConfig config;
  try {
    config = sq::io::parse_hf_config(json, "fuzz.json");
  } catch (const sq::Error&) {
    return 0;
  } catch (const nlohmann::json::exception&) {
    std::abort();  // the parser must check types itself, never let nlohmann throw
  }
  // Anything accepted must be written and read back to the same config.json.
  const nlohmann::json written = sq::io::to_hf_config(config);
  const nlohmann::json again = sq::io::to_hf_config(sq::io::parse_hf_config(written, "written"));
  if (written != again) std::abort();
  return 0;
}
