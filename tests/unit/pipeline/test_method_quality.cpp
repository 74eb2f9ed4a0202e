// The claims of the method comparison, kept as tests on synth models with synth's default
// outliers (LLaMA and OPT): SmoothQuant's KL at least 5x lower than naive W8A8, and OS+ no worse
// than SmoothQuant at W6A6, all with per-tensor static activations.
#include <gtest/gtest.h>

#if SQ_WITH_MPI  // the method comparison runs recipes: distributed builds only

#include <cstdio>
#include <filesystem>

#include "model/synth.h"
#include "pipeline/method_comparison.h"

namespace sq::pipeline {
namespace {

const MethodResult& find(const std::vector<MethodResult>& r, const std::string& m, int bits) {
  for (const auto& x : r)
    if (x.method == m && x.bits == bits) return x;
  throw std::runtime_error("missing result");
}

class MethodQuality : public ::testing::TestWithParam<io::Arch> {};

TEST_P(MethodQuality, SmoothQuantBeatsNaiveAndOsPlusHoldsAtW6A6) {
  const std::string arch = io::arch_name(GetParam());
  const auto dir = std::filesystem::path(SQ_TEST_TMP_DIR) / ("quality_" + arch);
  std::filesystem::remove_all(dir);
  model::SynthSpec spec;  // synth's defaults: outliers, sizes and token sets untouched
  spec.arch = GetParam();
  spec.seed = 1;
  const auto synth = model::write_synth_model(spec, (dir / "model").string());
  const auto r = compare_methods((dir / "model").string(), synth.calib_tokens, synth.eval_tokens,
                                 (dir / "runs").string());
  std::printf("%s", format_method_table("synth-" + arch, r).c_str());
  const auto& naive8 = find(r, "naive", 8);
  const auto& sq8 = find(r, "smoothquant", 8);
  EXPECT_LT(sq8.kl_mean * 5, naive8.kl_mean);
  EXPECT_LE(find(r, "os_plus", 6).kl_mean, find(r, "smoothquant", 6).kl_mean);
  // Quantization was applied at all: naive W8A8 is measurably off the FP model.
  EXPECT_GT(naive8.kl_mean, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Archs, MethodQuality, ::testing::Values(io::Arch::llama, io::Arch::opt),
                         [](const auto& p) { return io::arch_name(p.param); });

}  // namespace
}  // namespace sq::pipeline

#endif  // SQ_WITH_MPI
