#include "runtime/engine.h"

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "parallel/placement_file.h"
#include "runtime/step_builder.h"
#ifdef TRIDENT_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace trident {

std::unique_ptr<Backend> make_backend(const std::string& device, int device_index,
                                      double gpu_memory_fraction) {
  if (device == "cpu") return make_cpu_backend();
#ifdef TRIDENT_CUDA
  if (device == "cuda") return make_cuda_backend(device_index, gpu_memory_fraction);
  fail("unknown device '{}' (this build supports: cpu, cuda)", device);
#else
  if (device == "cuda")
    fail(
        "this trident was built without the CUDA backend (no CUDA toolkit or triton 3.6 when it "
        "was configured, or -DTRIDENT_CUDA=OFF); use --device cpu or rebuild");
  fail("unknown device '{}' (this build supports: cpu)", device);
#endif
}

namespace {

LoadOptions progress_options(bool show) {
  LoadOptions o;
  if (!show) return o;
  auto last = std::make_shared<int>(-1);
  o.progress = [last](uint64_t done, uint64_t total) {
    int pct = total ? int(done * 100 / total) : 100;
    if (pct / 10 != *last / 10) {
      spdlog::info("loading weights: {}% ({:.1f} of {:.1f} MB)", pct, done / 1e6, total / 1e6);
      *last = pct;
    }
  };
  return o;
}

}  // namespace

