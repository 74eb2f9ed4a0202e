// CUDA quantization kernels against the CPU quantizers (kernels/cpu/quant.h), bit for bit: fake
// quantization with given and with dynamic parameters, per-token quantization to codes + scales,
// and RMSNorm fused with per-token quantization. Skipped on machines without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cuda_test_support.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/quant.h"

namespace {

using sq::cpu::Granularity;
using sq::cpu::IntFormat;
using sq::cpu::QuantLayout;
using sq::cuda::DeviceBuffer;
using namespace sq::cuda::testing;
using Divisor = IntFormat::Divisor;

// The formats every test walks: the W8A8 activation formats (both scale rules), asymmetric 8 bit,
// and narrow formats where clamping and zero points matter.
std::vector<IntFormat> formats() {
  return {{8, true, Divisor::max_int},  {8, true, Divisor::half_range},
          {8, false, Divisor::max_int}, {4, true, Divisor::max_int},
          {4, false, Divisor::max_int}, {3, true, Divisor::half_range},
          {2, false, Divisor::max_int}, {2, true, Divisor::max_int}};
}

std::string format_name(const IntFormat& f) {
  return std::to_string(f.bits) + (f.symmetric ? " bit symmetric" : " bit asymmetric") +
         (f.divisor == Divisor::max_int ? " max_int" : " half_range");
}

// Activations plus non-finite values at fixed places (NaN -> zero point, +-inf clamp), when the
// matrix is large enough to keep ordinary rows as well.
std::vector<float> quant_inputs(i64 rows, i64 cols, std::uint32_t seed) {
  std::vector<float> x = activations(rows, cols, seed);
  if (rows >= 5 && cols >= 3) {
    x[static_cast<std::size_t>(3 * cols + 1)] = std::numeric_limits<float>::quiet_NaN();
    x[static_cast<std::size_t>(4 * cols + 2)] = INFINITY;
  }
  return x;
}

// The layouts that divide `cols`: tensor, row, and groups of 1, of a divisor (37 | 111, 128 | 4096)
// and of the whole row.
std::vector<QuantLayout> layouts(i64 cols) {
  std::vector<QuantLayout> out{{Granularity::tensor, 0}, {Granularity::row, 0}};
  if (cols == 0) return out;
  out.push_back({Granularity::group, 1});
  out.push_back({Granularity::group, cols});
  for (i64 g : {i64{37}, i64{128}})
    if (cols % g == 0 && g != cols) out.push_back({Granularity::group, g});
  return out;
}

std::string layout_name(const QuantLayout& l) {
  switch (l.granularity) {
    case Granularity::tensor:
      return "tensor";
    case Granularity::row:
      return "row";
    case Granularity::group:
      return "group " + std::to_string(l.group_size);
  }
  return "?";
}

class CudaQuant : public ::testing::TestWithParam<std::tuple<i64, i64>> {
 protected:
  i64 rows() const { return std::get<0>(GetParam()); }
  i64 cols() const { return std::get<1>(GetParam()); }
  std::uint32_t seed() const { return static_cast<std::uint32_t>(77 + rows() * 7919 + cols()); }
};

TEST_P(CudaQuant, FakeQuantizeStaticMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x = quant_inputs(rows(), cols(), seed());
  for (const IntFormat& format : formats()) {
    for (const QuantLayout& layout : layouts(cols())) {
      const std::string what = format_name(format) + ", " + layout_name(layout);
      // Parameters from the data's min-max, then shrunk by 0.7: many values clamp.
      const i64 n = sq::cpu::num_qparams(rows(), cols(), layout);
      std::vector<float> scale(static_cast<std::size_t>(n));
      std::vector<std::int32_t> zp(scale.size(), 0);
      sq::cpu::qparams_minmax(x.data(), rows(), cols(), layout, format, scale.data(), zp.data());
      for (float& s : scale) s *= 0.7f;
      const std::int32_t* zp_cpu = format.symmetric ? nullptr : zp.data();
      std::vector<float> expected = x;
      sq::cpu::fake_quantize(expected.data(), rows(), cols(), layout, format, scale.data(), zp_cpu);

      DeviceBuffer<float> d_x = sq::cuda::to_device(x);
      const DeviceBuffer<float> d_scale = sq::cuda::to_device(scale);
      const DeviceBuffer<std::int32_t> d_zp = sq::cuda::to_device(zp);
      sq::cuda::fake_quantize(d_x.data(), rows(), cols(), layout, format, d_scale.data(),
                              format.symmetric ? nullptr : d_zp.data(), nullptr);
      sq::cuda::synchronize();
      // An inf in a slice makes its scale inf and its values 0 x inf = NaN on both sides, each
      // platform with its own NaN bits.
      expect_same_bits(sq::cuda::to_host(d_x), expected, cols(), what, NaNBits::any);
    }
  }
}

TEST_P(CudaQuant, FakeQuantizeDynamicMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x = quant_inputs(rows(), cols(), seed());
  for (const IntFormat& format : formats()) {
    for (const QuantLayout& layout : layouts(cols())) {
      std::vector<float> expected = x;
      sq::cpu::fake_quantize_dynamic(expected.data(), rows(), cols(), layout, format);
      DeviceBuffer<float> d_x = sq::cuda::to_device(x);
      sq::cuda::fake_quantize_dynamic(d_x.data(), rows(), cols(), layout, format, nullptr);
      sq::cuda::synchronize();
      expect_same_bits(sq::cuda::to_host(d_x), expected, cols(),
                       format_name(format) + ", " + layout_name(layout), NaNBits::any);
    }
  }
}

// Codes, scales and zero points of cpu::qparams_minmax (row) + cpu::quantize.
struct PerToken {
  std::vector<std::int8_t> q;
  std::vector<float> scale;
  std::vector<std::int32_t> zp;
};

PerToken per_token_on_cpu(const std::vector<float>& x, i64 rows, i64 cols, const IntFormat& f) {
  const QuantLayout row{Granularity::row, 0};
  PerToken r{std::vector<std::int8_t>(x.size()), std::vector<float>(static_cast<std::size_t>(rows)),
             std::vector<std::int32_t>(static_cast<std::size_t>(rows), 0)};
  sq::cpu::qparams_minmax(x.data(), rows, cols, row, f, r.scale.data(), r.zp.data());
  sq::cpu::quantize(x.data(), rows, cols, row, f, r.scale.data(), r.zp.data(), r.q.data());
  return r;
}

void expect_same_per_token(const PerToken& gpu, const PerToken& cpu, i64 cols,
                           const std::string& what) {
  expect_same_bits(gpu.scale, cpu.scale, 1, what + ": scale");
  expect_equal(gpu.zp, cpu.zp, 1, what + ": zero point");
  expect_equal(gpu.q, cpu.q, cols, what + ": codes");
}

// x_offset shifts the input by that many floats inside a larger buffer (a row start that is not
// 16-byte aligned takes the kernel's scalar path even when cols % 4 == 0).
PerToken per_token_on_gpu(const std::vector<float>& x, i64 rows, i64 cols, const IntFormat& f,
                          std::size_t x_offset = 0) {
  std::vector<float> padded(x_offset, 0.0f);
  padded.insert(padded.end(), x.begin(), x.end());
  const DeviceBuffer<float> d_x = sq::cuda::to_device(padded);
  DeviceBuffer<std::int8_t> d_q(x.size());
  DeviceBuffer<float> d_scale(static_cast<std::size_t>(rows));
  DeviceBuffer<std::int32_t> d_zp(static_cast<std::size_t>(rows));
  // Outputs poisoned: the previous call's results may sit in reused memory. Symmetric formats
  // are run without a zero-point buffer (the W8A8 case); the CPU's is all 0.
  poison(d_q);
  poison(d_scale);
  poison(d_zp);
  if (f.symmetric) {
    std::vector<std::int32_t> zeros(static_cast<std::size_t>(rows), 0);
    sq::cuda::copy_to_device(zeros.data(), zeros.size(), d_zp);
  }
  sq::cuda::quantize_per_token(d_x.data() == nullptr ? nullptr : d_x.data() + x_offset, rows, cols,
                               f, d_q.data(), d_scale.data(), f.symmetric ? nullptr : d_zp.data(),
                               nullptr);
  sq::cuda::synchronize();
  return {sq::cuda::to_host(d_q), sq::cuda::to_host(d_scale), sq::cuda::to_host(d_zp)};
}

TEST_P(CudaQuant, QuantizePerTokenMatchesCpu) {
  SQ_SKIP_WITHOUT_CUDA();
  const std::vector<float> x = quant_inputs(rows(), cols(), seed());
  for (const IntFormat& format : formats()) {
    const std::string what = format_name(format);
    const PerToken cpu = per_token_on_cpu(x, rows(), cols(), format);
    expect_same_per_token(per_token_on_gpu(x, rows(), cols(), format), cpu, cols(), what);
    expect_same_per_token(per_token_on_gpu(x, rows(), cols(), format, 1), cpu, cols(),
                          what + ", unaligned");
  }
}

// Fused RMSNorm + quantization equals cuda::rms_norm followed by the CPU quantizer exactly (the
// kernel shares rms_norm's reduction), and the CPU's rms_norm + quantizer within one code.
TEST_P(CudaQuant, RmsNormQuantizeMatchesUnfused) {
  SQ_SKIP_WITHOUT_CUDA();
  const float eps = 1e-6f;
  const std::vector<float> x = activations(rows(), cols(), seed());
  const std::vector<float> weight =
      random_vector(static_cast<std::size_t>(cols()), 0.5f, 1.5f, seed() + 2);
  const DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_weight = sq::cuda::to_device(weight);
  DeviceBuffer<float> d_y(x.size());
  poison(d_y);
  sq::cuda::rms_norm(d_x.data(), rows(), cols(), d_weight.data(), eps, d_y.data(), nullptr);
  const std::vector<float> y_gpu = sq::cuda::to_host(d_y);
  std::vector<float> y_cpu(x.size());
  sq::cpu::rms_norm(x.data(), rows(), cols(), weight.data(), eps, y_cpu.data());

  for (const IntFormat& format : formats()) {
    const std::string what = format_name(format);
    DeviceBuffer<std::int8_t> d_q(x.size());
    DeviceBuffer<float> d_scale(static_cast<std::size_t>(rows()));
    DeviceBuffer<std::int32_t> d_zp(static_cast<std::size_t>(rows()));
    poison(d_q);
    poison(d_scale);
    poison(d_zp);
    if (format.symmetric) {  // no zero-point buffer is passed; the CPU's are all 0
      std::vector<std::int32_t> zeros(static_cast<std::size_t>(rows()), 0);
      sq::cuda::copy_to_device(zeros.data(), zeros.size(), d_zp);
    }
    sq::cuda::rms_norm_quantize_per_token(d_x.data(), rows(), cols(), d_weight.data(), eps, format,
                                          d_q.data(), d_scale.data(),
                                          format.symmetric ? nullptr : d_zp.data(), nullptr);
    sq::cuda::synchronize();
    const PerToken gpu{sq::cuda::to_host(d_q), sq::cuda::to_host(d_scale), sq::cuda::to_host(d_zp)};
    expect_same_per_token(gpu, per_token_on_cpu(y_gpu, rows(), cols(), format), cols(),
                          what + " vs cuda::rms_norm");

    // Against the CPU norm (double accumulation): scales within 1e-5 relative (the norm's own
    // tolerance), codes within 1 (a value near a rounding boundary may fall either side), 2 for
    // asymmetric formats (the zero point may round the other way too).
    const PerToken cpu = per_token_on_cpu(y_cpu, rows(), cols(), format);
    for (std::size_t r = 0; r < cpu.scale.size(); ++r)
      EXPECT_NEAR(gpu.scale[r], cpu.scale[r], 1e-5f * cpu.scale[r]) << what << " row " << r;
    const int max_diff = format.symmetric ? 1 : 2;
    int reported = 0;
    for (std::size_t i = 0; i < cpu.q.size() && reported < 10; ++i) {
      if (std::abs(int{gpu.q[i]} - int{cpu.q[i]}) > max_diff) {
        ADD_FAILURE() << what << " vs cpu::rms_norm: element " << i << ": gpu " << int{gpu.q[i]}
                      << " cpu " << int{cpu.q[i]};
        ++reported;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardSizes, CudaQuant,
    ::testing::Values(std::tuple<i64, i64>{1, 1}, std::tuple<i64, i64>{1, 4096},
                      std::tuple<i64, i64>{19, 19}, std::tuple<i64, i64>{19, 4100},
                      std::tuple<i64, i64>{111, 111}, std::tuple<i64, i64>{111, 4096},
                      std::tuple<i64, i64>{4096, 19}, std::tuple<i64, i64>{4096, 111},
                      std::tuple<i64, i64>{3, 8192}),
    [](const ::testing::TestParamInfo<CudaQuant::ParamType>& p) {
      return size_name(std::get<0>(p.param), std::get<1>(p.param));
    });

// Exact ties x / scale = k + 0.5 round to even (rintf), not away from zero (roundf): with scale
// 0.5, x = 0.25, 0.75, 1.25, ... quantize to 0, 2, 2, 4, ...
TEST(CudaQuantRounding, TiesRoundToEven) {
  SQ_SKIP_WITHOUT_CUDA();
  const i64 cols = 64;
  std::vector<float> x(cols);
  for (i64 i = 0; i < cols; ++i) x[static_cast<std::size_t>(i)] = 0.25f * float(2 * (i - 32) + 1);
  const IntFormat format{8, true, Divisor::max_int};
  const QuantLayout tensor{Granularity::tensor, 0};
  const std::vector<float> scale{0.5f};
  std::vector<float> expected = x;
  sq::cpu::fake_quantize(expected.data(), 1, cols, tensor, format, scale.data(), nullptr);
  DeviceBuffer<float> d_x = sq::cuda::to_device(x);
  const DeviceBuffer<float> d_scale = sq::cuda::to_device(scale);
  sq::cuda::fake_quantize(d_x.data(), 1, cols, tensor, format, d_scale.data(), nullptr, nullptr);
  sq::cuda::synchronize();
  const std::vector<float> actual = sq::cuda::to_host(d_x);
  expect_same_bits(actual, expected, cols, "ties");
  EXPECT_EQ(actual[32], 0.0f);  // 0.25 / 0.5 = 0.5 -> 0
  EXPECT_EQ(actual[33], 1.0f);  // 0.75 / 0.5 = 1.5 -> 2 -> 1.0
  EXPECT_EQ(actual[34], 1.0f);  // 1.25 / 0.5 = 2.5 -> 2 -> 1.0
}

// An all-zero row gets the CPU's kMinScale and all-zero codes; with no columns every row still
// gets its parameters, as cpu::qparams_minmax writes them.
TEST(CudaQuantEdges, ZeroRowsAndEmptyRows) {
  SQ_SKIP_WITHOUT_CUDA();
  for (const IntFormat& format : formats()) {
    const std::vector<float> zeros(3 * 40, 0.0f);
    const PerToken gpu = per_token_on_gpu(zeros, 3, 40, format);
    expect_same_per_token(gpu, per_token_on_cpu(zeros, 3, 40, format), 40, format_name(format));
    EXPECT_EQ(gpu.scale[0], sq::cpu::kMinScale);
    const PerToken empty = per_token_on_gpu({}, 3, 0, format);
    expect_same_per_token(empty, per_token_on_cpu({}, 3, 0, format), 1, format_name(format));
    DeviceBuffer<float> d_scale(3);
    DeviceBuffer<std::int32_t> d_zp(3);
    poison(d_scale);
    poison(d_zp);
    sq::cuda::rms_norm_quantize_per_token(nullptr, 3, 0, nullptr, 1e-6f, format, nullptr,
                                          d_scale.data(), d_zp.data(), nullptr);
    sq::cuda::synchronize();
    expect_same_bits(sq::cuda::to_host(d_scale), empty.scale, 1, "fused, no columns: scale");
  }
  EXPECT_NO_THROW(
      sq::cuda::quantize_per_token(nullptr, 0, 4096, {}, nullptr, nullptr, nullptr, nullptr));
  EXPECT_NO_THROW(sq::cuda::fake_quantize(nullptr, 0, 19, {}, {}, nullptr, nullptr, nullptr));
  EXPECT_NO_THROW(sq::cuda::fake_quantize_dynamic(nullptr, 19, 0, {}, {}, nullptr));
  EXPECT_NO_THROW(sq::cuda::rms_norm_quantize_per_token(nullptr, 0, 19, nullptr, 1e-6f, {}, nullptr,
                                                        nullptr, nullptr, nullptr));
  sq::cuda::synchronize();
}

TEST(CudaQuantEdges, InvalidArgumentsThrowBeforeLaunch) {
  SQ_SKIP_WITHOUT_CUDA();
  const IntFormat asym{8, false, Divisor::max_int};
  EXPECT_THROW(sq::cuda::quantize_per_token(nullptr, 1, 4, {9, true, Divisor::max_int}, nullptr,
                                            nullptr, nullptr, nullptr),
               sq::Error);
  EXPECT_THROW(sq::cuda::quantize_per_token(nullptr, 1, 4, {1, true, Divisor::max_int}, nullptr,
                                            nullptr, nullptr, nullptr),
               sq::Error);
  EXPECT_THROW(
      sq::cuda::quantize_per_token(nullptr, 1, 4, asym, nullptr, nullptr, nullptr, nullptr),
      sq::Error);
  EXPECT_THROW(
      sq::cuda::fake_quantize_dynamic(nullptr, 2, 10, {Granularity::group, 3}, {}, nullptr),
      sq::Error);
  EXPECT_THROW(sq::cuda::fake_quantize(nullptr, -1, 10, {}, {}, nullptr, nullptr, nullptr),
               sq::Error);
  EXPECT_THROW(sq::cuda::rms_norm_quantize_per_token(nullptr, 1, 4, nullptr, 1e-6f, asym, nullptr,
                                                     nullptr, nullptr, nullptr),
               sq::Error);
  sq::cuda::synchronize();
}

}  // namespace
