// `shardquant run RECIPE.yaml`: calibrate, transform and quantize a model as the recipe says,
// export it, and compare it with the FP model.
#include "core/log.h"
#include "io/recipe.h"
#include "pipeline/cli/commands.h"
#include "pipeline/runner.h"

namespace sq::cli {

void add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run",
                                 "Run a quantization recipe (YAML): calibration, "
                                 "smoothing, weight quantization, export, evaluation");
  auto path = std::make_shared<std::string>();
  cmd->add_option("RECIPE", *path, "Recipe file (see configs/*.yaml)")->required();
  cmd->callback([path] {
    const io::Recipe recipe = io::load_recipe(*path);
    pipeline::run_recipe(recipe);
  });
}

}  // namespace sq::cli
