// `trident serve`: the OpenAI-compatible HTTP server on one model. With `--ep N` the model runs on
// N ranks: routed experts split over them, attention data parallel; rank 0 serves HTTP and gives
// each request to the least loaded rank (runtime/serving_engine.h).
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/launcher.h"
#include "core/error.h"
#include "model/config.h"
#include "parallel/rank_info.h"
#include "runtime/engine.h"
#include "runtime/serving_engine.h"
#include "serve/chat_template.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "serve/stats_log.h"
#include "serve/tokenizer.h"

namespace trident::cli {

namespace {

struct ServeArgs {
  std::string model;
  std::string device = "cpu";
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string api_key;
  std::string served_model_name;
  int max_context = 0;
  int kv_pages = 0;
  double gpu_memory_fraction = 0.9;
  int max_running = 64;
  int cuda_graph_max_batch = -1;  // -1: max_running
  bool disable_cuda_graphs = false;
  int step_tokens = 512;
  int max_requests = 256;
  double max_queue_s = 600;
  int max_tokens_limit = 0;
  size_t max_body_bytes = 4 << 20;
  bool no_prefix_cache = false;
  double log_stats_s = 10;
  ParallelArgs parallel;
};

// The directory's own name, as clients will ask for the model.
std::string model_name_of(const std::string& dir) {
  std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

void serve(const ServeArgs& a, const sigset_t& stop_signals, RankGroup* ranks);

void run_serve(const ServeArgs& a) {
  // SIGINT and SIGTERM go to one thread that stops the server; every thread started from here
  // on (MPI's included) inherits the mask. Ranks other than 0 leave the signals pending: rank 0
  // stops them all. `--ep N` outside mpirun replaces this process by mpirun, which must not
  // inherit the mask: it stops the ranks on a signal. A client that goes away must not kill the
  // server with SIGPIPE.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  if (started_by_mpi_launcher() || a.parallel.ep <= 1)
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::unique_ptr<RankGroup> ranks = start_ranks(a.parallel, a.device);
  if (!ranks) {
    serve(a, stop_signals, nullptr);
    return;
  }
  // Any rank's error stops them all, naming the rank.
  try {
    serve(a, stop_signals, ranks.get());
  } catch (const std::exception& e) {
    ranks->abort(e.what());
  }
}

void serve(const ServeArgs& a, const sigset_t& stop_signals, RankGroup* ranks) {
  Tokenizer tokenizer = Tokenizer::from_dir(a.model);
  std::unique_ptr<ChatTemplate> chat;
  try {
    chat = std::make_unique<ChatTemplate>(ChatTemplate::from_dir(a.model));
  } catch (const Error& e) {
    spdlog::warn("no chat template, /v1/chat/completions is off: {}", e.what());
  }

  EngineOptions eo;
  eo.model_dir = a.model;
  eo.device = a.device;
  eo.max_context = a.max_context;
  eo.gpu_memory_fraction = a.gpu_memory_fraction;
  eo.max_step_tokens = a.step_tokens;
  eo.decode_graph_max_batch = a.disable_cuda_graphs          ? 0
                              : a.cuda_graph_max_batch < 0 ? a.max_running
                                                           : a.cuda_graph_max_batch;
  eo.show_progress = true;
  eo.expert_placement = a.parallel.expert_placement;
  eo.eplb = a.parallel.eplb();
  // The pool holds every request's pages. On one GPU the memory plan gives it what the weights
  // and a step's workspace leave; elsewhere it has 256 pages (16k tokens), or one full context if
  // that is more (the context as EngineOptions::max_context picks it).
  const ModelConfig config = ModelConfig::from_file(std::filesystem::path(a.model) / "config.json");
  const int context =
      a.max_context > 0 ? a.max_context : std::min(config.max_position_embeddings, 8192);
  const int context_pages = pages_for_tokens(context, KvPagePool::kPageSize);
  const bool planned = a.device == "cuda" && !ranks;
  eo.kv_pages = a.kv_pages > 0 ? a.kv_pages : planned ? 0 : std::max(256, context_pages);
  TRI_CHECK(eo.kv_pages == 0 || eo.kv_pages >= context_pages,
            "--kv-pages {} holds {} tokens, fewer than one {}-token context: give at least {} "
            "pages or lower --max-context",
            eo.kv_pages, eo.kv_pages * KvPagePool::kPageSize, context, context_pages);
  if (ranks) {
    eo.ranks = &ranks->comm();
    eo.device_index = ranks->info().local_rank;
    eo.expert_parallel = a.parallel.options();
    eo.redundant_experts = a.parallel.redundant_experts;
  }
  Engine engine(eo);

  ServingOptions so;
  so.scheduler.max_context = engine.max_context();
  so.scheduler.max_running = a.max_running;
  so.scheduler.step_tokens = a.step_tokens;
  so.scheduler.prefix_cache = !a.no_prefix_cache;
  so.max_requests = a.max_requests;
  so.max_queue_wait = std::chrono::duration<double>(a.max_queue_s);
  for (int id : engine.config().eos_token_ids) so.eos_token_ids.push_back(id);
  if (tokenizer.eos_id() >= 0) so.eos_token_ids.push_back(tokenizer.eos_id());
  if (ranks) {
    so.ranks = &ranks->comm();
    so.on_group_failure = [ranks](const std::string& why) { ranks->abort(why); };
  }

  EngineStepModel model(engine);
  ServingEngine serving(model, engine.pool(), so);
  if (ranks && ranks->info().rank != 0) {
    // Serves what rank 0 gives it until rank 0 stops the group.
    serving.join();
    engine.expert_load().finish();
    engine.expert_parallel()->finish();
    return;
  }
  ServerMetrics metrics;
  ExpertLoadBalancer& expert_load = engine.expert_load();
  metrics.set_expert_load([&expert_load] { return expert_load.summary(); });
  StatsLog stats_log(serving, std::chrono::duration<double>(a.log_stats_s));
  HttpServerOptions ho;
  ho.host = a.host;
  ho.port = a.port;
  ho.api_key = a.api_key;
  ho.model_name = a.served_model_name.empty() ? model_name_of(a.model) : a.served_model_name;
  ho.max_body_bytes = a.max_body_bytes;
  ho.max_tokens_limit = a.max_tokens_limit;
  ho.expert_load_json = [&expert_load] { return expert_load.totals().to_json().dump(); };
  ho.rebalance_experts = [&expert_load] { return expert_load.request_rebalance(); };
  HttpServer http(serving, tokenizer, chat.get(), engine.config().vocab_size, metrics, ho);
  const int port = http.bind();

  std::atomic<bool> stopping{false}, served{false};
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (!stopping.exchange(true))
      spdlog::info("{}: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    serving.stop();
    // A signal can come before the server runs, when stop() would not reach it: repeat.
    while (!served) {
      http.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  spdlog::info("serving '{}' ({}-token context, {} KV pages{}, up to {} requests at once{})",
               ho.model_name, engine.max_context(), engine.pool().total_pages(),
               ranks ? fmt::format(" on each of {} ranks", ranks->info().size) : "",
               a.max_requests, a.api_key.empty() ? "" : ", API key required");
  std::printf("listening on http://%s:%d\n", a.host.c_str(), port);
  std::fflush(stdout);
  http.run();
  served = true;
  // Stopped by a signal, or the server gave up on its own: the stopper ends the engine either way.
  if (!stopping.exchange(true)) pthread_kill(stopper.native_handle(), SIGTERM);
  stopper.join();
  engine.expert_load().finish();
  if (ranks) engine.expert_parallel()->finish();
}

}  // namespace

void register_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API");
  cmd->add_option("--model,-m", args->model, "Model directory (HuggingFace layout, with tokenizer)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--host", args->host,
                  "Address to listen on (default 127.0.0.1: this machine only)");
  cmd->add_option("--port,-p", args->port, "Port to listen on; 0 picks a free one")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", args->api_key, "Require 'Authorization: Bearer KEY' on /v1/*");
  cmd->add_option("--served-model-name", args->served_model_name,
                  "Model name clients use (default: the model directory's name)");
  cmd->add_option("--device", args->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--max-context", args->max_context,
                  "Tokens per request, prompt and completion (0: model's, up to 8192)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--kv-pages", args->kv_pages,
                  "KV cache pages of 64 tokens for all requests (0: on one GPU, all the memory "
                  "plan leaves; elsewhere 256, at least one context)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--gpu-memory-fraction", args->gpu_memory_fraction,
                  "Fraction of the GPU's memory to reserve at start (weights, KV cache, workspace)")
      ->check(CLI::Range(0.01, 1.0));
  cmd->add_option("--cuda-graph-max-batch", args->cuda_graph_max_batch,
                  "Decode batches up to this size run as CUDA graphs, one per batch bucket "
                  "(cuda; default --max-running)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--disable-cuda-graphs", args->disable_cuda_graphs,
                "Run decode steps op by op instead of as CUDA graphs (cuda)");
  cmd->add_option("--max-running", args->max_running, "Requests in one batch at most")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--step-tokens", args->step_tokens,
                  "Tokens in one step at most (decodes plus prefill chunks)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-requests", args->max_requests,
                  "Requests accepted at once (running and queued); more get 429")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-queue-seconds", args->max_queue_s,
                  "Seconds a request may wait to start; one that waited longer gets 503 (0: no "
                  "limit)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-tokens-limit", args->max_tokens_limit,
                  "Largest max_tokens a request may ask for (0: the context length)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-body-bytes", args->max_body_bytes, "Largest request body; larger get 413")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--no-prefix-cache", args->no_prefix_cache,
                "Compute every prompt in full instead of reusing cached prefixes");
  cmd->add_option("--log-stats", args->log_stats_s,
                  "Seconds between log lines of throughput, queue, KV use and cache hits while "
                  "busy (0: none)")
      ->check(CLI::NonNegativeNumber);
  add_parallel_options(*cmd, args->parallel);
  cmd->callback([args] { run_serve(*args); });
}

}  // namespace trident::cli
