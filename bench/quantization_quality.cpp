// Naive W8A8 / W6A6 vs SmoothQuant vs Outlier Suppression+ (per-channel weights, per-tensor
// static activations): KL divergence from the FP model, top-1 agreement and perplexity, on synth
// LLaMA and OPT models with synth's default outliers and on the trained byte-level LLaMA fixture.
//   bench_quantization_quality [WORK_DIR] [TRAINED_FIXTURE_DIR]
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/log.h"
#include "model/synth.h"
#include "pipeline/method_comparison.h"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  const fs::path work = argc > 1 ? argv[1] : fs::temp_directory_path() / "sq_quality";
  const std::string trained = argc > 2 ? argv[2] : "tests/data/trained/tiny-llama-bytes";
  sq::log::set_level(sq::log::Level::warn);
  fs::remove_all(work);
  std::string table =
      "| model | scheme | method | KL mean | KL p99 | top-1 | ppl (FP ppl) |\n"
      "|---|---|---|---|---|---|---|\n";
  for (auto arch : {sq::io::Arch::llama, sq::io::Arch::opt}) {
    sq::model::SynthSpec spec;
    spec.arch = arch;
    spec.seed = 1;
    const auto dir = work / sq::io::arch_name(arch);
    const auto s = sq::model::write_synth_model(spec, (dir / "model").string());
    table += sq::pipeline::format_method_table(
        "synth-" + sq::io::arch_name(arch),
        sq::pipeline::compare_methods((dir / "model").string(), s.calib_tokens, s.eval_tokens,
                                      (dir / "runs").string()));
  }
  if (fs::exists(fs::path(trained) / "config.json"))
    table += sq::pipeline::format_method_table(
        "trained-bytes",
        sq::pipeline::compare_methods(trained, trained + "/calib.npy", trained + "/eval.npy",
                                      (work / "trained").string()));
  std::printf("%s", table.c_str());
  return 0;
}
