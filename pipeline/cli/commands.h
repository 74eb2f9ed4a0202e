// Subcommands of the `shardquant` binary. Each add_* registers its options and handler.
#pragma once

#include <CLI/CLI.hpp>

namespace sq::cli {

void add_synth_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_plan_command(CLI::App& app);

// Shared helpers.
void set_threads(int threads);  // BLAS threads; 0 keeps the library default
std::string format_bytes(double bytes);

}  // namespace sq::cli
