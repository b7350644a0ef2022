// The weights of a DeepSeek-V3-architecture model, by the names of the official release, loaded
// from a checkpoint with every tensor's dtype and shape checked, and handed to a backend.
#pragma once

#include <functional>
#include <vector>

#include "backend/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace trident {

struct MlpWeights {
  LinearWeight gate, up, down;
};

struct AttentionWeights {
  LinearWeight q_proj;  // only without q_lora
  LinearWeight q_a;     // only with q_lora
  Tensor q_a_norm;
  LinearWeight q_b;
  LinearWeight kv_a;  // kv_a_proj_with_mqa: [kv_lora_rank + rope_dim, hidden]
  MlaWeights mla;
  LinearWeight o;
};

struct MoeWeights {
  LinearWeight router;  // mlp.gate.weight [n_experts, hidden]
  Tensor router_bias;   // e_score_correction_bias [n_experts] f32; undefined for V2 models
  ExpertWeights experts;
  bool has_shared = false;
  MlpWeights shared;
};

struct LayerWeights {
  Tensor input_norm;
  Tensor post_attention_norm;
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

struct ModelWeights {
  Tensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;
  LinearWeight lm_head;
};

struct LoadOptions {
  // Which routed experts this rank holds; all when empty.
  std::function<bool(int layer, int expert)> holds_expert;
  // Called with bytes loaded so far and in all, for progress reports.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

ModelWeights load_weights(const Checkpoint& ckpt, const ModelConfig& config, Backend& backend,
                          const LoadOptions& options = {});

// One routed expert of one MoE layer (gate, up and down projections), checked as load_weights
// checks it: what a rank loads when the expert load balancer gives it an expert it lacked.
MlpWeights load_routed_expert(const Checkpoint& ckpt, const ModelConfig& config, Backend& backend,
                              int layer, int expert);

}  // namespace trident
