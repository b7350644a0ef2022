// The engine: a model loaded on a backend with its KV cache and page pool, and the simplest way
// to drive it, one request at a time. Continuous batching builds on the same pieces.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cache/kv_page_pool.h"
#include "model/checkpoint.h"
#include "model/deepseek_v3.h"
#include "parallel/expert_parallel.h"
#include "runtime/sampler.h"

namespace trident {

struct EngineOptions {
  std::filesystem::path model_dir;
  std::string device = "cpu";
  int max_context = 0;  // tokens per sequence; 0: min(max_position_embeddings, 8192)
  int kv_pages = 0;     // 0: enough for one sequence of max_context tokens
  bool show_progress = false;
  // Expert parallelism: this run's ranks (null: this process holds every expert). Each rank loads
  // only its experts; every rank must then call generate or follow_other_ranks.
  Communicator* ranks = nullptr;
  ExpertParallelOptions expert_parallel;
  int redundant_experts = 0;
};

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // new tokens only
  std::string finish_reason;    // "stop" (EOS or callback) or "length"
};

class Engine {
 public:
  explicit Engine(const EngineOptions& options);

  const ModelConfig& config() const { return model_->config(); }
  int max_context() const { return max_context_; }
  DeepseekV3& model() { return *model_; }
  Backend& backend() { return *backend_; }
  KvPagePool& pool() { return *pool_; }
  KvCache& cache() { return cache_; }

  // Runs one request to the end. on_token sees each new token and may return false to stop.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                          const std::function<bool(int32_t)>& on_token = {});
  // A rank without a request of its own: steps with the other ranks, serving its experts, until
  // none has work left.
  void follow_other_ranks();
  // Null with one rank.
  ExpertParallel* expert_parallel() { return ep_.get(); }

 private:
  // Expert parallelism: every rank starts each step together. False when no rank has work left;
  // a rank without tokens in this step runs the MoE exchanges for the others.
  bool begin_ranked_step(int tokens, bool has_work);

  std::unique_ptr<Backend> backend_;
  Checkpoint checkpoint_;
  std::unique_ptr<ExpertParallel> ep_;
  std::unique_ptr<DeepseekV3> model_;
  KvCache cache_;
  std::unique_ptr<KvPagePool> pool_;
  int max_context_ = 0;
};

std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace trident
