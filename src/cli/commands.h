#pragma once

#include <CLI/CLI.hpp>

namespace trident::cli {

// Each adds a subcommand whose callback runs it; errors propagate as trident::Error.
void register_generate(CLI::App& app);

}  // namespace trident::cli
