// SmoothQuant scales against a hand-computed case; calibration statistics against a direct
// computation; statistics transforms against recalibrating the transformed activations.
#include <gtest/gtest.h>

#include <cmath>

#include "core/random.h"
#include "stages/calibrate.h"
#include "stages/smooth.h"

namespace sq::stages {
namespace {

model::Linear make_linear(std::vector<float> w, std::int64_t rows, std::int64_t cols) {
  model::Linear l;
  l.weight = Tensor::from_f32(w, {rows, cols});
  return l;
}

// Two consumers (like q and k) of a 3-channel input; by hand:
//   w_j = max over both consumers' rows of |W[:, j]| = [4, 0.5, 1e-7 -> clamped to 1e-5]
//   act = [16, 1, 9]; alpha = 0.5: s_j = sqrt(act_j) / sqrt(w_j)
//   s = [4/2, 1/sqrt(0.5), 3/sqrt(1e-5)] = [2, 1.41421356, 948.683298]
TEST(SmoothQuant, ScalesMatchTheFormulaOnAHandComputedCase) {
  const auto q = make_linear({1, -0.5f, 0, -4, 0.25f, 1e-7f}, 2, 3);
  const auto k = make_linear({3, 0.1f, -1e-8f}, 1, 3);
  const auto s = smoothquant_scales({16, 1, 9}, {&q, &k}, 0.5);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_NEAR(s[0], 2.0, 1e-6);
  EXPECT_NEAR(s[1], std::sqrt(2.0), 1e-6);
  EXPECT_NEAR(s[2], 3.0 / std::sqrt(1e-5), 1e-2);
  // alpha = 0.85 on channel 0: 16^0.85 / 4^0.15 = 10.5561 / 1.23114
  const auto s85 = smoothquant_scales({16, 1, 9}, {&q, &k}, 0.85);
  EXPECT_NEAR(s85[0], std::pow(16.0, 0.85) / std::pow(4.0, 0.15), 1e-5);
  // A channel that never fires: 0^alpha = 0, clamped to the minimum scale 1e-5.
  const auto s0 = smoothquant_scales({0, 1, 9}, {&q, &k}, 0.5);
  EXPECT_FLOAT_EQ(s0[0], 1e-5f);
}

TEST(SmoothQuant, EqualizesActivationAndWeightRangesAtHalfAlpha) {
  // With alpha = 0.5, after smoothing max|X'_j| = act_j / s_j equals max|W'_j| = w_j * s_j.
  const auto q = make_linear({2, -8, 0.5f, 1}, 2, 2);
  const std::vector<float> act = {50, 0.2f};
  const auto s = smoothquant_scales(act, {&q}, 0.5);
  EXPECT_NEAR(act[0] / s[0], 2 * s[0], 1e-4);
  EXPECT_NEAR(act[1] / s[1], 8 * s[1], 1e-4);
}

TEST(Calibrate, StatsMatchDirectComputationAndMergeIsOrderFree) {
  Rng rng(5);
  const std::int64_t rows = 37, cols = 11;
  std::vector<float> x(rows * cols);
  for (auto& v : x) v = float(rng.normal() * 3 + 1);
  ChannelStats all, first, second, merged_other_order;
  all.observe(x.data(), rows, cols);
  first.observe(x.data(), 20, cols);
  second.observe(x.data() + 20 * cols, rows - 20, cols);
  ChannelStats merged = first;
  merged.merge(second);
  merged_other_order = second;
  merged_other_order.merge(first);
  for (std::int64_t c = 0; c < cols; ++c) {
    float lo = INFINITY, hi = -INFINITY;
    for (std::int64_t r = 0; r < rows; ++r) {
      lo = std::min(lo, x[r * cols + c]);
      hi = std::max(hi, x[r * cols + c]);
    }
    EXPECT_EQ(all.min[c], lo);
    EXPECT_EQ(all.max[c], hi);
    EXPECT_EQ(all.absmax[c], std::max(std::abs(lo), std::abs(hi)));
    EXPECT_EQ(merged.min[c], lo);
    EXPECT_EQ(merged.max[c], hi);
    EXPECT_EQ(merged_other_order.absmax[c], all.absmax[c]);
  }
}

TEST(Calibrate, TransformedStatsEqualStatsOfTransformedActivations) {
  Rng rng(9);
  const std::int64_t rows = 50, cols = 6;
  std::vector<float> x(rows * cols);
  for (auto& v : x) v = float(rng.normal() * 4 - 2);
  const std::vector<float> z = {0.5f, -1, 2, 0, 3, -0.25f}, s = {2, 0.5f, -4, 1, 8, -0.125f};
  ChannelStats st;
  st.observe(x.data(), rows, cols);
  transform_stats(st, z, s);
  std::vector<float> y(x.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) y[r * cols + c] = (x[r * cols + c] - z[c]) / s[c];
  ChannelStats direct;
  direct.observe(y.data(), rows, cols);
  for (std::int64_t c = 0; c < cols; ++c) {
    EXPECT_FLOAT_EQ(st.min[c], direct.min[c]) << c;
    EXPECT_FLOAT_EQ(st.max[c], direct.max[c]) << c;
    EXPECT_FLOAT_EQ(st.absmax[c], direct.absmax[c]) << c;
  }
}

}  // namespace
}  // namespace sq::stages
