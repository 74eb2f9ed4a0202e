#include "pipeline/run_state.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "core/fault.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/digest.h"

namespace sq::pipeline {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kRunFile = "run.json";

// Bytes [offset, offset + size) of a file (fewer at its end).
std::string read_range(const std::string& path, std::uint64_t offset, std::uint64_t size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorContext{.file = path}, "cannot open");
  in.seekg(static_cast<std::streamoff>(offset));
  std::string out(size, '\0');
  in.read(out.data(), static_cast<std::streamsize>(size));
  out.resize(static_cast<std::size_t>(in.gcount()));
  return out;
}

json parse_json_file(const std::string& path) {
  try {
    return json::parse(io::read_text_file(path));
  } catch (const json::exception& e) {
    fail(ErrorContext{.file = path}, "not valid JSON: {}", e.what());
  }
}

}  // namespace

std::string model_fingerprint(const std::string& model_dir) {
  io::Sha256 h;
  auto add = [&](std::string_view s) {
    const std::uint64_t n = s.size();
    h.update(&n, sizeof n);  // length-prefixed: no two different inputs hash alike
    h.update(s.data(), s.size());
  };
  const std::string config = (fs::path(model_dir) / "config.json").string();
  add("config.json");
  add(io::read_text_file(config));
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") files.push_back(e.path());
  if (ec) fail(ErrorContext{.file = model_dir}, "cannot list: {}", ec.message());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    const std::string path = f.string();
    const std::uint64_t size = fs::file_size(f);
    add(f.filename().string());
    add(std::to_string(size));
    const std::string prefix = read_range(path, 0, 8);
    std::uint64_t header = 0;
    if (prefix.size() == 8) std::memcpy(&header, prefix.data(), 8);
    const std::uint64_t header_end = std::min(size, 8 + header);
    add(read_range(path, 0, header_end));
    constexpr int kSamples = 16;
    constexpr std::uint64_t kSample = 4096;
    const std::uint64_t data = size - header_end;
    for (int i = 0; i < kSamples && data > 0; ++i)
      add(read_range(path, header_end + data / kSamples * static_cast<std::uint64_t>(i), kSample));
  }
  return h.finish_hex();
}

RunIdentity identify_run(const io::Recipe& recipe) {
  RunIdentity id;
  id.recipe_canonical = recipe.canonical();
  id.recipe_hash = io::sha256_hex(id.recipe_canonical);
  id.model_fingerprint = model_fingerprint(recipe.model_dir);
  id.calibration_digest = io::sha256_file_hex(recipe.data.calibration);
  id.recipe_file = fs::absolute(recipe.file).lexically_normal().string();
  return id;
}

void RunDirectory::create(const RunIdentity& id) const {
  std::error_code ec;
  if (fs::exists(root_, ec) && !fs::is_empty(root_, ec))
    fail(ErrorContext{.file = root_},
         "run directory exists and is not empty; continue it with --resume or choose a new "
         "output");
  for (const char* sub : {"blocks", "hidden", "manifest"}) {
    fs::create_directories(fs::path(root_) / sub, ec);
    if (ec) fail(ErrorContext{.file = root_}, "cannot create the run directory: {}", ec.message());
  }
  const json j = {{"format_version", kRunFormatVersion},
                  {"recipe_hash", id.recipe_hash},
                  {"model_fingerprint", id.model_fingerprint},
                  {"calibration_digest", id.calibration_digest},
                  {"recipe_file", id.recipe_file},
                  {"recipe", json::parse(id.recipe_canonical)}};
  io::write_file_atomic(absolute(kRunFile), j.dump(2) + "\n");
}

std::string RunDirectory::recorded_recipe(const std::string& root) {
  const std::string path = (fs::path(root) / kRunFile).string();
  if (!fs::exists(path))
    fail(ErrorContext{.file = path}, "not a run directory (no {}); nothing to resume", kRunFile);
  const json j = parse_json_file(path);
  if (!j.contains("recipe_file") || !j["recipe_file"].is_string())
    fail(ErrorContext{.file = path, .key = "recipe_file"}, "missing");
  return j["recipe_file"].get<std::string>();
}

void RunDirectory::check_resume(const RunIdentity& id) const {
  const std::string path = absolute(kRunFile);
  if (!fs::exists(path))
    fail(ErrorContext{.file = path}, "not a run directory (no {}); nothing to resume", kRunFile);
  const json j = parse_json_file(path);
  auto field = [&](const char* key) {
    if (!j.contains(key) || !j[key].is_string())
      fail(ErrorContext{.file = path, .key = key}, "missing or not a string");
    return j[key].get<std::string>();
  };
  if (!j.contains("format_version") || j["format_version"] != kRunFormatVersion)
    fail(ErrorContext{.file = path, .key = "format_version"},
         "written by another version of ShardQuant (format {}, this one reads {})",
         j.value("format_version", json()).dump(), kRunFormatVersion);
  if (field("recipe_hash") != id.recipe_hash) {
    // Say which settings differ: a JSON patch from the run's recipe to this one.
    std::string what;
    if (j.contains("recipe")) {
      const json diff = json::diff(j["recipe"], json::parse(id.recipe_canonical));
      for (const auto& op : diff) {
        const std::string p = op.value("path", "");
        json before;
        try {
          before = j["recipe"].at(json::json_pointer(p));
        } catch (const json::exception&) {
        }
        if (!what.empty()) what += "; ";
        what += fmt::format("{}: {} in the run, {} now", p.empty() ? "/" : p,
                            before.is_null() ? "absent" : before.dump(),
                            op.contains("value") ? op["value"].dump() : "absent");
      }
    }
    fail(ErrorContext{.file = path, .key = "recipe_hash"},
         "the recipe differs from the one this run was started with ({}); resume with the same "
         "recipe or start a new run",
         what.empty() ? "hash differs" : what);
  }
  if (field("model_fingerprint") != id.model_fingerprint)
    fail(ErrorContext{.file = path, .key = "model_fingerprint"},
         "the model differs from the one this run was started with (its config.json, safetensors "
         "headers or weights changed)");
  if (field("calibration_digest") != id.calibration_digest)
    fail(ErrorContext{.file = path, .key = "calibration_digest"},
         "the calibration token file differs from the one this run was started with");
}

