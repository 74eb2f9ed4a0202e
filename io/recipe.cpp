// YAML recipe -> Recipe, validated strictly. Every refusal names the file, the 1-based line and
// the key path. yaml-cpp keeps duplicate map keys and accepts any scalar as any type, so the
// checks here are our own: each map is scanned for duplicates and unknown keys, and scalars are
// parsed by the YAML 1.2 core rules only when unquoted (bits: "8" is a string, not 8).
#include "io/recipe.h"

#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"

namespace sq::io {
namespace {

namespace fs = std::filesystem;

// Upper bound on counts and sizes, as in model_config: far from int64 overflow in products.
constexpr std::int64_t kMaxCount = std::int64_t{1} << 31;
// More BLAS threads than any node has cores is a typo, not a setting.
constexpr std::int64_t kMaxThreads = 4096;
// OS+ evaluates the loss once per threshold and pair: beyond this a run never ends.
constexpr std::int64_t kMaxGrid = 1'000'000;

// The recipe being parsed: its name for messages and the directory relative paths start from.
struct Source {
  std::string file;
  fs::path base_dir;

  std::string where(const YAML::Mark& mark) const {
    if (mark.is_null() || mark.line < 0) return file;
    return fmt::format("{}:{}", file, mark.line + 1);
  }

  template <typename... Args>
  [[noreturn]] void refuse(const YAML::Mark& mark, const std::string& key,
                           fmt::format_string<Args...> format, Args&&... args) const {
    fail(ErrorContext{.file = where(mark), .key = key}, format, std::forward<Args>(args)...);
  }
};

// One value of the file with its key path ("scheme.weights.bits", "stages[1].smoothquant") and
// the position messages point at.
struct Value {
  YAML::Node node;
  YAML::Mark mark;
  std::string path;
};

std::string join_key(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : fmt::format("{}.{}", prefix, key);
}

// Unquoted scalars are the only ones that may be numbers, booleans or null in YAML; yaml-cpp
// tags them "?" (quoted ones "!").
bool is_plain(const YAML::Node& node) { return node.IsScalar() && node.Tag() == "?"; }

// A value as the file writes it, short enough to keep the message on one line.
std::string show(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsMap()) return "a map";
  if (node.IsSequence()) return "a list";
  if (!node.IsScalar()) return "nothing";
  std::string text = node.Scalar();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return is_plain(node) ? text : fmt::format("\"{}\" (a string)", text);
}

// A map whose keys were checked on construction: each a plain string, none twice, each one of
// `allowed`. A missing key and a key written as null both read as "not given".
class Map {
 public:
  Map(const Source& src, const Value& value, std::initializer_list<std::string_view> allowed)
      : src_(src), self_(value) {
    if (!value.node.IsMap()) {
      if (value.path.empty()) {
        src.refuse(value.mark, "", "a recipe must be a map of keys, got {}", show(value.node));
      }
      src.refuse(value.mark, value.path, "must be a map, got {}", show(value.node));
    }
    // yaml-cpp's iterators hand out temporaries: `entry` keeps the pair alive for the whole body
    // (a reference to it->first would dangle).
    for (const auto& entry : value.node) {
      const YAML::Node& key = entry.first;
      const YAML::Node& val = entry.second;
      if (!key.IsScalar()) {
        src.refuse(key.Mark(), value.path, "keys must be strings, got {}", show(key));
      }
      const std::string name = key.Scalar();
      const std::string path = join_key(value.path, name);
      if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        if (allowed.size() == 0) src.refuse(key.Mark(), path, "unknown key: takes no parameters");
        src.refuse(key.Mark(), path, "unknown key (expected one of: {})", fmt::join(allowed, ", "));
      }
      for (const Entry& seen : entries_) {
        if (seen.name == name) {
          src.refuse(key.Mark(), path, "duplicate key (first given at line {})",
                     seen.key_mark.line + 1);
        }
      }
      // An empty value ("key:") is marked where the next token starts, often the next line: the
      // key's own position is the one to show.
      entries_.push_back(
          {name, key.Mark(), Value{val, val.IsNull() ? key.Mark() : val.Mark(), path}});
    }
  }

