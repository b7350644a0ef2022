// `trident generate`: one prompt in, streamed text out.
#include <chrono>
#include <cstdio>
#include <memory>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/launcher.h"
#include "core/error.h"
#include "runtime/engine.h"
#include "serve/chat_template.h"
#include "serve/tokenizer.h"

namespace trident::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  std::string device = "cpu";
  bool chat = false;
  std::string system;
  int max_new_tokens = 128;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  int max_context = 0;
  double gpu_memory_fraction = 0.9;
  bool disable_cuda_graphs = false;
  bool ignore_eos = false;
  bool stats = false;
  ParallelArgs parallel;
};

void generate_text(const GenerateArgs& a, const EngineOptions& eo) {
  Tokenizer tokenizer = Tokenizer::from_dir(a.model);
  std::string text = a.prompt;
  if (a.chat) {
    std::vector<ChatMessage> messages;
    if (!a.system.empty()) messages.push_back({"system", a.system});
    messages.push_back({"user", a.prompt});
    text = ChatTemplate::from_dir(a.model).render(messages, true);
  }
  std::vector<int32_t> prompt = tokenizer.encode(text);
  // Plain prompts start with BOS, as the chat template's output does.
  if (!a.chat && tokenizer.bos_id() >= 0) prompt.insert(prompt.begin(), tokenizer.bos_id());

  Engine engine(eo);
  GenerateOptions go;
  go.max_new_tokens = a.max_new_tokens;
  go.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  go.stop_at_eos = !a.ignore_eos;

  StreamDecoder stream(tokenizer);
  if (!a.chat) std::fputs(a.prompt.c_str(), stdout);
  auto t0 = std::chrono::steady_clock::now();
  GenerateResult r = engine.generate(prompt, go, [&](int32_t id) {
    if (!tokenizer.is_special(id)) std::fputs(stream.push(id).c_str(), stdout);
    std::fflush(stdout);
    return true;
  });
  std::fputs(stream.finish().c_str(), stdout);
  std::fputs("\n", stdout);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.stats)
    spdlog::info("{} prompt tokens, {} new tokens in {:.2f} s ({:.1f} tok/s), finish: {}",
                 prompt.size(), r.tokens.size(), s, r.tokens.size() / s, r.finish_reason);
  engine.expert_load().finish();
  if (ExpertParallel* ep = engine.expert_parallel()) ep->finish();
}

void run_generate(const GenerateArgs& a) {
  std::unique_ptr<RankGroup> ranks = start_ranks(a.parallel, a.device);
  EngineOptions eo;
  eo.model_dir = a.model;
  eo.device = a.device;
  eo.max_context = a.max_context;
  eo.gpu_memory_fraction = a.gpu_memory_fraction;
  eo.decode_graph_max_batch = a.disable_cuda_graphs ? 0 : 1;
  eo.show_progress = true;
  eo.expert_placement = a.parallel.expert_placement;
  eo.eplb = a.parallel.eplb();
  if (!ranks) {
    generate_text(a, eo);
    return;
  }
  // Rank 0 runs the prompt; the other ranks serve their experts until it is done. Any rank's
  // error stops them all, naming the rank.
  eo.ranks = &ranks->comm();
  eo.device_index = ranks->info().local_rank;
  eo.expert_parallel = a.parallel.options();
  eo.redundant_experts = a.parallel.redundant_experts;
  try {
    if (ranks->info().rank == 0) {
      generate_text(a, eo);
    } else {
      Engine engine(eo);
      engine.follow_other_ranks();
      engine.expert_load().finish();
      engine.expert_parallel()->finish();
    }
  } catch (const std::exception& e) {
    ranks->abort(e.what());
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  cmd->add_option("--model,-m", args->model, "Model directory (HuggingFace layout)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt,-p", args->prompt, "Prompt text")->required();
  cmd->add_option("--device", args->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_flag("--chat", args->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", args->system, "System prompt (with --chat)");
  cmd->add_option("--max-new-tokens,-n", args->max_new_tokens, "Tokens to generate at most")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature,-t", args->temperature, "Sampling temperature; 0 is greedy")
      ->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", args->top_k, "Keep the k most likely tokens; 0 keeps all")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", args->top_p, "Keep the smallest set of tokens with this mass")
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", args->seed, "Sampling seed");
  cmd->add_option("--max-context", args->max_context, "Context length in tokens (0: model's, up to 8192)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--gpu-memory-fraction", args->gpu_memory_fraction,
                  "Fraction of the GPU's memory to reserve at start (weights, KV cache, workspace)")
      ->check(CLI::Range(0.01, 1.0));
  cmd->add_flag("--disable-cuda-graphs", args->disable_cuda_graphs,
                "Run decode steps op by op instead of as CUDA graphs (cuda)");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past the end-of-sequence token");
  cmd->add_flag("--stats", args->stats, "Print token counts and speed to stderr");
  add_parallel_options(*cmd, args->parallel);
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace trident::cli
