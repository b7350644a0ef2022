// The DeepSeek-V3 forward pass (MLA attention, DeepSeekMoE), written once against Backend's ops.
// One call runs one step of a batch that may mix prefills, chunked prefills and decodes.
#pragma once

#include <vector>

#include "backend/backend.h"
#include "backend/stage_timer.h"
#include "model/config.h"
#include "model/step.h"
#include "model/weights.h"

namespace trident {

// Bytes of one KV page across every layer: what each page of the pool costs.
int64_t kv_page_bytes(const ModelConfig& config, DType dtype);
KvCache make_kv_cache(Backend& backend, const ModelConfig& config, int n_pages);

// Runs the routed experts of MoE layers whose experts are spread over ranks (src/parallel).
// Every rank calls it for every MoE layer of every step, in layer order, even with no tokens.
class RoutedExpertsHook {
 public:
  virtual ~RoutedExpertsHook() = default;
  // As Backend::moe_experts, with the experts held here; on a rank with no tokens x, topk_ids,
  // topk_weights and out are undefined.
  virtual void moe_experts(int layer, const Tensor& x, const Tensor& topk_ids,
                           const Tensor& topk_weights, const ExpertWeights& experts,
                           Tensor& out) = 0;
};

class DeepseekV3 {
 public:
  DeepseekV3(ModelConfig config, ModelWeights weights, Backend& backend);

  // Writes the new tokens' latents into `cache` and returns logits [L, vocab] f32 in backend
  // memory, valid until the next call.
  Tensor forward(const StepInput& in, KvCache& cache);

  // Expert parallelism: routed experts run through `hook` (null, the default: all are here).
  void set_routed_experts_hook(RoutedExpertsHook* hook) { experts_hook_ = hook; }
  // Benchmarks: marks where each stage of forward begins (null, the default: no marks).
  void set_stage_timer(StageTimer* timer) { timer_ = timer; }
  // Expert load: every MoE layer adds its gate's choices to row `layer` of `counts` (i64
  // [layers, routed experts], backend memory; undefined, the default: nothing is counted).
  void set_expert_counts(Tensor counts) { expert_counts_ = std::move(counts); }
  // The routed experts of MoE layer `layer` held here, which the expert load balancer replaces
  // between steps.
  ExpertWeights& routed_experts(int layer) { return weights_.layers.at(layer).moe.experts; }
  // A step of a rank with no tokens while other ranks have some: it still takes part in every
  // MoE layer's exchange, serving its experts to the others.
  void idle_step();

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }

 private:
  Tensor attention(int layer, const Tensor& h, const StepInput& in, KvCache& cache);
  Tensor mlp(const MlpWeights& w, const Tensor& h);
  Tensor moe(int layer, const MoeWeights& w, const Tensor& h);
  void mark(Stage stage, int layer) {
    if (timer_) timer_->mark(stage, layer);
  }

  ModelConfig config_;
  ModelWeights weights_;
  Backend& backend_;
  RopeTable rope_;
  MlaParams mla_;
  GateParams gate_;
  RoutedExpertsHook* experts_hook_ = nullptr;
  StageTimer* timer_ = nullptr;
  Tensor expert_counts_;
};

}  // namespace trident