  std::optional<Value> get(std::string_view name) const {
    for (const Entry& entry : entries_) {
      if (entry.name == name && !entry.value.node.IsNull()) return entry.value;
    }
    return std::nullopt;
  }

  Value require(std::string_view name) const {
    for (const Entry& entry : entries_) {
      if (entry.name == name) return entry.value;  // a null value is refused by its reader
    }
    src_.refuse(self_.mark, join_key(self_.path, name), "required key is missing");
  }

 private:
  struct Entry {
    std::string name;
    YAML::Mark key_mark;
    Value value;
  };
  const Source& src_;
  Value self_;
  std::vector<Entry> entries_;
};

// --- scalars ----------------------------------------------------------------------------------

// YAML 1.2 core integers in decimal: [-+]?[0-9]+.
std::optional<std::int64_t> parse_integer(const YAML::Node& node) {
  if (!is_plain(node)) return std::nullopt;
  std::string_view text = node.Scalar();
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  std::int64_t out = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return out;
}

std::int64_t integer(const Source& src, const Value& v, std::int64_t lo, std::int64_t hi) {
  const std::optional<std::int64_t> n = parse_integer(v.node);
  if (!n || *n < lo || *n > hi) {
    if (hi == kMaxCount) {
      src.refuse(v.mark, v.path, "must be an integer >= {}, got {}", lo, show(v.node));
    }
    src.refuse(v.mark, v.path, "must be an integer in [{}, {}], got {}", lo, hi, show(v.node));
  }
  return *n;
}

// A finite decimal number ("0.85", "1", ".5", "1e-3"); YAML's .inf and .nan are refused.
std::optional<double> parse_number(const YAML::Node& node) {
  if (!is_plain(node)) return std::nullopt;
  std::string_view text = node.Scalar();
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  double out = 0;
  const auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), out, std::chars_format::general);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      !std::isfinite(out)) {
    return std::nullopt;
  }
  return out;
}

double fraction(const Source& src, const Value& v) {
  const std::optional<double> x = parse_number(v.node);
  if (!x || *x < 0.0 || *x > 1.0) {
    src.refuse(v.mark, v.path, "must be a number in [0, 1], got {}", show(v.node));
  }
  return *x;
}

double positive(const Source& src, const Value& v) {
  const std::optional<double> x = parse_number(v.node);
  if (!x || *x <= 0.0) src.refuse(v.mark, v.path, "must be a number > 0, got {}", show(v.node));
  return *x;
}

// YAML 1.2 core booleans only: yaml-cpp's YAML 1.1 yes/no/on/off are refused, as they surprise
// (a country code "no" becomes false).
bool flag(const Source& src, const Value& v) {
  if (is_plain(v.node)) {
    const std::string& text = v.node.Scalar();
    if (text == "true" || text == "True" || text == "TRUE") return true;
    if (text == "false" || text == "False" || text == "FALSE") return false;
  }
  src.refuse(v.mark, v.path, "must be true or false, got {}", show(v.node));
}

std::string text(const Source& src, const Value& v) {
  if (!v.node.IsScalar() || v.node.Scalar().empty()) {
    src.refuse(v.mark, v.path, "must be a non-empty string, got {}", show(v.node));
  }
  return v.node.Scalar();
}

// A recipe spelling and the value it stands for.
template <typename E>
using Choice = std::pair<std::string_view, E>;

template <typename Table>
auto choice(const Source& src, const Value& v, const Table& table) {
  if (v.node.IsScalar()) {
    for (const auto& [name, value] : table) {
      if (v.node.Scalar() == name) return value;
    }
  }
  std::vector<std::string_view> names;
  for (const auto& entry : table) names.push_back(entry.first);
  src.refuse(v.mark, v.path, "must be one of {}, got {}", fmt::join(names, " | "), show(v.node));
}

// Absolute, or joined to the recipe's directory; normalized, without a trailing separator, so
// that the same file written two ways hashes the same in canonical().
std::string resolve_path(const Source& src, const Value& v) {
  fs::path path = text(src, v);
  if (path.is_relative()) path = src.base_dir / path;
  path = path.lexically_normal();
  if (path.has_parent_path() && !path.has_filename()) path = path.parent_path();
  return path.string();
}

// --- sections ---------------------------------------------------------------------------------

