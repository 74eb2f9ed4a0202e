// shardquant: post-training quantization of very large LLMs on HPC clusters.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "core/error.h"
#include "core/log.h"
#include "pipeline/cli/commands.h"
#if SQ_WITH_MPI
#include "pipeline/runner.h"
#endif

int main(int argc, char** argv) {
  CLI::App app{"ShardQuant: post-training quantization of large language models on HPC clusters"};
  app.require_subcommand(1);
  std::string level = "info";
  app.add_option("--log-level", level, "debug, info, warn or error")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
  app.parse_complete_callback([&] {
    using sq::log::Level;
    sq::log::set_level(level == "debug"   ? Level::debug
                       : level == "warn"  ? Level::warn
                       : level == "error" ? Level::error
                                          : Level::info);
  });
  sq::cli::add_run_command(app);
  sq::cli::add_plan_command(app);
  sq::cli::add_synth_command(app);
  sq::cli::add_eval_command(app);
  sq::cli::add_inspect_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
#if SQ_WITH_MPI
  } catch (const sq::pipeline::Stopped&) {
    return 1;  // another rank failed and reported why
  } catch (const sq::pipeline::Interrupted&) {
    return 3;  // stopped on a signal, checkpoints consistent: resume with --resume
#endif
  } catch (const sq::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
