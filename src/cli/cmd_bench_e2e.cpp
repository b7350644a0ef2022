// `trident bench e2e`: the whole model at a preset's dimensions (DeepSeek-V3 by default) with
// random FP8 weights made on the device, through decode and prefill batches with even and
// Zipf-skewed expert routing (runtime/e2e_bench.h). Prints a table; --out writes e2e.json,
// e2e.svg and e2e.md (the section for bench/RESULTS.md), --results appends that section to a
// file. With --ep N the ranks each run their own batch, the routed experts split over them.
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/e2e_report.h"
#include "cli/launcher.h"
#include "core/error.h"
#include "model/presets.h"
#include "runtime/e2e_bench.h"

namespace trident::cli {

namespace {

struct BenchE2eArgs {
  E2eOptions options;
  std::vector<std::string> routings;  // empty: both
  std::string out;
  std::string results;
  std::string commit = "unknown";
  std::string cuda_graphs = "on";
  ParallelArgs parallel;
};

std::string utc_date() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", &tm);
  return buf;
}

void write_file(const std::filesystem::path& path, const std::string& text, bool append) {
  std::ofstream f(path, append ? std::ios::app : std::ios::trunc);
  TRI_CHECK(f.good(), "cannot write {}", path.string());
  f << text;
  TRI_CHECK(f.good(), "writing {} failed", path.string());
}

void report(const E2eReport& r, const BenchE2eArgs& a) {
  const RunInfo info{a.commit, utc_date()};
  const std::string md = e2e_markdown(r, info);
  std::fputs(md.c_str(), stdout);
  std::fflush(stdout);
  if (!a.out.empty()) {
    std::filesystem::create_directories(a.out);
    const std::filesystem::path dir(a.out);
    write_file(dir / "e2e.json", e2e_json(r, info).dump(2) + "\n", false);
    write_file(dir / "e2e.svg", e2e_svg(r), false);
    write_file(dir / "e2e.md", md, false);
  }
  if (!a.results.empty()) write_file(a.results, "\n" + md, true);
}

void run(BenchE2eArgs& a) {
  for (const std::string& name : a.routings) a.options.routings.push_back(parse_routing_kind(name));
  std::unique_ptr<RankGroup> ranks = start_ranks(a.parallel, a.options.device);
  if (!ranks) {
    report(run_e2e_bench(a.options), a);
    return;
  }
  a.options.ranks = &ranks->comm();
  a.options.device_index = ranks->info().local_rank;
  a.options.expert_parallel = a.parallel.options();
  try {
    E2eReport r = run_e2e_bench(a.options);
    if (ranks->info().rank == 0) report(r, a);
  } catch (const std::exception& e) {
    ranks->abort(e.what());
  }
}

}  // namespace

void register_bench_e2e(CLI::App& app) {
  CLI::App* bench = &bench_command(app);
  auto args = std::make_shared<BenchE2eArgs>();
  E2eOptions& o = args->options;
  o.routings.clear();
#ifdef TRIDENT_CUDA
  o.device = "cuda";
#endif
  CLI::App* cmd = bench->add_subcommand(
      "e2e",
      "Time the whole model at a preset's dimensions with random FP8 weights: decode and "
      "prefill steps, stage split, roofline floor");
  cmd->add_option("--preset", o.preset, "Model shape: deepseek-v3 or tiny (models/trident-tiny's)")
      ->check(CLI::IsMember(preset_names()));
  cmd->add_option("--device", o.device, "cpu or cuda (default: cuda where built with it)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--layers", o.layers,
                  "Decoder layers to build, dense first (0: as many as the GPU memory plan holds; "
                  "on the CPU the preset's count)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--decode-batches", o.decode_batches, "Decode requests per GPU, one case each")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  cmd->add_option("--prefill-tokens", o.prefill_tokens,
                  "Prefill tokens per step per GPU, one case each (whole prompts of --context "
                  "tokens, as many as fit)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  cmd->add_option("--context", o.context, "Tokens cached per decode request; prompt length")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--routing", args->routings, "Expert routing: uniform, zipf, or both")
      ->delimiter(',')
      ->check(CLI::IsMember({"uniform", "zipf"}));
  cmd->add_option("--zipf-s", o.zipf_s, "Exponent of the Zipf routing's target load")
      ->check(CLI::Range(0.0, 4.0));
  cmd->add_option("--steps", o.steps, "Timed steps per case")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o.warmup, "Untimed steps before them")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--steering-iterations", o.steering_iterations,
                  "Iterations steering the router's bias toward the target load")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--steering-tokens", o.steering_tokens, "Tokens counted per steering iteration")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o.seed, "Seed of the weights, tokens and Zipf orders");
  cmd->add_option("--cuda-graphs", args->cuda_graphs,
                  "Time decode steps as CUDA graph replays too (on a GPU, one rank): on or off")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--moe-down", o.moe_down,
                  "Routed experts' down-projection kernel, kernel/variant (e.g. "
                  "moe_down/fp8_m64n128_w4s3), in place of the default by rows per expert");
  cmd->add_option("--gpu-memory-fraction", o.gpu_memory_fraction,
                  "Fraction of the GPU's memory to reserve at start")
      ->check(CLI::Range(0.01, 1.0));
  cmd->add_option("--out", args->out, "Folder for e2e.json, e2e.svg and e2e.md");
  cmd->add_option("--results", args->results,
                  "Append the Markdown section to this file (e.g. bench/RESULTS.md)");
  cmd->add_option("--commit", args->commit, "Commit the results are of, for the section's title");
  add_parallel_options(*cmd, args->parallel);
  cmd->callback([args] {
    if (args->routings.empty()) args->routings = {"uniform", "zipf"};
    args->options.cuda_graphs = args->cuda_graphs == "on";
    run(*args);
  });
}

}  // namespace trident::cli