constexpr std::array<Choice<WeightGranularity>, 3> kWeightGranularities = {{
    {"channel", WeightGranularity::channel},
    {"tensor", WeightGranularity::tensor},
    {"group", WeightGranularity::group},
}};
constexpr std::array<Choice<WeightClip>, 2> kClips = {{
    {"minmax", WeightClip::minmax},
    {"mse", WeightClip::mse},
}};
constexpr std::array<Choice<ActivationGranularity>, 2> kActivationGranularities = {{
    {"token", ActivationGranularity::token},
    {"tensor", ActivationGranularity::tensor},
}};
constexpr std::array<Choice<ScaleRule>, 2> kScaleRules = {{
    {"max_int", ScaleRule::max_int},
    {"half_range", ScaleRule::half_range},
}};
constexpr std::array<Choice<CalibrationInputs>, 2> kCalibrationInputs = {{
    {"fp", CalibrationInputs::fp},
    {"quant", CalibrationInputs::quant},
}};
constexpr std::array<Choice<StageKind>, 4> kStages = {{
    {"calibrate", StageKind::calibrate},
    {"smoothquant", StageKind::smoothquant},
    {"os_plus", StageKind::os_plus},
    {"quantize_weights", StageKind::quantize_weights},
}};
constexpr std::array<Choice<ExportFormat>, 2> kExportFormats = {{
    {"compressed-tensors", ExportFormat::compressed_tensors},
    {"none", ExportFormat::none},
}};
constexpr std::array<Choice<Device>, 2> kDevices = {{
    {"cpu", Device::cpu},
    {"cuda", Device::cuda},
}};
// "model" keeps the checkpoint's own dtype (nullopt).
constexpr std::array<Choice<std::optional<DType>>, 4> kExportDTypes = {{
    {"model", std::nullopt},
    {"float32", DType::f32},
    {"float16", DType::f16},
    {"bfloat16", DType::bf16},
}};

template <typename E, typename Table>
std::string_view name_of(const E& value, const Table& table) {
  for (const auto& [name, v] : table) {
    if (v == value) return name;
  }
  return "?";
}

DataSpec parse_data(const Source& src, const Value& value) {
  const Map m(src, value,
              {"calibration", "evaluation", "seq_len", "calibration_sequences", "micro_batch"});
  DataSpec data;
  data.calibration = resolve_path(src, m.require("calibration"));
  if (auto v = m.get("evaluation")) data.evaluation = resolve_path(src, *v);
  if (auto v = m.get("seq_len")) data.seq_len = integer(src, *v, 1, kMaxCount);
  if (auto v = m.get("calibration_sequences")) {
    data.calibration_sequences = integer(src, *v, 1, kMaxCount);
  }
  if (auto v = m.get("micro_batch")) data.micro_batch = integer(src, *v, 1, kMaxCount);
  return data;
}

WeightScheme parse_weights(const Source& src, const Value& value) {
  const Map m(src, value, {"bits", "symmetric", "granularity", "group_size", "clip"});
  WeightScheme w;
  w.bits = static_cast<int>(integer(src, m.require("bits"), 2, 8));
  if (auto v = m.get("symmetric")) w.symmetric = flag(src, *v);
  if (auto v = m.get("granularity")) w.granularity = choice(src, *v, kWeightGranularities);
  if (auto v = m.get("clip")) w.clip = choice(src, *v, kClips);
  const std::optional<Value> group_size = m.get("group_size");
  if (w.granularity == WeightGranularity::group) {
    if (!group_size) {
      src.refuse(value.mark, join_key(value.path, "group_size"),
                 "required when granularity is group");
    }
    w.group_size = integer(src, *group_size, 1, kMaxCount);
  } else if (group_size) {
    src.refuse(group_size->mark, group_size->path,
               "allowed only when granularity is group (granularity is {}{})",
               name_of(w.granularity, kWeightGranularities),
               m.get("granularity") ? "" : ", the default");
  }
  return w;
}

