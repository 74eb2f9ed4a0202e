// LocalReducer and the sample-order accumulation every Reducer shares.
#include "core/reduce.h"

#include "core/error.h"

namespace sq {

Reducer::~Reducer() = default;

void LocalReducer::max_inplace(std::span<float> /*values*/) {}
void LocalReducer::min_inplace(std::span<float> /*values*/) {}

void accumulate_samples(std::span<const float> per_sample, std::int64_t count, std::int64_t n,
                        std::span<double> sums) {
  SQ_CHECK(count >= 0 && n >= 0, "count {} n {}", count, n);
  SQ_CHECK(static_cast<std::int64_t>(per_sample.size()) == count * n,
           "{} values for {} samples x {}", per_sample.size(), count, n);
  SQ_CHECK(static_cast<std::int64_t>(sums.size()) == n, "{} sums for n {}", sums.size(), n);
  // Sample-outer loop: each sum sees its terms in sample order, which is the whole contract.
  for (std::int64_t s = 0; s < count; ++s) {
    const float* row = per_sample.data() + s * n;
    for (std::int64_t j = 0; j < n; ++j) sums[static_cast<std::size_t>(j)] += row[j];
  }
}

std::vector<double> LocalReducer::sum_samples(std::span<const float> per_sample,
                                              std::int64_t first_sample, std::int64_t count,
                                              std::int64_t n, std::int64_t total_samples) {
  if (first_sample != 0 || count != total_samples) {
    fail("LocalReducer::sum_samples: one replica must hold every sample, got [{}, {}) of {}",
         first_sample, first_sample + count, total_samples);
  }
  std::vector<double> sums(static_cast<std::size_t>(n), 0.0);
  accumulate_samples(per_sample, count, n, sums);
  return sums;
}

}  // namespace sq
