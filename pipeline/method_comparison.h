// The W8A8/W6A6 method comparison of docs/BENCHMARKS.md: naive round-to-nearest vs SmoothQuant vs
// Outlier Suppression+ on one model, all with per-channel weights and per-tensor static
// activations (the setting where activation outliers hurt most). Shared by the benchmark that
// prints the table and the test that keeps its claims.
#pragma once

#include <string>
#include <vector>

#include "model/evaluate.h"

namespace sq::pipeline {

struct MethodResult {
  std::string method;  // "naive", "smoothquant", "os_plus"
  int bits = 8;        // W{bits}A{bits}
  double kl_mean = 0, kl_p99 = 0, top1 = 0, perplexity = 0, fp_perplexity = 0;
};

// Runs every method at every bit width on `model_dir` (calibration and evaluation token files
// given), writing scratch run directories under `work_dir`.
std::vector<MethodResult> compare_methods(const std::string& model_dir,
                                          const std::string& calibration,
                                          const std::string& evaluation,
                                          const std::string& work_dir,
                                          const std::vector<int>& bits = {8, 6});

// Markdown rows: | model | scheme | method | KL mean | KL p99 | top-1 | ppl (FP ppl) |
std::string format_method_table(const std::string& model_name,
                                const std::vector<MethodResult>& results);

}  // namespace sq::pipeline