ActivationScheme parse_activations(const Source& src, const Value& value) {
  const Map m(src, value, {"bits", "symmetric", "granularity", "dynamic", "scale_rule"});
  ActivationScheme a;
  a.bits = static_cast<int>(integer(src, m.require("bits"), 2, 8));
  if (auto v = m.get("symmetric")) a.symmetric = flag(src, *v);
  if (auto v = m.get("granularity")) a.granularity = choice(src, *v, kActivationGranularities);
  if (auto v = m.get("dynamic")) {
    a.dynamic = flag(src, *v);
    // A static scale is fixed at calibration, but the tokens of a run are not known then.
    if (a.granularity == ActivationGranularity::token && !a.dynamic) {
      src.refuse(v->mark, v->path,
                 "per-token activation scales must be dynamic (use granularity: tensor for a "
                 "static scale)");
    }
  }
  if (auto v = m.get("scale_rule")) {
    // Both rules agree for asymmetric ranges ((max - min) / (2^b - 1)); accepting the key there
    // would suggest a choice that changes nothing.
    if (!a.symmetric) {
      src.refuse(v->mark, v->path, "applies only to symmetric activations (symmetric is false)");
    }
    a.scale_rule = choice(src, *v, kScaleRules);
  }
  return a;
}

Scheme parse_scheme(const Source& src, const Value& value) {
  const Map m(src, value, {"weights", "activations", "attention_inputs"});
  Scheme scheme;
  scheme.weights = parse_weights(src, m.require("weights"));
  if (auto v = m.get("activations")) scheme.activations = parse_activations(src, *v);
  if (auto v = m.get("attention_inputs")) {
    scheme.attention_inputs = flag(src, *v);
    if (scheme.attention_inputs && !scheme.activations) {
      src.refuse(v->mark, v->path,
                 "needs activation quantization, but scheme.activations is absent (weight-only)");
    }
  }
  return scheme;
}

StageSpec parse_stage_params(const Source& src, StageKind kind,
                             const std::optional<Value>& params) {
  StageSpec stage;
  stage.kind = kind;
  if (!params || params->node.IsNull()) return stage;
  switch (kind) {
    case StageKind::calibrate:
    case StageKind::quantize_weights:
      (void)Map(src, *params, {});  // refuses any key
      break;
    case StageKind::smoothquant: {
      const Map m(src, *params, {"alpha"});
      if (auto v = m.get("alpha")) stage.alpha = fraction(src, *v);
      break;
    }
    case StageKind::os_plus: {
      const Map m(src, *params, {"grid", "floor"});
      if (auto v = m.get("grid")) stage.grid = static_cast<int>(integer(src, *v, 10, kMaxGrid));
      if (auto v = m.get("floor")) stage.floor = positive(src, *v);
      break;
    }
  }
  return stage;
}

