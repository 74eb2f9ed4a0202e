// Helpers shared by the CUDA kernel tests: the skip without a device, deterministic inputs,
// and comparisons that report the first mismatches with their row and column.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/device.h"

// Every CUDA test starts with this: skipped, not failed, on a machine without a device.
#define SQ_SKIP_WITHOUT_CUDA() \
  if (::sq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

namespace sq::cuda::testing {

using i64 = std::int64_t;

inline std::vector<float> random_vector(std::size_t n, float lo, float hi, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Activation-like rows: N(0, 1) values, a few outlier columns x 30 (as LLM activations have), and
// row 0 all zeros when there are at least 3 rows (the zero-scale path).
inline std::vector<float> activations(i64 rows, i64 cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  for (float& v : x) v = normal(rng);
  for (i64 c = 3; c < cols; c += 97) {
    for (i64 r = 0; r < rows; ++r) x[static_cast<std::size_t>(r * cols + c)] *= 30.0f;
  }
  if (rows >= 3) std::fill(x.begin(), x.begin() + cols, 0.0f);
  return x;
}

inline std::uint32_t bits_of(float v) {
  std::uint32_t u = 0;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// NaN payloads: which NaN an IEEE operation returns is the platform's choice (0 x inf is
// 0xFFC00000 on x86, 0x7FFFFFFF on a CUDA device).
enum class NaNBits { exact, any };

// Same bits element by element (so +0 / -0 count, and NaN payloads unless `nan` is any); at most
// 10 reports.
inline void expect_same_bits(const std::vector<float>& actual, const std::vector<float>& expected,
                             i64 cols, const std::string& what, NaNBits nan = NaNBits::exact) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (nan == NaNBits::any && std::isnan(actual[i]) && std::isnan(expected[i])) continue;
    if (bits_of(actual[i]) != bits_of(expected[i])) {
      ADD_FAILURE() << what << ": row " << i / cols << " col " << i % cols << ": gpu " << actual[i]
                    << " cpu " << expected[i];
      if (++reported == 10) return;
    }
  }
}

template <typename T>
void expect_equal(const std::vector<T>& actual, const std::vector<T>& expected, i64 cols,
                  const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    if (actual[i] != expected[i]) {
      ADD_FAILURE() << what << ": row " << i / cols << " col " << i % cols << ": gpu " << +actual[i]
                    << " cpu " << +expected[i];
      if (++reported == 10) return;
    }
  }
}

// |actual - expected| <= tolerance * max(|scale_of[i]|, 1) per element (NaN fails).
inline void expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                         const std::vector<float>& scale_of, float tolerance, i64 cols,
                         const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const float scale = std::max(std::fabs(scale_of[i]), 1.0f);
    const float error = std::fabs(actual[i] - expected[i]);
    if (!(error <= tolerance * scale)) {
      ADD_FAILURE() << what << ": row " << i / cols << " col " << i % cols << ": gpu " << actual[i]
                    << " cpu " << expected[i] << " (error " << error / scale << " scaled)";
      if (++reported == 10) return;
    }
  }
}

// |actual - expected| <= tolerance[i], a bound of its own for every element (0 demands equal
// values; NaN fails); at most 10 reports.
inline void expect_within(const std::vector<float>& actual, const std::vector<float>& expected,
                          const std::vector<float>& tolerance, i64 cols, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  ASSERT_EQ(tolerance.size(), expected.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const float error = std::fabs(actual[i] - expected[i]);
    if (!(error <= tolerance[i])) {
      ADD_FAILURE() << what << ": row " << i / cols << " col " << i % cols << ": gpu " << actual[i]
                    << " cpu " << expected[i] << " (error " << error << ", allowed " << tolerance[i]
                    << ")";
      if (++reported == 10) return;
    }
  }
}

// Test names of (M, N, K) GEMM problems: "M3_N16_K19".
struct MnkName {
  std::string operator()(const ::testing::TestParamInfo<std::tuple<i64, i64, i64>>& p) const {
    std::string name = "M";  // appended piecewise: "M" + std::string trips GCC 12's -Wrestrict
    name += std::to_string(std::get<0>(p.param));
    name += "_N";
    name += std::to_string(std::get<1>(p.param));
    name += "_K";
    name += std::to_string(std::get<2>(p.param));
    return name;
  }
};

// Fills a device buffer with 0xFF bytes before a kernel writes it, so an output the kernel fails
// to write cannot match by the luck of freshly zeroed memory or a previous result left in reused
// memory.
template <typename T>
void poison(DeviceBuffer<T>& buffer) {
  if (buffer.size() > 0) SQ_CUDA_CHECK(cudaMemset(buffer.data(), 0xFF, buffer.bytes()));
}

inline std::string size_name(i64 rows, i64 cols) {
  return "rows" + std::to_string(rows) + "_cols" + std::to_string(cols);
}

}  // namespace sq::cuda::testing
