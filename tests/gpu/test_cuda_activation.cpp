// CUDA silu_mul / relu / gelu_tanh against the CPU kernels (kernels/cpu/ops.h). Skipped on
// machines without a CUDA device.
//
// relu is compared bit for bit. silu_mul and gelu_tanh go through expf / tanhf, which CUDA
// computes within 2 ulp and glibc within 1 ulp, so they are compared with a tolerance:
//   silu_mul: |gpu - cpu| <= 4e-6 * max(|cpu|, 1). silu(g) * up is a quotient and two products of
//     values carrying at most a few ulp (about 1e-7 relative each); 4e-6 is ~30 ulp of slack, while
//     a wrong sign, operand or missing factor is off by O(|value|).
//   gelu_tanh: |gpu - cpu| <= 2e-6 * max(|x|, 1). An ulp of tanh near -1 is an absolute error that
//     0.5 x (1 + tanh) scales by |x| (and 1 + tanh cancels, so relative error is meaningless
//     there); 2 ulp of tanh times |x| / 2 is ~1.2e-7 |x|. A wrong constant (0.044715, sqrt(2/pi))
//     is off by more than 1e-4 |x| at |x| ~ 1.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_test_support.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/device.h"

namespace {

using sq::cuda::DeviceBuffer;
using namespace sq::cuda::testing;

constexpr float kSiluTolerance = 4e-6f;
constexpr float kGeluTolerance = 2e-6f;

class CudaActivation : public ::testing::TestWithParam<i64> {
 protected:
  i64 n() const { return GetParam(); }
  std::uint32_t seed() const { return static_cast<std::uint32_t>(5 + n()); }
  // Values over the range where the functions bend and saturate ([-12, 12]), plus exact zeros
  // and (n >= 8) the extremes of float.
  std::vector<float> inputs(std::uint32_t s) const {
    std::vector<float> x = random_vector(static_cast<std::size_t>(n()), -12.0f, 12.0f, s);
    if (n() >= 8) {
      x[0] = 0.0f;
      x[1] = -0.0f;
      x[2] = 88.0f;
      x[3] = -88.0f;
      x[4] = 1e-30f;
      x[5] = -1e-30f;
    }
    return x;
  }
};

TEST_P(CudaActivation, SiluMulMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> gate = inputs(seed()), up = inputs(seed() + 1);
  std::vector<float> expected(gate.size());
  sq::cpu::silu_mul(gate.data(), up.data(), n(), expected.data());
  const DeviceBuffer<float> d_gate = sq::cuda::to_device(gate), d_up = sq::cuda::to_device(up);
  DeviceBuffer<float> d_out(gate.size());
  poison(d_out);
  sq::cuda::silu_mul(d_gate.data(), d_up.data(), n(), d_out.data(), nullptr);
  sq::cuda::synchronize();
  expect_close(sq::cuda::to_host(d_out), expected, expected, kSiluTolerance, 1, "silu_mul");
}

TEST_P(CudaActivation, ReluMatchesCpuBitForBit) {
  SQ_SKIP_WITHOUT_CUDA();
  std::vector<float> x = inputs(seed());
  if (n() >= 8) x[6] = std::numeric_limits<float>::quiet_NaN();  // NaN > 0 is false: 0
  std::vector<float> expected = x;
  sq::cpu::relu(expected.data(), n());
  DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  sq::cuda::relu(d_x.data(), n(), nullptr);
  sq::cuda::synchronize();
  expect_same_bits(sq::cuda::to_host(d_x), expected, 1, "relu");
}

TEST_P(CudaActivation, GeluTanhMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x = inputs(seed());
  std::vector<float> expected = x;
  sq::cpu::gelu_tanh(expected.data(), n());
  DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  sq::cuda::gelu_tanh(d_x.data(), n(), nullptr);
  sq::cuda::synchronize();
  expect_close(sq::cuda::to_host(d_x), expected, x, kGeluTolerance, 1, "gelu_tanh");
}

// Sizes around warp and block boundaries, and one past the capped grid of 2^16 blocks x 256
// threads (the grid-stride loop).
INSTANTIATE_TEST_SUITE_P(AwkwardSizes, CudaActivation,
                         ::testing::Values<i64>(1, 19, 111, 4096, 4096 * 111 + 7,
                                                (i64{1} << 24) + 19),
                         [](const ::testing::TestParamInfo<i64>& p) {
                           std::string name = "n";
                           return name += std::to_string(p.param);
                         });

TEST(CudaActivationShape, EmptyIsNoOpAndNegativeThrows) {
  SQ_SKIP_WITHOUT_CUDA();
  EXPECT_NO_THROW(sq::cuda::silu_mul(nullptr, nullptr, 0, nullptr, nullptr));
  EXPECT_NO_THROW(sq::cuda::relu(nullptr, 0, nullptr));
  EXPECT_NO_THROW(sq::cuda::gelu_tanh(nullptr, 0, nullptr));
  EXPECT_THROW(sq::cuda::relu(nullptr, -1, nullptr), sq::Error);
  EXPECT_THROW(sq::cuda::gelu_tanh(nullptr, -1, nullptr), sq::Error);
  sq::cuda::synchronize();
}

}  // namespace
