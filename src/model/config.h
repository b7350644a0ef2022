// The model configuration, read from a HuggingFace config.json of model_type deepseek_v3 (also
// deepseek_v2 and kimi_k2, which differ only in fields). Anything Trident cannot run is refused at
// parse time with the field and its value.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "backend/backend.h"

namespace trident {

struct RopeScaling {
  std::string type = "none";  // "none" or "yarn"
  double factor = 1.0;
  int original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0 when absent
  double mscale_all_dim = 0.0;  // 0 when absent
  std::optional<double> attention_factor;
  bool truncate = true;
};

// Epsilon of q_a_layernorm and kv_a_layernorm (RMSNorm built without an eps argument).
constexpr float kLatentNormEps = 1e-6f;

struct ModelConfig {
  std::string model_type;
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int moe_intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int q_lora_rank = 0;  // 0: no q compression (q_proj), as in DeepSeek-V2-Lite
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  int n_routed_experts = 0;
  int n_shared_experts = 0;
  int num_experts_per_tok = 0;
  int n_group = 1;
  int topk_group = 1;
  double routed_scaling_factor = 1.0;
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  TopkMethod topk_method = TopkMethod::NoauxTc;
  bool norm_topk_prob = true;
  int first_k_dense_replace = 0;
  int moe_layer_freq = 1;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int num_nextn_predict_layers = 0;
  std::vector<int> eos_token_ids;
  int bos_token_id = -1;
  bool fp8 = false;  // quantization_config: fp8 e4m3, 128x128 block scales, dynamic activations

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int kv_cache_dim() const { return kv_lora_rank + qk_rope_head_dim; }
  bool is_moe_layer(int layer) const;
  // 1/sqrt(qk_head_dim), times mscale^2 under YaRN when mscale_all_dim is set.
  float softmax_scale() const;
  GateParams gate_params() const;
  MlaParams mla_params() const;

  static ModelConfig from_json(const nlohmann::json& j);
  static ModelConfig from_file(const std::filesystem::path& config_json);
};

}  // namespace trident
