// CUDA rope_rotate_half against cpu::rope_rotate_half (kernels/cpu/ops.h). Skipped on machines
// without a CUDA device.
//
// Tolerance: |gpu - cpu| <= 4e-6 * max(|cpu|, 1). The angle is the same float product on both
// sides; CUDA's sinf / cosf are within 2 ulp (1.2e-7 for values below 1) and the GPU may fuse
// a * c - b * s into an FMA, so an output of inputs below ~2 in magnitude differs by at most
// ~1e-6. A wrong pairing (interleaved instead of rotate-half), position or frequency index moves
// outputs by O(1).
#include <gtest/gtest.h>

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
#include "kernels/cuda/rope.h"

namespace {

using sq::cuda::DeviceBuffer;
using namespace sq::cuda::testing;

constexpr float kTolerance = 4e-6f;

// HF LLaMA's inverse frequencies: base^(-2i / head_dim).
std::vector<float> inv_freq(i64 head_dim, double base = 500000.0) {
  std::vector<float> f(static_cast<std::size_t>(head_dim / 2));
  for (std::size_t i = 0; i < f.size(); ++i)
    f[i] = static_cast<float>(std::pow(base, -2.0 * double(i) / double(head_dim)));
  return f;
}

// Unordered positions up to 8191 (a KV-cached decode step is not 0..n-1).
std::vector<i64> positions(i64 tokens, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<i64> dist(0, 8191);
  std::vector<i64> p(static_cast<std::size_t>(tokens));
  for (i64& v : p) v = dist(rng);
  return p;
}

// tokens, heads, head_dim; the row stride leaves a gap of 5 elements after each token's heads
// (q, k and v side by side in a fused buffer), which must stay untouched.
class CudaRope : public ::testing::TestWithParam<std::tuple<i64, i64, i64>> {
 protected:
  i64 tokens() const { return std::get<0>(GetParam()); }
  i64 heads() const { return std::get<1>(GetParam()); }
  i64 head_dim() const { return std::get<2>(GetParam()); }
  i64 row_stride() const { return heads() * head_dim() + 5; }
  std::uint32_t seed() const {
    return static_cast<std::uint32_t>(tokens() * 1000 + heads() * 100 + head_dim());
  }
};

TEST_P(CudaRope, MatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x =
      random_vector(static_cast<std::size_t>(tokens() * row_stride()), -2.0f, 2.0f, seed());
  const std::vector<i64> pos = positions(tokens(), seed() + 1);
  const std::vector<float> freq = inv_freq(head_dim());
  std::vector<float> expected = x;
  sq::cpu::rope_rotate_half(expected.data(), tokens(), heads(), head_dim(), row_stride(),
                            pos.data(), freq.data());

  DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<i64> d_pos = sq::cuda::to_device(pos);
  const DeviceBuffer<float> d_freq = sq::cuda::to_device(freq);
  sq::cuda::rope_rotate_half(d_x.data(), tokens(), heads(), head_dim(), row_stride(), d_pos.data(),
                             d_freq.data(), nullptr);
  sq::cuda::synchronize();
  const std::vector<float> actual = sq::cuda::to_host(d_x);
  expect_close(actual, expected, expected, kTolerance, row_stride(), "rope");

  // The gaps between tokens, and the last element of an odd head_dim, are not written.
  for (i64 t = 0; t < tokens(); ++t) {
    for (i64 j = heads() * head_dim(); j < row_stride(); ++j) {
      const auto i = static_cast<std::size_t>(t * row_stride() + j);
      ASSERT_EQ(bits_of(actual[i]), bits_of(x[i])) << "gap of token " << t;
    }
    if (head_dim() % 2 == 1) {
      for (i64 h = 0; h < heads(); ++h) {
        const auto i = static_cast<std::size_t>(t * row_stride() + h * head_dim() + head_dim() - 1);
        ASSERT_EQ(bits_of(actual[i]), bits_of(x[i])) << "odd tail of token " << t;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaRope,
                         ::testing::Combine(::testing::Values<i64>(1, 19, 111),
                                            ::testing::Values<i64>(1, 3, 32),
                                            ::testing::Values<i64>(1, 2, 7, 64, 128)),
                         [](const ::testing::TestParamInfo<CudaRope::ParamType>& p) {
                           return "tokens" + std::to_string(std::get<0>(p.param)) + "_heads" +
                                  std::to_string(std::get<1>(p.param)) + "_dim" +
                                  std::to_string(std::get<2>(p.param));
                         });

// Many tokens at once: a LLaMA-70B prefill's q (4096 tokens, 64 heads of 128), positions 0..4095.
TEST(CudaRopeLarge, PrefillMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 tokens = 4096, heads = 64, head_dim = 128, stride = heads * head_dim;
  const std::vector<float> x =
      random_vector(static_cast<std::size_t>(tokens * stride), -2.0f, 2.0f, 99);
  std::vector<i64> pos(static_cast<std::size_t>(tokens));
  for (i64 t = 0; t < tokens; ++t) pos[static_cast<std::size_t>(t)] = t;
  const std::vector<float> freq = inv_freq(head_dim);
  std::vector<float> expected = x;
  sq::cpu::rope_rotate_half(expected.data(), tokens, heads, head_dim, stride, pos.data(),
                            freq.data());
  DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<i64> d_pos = sq::cuda::to_device(pos);
  const DeviceBuffer<float> d_freq = sq::cuda::to_device(freq);
  sq::cuda::rope_rotate_half(d_x.data(), tokens, heads, head_dim, stride, d_pos.data(),
                             d_freq.data(), nullptr);
  sq::cuda::synchronize();
  expect_close(sq::cuda::to_host(d_x), expected, expected, kTolerance, stride, "rope prefill");
}

TEST(CudaRopeShape, EmptyIsNoOpAndBadShapesThrow) {
  SQ_SKIP_WITHOUT_CUDA();
  EXPECT_NO_THROW(sq::cuda::rope_rotate_half(nullptr, 0, 32, 128, 4096, nullptr, nullptr, nullptr));
  EXPECT_NO_THROW(sq::cuda::rope_rotate_half(nullptr, 19, 32, 1, 32, nullptr, nullptr, nullptr));
  EXPECT_THROW(sq::cuda::rope_rotate_half(nullptr, -1, 32, 128, 4096, nullptr, nullptr, nullptr),
               sq::Error);
  // Overlapping token rows would race on the GPU.
  EXPECT_THROW(sq::cuda::rope_rotate_half(nullptr, 2, 32, 128, 100, nullptr, nullptr, nullptr),
               sq::Error);
  sq::cuda::synchronize();
}

}  // namespace
