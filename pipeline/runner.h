// Runs a recipe: calibration hidden states flow block by block through the model; at each block
// the recipe's stages run in order (calibrate, smoothquant / os_plus, quantize_weights); then the
// quantized model is exported and compared with the FP model. One process today: every stage is
// a per-block unit, which is what the distributed runner will hand to its ranks.
#pragma once

#include <string>

#include "io/recipe.h"
#include "model/evaluate.h"

namespace sq::pipeline {

struct RunSummary {
  std::string export_dir;    // empty when the recipe exports nothing
  std::string metrics_file;  // empty without evaluation tokens
  bool evaluated = false;
  model::Comparison comparison;
};

RunSummary run_recipe(const io::Recipe& recipe);

// Prints the comparison table and writes it as JSON (when `json_path` is not empty).
void report_comparison(const model::Comparison& c, const std::string& test_name,
                       const std::string& reference_name, const std::string& json_path);

}  // namespace sq::pipeline
