#include "runtime/engine.h"

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "runtime/step_builder.h"

namespace trident {

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  fail("unknown device '{}' (this build supports: cpu)", device);
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
    : backend_(make_backend(options.device)), checkpoint_(Checkpoint::open(options.model_dir)) {
  ModelConfig config = ModelConfig::from_file(options.model_dir / "config.json");
  auto t0 = std::chrono::steady_clock::now();
  LoadOptions load = progress_options(options.show_progress);
  if (options.ranks) {
    ep_ = std::make_unique<ExpertParallel>(
        *options.ranks, *backend_, config,
        contiguous_placements(config, options.ranks->size(), options.redundant_experts),
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
  int pages = options.kv_pages > 0 ? options.kv_pages
                                   : pages_for_tokens(max_context_, AttentionMeta::kPageSize);
  model_ = std::make_unique<DeepseekV3>(std::move(config), std::move(weights), *backend_);
  model_->set_routed_experts_hook(ep_.get());
  if (ep_) ep_->wait_for_ranks_loaded();
  cache_ = make_kv_cache(*backend_, model_->config(), pages);
  pool_ = std::make_unique<KvPagePool>(pages);
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
    StepInput in = upload_step(*backend_, build_step({chunk}));
    Tensor out = model_->forward(in, cache_);
    backend_->to_host(out, logits.data());
    cached = int(tokens.size());

    int32_t next = sampler.sample(logits.data(), c.vocab_size).id;
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
