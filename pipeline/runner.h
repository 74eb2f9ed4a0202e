// Runs a recipe on the process's MPI world (one rank or many; pipeline/partition.h decides who
// owns what): the calibration set's hidden states flow block by block and rank to rank; at each
// block the recipe's stages run in order (calibrate, smoothquant / os_plus, quantize_weights),
// each finished (block, stage) unit checkpointed in the run directory (pipeline/run_state.h);
// then rank 0 exports the quantized model and compares it with the FP model. The export is
// byte-identical whatever the rank count, replica count or resume.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/recipe.h"
#include "model/evaluate.h"
#include "pipeline/evaluation_io.h"

namespace sq::pipeline {

struct RunSummary {
  std::string export_dir;    // empty when the recipe exports nothing
  std::string metrics_file;  // empty without evaluation tokens
  bool evaluated = false;
  model::Comparison comparison;
};

struct RunOptions {
  std::string resume_dir;        // continue this run directory; empty: a new run
  std::string output_dir;        // a new run's directory instead of the recipe's output
  int replicas = 0;              // data-parallel replicas; 0: Partition::default_replicas
  std::int64_t chunk_bytes = 0;  // largest MPI message; 0: MPI's own limit (lowered by tests)
};

// Thrown on the ranks that did not fail when another rank's error, reported by that rank, stops
// the run before any work started (every rank then exits non-zero, one error line in the log).
class Stopped : public std::exception {
 public:
  const char* what() const noexcept override { return "stopped: another rank failed"; }
};

// Thrown on every rank when the run stopped early on a signal (pipeline/stop.h): what finished
// is checkpointed; `--resume` continues. The command exits with kStoppedExitCode (3).
class Interrupted : public std::exception {
 public:
  const char* what() const noexcept override { return "stopped before the end; resume it"; }
};

// Collective over the process's MPI world. With more than one rank, an error once work started
// ends the whole job (pipeline::abort_all) with "error: rank K: ..." rather than returning.
RunSummary run_recipe(const io::Recipe& recipe, const RunOptions& options = {});

}  // namespace sq::pipeline
