#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"

using namespace trident;
using json = nlohmann::json;

namespace {

// DeepSeek-V3's published config.json, less fields Trident ignores.
json deepseek_v3_config() {
  return json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
    "topk_group": 4, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "norm_topk_prob": true, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
      "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
    "max_position_embeddings": 163840, "tie_word_embeddings": false,
    "num_nextn_predict_layers": 1, "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
      "quant_method": "fp8", "weight_block_size": [128, 128]}
  })");
}

std::string error_of(const json& j) {
  try {
    ModelConfig::from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ModelConfig, ReadsDeepSeekV3) {
  ModelConfig c = ModelConfig::from_json(deepseek_v3_config());
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.kv_cache_dim(), 576);
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_TRUE(c.fp8);
  EXPECT_EQ(c.topk_method, TopkMethod::NoauxTc);
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{1});
  // mscale_all_dim 1, factor 40: (0.1 ln 40 + 1)^2 / sqrt(192)
  double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-6);
}

TEST(ModelConfig, NullQLoraMeansDirectQueryProjection) {
  json j = deepseek_v3_config();
  j["q_lora_rank"] = nullptr;
  EXPECT_EQ(ModelConfig::from_json(j).q_lora_rank, 0);
}

TEST(ModelConfig, DeepSeekV2DefaultsToSoftmaxGreedy) {
  json j = deepseek_v3_config();
  j["model_type"] = "deepseek_v2";
  j.erase("scoring_func");
  j.erase("topk_method");
  j.erase("norm_topk_prob");
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.scoring_func, ScoringFunc::Softmax);
  EXPECT_EQ(c.topk_method, TopkMethod::Greedy);
  EXPECT_FALSE(c.norm_topk_prob);
}

TEST(ModelConfig, TransformersFiveRopeParametersAreRead) {
  json j = deepseek_v3_config();
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 50000.0}, {"factor", 4.0},
                          {"original_max_position_embeddings", 1024}};
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.rope_theta, 50000.0);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
}

TEST(ModelConfig, UnsupportedValuesNameTheFieldAndValue) {
  auto with = [](const char* key, json v) {
    json j = deepseek_v3_config();
    j[key] = v;
    return error_of(j);
  };
  EXPECT_NE(with("model_type", "llama").find("model_type 'llama'"), std::string::npos);
  EXPECT_NE(with("scoring_func", "relu").find("scoring_func 'relu'"), std::string::npos);
  EXPECT_NE(with("topk_method", "random").find("topk_method 'random'"), std::string::npos);
  EXPECT_NE(with("hidden_size", -3).find("'hidden_size' must be positive, got -3"),
            std::string::npos);
  EXPECT_NE(with("n_group", 7).find("n_routed_experts 256 is not divisible by n_group 7"),
            std::string::npos);
  EXPECT_NE(with("hidden_size", "big").find("'hidden_size' has value \"big\""), std::string::npos);
  json q = deepseek_v3_config();
  q["quantization_config"]["weight_block_size"] = {64, 64};
  EXPECT_NE(error_of(q).find("weight_block_size [64,64]"), std::string::npos);
  json r = deepseek_v3_config();
  r["rope_scaling"]["type"] = "longrope";
  EXPECT_NE(error_of(r).find("rope scaling type 'longrope'"), std::string::npos);
  json missing = deepseek_v3_config();
  missing.erase("kv_lora_rank");
  EXPECT_NE(error_of(missing).find("'kv_lora_rank' is missing"), std::string::npos);
}
