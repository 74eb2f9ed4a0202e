#include "pipeline/method_comparison.h"

#include <fmt/format.h>

#include <filesystem>

#include "io/recipe.h"
#include "pipeline/runner.h"

namespace sq::pipeline {

std::vector<MethodResult> compare_methods(const std::string& model_dir,
                                          const std::string& calibration,
                                          const std::string& evaluation,
                                          const std::string& work_dir,
                                          const std::vector<int>& bits) {
  const std::vector<std::pair<std::string, std::string>> methods = {
      {"naive", "[quantize_weights]"},
      {"smoothquant", "[smoothquant, quantize_weights]"},
      {"os_plus", "[os_plus, quantize_weights]"}};
  std::vector<MethodResult> out;
  for (int b : bits) {
    for (const auto& [name, stages] : methods) {
      const std::string run_dir = fmt::format("{}/w{}a{}-{}", work_dir, b, b, name);
      std::filesystem::remove_all(run_dir);
      // SmoothQuant O3 quantizers: symmetric, absmax / (2^(b-1) - 1), per-tensor static inputs.
      const std::string yaml = fmt::format(
          "model: {}\noutput: {}\ndata: {{calibration: {}, evaluation: {}}}\n"
          "scheme:\n  weights: {{bits: {}, granularity: channel}}\n"
          "  activations: {{bits: {}, granularity: tensor, dynamic: false, scale_rule: max_int}}\n"
          "stages: {}\nexport: {{format: none}}\n",
          model_dir, run_dir, calibration, evaluation, b, b, stages);
      const auto summary = run_recipe(io::parse_recipe(yaml, run_dir + ".yaml", ""));
      const auto& c = summary.comparison;
      out.push_back({name, b, c.kl_mean, c.kl_p99, c.top1_agreement, c.test.perplexity,
                     c.reference.perplexity});
    }
  }
  return out;
}

std::string format_method_table(const std::string& model_name,
                                const std::vector<MethodResult>& results) {
  std::string s;
  for (const auto& r : results)
    s += fmt::format("| {} | W{}A{} | {} | {:.3g} | {:.3g} | {:.4f} | {:.3f} ({:.3f}) |\n",
                     model_name, r.bits, r.bits, r.method, r.kl_mean, r.kl_p99, r.top1,
                     r.perplexity, r.fp_perplexity);
  return s;
}

}  // namespace sq::pipeline