std::string RunDirectory::block_file(int block) const {
  return fmt::format("blocks/block-{:05}.h5", block);
}

std::string RunDirectory::hidden_file(int block, std::int64_t first, std::int64_t end) const {
  return fmt::format("hidden/b{:05}.s{:06}-{:06}.h5", block, first, end);
}

std::string RunDirectory::manifest_file(int attempt, int rank) const {
  return fmt::format("manifest/a{:04}.r{:05}.json", attempt, rank);
}

std::string RunDirectory::absolute(const std::string& relative) const {
  return (fs::path(root_) / relative).string();
}

namespace {
const std::regex kManifestName(R"(a(\d{4,})\.r(\d{5,})\.json)");
}

int RunDirectory::next_attempt() const {
  int next = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(root_) / "manifest", ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, kManifestName)) next = std::max(next, std::stoi(m[1]) + 1);
  }
  if (ec) fail(ErrorContext{.file = absolute("manifest")}, "cannot list: {}", ec.message());
  return next;
}

std::vector<ManifestEntry> RunDirectory::read_manifests() const {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(root_) / "manifest", ec)) {
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, kManifestName)) files.push_back(e.path());
  }
  if (ec) fail(ErrorContext{.file = absolute("manifest")}, "cannot list: {}", ec.message());
  std::sort(files.begin(), files.end());
  std::vector<ManifestEntry> out;
  for (const auto& f : files) {
    try {
      const json j = parse_json_file(f.string());
      for (const auto& e : j.at("entries")) {
        ManifestEntry m;
        m.file = e.at("file").get<std::string>();
        m.digest = e.at("sha256").get<std::string>();
        m.kind = e.at("kind").get<std::string>();
        m.block = e.at("block").get<int>();
        m.stages_done = e.value("stages_done", 0);
        m.first_seq = e.value("first_seq", std::int64_t{0});
        m.end_seq = e.value("end_seq", std::int64_t{0});
        out.push_back(std::move(m));
      }
    } catch (const std::exception& e) {
      log::warn("{}: unreadable manifest, ignored (the files it lists will be recomputed): {}",
                f.string(), e.what());
    }
  }
  return out;
}

Manifest::Manifest(const RunDirectory& dir, int attempt, int rank)
    : path_(dir.absolute(dir.manifest_file(attempt, rank))) {}

void Manifest::record(const ManifestEntry& entry) {
  auto same = [&](const ManifestEntry& e) { return e.file == entry.file; };
  std::erase_if(entries_, same);
  entries_.push_back(entry);
  json list = json::array();
  for (const auto& e : entries_) {
    json item = {{"file", e.file}, {"sha256", e.digest}, {"kind", e.kind}, {"block", e.block}};
    if (e.kind == "block") item["stages_done"] = e.stages_done;
    if (e.kind == "hidden") {
      item["first_seq"] = e.first_seq;
      item["end_seq"] = e.end_seq;
    }
    list.push_back(std::move(item));
  }
  const std::string text = json{{"format_version", kRunFormatVersion}, {"entries", list}}.dump(1);
  io::write_file_atomic(path_, [&](const io::ByteSink& sink) {
    const std::size_t half = text.size() / 2;
    sink(text.data(), half);
    fault::point("manifest.mid_write");  // crash tests: half of the new manifest written
    sink(text.data() + half, text.size() - half);
  });
}

std::optional<ManifestEntry> verified_entry(const RunDirectory& dir,
                                            const std::vector<ManifestEntry>& entries,
                                            const std::string& file) {
  const std::string path = dir.absolute(file);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  bool recorded = false;
  for (const auto& e : entries) recorded |= e.file == file;
  if (!recorded) {
    log::warn("{}: not in any manifest (the run stopped before recording it); recomputing", path);
    return std::nullopt;
  }
  const std::string digest = io::sha256_file_hex(path);
  std::optional<ManifestEntry> best;
  for (const auto& e : entries)
    if (e.file == file && e.digest == digest && (!best || e.stages_done > best->stages_done))
      best = e;
  if (!best)
    log::warn("{}: SHA-256 matches no manifest record (truncated or corrupt); recomputing", path);
  return best;
}

}  // namespace sq::pipeline