std::vector<StageSpec> parse_stages(const Source& src, const Value& value) {
  if (!value.node.IsSequence()) {
    src.refuse(value.mark, value.path, "must be a list of stages, got {}", show(value.node));
  }
  std::vector<StageSpec> stages;
  std::vector<Value> items;  // where each stage is written, for the ordering checks
  for (std::size_t i = 0; i < value.node.size(); ++i) {
    const YAML::Node item = value.node[i];
    const std::string path = fmt::format("{}[{}]", value.path, i);
    Value name{item, item.Mark(), path};
    std::optional<Value> params;
    if (item.IsMap()) {
      // The usual slip is indenting a parameter one level too little, which makes it a second
      // key of the item: say so rather than "unknown stage".
      if (item.size() != 1) {
        std::vector<std::string> keys;
        for (const auto& entry : item) {
          keys.push_back(entry.first.IsScalar() ? entry.first.Scalar() : show(entry.first));
        }
        src.refuse(item.Mark(), path,
                   "a stage is a name or a one-key map {{name: {{params}}}}, got {} keys ({})",
                   item.size(), fmt::join(keys, ", "));
      }
      for (const auto& entry : item) {  // the only entry
        const YAML::Node& p = entry.second;
        name = Value{entry.first, entry.first.Mark(), path};
        params = Value{p, p.IsNull() ? entry.first.Mark() : p.Mark(), path};
      }
    } else if (!item.IsScalar()) {
      src.refuse(item.Mark(), path,
                 "a stage is a name or a one-key map {{name: {{params}}}}, got {}", show(item));
    }
    const StageKind kind = [&] {
      if (name.node.IsScalar()) {
        for (const auto& [stage_name, stage_kind] : kStages) {
          if (name.node.Scalar() == stage_name) return stage_kind;
        }
      }
      std::vector<std::string_view> names;
      for (const auto& entry : kStages) names.push_back(entry.first);
      src.refuse(name.mark, path, "unknown stage {} (expected one of: {})", show(name.node),
                 fmt::join(names, ", "));
    }();
    if (params) params->path = join_key(path, recipe_name(kind));
    for (std::size_t j = 0; j < stages.size(); ++j) {
      if (stages[j].kind == kind) {
        src.refuse(name.mark, path, "stage {} is given twice (also {}, line {})", recipe_name(kind),
                   items[j].path, items[j].mark.line + 1);
      }
    }
    // Statistics are gathered before any transform; "calibrate" names that implicit first step.
    if (kind == StageKind::calibrate && i != 0) {
      src.refuse(name.mark, path, "calibrate, when given, must be the first stage");
    }
    stages.push_back(parse_stage_params(src, kind, params));
    items.push_back(name);
  }
  const auto last = std::find_if(stages.begin(), stages.end(), [](const StageSpec& s) {
    return s.kind == StageKind::quantize_weights;
  });
  if (last == stages.end()) {
    src.refuse(value.mark, value.path,
               "quantize_weights is missing: every recipe ends with the quantize_weights stage");
  }
  const std::size_t at = static_cast<std::size_t>(last - stages.begin());
  if (at + 1 != stages.size()) {
    src.refuse(items[at].mark, items[at].path,
               "quantize_weights must be the last stage, but {} ({}) comes after it",
               items[at + 1].path, recipe_name(stages[at + 1].kind));
  }
  if (stages.front().kind != StageKind::calibrate) {
    StageSpec calibrate;
    calibrate.kind = StageKind::calibrate;
    stages.insert(stages.begin(), calibrate);
  }
  return stages;
}

ExportSpec parse_export(const Source& src, const Value& value) {
  const Map m(src, value, {"format", "dtype"});
  ExportSpec spec;
  if (auto v = m.get("format")) spec.format = choice(src, *v, kExportFormats);
  if (auto v = m.get("dtype")) spec.dtype = choice(src, *v, kExportDTypes);
  return spec;
}

Recipe parse_root(const Source& src, const YAML::Node& root) {
  const Map m(src, Value{root, root.Mark(), ""},
              {"model", "output", "data", "scheme", "calibration", "stages", "export", "device",
               "threads"});
  Recipe recipe;
  recipe.file = src.file;
  recipe.model_dir = resolve_path(src, m.require("model"));
  recipe.output_dir = resolve_path(src, m.require("output"));
  recipe.data = parse_data(src, m.require("data"));
  recipe.scheme = parse_scheme(src, m.require("scheme"));
  if (auto v = m.get("calibration")) {
    const Map c(src, *v, {"inputs"});
    if (auto inputs = c.get("inputs")) {
      recipe.calibration.inputs = choice(src, *inputs, kCalibrationInputs);
    }
  }
  recipe.stages = parse_stages(src, m.require("stages"));
  if (auto v = m.get("export")) recipe.export_ = parse_export(src, *v);
  if (auto v = m.get("device")) recipe.device = choice(src, *v, kDevices);
  if (auto v = m.get("threads")) {
    recipe.threads = static_cast<int>(integer(src, *v, 0, kMaxThreads));
  }
  return recipe;
}

template <typename T>
nlohmann::json or_null(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

}  // namespace

// --- public -----------------------------------------------------------------------------------

Recipe parse_recipe(const std::string& yaml_text, const std::string& file_for_errors,
                    const std::string& base_dir) {
  const Source src{file_for_errors, fs::path(base_dir)};
  try {
    const std::vector<YAML::Node> docs = YAML::LoadAll(yaml_text);
    if (docs.empty() || docs.front().IsNull()) {
      fail(ErrorContext{.file = src.file}, "the recipe is empty");
    }
    if (docs.size() > 1) {
      src.refuse(docs[1].Mark(), "", "a recipe is one YAML document, but a second one starts here");
    }
    return parse_root(src, docs.front());
  } catch (const YAML::Exception& e) {
    // Syntax errors come from LoadAll; the accessors used above do not throw on loaded nodes, but
    // anything yaml-cpp raises still leaves as an sq::Error naming the place.
    fail(ErrorContext{.file = src.where(e.mark)}, "invalid YAML: {}", e.msg);
  }
}

