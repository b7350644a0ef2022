// The engine: a model loaded on a backend with its KV cache and page pool, and the simplest way
// to drive it, one request at a time. Continuous batching builds on the same pieces.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "cache/kv_page_pool.h"
#include "model/checkpoint.h"
#include "model/deepseek_v3.h"
#include "parallel/expert_load_balancer.h"
#include "parallel/expert_parallel.h"
#include "runtime/decode_graphs.h"
#include "runtime/sampler.h"

namespace trident {

struct EngineOptions {
  std::filesystem::path model_dir;
  std::string device = "cpu";
  int device_index = 0;  // which GPU (cuda)
  int max_context = 0;   // tokens per sequence; 0: min(max_position_embeddings, 8192)
  // KV pages. 0: on a device with a memory plan (cuda), every page that fits in the reservation
  // beside the weights and the workspace of a step of max_step_tokens; elsewhere, enough for one
  // sequence of max_context tokens.
  int kv_pages = 0;
  // GPU: the fraction of the device's memory Trident reserves at start (weights, KV, workspace).
  double gpu_memory_fraction = 0.9;
  // The most tokens one step will carry (the scheduler's budget); sizes the workspace that the
  // memory plan sets aside. 0: max_context.
  int max_step_tokens = 0;
  // Decode steps of up to this many sequences run as graphs, one per batch bucket, on backends
  // that have them (CUDA; not yet with expert parallelism). 0: every step runs op by op.
  int decode_graph_max_batch = 0;
  bool show_progress = false;
  // Expert parallelism: this run's ranks (null: this process holds every expert). Each rank loads
  // only its experts; every rank must then call generate or follow_other_ranks.
  Communicator* ranks = nullptr;
  ExpertParallelOptions expert_parallel;
  int redundant_experts = 0;
  // Where each rank's experts are (placement_file.h); empty: contiguous blocks, with
  // redundant_experts copies.
  std::filesystem::path expert_placement;
  // Expert load counting, its file, and rebalancing while running (expert_load_balancer.h).
  EplbOptions eplb;
};

// What the memory plan decided (cuda): logged at start and exported by the server.
struct MemoryPlan {
  // graph_workspace: what decode graphs' steps run in, set aside once (counted in weights' place:
  // held for the whole run).
  int64_t reserved = 0, weights = 0, graph_workspace = 0, step_workspace = 0, kv = 0;
  int kv_pages = 0;
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
  // Null where the backend plans no device memory (CPU).
  const std::optional<MemoryPlan>& memory_plan() const { return memory_plan_; }
  // Null when decode steps run op by op.
  const DecodeGraphs* decode_graphs() const { return graphs_.get(); }

  // Runs one step (host tensors, as build_step makes them): a decode step through its graph
  // where one takes it, any other op by op. Returns logits [L, vocab] f32 in backend memory,
  // valid until the next step.
  Tensor forward(const StepInput& host_step);

  // Runs one request to the end. on_token sees each new token and may return false to stop.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                          const std::function<bool(int32_t)>& on_token = {});
  // A rank without a request of its own: steps with the other ranks, serving its experts, until
  // none has work left.
  void follow_other_ranks();
  // Null with one rank.
  ExpertParallel* expert_parallel() { return ep_.get(); }
  // Expert load counts and, with ranks, rebalancing. Every rank calls its finish() when done.
  ExpertLoadBalancer& expert_load() { return *expert_load_; }

 private:
  // Expert parallelism: every rank starts each step together. False when no rank has work left;
  // a rank without tokens in this step runs the MoE exchanges for the others.
  bool begin_ranked_step(int tokens, bool has_work);
  // KV pages that fit in the device's reservation after a trial step of `step_tokens` tokens
  // measured the workspace a step needs.
  int plan_kv_pages(int step_tokens, int64_t graph_workspace);

  std::unique_ptr<Backend> backend_;
  Checkpoint checkpoint_;
  std::unique_ptr<ExpertParallel> ep_;
  std::unique_ptr<DeepseekV3> model_;
  KvCache cache_;
  std::unique_ptr<KvPagePool> pool_;
  std::unique_ptr<DecodeGraphs> graphs_;
  // After the model and expert parallelism, which it hooks into: it goes first.
  std::unique_ptr<ExpertLoadBalancer> expert_load_;
  int max_context_ = 0;
  std::optional<MemoryPlan> memory_plan_;
};

// "cpu", or "cuda" on GPU `device_index` with the memory plan's fraction.
std::unique_ptr<Backend> make_backend(const std::string& device, int device_index = 0,
                                      double gpu_memory_fraction = 0);


}  // namespace trident
