// Our FP32 forward against Hugging Face transformers on tiny models made by make_goldens.py.
// The fixtures use initializer_range 0.5 and sequences longer than llama3's original context, so
// a wrong RoPE convention, scaling, mask, GQA mapping, bias or position offset fails here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "io/safetensors.h"
#include "kernels/cpu/reference.h"
#include "model/evaluate.h"
#include "model/weights.h"

namespace sq {
namespace {

struct Golden {
  std::vector<std::uint32_t> tokens;
  std::int64_t n_seq = 0, seq_len = 0;
  Tensor logits, nll;
  double perplexity = 0.0;
};

std::string fixture_dir(const std::string& name) {
  return std::string(SQ_TEST_DATA_DIR) + "/golden/" + name;
}

Golden load_golden(const std::string& name) {
  const auto f = io::SafetensorsFile::open(fixture_dir(name) + "/golden.safetensors");
  Golden g;
  const Tensor tokens = f.tensor("tokens");
  g.n_seq = tokens.dim(0);
  g.seq_len = tokens.dim(1);
  for (auto id : tokens.values<std::int64_t>()) g.tokens.push_back(static_cast<std::uint32_t>(id));
  g.logits = f.tensor("logits").to_f32();
  g.nll = f.tensor("nll").to_f32();
  g.perplexity = std::stod(f.metadata().at("perplexity"));
  return g;
}

struct Comparison {
  double max_abs_error = 0.0, logit_range = 0.0, mean_nll_error = 0.0, log_ppl_error = 0.0;
};

Comparison compare(const model::Model& m, const Golden& g, const model::EvalOptions& options) {
  model::EvalOptions o = options;
  o.keep_logits = true;
  const auto r = model::evaluate(m, g.tokens, g.n_seq, g.seq_len, o);
  Comparison c;
  const auto ref = g.logits.values<float>();
  const auto ours = r.logits.values<float>();
  EXPECT_EQ(ref.size(), ours.size());
  const auto [lo, hi] = std::minmax_element(ref.begin(), ref.end());
  c.logit_range = *hi - *lo;
  for (std::size_t i = 0; i < ref.size(); ++i)
    c.max_abs_error = std::max(c.max_abs_error, double(std::abs(ref[i] - ours[i])));
  double ref_mean = 0.0;
  for (float v : g.nll.values<float>()) ref_mean += v;
  ref_mean /= double(g.nll.numel());
  c.mean_nll_error = std::abs(r.mean_nll - ref_mean);
  c.log_ppl_error = std::abs(std::log(r.perplexity) - std::log(g.perplexity));
  return c;
}

// Tolerance: 1e-4 of the logits' range. Both sides compute in fp32 with different summation
// orders (BLAS blocking vs PyTorch's kernels); over two blocks with weights of std 0.5 that
// differs by ~1e-5 of the range, an order of magnitude below the bound, while every wrong detail
// the fixtures probe moves logits by more than 1e-2 of the range.
constexpr double kRelativeLogitTolerance = 1e-4;
// Perplexity: compared as log-perplexity (= mean NLL), which the same fp32 noise moves by ~1e-5.
constexpr double kLogPplTolerance = 1e-4;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsAndPerplexityMatchTransformers) {
  const auto model = model::Model::open(fixture_dir(GetParam()));
  const auto golden = load_golden(GetParam());
  const auto c = compare(model, golden, {});
  std::printf("%s: max |dlogit| %.3g = %.3g of the range %.1f; |d log ppl| %.3g\n",
              GetParam().c_str(), c.max_abs_error, c.max_abs_error / c.logit_range, c.logit_range,
              c.log_ppl_error);
  EXPECT_LE(c.max_abs_error, kRelativeLogitTolerance * c.logit_range)
      << "logit range " << c.logit_range;
  EXPECT_LE(c.log_ppl_error, kLogPplTolerance);
  EXPECT_LE(c.mean_nll_error, kLogPplTolerance);
  // The fixtures are meant to be hard: logits far from uniform.
  EXPECT_GT(c.logit_range, 10.0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest,
                         ::testing::Values("llama_gqa_llama3", "llama_tied_bias_linear", "opt_tiny",
                                           "opt_project"));

// The interleaved-pair RoPE (GPT-J / Meta's original code) is a different function: the goldens
// must reject it, or they could not catch a convention mix-up.
TEST(GoldenNegative, InterleavedRopeDoesNotMatch) {
  for (const char* name : {"llama_gqa_llama3", "llama_tied_bias_linear"}) {
    const auto model = model::Model::open(fixture_dir(name));
    model::EvalOptions o;
    o.rope = &cpu::ref::rope_interleaved;
    const auto c = compare(model, load_golden(name), o);
    EXPECT_GT(c.max_abs_error, 100 * kRelativeLogitTolerance * c.logit_range) << name;
    std::printf("%s with interleaved RoPE: max |dlogit| %.3g of the range\n", name,
                c.max_abs_error / c.logit_range);
  }
}

// Dropping the llama3 frequency adjustment must be visible too (the sequences run past the
// original context of 16 tokens).
TEST(GoldenNegative, MissingRopeScalingDoesNotMatch) {
  for (const char* name : {"llama_gqa_llama3", "llama_tied_bias_linear"}) {
    auto config = io::load_hf_config(fixture_dir(name));
    ASSERT_NE(config.rope.scaling, io::RopeScaling::none) << name;
    config.rope.scaling = io::RopeScaling::none;
    const model::Model model(config, io::Checkpoint::open(fixture_dir(name)));
    const auto c = compare(model, load_golden(name), {});
    EXPECT_GT(c.max_abs_error, 100 * kRelativeLogitTolerance * c.logit_range) << name;
  }
}

}  // namespace
}  // namespace sq
