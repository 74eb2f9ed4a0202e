// Tests for io/recipe: the shipped configs parse, defaults, path resolution, one test per refusal
// (each names the file, the 1-based line and the key path), and canonical() as a resume hash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "io/recipe.h"

namespace sq::io {
namespace {

namespace fs = std::filesystem;

const std::string kConfigs = SQ_TEST_DATA_DIR "/../../configs";

// A complete W8A8 recipe; line numbers matter to the refusal tests.
const std::string kFull = R"(model: ../demo/m
output: ../runs/r
data:
  calibration: ../demo/m/calib.npy
  evaluation: ../demo/m/eval.npy
  seq_len: 128
  micro_batch: 2
scheme:
  weights:
    bits: 8
    symmetric: true
    granularity: channel
    clip: minmax
  activations:
    bits: 8
    symmetric: true
    granularity: token
    dynamic: true
    scale_rule: half_range
stages:
  - smoothquant: {alpha: 0.85}
  - quantize_weights
)";

// The least a recipe must say.
const std::string kMinimal = R"(model: m
output: out
data:
  calibration: c.npy
scheme:
  weights:
    bits: 8
stages:
  - quantize_weights
)";

Recipe parse(const std::string& text, const std::string& base_dir = "/base/configs") {
  return parse_recipe(text, "r.yaml", base_dir);
}

