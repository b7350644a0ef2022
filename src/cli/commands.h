#pragma once

#include <CLI/CLI.hpp>

namespace trident::cli {

// Each adds a subcommand whose callback runs it; errors propagate as trident::Error.
void register_generate(CLI::App& app);
void register_serve(CLI::App& app);
void register_bench_serve(CLI::App& app);
void register_bench_e2e(CLI::App& app);
void register_eval(CLI::App& app);
void register_eplb(CLI::App& app);

// `trident bench`, which holds the benchmarks as its subcommands: made by the first to ask.
CLI::App& bench_command(CLI::App& app);

}  // namespace trident::cli
