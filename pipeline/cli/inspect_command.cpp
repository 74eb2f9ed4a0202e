// `shardquant inspect`: what is inside a model directory, a safetensors file or a token file.
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "io/token_file.h"
#include "pipeline/cli/commands.h"

namespace sq::cli {
namespace fs = std::filesystem;

namespace {
void print_tensors(const std::vector<io::SafetensorsEntry>& entries, bool all) {
  std::map<std::string, std::pair<int, std::uint64_t>> by_dtype;
  for (const auto& e : entries) {
    auto& [count, bytes] = by_dtype[e.dtype_name];
    ++count;
    bytes += e.end - e.begin;
    if (all) fmt::print("  {:<60} {:<6} {}\n", e.name, e.dtype_name, shape_str(e.shape));
  }
  for (const auto& [dtype, cb] : by_dtype)
    fmt::print("  {}: {} tensors, {}\n", dtype, cb.first, format_bytes(double(cb.second)));
}
}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect",
                                 "Show what a model directory, .safetensors or token "
                                 "file holds");
  auto path = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  cmd->add_option("PATH", *path, "Model directory, .safetensors file or token file")->required();
  cmd->add_flag("--tensors", *all, "List every tensor");
  cmd->callback([path, all] {
    if (fs::is_directory(*path)) {
      // An export carries quantization_config, which the FP config parser refuses: describe it
      // here and parse the rest.
      const std::string config_file = (fs::path(*path) / "config.json").string();
      auto json = nlohmann::json::parse(io::read_text_file(config_file), nullptr, false);
      if (json.is_discarded()) fail(ErrorContext{.file = config_file}, "invalid JSON");
      if (json.is_object() && json.contains("quantization_config")) {
        const auto& q = json["quantization_config"];
        fmt::print("{}: quantized checkpoint: {}\n", *path, q.dump());
        json.erase("quantization_config");
      }
      const auto c = io::parse_hf_config(json, config_file);
      fmt::print(
          "{}: {} model, {} layers, hidden {}, intermediate {}, heads {} (kv {}), head_dim "
          "{}, vocab {}, max positions {}\n",
          *path, io::arch_name(c.arch), c.num_layers, c.hidden_size, c.intermediate_size,
          c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size, c.max_position_embeddings);
      const auto ckpt = io::Checkpoint::open(*path);
      std::vector<io::SafetensorsEntry> entries;
      for (const auto& n : ckpt.names()) entries.push_back(ckpt.entry(n));
      fmt::print("{} shard(s), {} tensors\n", ckpt.shard_files().size(), entries.size());
      print_tensors(entries, *all);
    } else if (path->ends_with(".safetensors")) {
      const auto f = io::SafetensorsFile::open(*path);
      fmt::print("{}: {} tensors, header {} bytes\n", *path, f.entries().size(), f.header_size());
      for (const auto& [k, v] : f.metadata()) fmt::print("  metadata {} = {}\n", k, v);
      print_tensors(f.entries(), *all);
    } else {
      const auto t = io::read_tokens(*path);
      std::uint32_t lo = UINT32_MAX, hi = 0;
      for (auto id : t.tokens) lo = std::min(lo, id), hi = std::max(hi, id);
      fmt::print("{}: {} tokens{}, ids in [{}, {}]\n", *path, t.tokens.size(),
                 t.seq_len ? fmt::format(" ({} x {})", t.tokens.size() / t.seq_len, t.seq_len) : "",
                 t.tokens.empty() ? 0 : lo, hi);
    }
  });
}

}  // namespace sq::cli