// `text` with the one occurrence of `from` replaced by `to`.
std::string edit(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  EXPECT_EQ(text.find(from, at + 1), std::string::npos) << from << " occurs twice";
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

// Parsing `text` throws an sq::Error at r.yaml:`line` on `key` whose message contains `what`.
void expect_refused(const std::string& text, int line, const std::string& key,
                    const std::string& what) {
  try {
    parse(text);
    ADD_FAILURE() << "accepted; expected a refusal on " << key << " at line " << line;
  } catch (const Error& e) {
    EXPECT_EQ(e.context().file, "r.yaml:" + std::to_string(line)) << e.what();
    EXPECT_EQ(e.context().key, key) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

// --- shipped configs and defaults ---------------------------------------------------------

TEST(Recipe, ShippedTinyConfigsParse) {
  const Recipe llama = load_recipe(kConfigs + "/tiny-llama-w8a8.yaml");
  const fs::path root = fs::weakly_canonical(fs::path(kConfigs) / "..");
  EXPECT_EQ(fs::path(llama.model_dir), root / "demo/tiny-llama");
  EXPECT_EQ(fs::path(llama.output_dir), root / "runs/tiny-llama-w8a8");
  EXPECT_EQ(fs::path(llama.data.calibration), root / "demo/tiny-llama/calib.npy");
  ASSERT_TRUE(llama.scheme.activations.has_value());
  EXPECT_EQ(llama.scheme.activations->granularity, ActivationGranularity::token);
  EXPECT_TRUE(llama.scheme.activations->dynamic);
  EXPECT_EQ(llama.scheme.activations->scale_rule, ScaleRule::half_range);
  ASSERT_EQ(llama.stages.size(), 3u);
  EXPECT_EQ(llama.stages[0].kind, StageKind::calibrate);
  EXPECT_EQ(llama.stages[1].kind, StageKind::smoothquant);
  EXPECT_EQ(llama.stages[1].alpha, 0.85);
  EXPECT_EQ(llama.stages[2].kind, StageKind::quantize_weights);
  EXPECT_EQ(llama.export_.format, ExportFormat::compressed_tensors);

  const Recipe opt = load_recipe(kConfigs + "/tiny-opt-w8a8.yaml");
  EXPECT_EQ(fs::path(opt.model_dir), root / "demo/tiny-opt");
  ASSERT_NE(opt.find_stage(StageKind::smoothquant), nullptr);
  EXPECT_EQ(opt.find_stage(StageKind::smoothquant)->alpha, 0.5);
}

TEST(Recipe, ShippedLargeConfigsParse) {
  const Recipe llama = load_recipe(kConfigs + "/llama2-70b-w8a8.yaml");
  EXPECT_EQ(llama.model_dir, "/models/Llama-2-70b-hf");
  EXPECT_EQ(llama.find_stage(StageKind::smoothquant)->alpha, 0.9);
  EXPECT_EQ(llama.data.seq_len, 512);
  EXPECT_EQ(llama.data.calibration_sequences, 512);
  EXPECT_EQ(llama.scheme.activations->granularity, ActivationGranularity::token);
  EXPECT_TRUE(llama.scheme.activations->dynamic);

  const Recipe opt = load_recipe(kConfigs + "/opt-175b-w8a8.yaml");
  EXPECT_EQ(opt.find_stage(StageKind::smoothquant)->alpha, 0.5);
  EXPECT_EQ(opt.scheme.activations->granularity, ActivationGranularity::tensor);
  EXPECT_FALSE(opt.scheme.activations->dynamic);
  EXPECT_EQ(opt.scheme.activations->scale_rule, ScaleRule::max_int);
}

TEST(Recipe, Defaults) {
  const Recipe r = parse(kMinimal);
  EXPECT_EQ(r.file, "r.yaml");
  EXPECT_FALSE(r.data.evaluation.has_value());
  EXPECT_FALSE(r.data.seq_len.has_value());
  EXPECT_FALSE(r.data.calibration_sequences.has_value());
  EXPECT_EQ(r.data.micro_batch, 4);
  EXPECT_EQ(r.scheme.weights.bits, 8);
  EXPECT_TRUE(r.scheme.weights.symmetric);
  EXPECT_EQ(r.scheme.weights.granularity, WeightGranularity::channel);
  EXPECT_EQ(r.scheme.weights.group_size, 0);
  EXPECT_EQ(r.scheme.weights.clip, WeightClip::minmax);
  EXPECT_FALSE(r.scheme.activations.has_value());  // weight-only
  EXPECT_FALSE(r.scheme.attention_inputs);
  EXPECT_EQ(r.calibration.inputs, CalibrationInputs::fp);
  ASSERT_EQ(r.stages.size(), 2u);  // calibrate is implicit
  EXPECT_EQ(r.stages[0].kind, StageKind::calibrate);
  EXPECT_EQ(r.stages[1].kind, StageKind::quantize_weights);
  EXPECT_EQ(r.export_.format, ExportFormat::compressed_tensors);
  EXPECT_FALSE(r.export_.dtype.has_value());
  EXPECT_EQ(r.threads, 0);
  EXPECT_EQ(r.device, Device::cpu);

  // An activations map with bits only; bare stage names and null parameters.
  const Recipe a = parse(edit(kMinimal, "    bits: 8\n", "    bits: 8\n  activations: {bits: 4}\n")
                             .append("calibration: {inputs: quant}\n") +
                         "export: {format: none, dtype: bfloat16}\nthreads: 3\n");
  ASSERT_TRUE(a.scheme.activations.has_value());
  EXPECT_EQ(a.scheme.activations->bits, 4);
  EXPECT_TRUE(a.scheme.activations->symmetric);
  EXPECT_EQ(a.scheme.activations->granularity, ActivationGranularity::token);
  EXPECT_TRUE(a.scheme.activations->dynamic);
  EXPECT_EQ(a.scheme.activations->scale_rule, ScaleRule::half_range);
  EXPECT_EQ(a.calibration.inputs, CalibrationInputs::quant);
  EXPECT_EQ(a.export_.format, ExportFormat::none);
  EXPECT_EQ(a.export_.dtype, DType::bf16);
  EXPECT_EQ(a.threads, 3);

  const Recipe s =
      parse(edit(kMinimal, "  - quantize_weights\n",
                 "  - calibrate\n  - smoothquant\n  - os_plus:\n  - quantize_weights: {}\n"));
  ASSERT_EQ(s.stages.size(), 4u);
  EXPECT_FALSE(s.stages[1].alpha.has_value());  // chosen per family at run time
  EXPECT_EQ(s.stages[2].kind, StageKind::os_plus);
  EXPECT_EQ(s.stages[2].grid, 100);
  EXPECT_FALSE(s.stages[2].floor.has_value());
  EXPECT_DOUBLE_EQ(default_smoothquant_alpha(Arch::llama), 0.85);
  EXPECT_DOUBLE_EQ(default_smoothquant_alpha(Arch::opt), 0.5);
  EXPECT_DOUBLE_EQ(default_os_plus_floor(Arch::llama), 0.1);
  EXPECT_DOUBLE_EQ(default_os_plus_floor(Arch::opt), 1.0);
}

TEST(Recipe, AcceptsEveryValueItDocuments) {
  const Recipe r = parse(R"(model: m
output: out
data: {calibration: c.u32, seq_len: 2048, calibration_sequences: 128, micro_batch: 1}
scheme:
  weights: {bits: 4, symmetric: false, granularity: group, group_size: 128, clip: mse}
  activations: {bits: 8, symmetric: true, granularity: tensor, dynamic: false, scale_rule: max_int}
  attention_inputs: true
stages:
  - os_plus: {grid: 10, floor: 0.5}
  - smoothquant: {alpha: 0}
  - quantize_weights
export: {dtype: float16}
device: cuda
)");
  EXPECT_EQ(r.device, Device::cuda);
  EXPECT_EQ(recipe_name(r.device), "cuda");
  EXPECT_EQ(r.scheme.weights.bits, 4);
  EXPECT_FALSE(r.scheme.weights.symmetric);
  EXPECT_EQ(r.scheme.weights.granularity, WeightGranularity::group);
  EXPECT_EQ(r.scheme.weights.group_size, 128);
  EXPECT_EQ(r.scheme.weights.clip, WeightClip::mse);
  EXPECT_TRUE(r.scheme.attention_inputs);
  EXPECT_EQ(r.data.seq_len, 2048);
  EXPECT_EQ(r.data.calibration_sequences, 128);
  EXPECT_EQ(r.data.micro_batch, 1);
  EXPECT_EQ(r.stages[1].kind, StageKind::os_plus);
  EXPECT_EQ(r.stages[1].grid, 10);
  EXPECT_EQ(r.stages[1].floor, 0.5);
  EXPECT_EQ(r.stages[2].alpha, 0.0);
  EXPECT_EQ(r.export_.dtype, DType::f16);
  // Weight-only written as an explicit null.
  EXPECT_FALSE(parse(edit(kMinimal, "    bits: 8\n", "    bits: 8\n  activations: null\n"))
                   .scheme.activations.has_value());
}

TEST(Recipe, ResolvesRelativePaths) {
  const Recipe r = parse(kFull);
  EXPECT_EQ(r.model_dir, "/base/demo/m");
  EXPECT_EQ(r.output_dir, "/base/runs/r");
  EXPECT_EQ(r.data.calibration, "/base/demo/m/calib.npy");
  EXPECT_EQ(r.data.evaluation, "/base/demo/m/eval.npy");

  // Absolute paths stay; a trailing separator and "." segments go.
  const Recipe a = parse(edit(edit(kFull, "model: ../demo/m", "model: /models/x/./y/"),
                              "output: ../runs/r", "output: runs//r/"));
  EXPECT_EQ(a.model_dir, "/models/x/y");
  EXPECT_EQ(a.output_dir, "/base/configs/runs/r");

  // A relative base stays relative (joined), an empty one leaves paths as written.
  EXPECT_EQ(parse(kFull, "configs").model_dir, "demo/m");
  EXPECT_EQ(parse(kFull, "").model_dir, "../demo/m");
}

TEST(Recipe, LoadResolvesAgainstTheFilesDirectory) {
  const fs::path dir = fs::path(SQ_TEST_TMP_DIR) / "recipe_load" / "configs";
  fs::create_directories(dir);
  const fs::path file = dir / "x.yaml";
  std::ofstream(file) << kFull;
  const Recipe r = load_recipe(file.string());
  EXPECT_EQ(r.file, file.string());
  EXPECT_EQ(fs::path(r.model_dir), fs::absolute(dir.parent_path() / "demo/m").lexically_normal());

  // The file's name leads every message.
  std::ofstream(file) << edit(kFull, "    bits: 8\n    symmetric: true\n    granularity: channel",
                              "    bits: 9\n    symmetric: true\n    granularity: channel");
  try {
    load_recipe(file.string());
    ADD_FAILURE() << "bits: 9 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), file.string() +
                                         ":10: key 'scheme.weights.bits': must be an integer in "
                                         "[2, 8], got 9");
  }
  EXPECT_THROW(load_recipe((dir / "missing.yaml").string()), Error);
}

// --- refusals -------------------------------------------------------------------------------

TEST(Recipe, RefusesUnknownTopLevelKey) {
  expect_refused(kFull + "thread: 4\n", 23, "thread", "unknown key (expected one of: model,");
}

TEST(Recipe, RefusesUnknownNestedKey) {
  expect_refused(edit(kFull, "    clip: minmax\n", "    clip: minmax\n    clipping: mse\n"), 14,
                 "scheme.weights.clipping", "unknown key");
  expect_refused(edit(kFull, "{alpha: 0.85}", "{alpha: 0.85, beta: 1}"), 21,
                 "stages[0].smoothquant.beta", "unknown key (expected one of: alpha)");
  expect_refused(edit(kFull, "  - quantize_weights\n", "  - quantize_weights: {bits: 4}\n"), 22,
                 "stages[1].quantize_weights.bits", "takes no parameters");
}

TEST(Recipe, RefusesWrongTypes) {
  expect_refused(edit(kFull, "    symmetric: true\n    granularity: channel",
                      "    symmetric: yes\n    granularity: channel"),
                 11, "scheme.weights.symmetric", "must be true or false, got yes");
  // Quoted scalars are strings, even when they look like numbers.
  expect_refused(edit(kFull, "  seq_len: 128", "  seq_len: \"128\""), 6, "data.seq_len",
                 "must be an integer >= 1, got \"128\" (a string)");
  expect_refused(edit(kFull, "  micro_batch: 2", "  micro_batch: 2.5"), 7, "data.micro_batch",
                 "must be an integer >= 1, got 2.5");
  expect_refused(edit(kFull, "calibration: ../demo/m/calib.npy", "calibration: [a, b]"), 4,
                 "data.calibration", "must be a non-empty string, got a list");
  expect_refused(edit(kFull, "output: ../runs/r", "output: ''"), 2, "output",
                 "must be a non-empty string, got \"\" (a string)");
}

TEST(Recipe, RefusesWrongSectionTypes) {
  expect_refused(edit(kMinimal, "stages:\n  - quantize_weights\n", "stages: quantize_weights\n"), 8,
                 "stages", "must be a list of stages, got quantize_weights");
  expect_refused(edit(kMinimal, "scheme:\n  weights:\n    bits: 8\n", "scheme: [8]\n"), 5, "scheme",
                 "must be a map, got a list");
  expect_refused(edit(kMinimal, "data:\n  calibration: c.npy\n", "data:\n"), 3, "data",
                 "must be a map, got null");
  expect_refused("- a\n- b\n", 1, "", "a recipe must be a map of keys, got a list");
}

TEST(Recipe, RefusesMissingRequiredKeys) {
  expect_refused(edit(kMinimal, "model: m\n", ""), 1, "model", "required key is missing");
  expect_refused(edit(kMinimal, "  calibration: c.npy\n", "  micro_batch: 2\n"), 4,
                 "data.calibration", "required key is missing");
  expect_refused(edit(kMinimal, "    bits: 8\n", "    clip: mse\n"), 7, "scheme.weights.bits",
                 "required key is missing");
}

TEST(Recipe, RefusesBitsOutOfRange) {
  expect_refused(edit(kFull, "    bits: 8\n    symmetric: true\n    granularity: channel",
                      "    bits: 9\n    symmetric: true\n    granularity: channel"),
                 10, "scheme.weights.bits", "must be an integer in [2, 8], got 9");
  expect_refused(edit(kFull, "    bits: 8\n    symmetric: true\n    granularity: token",
                      "    bits: 1\n    symmetric: true\n    granularity: token"),
                 15, "scheme.activations.bits", "must be an integer in [2, 8], got 1");
  // Integers past int64 are out of range too, not wrapped.
  expect_refused(edit(kFull, "  seq_len: 128", "  seq_len: 99999999999999999999999"), 6,
                 "data.seq_len", "must be an integer >= 1");
  expect_refused(edit(kFull, "  micro_batch: 2", "  micro_batch: 0"), 7, "data.micro_batch",
                 "must be an integer >= 1, got 0");
}

TEST(Recipe, RefusesGroupSizeMissingForGroup) {
  expect_refused(edit(kFull, "granularity: channel", "granularity: group"), 10,
                 "scheme.weights.group_size", "required when granularity is group");
}

TEST(Recipe, RefusesGroupSizeWithoutGroup) {
  expect_refused(edit(kFull, "    clip: minmax\n", "    clip: minmax\n    group_size: 64\n"), 14,
                 "scheme.weights.group_size",
                 "allowed only when granularity is group (granularity is channel)");
  expect_refused(edit(kMinimal, "    bits: 8\n", "    bits: 8\n    group_size: 64\n"), 8,
                 "scheme.weights.group_size", "(granularity is channel, the default)");
  expect_refused(edit(kFull, "granularity: channel\n", "granularity: group\n    group_size: 0\n"),
                 13, "scheme.weights.group_size", "must be an integer >= 1, got 0");
}

TEST(Recipe, RefusesStaticPerTokenActivations) {
  expect_refused(edit(kFull, "dynamic: true", "dynamic: false"), 18, "scheme.activations.dynamic",
                 "per-token activation scales must be dynamic");
}

TEST(Recipe, RefusesSchemeInconsistencies) {
  expect_refused(edit(kFull, "    symmetric: true\n    granularity: token",
                      "    symmetric: false\n    granularity: token"),
                 19, "scheme.activations.scale_rule", "applies only to symmetric activations");
  expect_refused(edit(kMinimal, "    bits: 8\n", "    bits: 8\n  attention_inputs: true\n"), 8,
                 "scheme.attention_inputs", "needs activation quantization");
  expect_refused(edit(kFull, "granularity: token", "granularity: cluster"), 17,
                 "scheme.activations.granularity", "must be one of token | tensor, got cluster");
  expect_refused(kMinimal + "device: gpu\n", 10, "device", "must be one of cpu | cuda, got gpu");
  expect_refused(kMinimal + "export: {format: gguf}\n", 10, "export.format",
                 "must be one of compressed-tensors | none, got gguf");
}

TEST(Recipe, RefusesUnknownStage) {
  expect_refused(edit(kFull, "  - smoothquant: {alpha: 0.85}\n", "  - gptq: {bits: 4}\n"), 21,
                 "stages[0]", "unknown stage gptq (expected one of: calibrate, smoothquant,");
  expect_refused(edit(kFull, "  - smoothquant: {alpha: 0.85}\n", "  - smooth_quant\n"), 21,
                 "stages[0]", "unknown stage smooth_quant");
}

TEST(Recipe, RefusesMalformedStageItems) {
  // A parameter indented one level too little becomes a second key of the item.
  expect_refused(
      edit(kFull, "  - smoothquant: {alpha: 0.85}\n", "  - smoothquant:\n    alpha: 0.85\n"), 21,
      "stages[0]",
      "a stage is a name or a one-key map {name: {params}}, got 2 keys (smoothquant, "
      "alpha)");
  expect_refused(edit(kFull, "  - smoothquant: {alpha: 0.85}\n", "  - [smoothquant]\n"), 21,
                 "stages[0]", "got a list");
  expect_refused(edit(kFull, "{alpha: 0.85}", "0.85"), 21, "stages[0].smoothquant",
                 "must be a map, got 0.85");
}

TEST(Recipe, RefusesQuantizeWeightsMissing) {
  expect_refused(edit(kFull, "  - quantize_weights\n", ""), 21, "stages",
                 "quantize_weights is missing");
  expect_refused(edit(kMinimal, "stages:\n  - quantize_weights\n", "stages: []\n"), 8, "stages",
                 "quantize_weights is missing");
}

TEST(Recipe, RefusesQuantizeWeightsNotLast) {
  expect_refused(edit(kFull, "  - smoothquant: {alpha: 0.85}\n  - quantize_weights\n",
                      "  - quantize_weights\n  - smoothquant: {alpha: 0.85}\n"),
                 21, "stages[0]",
                 "quantize_weights must be the last stage, but stages[1] (smoothquant) comes "
                 "after it");
}

TEST(Recipe, RefusesQuantizeWeightsTwice) {
  expect_refused(kFull + "  - quantize_weights\n", 23, "stages[2]",
                 "stage quantize_weights is given twice (also stages[1], line 22)");
  expect_refused(edit(kFull, "  - quantize_weights\n", "  - smoothquant\n  - quantize_weights\n"),
                 22, "stages[1]", "stage smoothquant is given twice");
  expect_refused(edit(kFull, "  - quantize_weights\n", "  - calibrate\n  - quantize_weights\n"), 22,
                 "stages[1]", "calibrate, when given, must be the first stage");
}

TEST(Recipe, RefusesDuplicateKeys) {
  expect_refused(kFull + "model: other\n", 23, "model", "duplicate key (first given at line 1)");
  expect_refused(edit(kFull, "    clip: minmax\n", "    clip: minmax\n    bits: 4\n"), 14,
                 "scheme.weights.bits", "duplicate key (first given at line 10)");
  expect_refused(edit(kFull, "{alpha: 0.85}", "{alpha: 0.85, alpha: 0.5}"), 21,
                 "stages[0].smoothquant.alpha", "duplicate key");
}

TEST(Recipe, RefusesYamlSyntaxErrorsNamingFileAndLine) {
  expect_refused(edit(kFull, "model: ../demo/m", "model: a: b"), 1, "",
                 "invalid YAML: illegal map value");
  // An unclosed flow map is reported where yaml-cpp gives up looking for the brace: the end.
  expect_refused(edit(kFull, "{alpha: 0.85}", "{alpha: 0.85"), 23, "",
                 "invalid YAML: end of map flow not found");
  expect_refused(edit(kFull, "  seq_len: 128\n", "  seq_len: 128\n\tmicro: 1\n"), 7, "",
                 "invalid YAML:");
  expect_refused(kMinimal + "---\nmodel: n\n", 11, "", "a recipe is one YAML document");
  try {
    parse("# only a comment\n");
    ADD_FAILURE() << "empty recipe accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "r.yaml: the recipe is empty");
  }
}

TEST(Recipe, RefusesAlphaOutsideUnitInterval) {
  expect_refused(edit(kFull, "alpha: 0.85", "alpha: 1.5"), 21, "stages[0].smoothquant.alpha",
                 "must be a number in [0, 1], got 1.5");
  expect_refused(edit(kFull, "alpha: 0.85", "alpha: -0.1"), 21, "stages[0].smoothquant.alpha",
                 "must be a number in [0, 1], got -0.1");
  expect_refused(edit(kFull, "alpha: 0.85", "alpha: .nan"), 21, "stages[0].smoothquant.alpha",
                 "must be a number in [0, 1], got .nan");
}

TEST(Recipe, RefusesBadOsPlusParameters) {
  expect_refused(edit(kFull, "{alpha: 0.85}", "{alpha: 0.85}\n  - os_plus: {grid: 5}"), 22,
                 "stages[1].os_plus.grid", "must be an integer in [10, 1000000], got 5");
  expect_refused(edit(kFull, "{alpha: 0.85}", "{alpha: 0.85}\n  - os_plus: {floor: 0}"), 22,
                 "stages[1].os_plus.floor", "must be a number > 0, got 0");
}

// --- canonical ------------------------------------------------------------------------------

TEST(Recipe, CanonicalIgnoresKeyOrderAndOutput) {
  const std::string reordered = R"(stages: [smoothquant: {alpha: 0.85}, quantize_weights]
scheme:
  activations: {scale_rule: half_range, dynamic: true, granularity: token, symmetric: true, bits: 8}
  weights: {clip: minmax, granularity: channel, symmetric: true, bits: 8}
data:
  micro_batch: 2
  seq_len: 128
  evaluation: ../demo/m/other-eval.npy
  calibration: ../demo/m/calib.npy
output: /elsewhere/run
threads: 8
model: ../demo/m
)";
  EXPECT_EQ(parse(kFull).canonical(), parse(reordered).canonical());
  // Writing calibrate and the defaults out changes nothing either.
  EXPECT_EQ(parse(kFull).canonical(),
            parse(edit(kFull, "stages:\n", "stages:\n  - calibrate\n") +
                  "calibration: {inputs: fp}\nexport: {format: compressed-tensors, dtype: model}\n")
                .canonical());
}

TEST(Recipe, CanonicalChangesWithSettings) {
  const std::string base = parse(kFull).canonical();
  EXPECT_NE(base, parse(edit(kFull, "alpha: 0.85", "alpha: 0.8")).canonical());
  EXPECT_NE(base, parse(edit(kFull, "{alpha: 0.85}", "{}")).canonical());
  EXPECT_NE(base, parse(edit(kFull, "  micro_batch: 2", "  micro_batch: 4")).canonical());
  EXPECT_NE(base, parse(edit(kFull, "scale_rule: half_range", "scale_rule: max_int")).canonical());
  EXPECT_NE(base, parse(kFull + "export: {dtype: float16}\n").canonical());
  // The device changes the statistics (16-bit GEMMs on the GPU), so a resume must not switch it.
  EXPECT_NE(base, parse(kFull + "device: cuda\n").canonical());
  EXPECT_EQ(base, parse(kFull + "device: cpu\n").canonical());
  EXPECT_NE(base, parse(edit(kFull, "model: ../demo/m", "model: ../demo/n")).canonical());
  EXPECT_NE(base.find("\"alpha\":0.85"), std::string::npos) << base;
}

}  // namespace
}  // namespace sq::io
