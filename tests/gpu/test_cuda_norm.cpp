// CUDA rms_norm / layer_norm against the CPU kernels (kernels/cpu/ops.h) over awkward sizes.
// Skipped on machines without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cuda_test_support.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/norm.h"

namespace {

using sq::cuda::DeviceBuffer;
using i64 = std::int64_t;

// Tolerance: 1e-5 relative. The GPU sums a row in float, in a strided-then-tree order; the CPU
// accumulates in double. Over 4096 columns that order difference costs a few 1e-7 relative in the
// sum (rsqrt halves it), far below 1e-5, while a wrong index or reduction is off by O(1). The
// scale is max(|expected|, 1): a normalized row has RMS about 1 (times weight), and an element
// near zero (x close to the row mean) carries the absolute error of the row's statistics, not a
// relative error of its own.
constexpr float kTolerance = 1e-5f;

std::vector<float> random_vector(std::size_t n, float lo, float hi, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// x[r, c] = offset_r + u with u uniform in [-2, 2] and offset_r uniform in [-1, 1]: rows whose mean
// is not zero, so layer_norm's centring matters.
std::vector<float> random_rows(i64 rows, i64 cols, std::uint32_t seed) {
  std::vector<float> x = random_vector(static_cast<std::size_t>(rows * cols), -2.0f, 2.0f, seed);
  const std::vector<float> offsets =
      random_vector(static_cast<std::size_t>(rows), -1.0f, 1.0f, seed + 1);
  for (i64 r = 0; r < rows; ++r) {
    for (i64 c = 0; c < cols; ++c) x[r * cols + c] += offsets[r];
  }
  return x;
}

void expect_close(const std::vector<float>& actual, const std::vector<float>& expected, i64 cols) {
  ASSERT_EQ(actual.size(), expected.size());
  int reported = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const float scale = std::max(std::fabs(expected[i]), 1.0f);
    const float error = std::fabs(actual[i] - expected[i]);
    if (!(error <= kTolerance * scale)) {  // also catches NaN
      ADD_FAILURE() << "row " << i / cols << " col " << i % cols << ": gpu " << actual[i] << " cpu "
                    << expected[i] << " (error " << error / scale << " relative)";
      if (++reported == 10) return;
    }
  }
}

class CudaNorm : public ::testing::TestWithParam<std::tuple<i64, i64>> {
 protected:
  i64 rows() const { return std::get<0>(GetParam()); }
  i64 cols() const { return std::get<1>(GetParam()); }
  std::uint32_t seed() const { return static_cast<std::uint32_t>(2019 + rows() * 7919 + cols()); }
};

TEST_P(CudaNorm, RmsNormMatchesCpu) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const float eps = 1e-6f;
  const std::vector<float> x = random_rows(rows(), cols(), seed());
  const std::vector<float> weight =
      random_vector(static_cast<std::size_t>(cols()), 0.5f, 1.5f, seed() + 2);
  std::vector<float> expected(x.size());
  sq::cpu::rms_norm(x.data(), rows(), cols(), weight.data(), eps, expected.data());

  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_weight = sq::cuda::to_device(weight);
  DeviceBuffer<float> d_out(x.size());
  sq::cuda::testing::poison(d_out);
  sq::cuda::rms_norm(d_x.data(), rows(), cols(), d_weight.data(), eps, d_out.data(), nullptr);
  sq::cuda::synchronize();
  expect_close(sq::cuda::to_host(d_out), expected, cols());
}

TEST_P(CudaNorm, LayerNormMatchesCpu) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const float eps = 1e-5f;
  const std::vector<float> x = random_rows(rows(), cols(), seed());
  const std::vector<float> weight =
      random_vector(static_cast<std::size_t>(cols()), 0.5f, 1.5f, seed() + 2);
  const std::vector<float> bias =
      random_vector(static_cast<std::size_t>(cols()), -0.5f, 0.5f, seed() + 3);
  std::vector<float> expected(x.size());
  sq::cpu::layer_norm(x.data(), rows(), cols(), weight.data(), bias.data(), eps, expected.data());

  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_weight = sq::cuda::to_device(weight);
  const DeviceBuffer<float> d_bias = sq::cuda::to_device(bias);
  DeviceBuffer<float> d_out(x.size());
  sq::cuda::testing::poison(d_out);
  sq::cuda::layer_norm(d_x.data(), rows(), cols(), d_weight.data(), d_bias.data(), eps,
                       d_out.data(), nullptr);
  sq::cuda::synchronize();
  expect_close(sq::cuda::to_host(d_out), expected, cols());
}

