// Google Benchmark micro-benchmarks of the CPU kernels at LLaMA-7B sizes.
//   bench_cpu_kernels [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <vector>

#include "core/random.h"
#include "kernels/cpu/ops.h"

namespace {

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  sq::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal());
  return v;
}

void BM_Linear(benchmark::State& state) {
  const int m = int(state.range(0)), n = int(state.range(1)), k = int(state.range(2));
  auto x = random_vector(std::size_t(m) * k, 1), w = random_vector(std::size_t(n) * k, 2);
  std::vector<float> y(std::size_t(m) * n);
  for (auto _ : state) sq::cpu::linear(x.data(), m, k, w.data(), nullptr, n, y.data());
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Linear)
    ->Args({512, 4096, 4096})
    ->Args({512, 11008, 4096})
    ->Args({1, 4096, 4096})
    ->Unit(benchmark::kMillisecond);

void BM_Attention(benchmark::State& state) {
  const int t = int(state.range(0)), heads = 32, d = 128;
  auto q = random_vector(std::size_t(t) * heads * d, 3), k = random_vector(q.size(), 4),
       v = random_vector(q.size(), 5);
  std::vector<float> out(q.size()), scratch(std::size_t(t) * t);
  sq::cpu::AttentionShape s{.tq = t,
                            .tk = t,
                            .q_heads = heads,
                            .kv_heads = heads,
                            .head_dim = d,
                            .q_stride = heads * d,
                            .kv_stride = heads * d,
                            .out_stride = heads * d,
                            .scale = 0.088f};
  for (auto _ : state)
    sq::cpu::attention(s, q.data(), k.data(), v.data(), out.data(), scratch.data());
  state.counters["tokens/s"] = benchmark::Counter(t, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Attention)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond);

void BM_RmsNorm(benchmark::State& state) {
  const int rows = 512, cols = 4096;
  auto x = random_vector(std::size_t(rows) * cols, 6), w = random_vector(cols, 7);
  std::vector<float> out(x.size());
  for (auto _ : state) sq::cpu::rms_norm(x.data(), rows, cols, w.data(), 1e-5f, out.data());
  state.SetBytesProcessed(state.iterations() * 2 * x.size() * sizeof(float));
}
BENCHMARK(BM_RmsNorm)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
