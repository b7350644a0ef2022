// What `trident bench e2e` writes: its report as JSON, as a Markdown section for
// bench/RESULTS.md (setup, ceilings, one row per case, stage split against each stage's floor,
// routing figures), and as an SVG plot of tokens per second per GPU against batch size, drawn
// here without a plotting library.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "runtime/e2e_bench.h"

namespace trident::cli {

struct RunInfo {
  std::string commit;  // what the results are of
  std::string date;    // YYYY-MM-DD, UTC
};

nlohmann::json e2e_json(const E2eReport& report, const RunInfo& info);
std::string e2e_markdown(const E2eReport& report, const RunInfo& info);
std::string e2e_svg(const E2eReport& report);

}  // namespace trident::cli