TEST_P(CudaNorm, LayerNormWithoutBiasMatchesCpu) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const float eps = 1e-5f;
  const std::vector<float> x = random_rows(rows(), cols(), seed());
  const std::vector<float> weight =
      random_vector(static_cast<std::size_t>(cols()), 0.5f, 1.5f, seed() + 2);
  std::vector<float> expected(x.size());
  sq::cpu::layer_norm(x.data(), rows(), cols(), weight.data(), nullptr, eps, expected.data());

  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_weight = sq::cuda::to_device(weight);
  DeviceBuffer<float> d_out(x.size());
  sq::cuda::testing::poison(d_out);
  sq::cuda::layer_norm(d_x.data(), rows(), cols(), d_weight.data(), nullptr, eps, d_out.data(),
                       nullptr);
  sq::cuda::synchronize();
  expect_close(sq::cuda::to_host(d_out), expected, cols());
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaNorm,
                         ::testing::Combine(::testing::Values<i64>(1, 19, 111),
                                            ::testing::Values<i64>(1, 19, 111, 4096)),
                         [](const ::testing::TestParamInfo<CudaNorm::ParamType>& p) {
                           return "rows" + std::to_string(std::get<0>(p.param)) + "_cols" +
                                  std::to_string(std::get<1>(p.param));
                         });

// The kernels run on the stream they are given (here a created one, not the default stream).
TEST(CudaNormStream, RunsOnGivenStream) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const i64 rows = 19, cols = 111;
  const std::vector<float> x = random_rows(rows, cols, 7);
  const std::vector<float> weight = random_vector(static_cast<std::size_t>(cols), 0.5f, 1.5f, 8);
  std::vector<float> expected(x.size());
  sq::cpu::rms_norm(x.data(), rows, cols, weight.data(), 1e-6f, expected.data());

  cudaStream_t stream = nullptr;
  SQ_CUDA_CHECK(cudaStreamCreate(&stream));
  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_weight = sq::cuda::to_device(weight);
  DeviceBuffer<float> d_out(x.size());
  sq::cuda::testing::poison(d_out);
  sq::cuda::rms_norm(d_x.data(), rows, cols, d_weight.data(), 1e-6f, d_out.data(), stream);
  sq::cuda::synchronize(stream);
  SQ_CUDA_CHECK(cudaStreamDestroy(stream));
  expect_close(sq::cuda::to_host(d_out), expected, cols);
}

TEST(CudaNormShape, EmptyIsNoOpAndNegativeThrows) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  EXPECT_NO_THROW(sq::cuda::rms_norm(nullptr, 0, 4096, nullptr, 1e-6f, nullptr, nullptr));
  EXPECT_NO_THROW(sq::cuda::layer_norm(nullptr, 19, 0, nullptr, nullptr, 1e-5f, nullptr, nullptr));
  EXPECT_THROW(sq::cuda::rms_norm(nullptr, -1, 4, nullptr, 1e-6f, nullptr, nullptr), sq::Error);
  sq::cuda::synchronize();
}

TEST(CudaDevice, CheckThrowsSqErrorNamingTheCudaError) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  try {
    SQ_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL() << "no exception";
  } catch (const sq::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaErrorInvalidValue"), std::string::npos) << what;
    EXPECT_NE(what.find("test_cuda_norm.cpp"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(SQ_CUDA_CHECK(cudaSuccess));
}

TEST(CudaDevice, BufferRoundTripAndMove) {
  if (sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const std::vector<float> host = random_vector(1000, -1.0f, 1.0f, 11);
  DeviceBuffer<float> a = sq::cuda::to_device(host);
  const float* device_ptr = a.data();
  DeviceBuffer<float> b = std::move(a);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.data(), device_ptr);
  EXPECT_EQ(b.size(), host.size());
  EXPECT_EQ(sq::cuda::to_host(b), host);
  EXPECT_THROW(sq::cuda::copy_to_device(host.data(), host.size() + 1, b), sq::Error);
}

}  // namespace