Recipe load_recipe(const std::string& path) {
  const std::string text = read_text_file(path);
  const fs::path dir = fs::absolute(fs::path(path)).parent_path();
  return parse_recipe(text, path, dir.string());
}

std::string Recipe::canonical() const {
  using nlohmann::json;
  const WeightScheme& w = scheme.weights;
  json weights = {{"bits", w.bits},
                  {"symmetric", w.symmetric},
                  {"granularity", recipe_name(w.granularity)},
                  {"group_size", nullptr},
                  {"clip", recipe_name(w.clip)}};
  if (w.granularity == WeightGranularity::group) weights["group_size"] = w.group_size;
  json activations = nullptr;
  if (scheme.activations) {
    const ActivationScheme& a = *scheme.activations;
    activations = {{"bits", a.bits},
                   {"symmetric", a.symmetric},
                   {"granularity", recipe_name(a.granularity)},
                   {"dynamic", a.dynamic},
                   {"scale_rule", recipe_name(a.scale_rule)}};
  }
  json stage_list = json::array();
  for (const StageSpec& stage : stages) {
    json item = {{"name", recipe_name(stage.kind)}};
    // Only the parameters a stage reads: grid's default on a smoothquant stage is not a setting.
    if (stage.kind == StageKind::smoothquant) item["alpha"] = or_null(stage.alpha);
    if (stage.kind == StageKind::os_plus) {
      item["grid"] = stage.grid;
      item["floor"] = or_null(stage.floor);
    }
    stage_list.push_back(std::move(item));
  }
  // The model and calibration paths stay in: the model is fingerprinted separately, but the
  // calibration tokens are known only by their path.
  const json doc = {{"recipe_version", 1},
                    {"model", model_dir},
                    {"data",
                     {{"calibration", data.calibration},
                      {"seq_len", or_null(data.seq_len)},
                      {"calibration_sequences", or_null(data.calibration_sequences)},
                      {"micro_batch", data.micro_batch}}},
                    {"scheme",
                     {{"weights", weights},
                      {"activations", activations},
                      {"attention_inputs", scheme.attention_inputs}}},
                    {"calibration", {{"inputs", recipe_name(calibration.inputs)}}},
                    {"device", recipe_name(device)},
                    {"stages", stage_list},
                    {"export",
                     {{"format", recipe_name(export_.format)},
                      {"dtype", name_of(export_.dtype, kExportDTypes)}}}};
  return doc.dump();  // nlohmann's objects are ordered maps: keys come out sorted
}

const StageSpec* Recipe::find_stage(StageKind kind) const {
  for (const StageSpec& stage : stages) {
    if (stage.kind == kind) return &stage;
  }
  return nullptr;
}

double default_smoothquant_alpha(Arch arch) {
  switch (arch) {
    case Arch::llama:
      return 0.85;
    case Arch::opt:
      return 0.5;
    case Arch::bloom:
      return 0.5;
  }
  return 0.5;
}

double default_os_plus_floor(Arch arch) {
  switch (arch) {
    case Arch::llama:
      return 0.1;
    case Arch::opt:
      return 1.0;
    case Arch::bloom:
      return 1.0;  // LayerNorm with bias, like OPT
  }
  return 1.0;
}

std::string_view recipe_name(WeightGranularity value) {
  return name_of(value, kWeightGranularities);
}
std::string_view recipe_name(WeightClip value) { return name_of(value, kClips); }
std::string_view recipe_name(ActivationGranularity value) {
  return name_of(value, kActivationGranularities);
}
std::string_view recipe_name(ScaleRule value) { return name_of(value, kScaleRules); }
std::string_view recipe_name(CalibrationInputs value) { return name_of(value, kCalibrationInputs); }
std::string_view recipe_name(StageKind value) { return name_of(value, kStages); }
std::string_view recipe_name(ExportFormat value) { return name_of(value, kExportFormats); }
std::string_view recipe_name(Device value) { return name_of(value, kDevices); }

}  // namespace sq::io
