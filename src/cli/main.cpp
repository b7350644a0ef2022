// trident: the command line. Subcommands each live in their own file (cmd_*.cpp) and register
// themselves here.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"trident: an inference engine for DeepSeek-V3-architecture models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "trident 0.1.0");
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");
  spdlog::set_default_logger(spdlog::stderr_color_mt("trident"));
  spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");

  trident::cli::register_generate(app);
  trident::cli::register_serve(app);
  trident::cli::register_bench_serve(app);
  trident::cli::register_bench_e2e(app);
  trident::cli::register_eval(app);
  trident::cli::register_eplb(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const trident::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
