// `shardquant run RECIPE.yaml` / `shardquant run --resume RUN_DIR [RECIPE.yaml]`: calibrate,
// transform and quantize a model as the recipe says on every rank of the MPI job, export it, and
// compare it with the FP model.
#include <memory>
#include <string>

#include "core/error.h"
#include "io/recipe.h"
#include "pipeline/cli/commands.h"
#if SQ_WITH_MPI
#include "pipeline/run_state.h"
#include "pipeline/runner.h"
#endif

namespace sq::cli {

void add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "run",
      "Run a quantization recipe (YAML) on every rank of the job (mpirun/srun): calibration, "
      "smoothing, weight quantization, checkpoints, export, evaluation");
  struct Options {
    std::string recipe, resume, output;
    int replicas = 0;
    long long chunk_bytes = 0;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("RECIPE", o->recipe,
                  "Recipe file (see configs/*.yaml); with --resume, optional: checked against "
                  "the run's");
  cmd->add_option("--resume", o->resume,
                  "Continue the run in this directory (any rank count): finished (block, stage) "
                  "units are kept, corrupt or missing ones recomputed");
  cmd->add_option("--output", o->output,
                  "Run directory of a new run, instead of the recipe's output (the recipe's "
                  "hash does not include it)");
  cmd->add_option("--replicas", o->replicas,
                  "Data-parallel replicas (ranks = pipeline stages x replicas); default: as "
                  "many pipeline stages as blocks allow")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--mpi-chunk-bytes", o->chunk_bytes,
                  "Largest MPI message in bytes (0: MPI's limit); for testing large transfers")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o] {
#if SQ_WITH_MPI
    if (o->recipe.empty() && o->resume.empty()) fail("run: give a RECIPE or --resume RUN_DIR");
    const std::string recipe_file =
        o->recipe.empty() ? pipeline::RunDirectory::recorded_recipe(o->resume) : o->recipe;
    const io::Recipe recipe = io::load_recipe(recipe_file);
    pipeline::run_recipe(recipe, {.resume_dir = o->resume,
                                  .output_dir = o->output,
                                  .replicas = o->replicas,
                                  .chunk_bytes = o->chunk_bytes});
#else
    fail("run: this build has no MPI/HDF5 (configured with SQ_DISTRIBUTED=OFF)");
#endif
  });
}

}  // namespace sq::cli
