#include "model/presets.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace trident {

namespace {

// deepseek-ai/DeepSeek-V3's config.json (the fields Trident reads): FP8 with 128x128 block scales,
// YaRN over a 4k original context, 3 dense layers then 58 MoE layers.
constexpr const char* kDeepseekV3 = R"({
  "model_type": "deepseek_v3",
  "vocab_size": 129280,
  "hidden_size": 7168,
  "intermediate_size": 18432,
  "moe_intermediate_size": 2048,
  "num_hidden_layers": 61,
  "num_attention_heads": 128,
  "num_key_value_heads": 128,
  "q_lora_rank": 1536,
  "kv_lora_rank": 512,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "v_head_dim": 128,
  "n_routed_experts": 256,
  "n_shared_experts": 1,
  "num_experts_per_tok": 8,
  "n_group": 8,
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "scoring_func": "sigmoid",
  "norm_topk_prob": true,
  "routed_scaling_factor": 2.5,
  "first_k_dense_replace": 3,
  "moe_layer_freq": 1,
  "num_nextn_predict_layers": 1,
  "hidden_act": "silu",
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000,
  "rope_scaling": {
    "type": "yarn",
    "factor": 40,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0
  },
  "max_position_embeddings": 163840,
  "tie_word_embeddings": false,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "quantization_config": {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128]
  }
})";

// models/trident-tiny-fp8/config.json.
constexpr const char* kTiny = R"({
  "model_type": "deepseek_v3",
  "vocab_size": 4096,
  "hidden_size": 256,
  "intermediate_size": 768,
  "moe_intermediate_size": 64,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "num_key_value_heads": 4,
  "q_lora_rank": 192,
  "kv_lora_rank": 128,
  "qk_nope_head_dim": 64,
  "qk_rope_head_dim": 32,
  "v_head_dim": 64,
  "n_routed_experts": 16,
  "n_shared_experts": 1,
  "num_experts_per_tok": 4,
  "n_group": 4,
  "topk_group": 2,
  "topk_method": "noaux_tc",
  "scoring_func": "sigmoid",
  "norm_topk_prob": true,
  "routed_scaling_factor": 2.5,
  "first_k_dense_replace": 1,
  "moe_layer_freq": 1,
  "num_nextn_predict_layers": 0,
  "hidden_act": "silu",
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "rope_scaling": null,
  "max_position_embeddings": 2048,
  "tie_word_embeddings": false,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "quantization_config": {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128]
  }
})";

}  // namespace

std::vector<std::string> preset_names() { return {"deepseek-v3", "tiny"}; }

ModelConfig preset_config(const std::string& name) {
  if (name == "deepseek-v3") return ModelConfig::from_json(nlohmann::json::parse(kDeepseekV3));
  if (name == "tiny") return ModelConfig::from_json(nlohmann::json::parse(kTiny));
  fail("unknown model preset '{}' (deepseek-v3, tiny)", name);
}

}  // namespace trident
