// CUDA channel_stats_observe against the CPU's ChannelStats::observe (stages/calibrate.cpp), bit
// for bit, over awkward sizes, NaN and infinities, signed-zero ties and repeated merges.
// Skipped on machines without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cuda_test_support.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/stats.h"
#include "stages/calibrate.h"

namespace {

using sq::cuda::DeviceBuffer;
using namespace sq::cuda::testing;

// The GPU's statistics, observed over `batches` in order.
struct GpuStats {
  std::vector<float> absmax, min, max;
};

GpuStats observe_on_gpu(const std::vector<std::vector<float>>& batches, i64 cols) {
  DeviceBuffer<float> absmax(static_cast<std::size_t>(cols)), mn(absmax.size()), mx(absmax.size());
  poison(absmax);  // channel_stats_init must cover every column
  poison(mn);
  poison(mx);
  sq::cuda::channel_stats_init(cols, absmax.data(), mn.data(), mx.data(), nullptr);
  for (const auto& x : batches) {
    const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
    sq::cuda::channel_stats_observe(d_x.data(), static_cast<i64>(x.size()) / cols, cols,
                                    absmax.data(), mn.data(), mx.data(), nullptr);
  }
  sq::cuda::synchronize();
  return {sq::cuda::to_host(absmax), sq::cuda::to_host(mn), sq::cuda::to_host(mx)};
}

sq::stages::ChannelStats observe_on_cpu(const std::vector<std::vector<float>>& batches, i64 cols) {
  sq::stages::ChannelStats stats;
  for (const auto& x : batches) stats.observe(x.data(), static_cast<i64>(x.size()) / cols, cols);
  return stats;
}

void expect_same_stats(const GpuStats& gpu, const sq::stages::ChannelStats& cpu, i64 cols) {
  expect_same_bits(gpu.min, cpu.min, cols, "min");
  expect_same_bits(gpu.max, cpu.max, cols, "max");
  expect_same_bits(gpu.absmax, cpu.absmax, cols, "absmax");
}

// Activations with the cases that make max/min order-sensitive or NaN-sensitive: NaN, +-inf,
// columns of signed zeros (the first zero in row order wins a tie), and a negative-only column.
std::vector<float> hard_inputs(i64 rows, i64 cols, std::uint32_t seed) {
  std::vector<float> x = activations(rows, cols, seed);
  std::mt19937 rng(seed + 17);
  auto at = [&](i64 r, i64 c) -> float& { return x[static_cast<std::size_t>(r * cols + c)]; };
  std::uniform_int_distribution<i64> row_of(0, rows - 1);
  for (i64 c = 0; c < cols; ++c) {
    switch (c % 7) {
      case 1:  // a NaN somewhere in the column
        at(row_of(rng), c) = std::numeric_limits<float>::quiet_NaN();
        break;
      case 2:  // only zeros of both signs: min and max are the first zero met
        for (i64 r = 0; r < rows; ++r) at(r, c) = (rng() & 1) != 0 ? 0.0f : -0.0f;
        break;
      case 4:  // an infinity
        at(row_of(rng), c) = (rng() & 1) != 0 ? INFINITY : -INFINITY;
        break;
      case 5:  // only NaN: the statistics keep their initial (or earlier) values
        for (i64 r = 0; r < rows; ++r) at(r, c) = std::numeric_limits<float>::quiet_NaN();
        break;
      case 6:  // strictly negative column
        for (i64 r = 0; r < rows; ++r) at(r, c) = -1.0f - std::fabs(at(r, c));
        break;
      default:
        break;
    }
  }
  return x;
}

class CudaStats : public ::testing::TestWithParam<std::tuple<i64, i64>> {
 protected:
  i64 rows() const { return std::get<0>(GetParam()); }
  i64 cols() const { return std::get<1>(GetParam()); }
  std::uint32_t seed() const { return static_cast<std::uint32_t>(31 + rows() * 7919 + cols()); }
};

TEST_P(CudaStats, ObserveMatchesCpuBitForBit) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<std::vector<float>> batches{hard_inputs(rows(), cols(), seed())};
  expect_same_stats(observe_on_gpu(batches, cols()), observe_on_cpu(batches, cols()), cols());
}

// Three observations merge into the same arrays, as micro-batches do during calibration.
TEST_P(CudaStats, RepeatedObserveMergesLikeCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<std::vector<float>> batches{hard_inputs(rows(), cols(), seed()),
                                                activations(rows(), cols(), seed() + 1),
                                                hard_inputs(rows(), cols(), seed() + 2)};
  expect_same_stats(observe_on_gpu(batches, cols()), observe_on_cpu(batches, cols()), cols());
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaStats,
                         ::testing::Combine(::testing::Values<i64>(1, 19, 111, 4096),
                                            ::testing::Values<i64>(1, 19, 111, 4096)),
                         [](const ::testing::TestParamInfo<CudaStats::ParamType>& p) {
                           return size_name(std::get<0>(p.param), std::get<1>(p.param));
                         });

// The earlier zero of a tie wins, whichever row chunk of the kernel it falls in: -0 in the last row
// after +0 elsewhere must not replace +0 (and the reverse).
TEST(CudaStatsTies, SignedZeroKeepsTheFirstInRowOrder) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 rows = 1000, cols = 2;
  std::vector<float> x(static_cast<std::size_t>(rows * cols), 0.0f);
  for (i64 r = 0; r < rows; ++r) x[static_cast<std::size_t>(r * cols + 1)] = -0.0f;
  x[static_cast<std::size_t>((rows - 1) * cols)] = -0.0f;  // column 0: +0 ... +0, -0
  x[1] = 0.0f;                                             // column 1: +0, -0 ... -0
  const std::vector<std::vector<float>> batches{x};
  const GpuStats gpu = observe_on_gpu(batches, cols);
  expect_same_stats(gpu, observe_on_cpu(batches, cols), cols);
  EXPECT_FALSE(std::signbit(gpu.min[0]));
  EXPECT_FALSE(std::signbit(gpu.min[1]));
}

TEST(CudaStatsShape, ZeroRowsKeepsStatsAndNegativeThrows) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 cols = 19;
  const std::vector<std::vector<float>> batches{activations(5, cols, 3), {}};
  expect_same_stats(observe_on_gpu(batches, cols), observe_on_cpu(batches, cols), cols);
  EXPECT_NO_THROW(
      sq::cuda::channel_stats_observe(nullptr, 19, 0, nullptr, nullptr, nullptr, nullptr));
  EXPECT_THROW(sq::cuda::channel_stats_observe(nullptr, -1, 4, nullptr, nullptr, nullptr, nullptr),
               sq::Error);
  sq::cuda::synchronize();
}

}  // namespace
