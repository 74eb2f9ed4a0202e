// The reference the export tests quantize with: symmetric int8 round-to-nearest written out with
// plain loops (independent of kernels/), scales rounded to the export dtype. Shared by
// test_export.cpp and test_export_loader.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/half.h"
#include "stages/export.h"

namespace sq::stages::test {

inline float round_to(float x, DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return bf16_to_f32(f32_to_bf16(x));
    case DType::f16:
      return f16_to_f32(f32_to_f16(x));
    default:
      return x;
  }
}

// One linear, per channel or per tensor; the linear's weights become the dequantized ones, as
// export requires.
inline QuantizedLinear rtn(model::Linear& linear, ExportScheme::WeightStrategy strategy,
                           DType dtype) {
  const std::int64_t rows = linear.out_features(), cols = linear.in_features();
  const std::int64_t n = strategy == ExportScheme::WeightStrategy::channel ? rows : 1;
  std::vector<float> absmax(static_cast<std::size_t>(n), 0.0f);
  const float* w = linear.weight.data<float>();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      float& m = absmax[static_cast<std::size_t>(n == 1 ? 0 : r)];
      m = std::max(m, std::fabs(w[r * cols + c]));
    }
  QuantizedLinear q;
  q.weight_scale = Tensor::zeros(DType::f32, {n});
  float* s = q.weight_scale.mutable_data<float>();
  for (std::int64_t i = 0; i < n; ++i)
    s[i] = round_to(absmax[static_cast<std::size_t>(i)] / 127.0f, dtype);
  q.weight_q = Tensor::zeros(DType::i8, {rows, cols});
  Tensor deq = Tensor::zeros(DType::f32, {rows, cols});
  auto* qv = q.weight_q.mutable_data<std::int8_t>();
  auto* dv = deq.mutable_data<float>();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const float scale = s[n == 1 ? 0 : r];
      const float v = std::clamp(std::nearbyint(w[r * cols + c] / scale), -128.0f, 127.0f);
      qv[r * cols + c] = static_cast<std::int8_t>(v);
      dv[r * cols + c] = v * scale;
    }
  linear.weight = deq;
  return q;
}

}  // namespace sq::stages::test
