// `trident eval`: perplexity of a model on a text file, comparable with
// tools/perplexity_reference.py (transformers on the same tokens).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "runtime/engine.h"
#include "runtime/perplexity.h"
#include "serve/tokenizer.h"

namespace trident::cli {

namespace {

struct EvalArgs {
  std::string model;
  std::string text;
  std::string device = "cpu";
  PerplexityOptions perplexity;
  double gpu_memory_fraction = 0.9;
  bool json = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRI_CHECK(in.good(), "cannot read the text file {}", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void run_eval(const EvalArgs& a) {
  Tokenizer tokenizer = Tokenizer::from_dir(a.model);
  std::vector<int32_t> stream = tokenizer.encode(read_text(a.text));
  EngineOptions eo;
  eo.model_dir = a.model;
  eo.device = a.device;
  eo.max_context = a.perplexity.window + 1;
  eo.kv_pages = perplexity_kv_pages(a.perplexity);
  eo.gpu_memory_fraction = a.gpu_memory_fraction;
  eo.show_progress = !a.json;
  Engine engine(eo);

  auto t0 = std::chrono::steady_clock::now();
  int last_pct = -1;
  PerplexityResult r = score_perplexity(
      engine, stream, tokenizer.bos_id(), a.perplexity, [&](int done, int total) {
        int pct = done * 100 / total;
        if (!a.json && pct / 10 != last_pct / 10) {
          spdlog::info("scored {} of {} windows", done, total);
          last_pct = pct;
        }
      });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.json) {
    nlohmann::json j = {{"model", a.model},          {"text", a.text},
                        {"device", a.device},        {"window", a.perplexity.window},
                        {"windows", r.windows},      {"tokens", r.tokens},
                        {"nll_sum", r.nll_sum},      {"perplexity", r.perplexity()},
                        {"seconds", seconds}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("perplexity %.4f over %lld tokens (%d windows of up to %d) in %.2f s, %.0f tok/s\n",
                r.perplexity(), static_cast<long long>(r.tokens), r.windows, a.perplexity.window,
                seconds, r.tokens / seconds);
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Perplexity of a model on a text file (windows of tokens, each after BOS)");
  cmd->add_option("--model,-m", args->model, "Model directory (HuggingFace layout)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--text", args->text, "UTF-8 text file to score")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--device", args->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--window", args->perplexity.window, "Tokens scored per window")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--max-windows", args->perplexity.max_windows,
                  "Score only the first N windows; 0 scores the whole text")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", args->perplexity.windows_per_step, "Windows per forward step")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--gpu-memory-fraction", args->gpu_memory_fraction,
                  "Fraction of the GPU's memory to reserve at start")
      ->check(CLI::Range(0.01, 1.0));
  cmd->add_flag("--json", args->json, "Print the result as JSON");
  cmd->callback([args] { run_eval(*args); });
}

}  // namespace trident::cli
