// CPU forward throughput (tokens/s) of a synthetic model with the LLaMA-7B block shape, and the
// fraction of this machine's sgemm rate the forward reaches, measured in the same run.
//
//   bench_forward_throughput [--dir DIR] [--seqs 4] [--seq-len 256] [--layers 2] [--reps 3]
//
// The model (hidden 4096, ffn 11008, 32 heads, vocab 32000, bf16) is written once to DIR and
// reused when DIR already holds it.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/log.h"
#include "core/random.h"
#include "kernels/cpu/ops.h"
#include "model/evaluate.h"
#include "model/synth.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Best-of-reps sgemm rate in GFLOP/s for C[m,n] = A[m,k] B[n,k]^T on random data.
double sgemm_gflops(int m, int n, int k, int reps) {
  std::vector<float> a(std::size_t(m) * k), b(std::size_t(n) * k), c(std::size_t(m) * n);
  sq::Rng rng(7);
  for (auto& x : a) x = float(rng.normal());
  for (auto& x : b) x = float(rng.normal());
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {  // first run warms up
    const auto t = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
    if (r > 0) best = std::min(best, seconds_since(t));
  }
  return 2.0 * m * n * k / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = (std::filesystem::temp_directory_path() / "sq_bench_llama7b_shape").string();
  std::int64_t seqs = 4, seq_len = 256, layers = 2;
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir")
      dir = argv[i + 1];
    else if (a == "--seqs")
      seqs = std::stoll(argv[i + 1]);
    else if (a == "--seq-len")
      seq_len = std::stoll(argv[i + 1]);
    else if (a == "--layers")
      layers = std::stoll(argv[i + 1]);
    else if (a == "--reps")
      reps = std::stoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  sq::model::SynthSpec spec;
  spec.arch = sq::io::Arch::llama;
  spec.hidden = 4096;
  spec.intermediate = 11008;
  spec.layers = layers;
  spec.heads = 32;
  spec.kv_heads = 32;
  spec.vocab = 32000;
  spec.max_positions = 4096;
  spec.dtype = sq::DType::bf16;
  spec.calib_seqs = spec.eval_seqs = 0;
  spec.seed = 1;
  if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json")) {
    std::filesystem::remove_all(dir);
    sq::model::write_synth_model(spec, dir);
  }
  const auto model = sq::model::Model::open(dir);
  const auto& c = model.config();

  std::vector<std::uint32_t> tokens(std::size_t(seqs * seq_len));
  sq::Rng rng(3);
  for (auto& t : tokens) t = std::uint32_t(rng.below(c.vocab_size));

  // Useful FLOPs of one forward: the block linears, attention as computed (full T x T score and
  // value products per head; the causal half is masked after), and the lm_head.
  const double T = double(seqs * seq_len), H = double(c.hidden_size),
               F = double(c.intermediate_size);
  const double linear_flops =
      2.0 * T * (H * c.q_dim() + 2 * H * c.kv_dim() + c.q_dim() * H + 3 * H * F);
  const double attn_flops = 2.0 * 2.0 * double(seqs) * seq_len * seq_len * c.q_dim();
  const double head_flops = 2.0 * T * H * double(c.vocab_size);
  const double flops = double(layers) * (linear_flops + attn_flops) + head_flops;

  double best = 1e30, load = 0.0;
  for (int r = 0; r < reps + 1; ++r) {
    const auto res = sq::model::evaluate(model, tokens, seqs, seq_len);
    if (r > 0) best = std::min(best, res.seconds);
  }
  for (int l = 0; l < layers; ++l) {  // weight mapping + bf16 -> f32 conversion, per block
    const auto t = Clock::now();
    const auto w = model.load_block(l);
    load += seconds_since(t);
  }
  // The machine's sgemm rate: the best of the forward's own linear shapes and a square one.
  const int m = int(std::min<std::int64_t>(seqs * seq_len, 2048));
  const double peak =
      std::max({sgemm_gflops(m, 4096, 4096, reps), sgemm_gflops(m, 11008, 4096, reps),
                sgemm_gflops(2048, 2048, 2048, reps)});
  const double achieved = flops / best / 1e9;
  std::printf(
      "| shape | tokens | BLAS threads | forward s | tokens/s | GFLOP/s | sgemm GFLOP/s | "
      "fraction | block load s |\n|---|---|---|---|---|---|---|---|---|\n");
  std::printf(
      "| LLaMA-7B block x%lld, vocab %lld | %lld x %lld | %d | %.3f | %.1f | %.1f | %.1f | "
      "%.2f | %.3f |\n",
      (long long)layers, (long long)c.vocab_size, (long long)seqs, (long long)seq_len,
      sq::cpu::blas_threads(), best, T / best, achieved, peak, achieved / peak, load);
  return 0;
}