Engine::Engine(const EngineOptions& options)
    : backend_(make_backend(options.device, options.device_index, options.gpu_memory_fraction)),
      checkpoint_(Checkpoint::open(options.model_dir)) {
  ModelConfig config = ModelConfig::from_file(options.model_dir / "config.json");
  auto t0 = std::chrono::steady_clock::now();
  LoadOptions load = progress_options(options.show_progress);
  if (options.ranks) {
    ep_ = std::make_unique<ExpertParallel>(
        *options.ranks, *backend_, config,
        initial_placements(config, options.ranks->size(), options.redundant_experts,
                           options.expert_placement),
        options.expert_parallel);
    load.holds_expert = [ep = ep_.get()](int layer, int expert) {
      return ep->holds_expert(layer, expert);
    };
  }
  ModelWeights weights = load_weights(checkpoint_, config, *backend_, load);
  if (options.show_progress)
    spdlog::info("loaded {} in {:.2f} s", options.model_dir.string(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  max_context_ = options.max_context > 0 ? options.max_context
                                         : std::min(config.max_position_embeddings, 8192);
  TRI_CHECK(max_context_ <= config.max_position_embeddings,
            "max context {} exceeds the model's max_position_embeddings {}", max_context_,
            config.max_position_embeddings);
  model_ = std::make_unique<DeepseekV3>(std::move(config), std::move(weights), *backend_);
  model_->set_routed_experts_hook(ep_.get());
  if (ep_) ep_->wait_for_ranks_loaded();
  expert_load_ = std::make_unique<ExpertLoadBalancer>(
      *model_, *backend_, ep_.get(),
      [this](int layer, int expert) {
        return load_routed_expert(checkpoint_, model_->config(), *backend_, layer, expert);
      },
      options.eplb);
  const int graph_batch = options.decode_graph_max_batch;
  TRI_CHECK(graph_batch >= 0, "decode_graph_max_batch must be 0 or more, got {}", graph_batch);
  bool graphs = graph_batch > 0 && backend_->supports_graphs();
  if (graphs && ep_) {
    spdlog::info("decode graphs are off: expert-parallel steps exchange tokens through the host");
    graphs = false;
  }
  // The graphs' workspace is set aside first, as weights are: the KV pool gets what is left.
  int64_t graph_workspace = 0;
  if (graphs) {
    graph_workspace = measure_decode_graph_workspace(*model_, graph_batch, max_context_);
    backend_->reserve_graph_workspace(graph_workspace);
  }
  int pages = options.kv_pages;
  // The trial step of the memory plan runs the MoE layers, which across ranks would be a
  // collective only this rank joins: ranks size their pools from the options instead.
  if (pages == 0 && backend_->device_memory() && !ep_)
    pages = plan_kv_pages(options.max_step_tokens > 0 ? options.max_step_tokens : max_context_,
                          graph_workspace);
  if (pages == 0) pages = pages_for_tokens(max_context_, AttentionMeta::kPageSize);
  // With graphs, one page more than the pool hands out: padding rows of a graph's batch write
  // their latents there.
  cache_ = make_kv_cache(*backend_, model_->config(), pages + (graphs ? 1 : 0));
  pool_ = std::make_unique<KvPagePool>(pages);
  if (graphs)
    graphs_ = std::make_unique<DecodeGraphs>(
        *model_, cache_, DecodeGraphOptions{graph_batch, max_context_, pages});
  // Trial steps and captures above are no one's load.
  expert_load_->forget_counts();
}

int Engine::plan_kv_pages(int step_tokens, int64_t graph_workspace) {
  const ModelConfig& c = model_->config();
  step_tokens = std::min(step_tokens, max_context_);
  DeviceMemory before = *backend_->device_memory();
  // A trial prefill of one sequence of step_tokens tokens, with its own small cache, measures the
  // workspace a step needs; everything it allocated is freed when it returns.
  backend_->reset_memory_peak();
  {
    int trial_pages = pages_for_tokens(step_tokens, AttentionMeta::kPageSize);
    KvCache trial = make_kv_cache(*backend_, c, trial_pages);
    std::vector<int32_t> tokens(step_tokens, 0), pages(trial_pages);
    for (int p = 0; p < trial_pages; ++p) pages[p] = p;
    StepChunk chunk{&tokens, 0, step_tokens, &pages, true};
    StepInput in = upload_step(*backend_, build_step({chunk}));
    model_->forward(in, trial);
    backend_->synchronize();
  }
  DeviceMemory after = *backend_->device_memory();
  const int64_t page_bytes = kv_page_bytes(c, backend_->activation_dtype());
  // The step's workspace, plus 5% of the reservation for what one trial cannot see (different
  // batch shapes, allocator rounding).
  const int64_t workspace = after.peak_in_use - before.in_use;
  const int64_t margin = after.reserved / 20;
  // One page is the graphs' scratch page.
  const int64_t left =
      after.reserved - after.in_use - workspace - margin - (graph_workspace > 0 ? page_bytes : 0);
  TRI_CHECK(left >= page_bytes * pages_for_tokens(max_context_, AttentionMeta::kPageSize),
            "GPU memory plan: {:.2f} GB reserved, {:.2f} GB of weights, {:.2f} GB of workspace for "
            "a {}-token step leave {:.2f} GB, less than one {}-token sequence's KV cache; raise "
            "--gpu-memory-fraction or lower --max-context",
            after.reserved / 1e9, after.in_use / 1e9, workspace / 1e9, step_tokens,
            std::max<int64_t>(left, 0) / 1e9, max_context_);
  MemoryPlan plan;
  plan.reserved = after.reserved;
  plan.weights = after.in_use - graph_workspace;
  plan.graph_workspace = graph_workspace;
  plan.step_workspace = workspace;
  plan.kv_pages = int(std::min<int64_t>(left / page_bytes, 1 << 30));
  plan.kv = int64_t(plan.kv_pages) * page_bytes;
  spdlog::info(
      "GPU memory plan: {:.2f} GB reserved = {:.2f} GB weights + {:.2f} GB decode graph "
      "workspace + {:.2f} GB workspace ({}-token steps) + {:.2f} GB KV cache ({} pages, {} "
      "tokens) + {:.2f} GB margin",
      plan.reserved / 1e9, plan.weights / 1e9, graph_workspace / 1e9, workspace / 1e9,
      step_tokens, plan.kv / 1e9, plan.kv_pages, int64_t(plan.kv_pages) * AttentionMeta::kPageSize,
      (plan.reserved - plan.weights - graph_workspace - workspace - plan.kv) / 1e9);
  memory_plan_ = plan;
  return plan.kv_pages;
}

GenerateResult Engine::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                const std::function<bool(int32_t)>& on_token) {
  TRI_CHECK(!prompt.empty(), "the prompt is empty");
  TRI_CHECK(int(prompt.size()) < max_context_,
            "the prompt has {} tokens; the context holds {} (--max-context)", prompt.size(),
            max_context_);
  TRI_CHECK(options.max_new_tokens > 0, "max_new_tokens must be positive, got {}",
            options.max_new_tokens);
  const ModelConfig& c = model_->config();
  std::vector<int32_t> tokens = prompt, pages;
  Sampler sampler(options.sampling);
  GenerateResult result{{}, "length"};
  std::vector<float> logits(c.vocab_size);
  int cached = 0;
  struct PageGuard {
    KvPagePool& pool;
    std::vector<int32_t>& pages;
    ~PageGuard() { pool.release(pages); }
  } guard{*pool_, pages};

  bool finished = false;
  for (;;) {
    finished = finished || int(result.tokens.size()) >= options.max_new_tokens ||
               int(tokens.size()) >= max_context_;
    if (ep_) {
      if (!begin_ranked_step(finished ? 0 : int(tokens.size()) - cached, !finished)) break;
    } else if (finished) {
      break;
    }
    if (finished) continue;
    int need = pages_for_tokens(tokens.size(), AttentionMeta::kPageSize) - int(pages.size());
    TRI_CHECK(pool_->allocate(need, pages), "KV cache full: {} pages needed, {} free", need,
              pool_->free_pages());
    StepChunk chunk{&tokens, cached, int(tokens.size()) - cached, &pages, true};
    Tensor out = forward(build_step({chunk}));
    cached = int(tokens.size());
    int32_t next = 0;
    if (backend_->samples_on_device()) {
      // Only the token comes back, not the vocabulary's logits.
      const SamplingParams& p = options.sampling;
      const SampleRow row{p.temperature, p.top_k, p.top_p, p.seed, int64_t(result.tokens.size())};
      Tensor id = backend_->alloc(DType::I32, {1});
      backend_->sample(out, {&row, 1}, id);
      backend_->to_host(id, &next);
    } else {
      backend_->to_host(out, logits.data());
      next = sampler.sample(logits.data(), c.vocab_size).id;
    }
    result.tokens.push_back(next);
    tokens.push_back(next);
    bool eos = std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), next) != c.eos_token_ids.end();
    if ((on_token && !on_token(next)) || (eos && options.stop_at_eos)) {
      result.finish_reason = "stop";
      finished = true;
    }
  }
  return result;
}

Tensor Engine::forward(const StepInput& host_step) {
  Tensor logits;
  if (graphs_) logits = graphs_->run(host_step);
  if (!logits.defined()) logits = model_->forward(upload_step(*backend_, host_step), cache_);
  expert_load_->after_step();
  return logits;
}

void Engine::follow_other_ranks() {
  TRI_CHECK(ep_ != nullptr, "follow_other_ranks: this engine runs alone (no --ep ranks)");
  while (begin_ranked_step(0, false)) {
  }
}

bool Engine::begin_ranked_step(int tokens, bool has_work) {
  StepPlan plan = ep_->begin_step(tokens, has_work);
  if (plan.stop) return false;
  if (tokens == 0 && plan.total_tokens > 0) model_->idle_step();
  return true;
}

}  // namespace trident
