// CUDA casts and residual add (kernels/cuda/convert.h) against core/half.h and plain addition:
// the same bits for every finite and infinite input, over edge patterns (ties to even, the largest
// finite values and the overflow boundary, subnormals of the source and of the target, signed
// zeros) and a sweep of random bit patterns. Skipped on machines without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "cuda_test_support.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device.h"

namespace {

using sq::cuda::DeviceBuffer;
using namespace sq::cuda::testing;

float from_bits(std::uint32_t u) {
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Edge patterns of both target formats, each with both signs, then random bit patterns (NaNs
// left out: convert.h promises only that NaN stays NaN).
std::vector<float> cast_inputs() {
  std::vector<float> v = {0.0f,
                          1.0f,
                          1.5f,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          65536.0f,
                          3.0e38f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::denorm_min(),
                          std::ldexp(1.0f, -24),
                          std::ldexp(1.0f, -25),
                          std::ldexp(3.0f, -26),
                          std::ldexp(1.0f, -14),
                          std::ldexp(1023.0f, -24)};
  // bf16 ties and near-ties: the low 16 bits at 0x8000 (tie), 0x7FFF, 0x8001, with odd and even
  // kept parts; fp16 ties likewise at bit 12.
  for (std::uint32_t base : {0x3F800000u, 0x3F810000u, 0x47000000u, 0x00800000u, 0x7F7F0000u}) {
    for (std::uint32_t low : {0x8000u, 0x7FFFu, 0x8001u, 0x1000u, 0x0FFFu, 0x1001u, 0x3000u})
      v.push_back(from_bits(base | low));
  }
  const std::size_t n = v.size();
  for (std::size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  std::mt19937 rng(2024);
  while (v.size() < 200000) {
    const float f = from_bits(static_cast<std::uint32_t>(rng()));
    if (!std::isnan(f)) v.push_back(f);
  }
  return v;
}

TEST(CudaConvert, CastsMatchCoreHalfBitForBit) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x = cast_inputs();
  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  DeviceBuffer<std::uint16_t> d_bf16(x.size()), d_f16(x.size());
  poison(d_bf16);
  poison(d_f16);
  sq::cuda::to_bf16(d_x.data(), static_cast<i64>(x.size()), d_bf16.data(), nullptr);
  sq::cuda::to_f16(d_x.data(), static_cast<i64>(x.size()), d_f16.data(), nullptr);
  sq::cuda::synchronize();
  std::vector<std::uint16_t> bf16(x.size()), f16(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    bf16[i] = sq::f32_to_bf16(x[i]);
    f16[i] = sq::f32_to_f16(x[i]);
  }
  expect_equal(sq::cuda::to_host(d_bf16), bf16, 1, "to_bf16");
  expect_equal(sq::cuda::to_host(d_f16), f16, 1, "to_f16");
}

TEST(CudaConvert, NaNStaysNaN) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x = {std::numeric_limits<float>::quiet_NaN(), from_bits(0xFF800001u),
                                from_bits(0x7F800001u)};
  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  DeviceBuffer<std::uint16_t> d_bf16(x.size()), d_f16(x.size());
  sq::cuda::to_bf16(d_x.data(), 3, d_bf16.data(), nullptr);
  sq::cuda::to_f16(d_x.data(), 3, d_f16.data(), nullptr);
  sq::cuda::synchronize();
  for (std::uint16_t b : sq::cuda::to_host(d_bf16))
    EXPECT_TRUE(std::isnan(sq::bf16_to_f32(b))) << b;
  for (std::uint16_t h : sq::cuda::to_host(d_f16)) EXPECT_TRUE(std::isnan(sq::f16_to_f32(h))) << h;
}

TEST(CudaConvert, AddIsExactAndOddLengthsAreCovered) {
  SQ_SKIP_WITHOUT_CUDA();
  for (const i64 n : {i64{1}, i64{3}, i64{1000}, i64{65537}}) {
    const std::vector<float> x = random_vector(static_cast<std::size_t>(n), -4.0f, 4.0f, 5);
    std::vector<float> y = random_vector(static_cast<std::size_t>(n), -1e3f, 1e3f, 6);
    DeviceBuffer<float> d_y = sq::cuda::to_device(y);
    const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
    sq::cuda::add(d_x.data(), n, d_y.data(), nullptr);
    sq::cuda::synchronize();
    for (std::size_t i = 0; i < y.size(); ++i) y[i] += x[i];
    expect_same_bits(sq::cuda::to_host(d_y), y, n, "add n = " + std::to_string(n));
  }
  EXPECT_THROW(sq::cuda::add(nullptr, -1, nullptr, nullptr), sq::Error);
  EXPECT_NO_THROW(sq::cuda::add(nullptr, 0, nullptr, nullptr));
}

}  // namespace
