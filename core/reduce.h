// Reductions over calibration samples that stages call without knowing about MPI (DESIGN §4):
// the Reducer interface, and LocalReducer, its single-replica implementation. The pipeline
// implements the same interface with MPI (pipeline/mpi_world.h, MpiReducer).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sq {

// A group of replicas that hold disjoint, contiguous ranges of the calibration samples. Every
// call is collective: all replicas of the group make it, in the same order, with the same sizes.
class Reducer {
 public:
  virtual ~Reducer();

  virtual int replicas() const = 0;
  virtual int replica() const = 0;

  // Elementwise max / min across replicas, in place. Order-free and exact, so no care is needed
  // for determinism. (NaN inputs give an unspecified result.)
  virtual void max_inplace(std::span<float> values) = 0;
  virtual void min_inplace(std::span<float> values) = 0;

  // Deterministic sum over samples. Each replica passes the per-sample partial vectors of its
  // contiguous sample range [first_sample, first_sample + count): count x n values, sample-major.
  // Every replica gets the n sums over ALL total_samples samples, added in global sample order in
  // double, so the result is bit-identical whatever the replica count (a float all-reduce is not:
  // its rounding depends on how samples are grouped). The ranges of the replicas must tile
  // [0, total_samples) exactly; a replica may hold no sample (count 0).
  virtual std::vector<double> sum_samples(std::span<const float> per_sample,
                                          std::int64_t first_sample, std::int64_t count,
                                          std::int64_t n, std::int64_t total_samples) = 0;
};

// One replica that holds every sample: max/min are the identity, and sum_samples adds the samples
// in order — the reference every distributed Reducer must match bit for bit.
class LocalReducer final : public Reducer {
 public:
  int replicas() const override { return 1; }
  int replica() const override { return 0; }
  void max_inplace(std::span<float> values) override;
  void min_inplace(std::span<float> values) override;
  std::vector<double> sum_samples(std::span<const float> per_sample, std::int64_t first_sample,
                                  std::int64_t count, std::int64_t n,
                                  std::int64_t total_samples) override;
};

// Adds count samples of n values (sample-major) to sums (n doubles), one sample after another.
// Shared by every Reducer so that all of them use exactly the same operation order.
void accumulate_samples(std::span<const float> per_sample, std::int64_t count, std::int64_t n,
                        std::span<double> sums);

}  // namespace sq
