#include "stages/device_quantize.h"

#include <vector>

#include "core/error.h"
#include "kernels/cuda/quant.h"
#include "stages/quantize.h"

namespace sq::stages {

using model::LinearRole;
using model::Site;

DeviceQuantizeActivations::DeviceQuantizeActivations(const QuantizedBlock& block,
                                                     const QuantScheme& scheme)
    : scheme_(scheme) {
  if (!scheme.activations || scheme.activations->dynamic) return;
  for (int i = 0; i < model::kSiteCount; ++i) {
    const std::optional<LinearRole> role = input_role(static_cast<Site>(i));
    if (!role) continue;
    const QuantizedLinear& q = block.linear(*role);
    SQ_CHECK(q.input_scale.defined(), "static activation scale missing for {}",
             model::role_name(*role));
    Static& s = static_[static_cast<std::size_t>(i)];
    s.scale = cuda::to_device(std::vector<float>{q.input_scale.data<float>()[0]});
    if (q.input_zero_point.defined())
      s.zero_point =
          cuda::to_device(std::vector<std::int32_t>{q.input_zero_point.data<std::int32_t>()[0]});
  }
  // cuda::to_device copies on the legacy stream; the hook's kernels run on another one.
  cuda::synchronize(nullptr);
}

void DeviceQuantizeActivations::at(Site site, float* x, std::int64_t rows, std::int64_t cols,
                                   cudaStream_t stream) {
  if (!scheme_.activations) return;
  const auto& a = *scheme_.activations;
  const cpu::QuantLayout per_token{.granularity = cpu::Granularity::row};
  const cpu::QuantLayout per_tensor{.granularity = cpu::Granularity::tensor};
  if (!input_role(site)) {  // attention matmul inputs: per-token dynamic, when enabled
    if (scheme_.attention_inputs)
      cuda::fake_quantize_dynamic(x, rows, cols, per_token, a.format, stream);
    return;
  }
  if (a.dynamic) {
    cuda::fake_quantize_dynamic(x, rows, cols, a.per_token ? per_token : per_tensor, a.format,
                                stream);
    return;
  }
  const Static& s = static_[static_cast<std::size_t>(site)];
  cuda::fake_quantize(x, rows, cols, per_tensor, a.format, s.scale.data(),
                      s.zero_point.empty() ? nullptr : s.zero_point.data(), stream);
}

}  // namespace sq::stages
