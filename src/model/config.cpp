#include "model/config.h"

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace trident {

namespace {

using json = nlohmann::json;

// Typed field access whose errors name the field and the value found.
template <class T>
T get_field(const json& j, const char* name) {
  TRI_CHECK(j.contains(name) && !j[name].is_null(), "config.json: required field '{}' is missing",
            name);
  try {
    return j[name].get<T>();
  } catch (const json::exception&) {
    fail("config.json: field '{}' has value {} of the wrong type", name, j[name].dump());
  }
}

template <class T>
T get_field_or(const json& j, const char* name, T fallback) {
  if (!j.contains(name) || j[name].is_null()) return fallback;
  return get_field<T>(j, name);
}

int positive(const json& j, const char* name) {
  int v = get_field<int>(j, name);
  TRI_CHECK(v > 0, "config.json: field '{}' must be positive, got {}", name, v);
  return v;
}

RopeScaling parse_rope_scaling(const json& j, double* rope_theta) {
  RopeScaling r;
  // transformers 5 writes `rope_parameters` (with rope_theta inside); the releases write
  // `rope_scaling` beside a top-level rope_theta.
  const json* rs = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object())
    rs = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object())
    rs = &j["rope_scaling"];
  if (rs && rs->contains("rope_theta")) *rope_theta = get_field<double>(*rs, "rope_theta");
  if (!rs) return r;
  std::string type = get_field_or<std::string>(*rs, "rope_type", "");
  if (type.empty()) type = get_field_or<std::string>(*rs, "type", "default");
  if (type == "default" || type == "none") return r;
  TRI_CHECK(type == "yarn", "config.json: rope scaling type '{}' is not supported (yarn or none)",
            type);
  r.type = "yarn";
  r.factor = get_field<double>(*rs, "factor");
  TRI_CHECK(r.factor >= 1.0, "config.json: rope scaling factor must be >= 1, got {}", r.factor);
  r.original_max_position_embeddings = get_field<int>(*rs, "original_max_position_embeddings");
  r.beta_fast = get_field_or<double>(*rs, "beta_fast", 32.0);
  r.beta_slow = get_field_or<double>(*rs, "beta_slow", 1.0);
  r.mscale = get_field_or<double>(*rs, "mscale", 0.0);
  r.mscale_all_dim = get_field_or<double>(*rs, "mscale_all_dim", 0.0);
  if (rs->contains("attention_factor") && !(*rs)["attention_factor"].is_null())
    r.attention_factor = get_field<double>(*rs, "attention_factor");
  r.truncate = get_field_or<bool>(*rs, "truncate", true);
  return r;
}

void parse_quantization(const json& q, ModelConfig& c) {
  auto method = get_field<std::string>(q, "quant_method");
  TRI_CHECK(method == "fp8", "config.json: quantization_config.quant_method '{}' is not supported "
            "(only fp8)", method);
  auto fmt = get_field_or<std::string>(q, "fmt", "e4m3");
  TRI_CHECK(fmt == "e4m3", "config.json: quantization_config.fmt '{}' is not supported (only e4m3)",
            fmt);
  auto scheme = get_field_or<std::string>(q, "activation_scheme", "dynamic");
  TRI_CHECK(scheme == "dynamic",
            "config.json: quantization_config.activation_scheme '{}' is not supported (only dynamic)",
            scheme);
  auto block = get_field<std::vector<int>>(q, "weight_block_size");
  TRI_CHECK(block == std::vector<int>({128, 128}),
            "config.json: quantization_config.weight_block_size {} is not supported (only [128, "
            "128])",
            q["weight_block_size"].dump());
  c.fp8 = true;
}

}  // namespace

bool ModelConfig::is_moe_layer(int layer) const {
  return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

static double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

float ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling.type == "yarn" && rope_scaling.mscale_all_dim != 0.0) {
    double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    s *= m * m;
  }
  return float(s);
}

GateParams ModelConfig::gate_params() const {
  GateParams g;
  g.n_experts = n_routed_experts;
  g.top_k = num_experts_per_tok;
  g.n_group = n_group;
  g.topk_group = topk_group;
  g.scoring = scoring_func;
  g.method = topk_method;
  g.norm_topk_prob = norm_topk_prob;
  g.routed_scaling_factor = float(routed_scaling_factor);
  return g;
}

MlaParams ModelConfig::mla_params() const {
  MlaParams p;
  p.n_heads = num_attention_heads;
  p.qk_nope_dim = qk_nope_head_dim;
  p.qk_rope_dim = qk_rope_head_dim;
  p.v_dim = v_head_dim;
  p.kv_lora_rank = kv_lora_rank;
  p.softmax_scale = softmax_scale();
  // The latent norms are built with RMSNorm's default epsilon in both the release and HF, not
  // rms_norm_eps.
  p.kv_norm_eps = kLatentNormEps;
  return p;
}

ModelConfig ModelConfig::from_json(const json& j) {
  TRI_CHECK(j.is_object(), "config.json: expected a JSON object");
  ModelConfig c;
  c.model_type = get_field<std::string>(j, "model_type");
  TRI_CHECK(c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2" ||
                c.model_type == "kimi_k2",
            "config.json: model_type '{}' is not supported (deepseek_v3, deepseek_v2, kimi_k2)",
            c.model_type);
  bool v2 = c.model_type == "deepseek_v2";

  c.vocab_size = positive(j, "vocab_size");
  c.hidden_size = positive(j, "hidden_size");
  c.intermediate_size = positive(j, "intermediate_size");
  c.num_hidden_layers = positive(j, "num_hidden_layers");
  c.num_attention_heads = positive(j, "num_attention_heads");
  c.q_lora_rank = get_field_or<int>(j, "q_lora_rank", 0);
  TRI_CHECK(c.q_lora_rank >= 0, "config.json: q_lora_rank must be null or positive, got {}",
            c.q_lora_rank);
  c.kv_lora_rank = positive(j, "kv_lora_rank");
  c.qk_nope_head_dim = positive(j, "qk_nope_head_dim");
  c.qk_rope_head_dim = positive(j, "qk_rope_head_dim");
  TRI_CHECK(c.qk_rope_head_dim % 2 == 0, "config.json: qk_rope_head_dim must be even, got {}",
            c.qk_rope_head_dim);
  c.v_head_dim = positive(j, "v_head_dim");
  int kv_heads = get_field_or<int>(j, "num_key_value_heads", c.num_attention_heads);
  TRI_CHECK(kv_heads == c.num_attention_heads,
            "config.json: num_key_value_heads {} differs from num_attention_heads {}; MLA models "
            "have one latent shared by all heads and list them equal",
            kv_heads, c.num_attention_heads);

  c.n_routed_experts = get_field_or<int>(j, "n_routed_experts", 0);
  if (c.n_routed_experts > 0) {
    c.moe_intermediate_size = positive(j, "moe_intermediate_size");
    c.n_shared_experts = get_field_or<int>(j, "n_shared_experts", 0);
    c.num_experts_per_tok = positive(j, "num_experts_per_tok");
    c.n_group = get_field_or<int>(j, "n_group", 1);
    c.topk_group = get_field_or<int>(j, "topk_group", 1);
    TRI_CHECK(c.n_group > 0 && c.n_routed_experts % c.n_group == 0,
              "config.json: n_routed_experts {} is not divisible by n_group {}", c.n_routed_experts,
              c.n_group);
    TRI_CHECK(c.topk_group > 0 && c.topk_group <= c.n_group,
              "config.json: topk_group {} must be between 1 and n_group {}", c.topk_group,
              c.n_group);
    TRI_CHECK(c.num_experts_per_tok <= c.n_routed_experts,
              "config.json: num_experts_per_tok {} exceeds n_routed_experts {}",
              c.num_experts_per_tok, c.n_routed_experts);
    c.routed_scaling_factor = get_field_or<double>(j, "routed_scaling_factor", 1.0);

    auto scoring = get_field_or<std::string>(j, "scoring_func", v2 ? "softmax" : "sigmoid");
    if (scoring == "sigmoid")
      c.scoring_func = ScoringFunc::Sigmoid;
    else if (scoring == "softmax")
      c.scoring_func = ScoringFunc::Softmax;
    else
      fail("config.json: scoring_func '{}' is not supported (sigmoid, softmax)", scoring);

    auto method = get_field_or<std::string>(j, "topk_method", v2 ? "greedy" : "noaux_tc");
    if (method == "noaux_tc")
      c.topk_method = TopkMethod::NoauxTc;
    else if (method == "greedy")
      c.topk_method = TopkMethod::Greedy;
    else if (method == "group_limited_greedy")
      c.topk_method = TopkMethod::GroupLimitedGreedy;
    else
      fail("config.json: topk_method '{}' is not supported (noaux_tc, greedy, "
           "group_limited_greedy)",
           method);
    if (c.topk_method == TopkMethod::NoauxTc) {
      TRI_CHECK(c.scoring_func == ScoringFunc::Sigmoid,
                "config.json: topk_method noaux_tc needs scoring_func sigmoid, got {}", scoring);
      TRI_CHECK(c.n_routed_experts / c.n_group >= 2,
                "config.json: noaux_tc scores each group by its two best experts, so groups need "
                "at least 2 experts; n_routed_experts {} / n_group {} gives fewer",
                c.n_routed_experts, c.n_group);
    }
    c.norm_topk_prob = get_field_or<bool>(j, "norm_topk_prob", !v2);
    c.first_k_dense_replace = get_field_or<int>(j, "first_k_dense_replace", 0);
    c.moe_layer_freq = get_field_or<int>(j, "moe_layer_freq", 1);
    TRI_CHECK(c.moe_layer_freq >= 1, "config.json: moe_layer_freq must be >= 1, got {}",
              c.moe_layer_freq);
  }

  c.rms_norm_eps = get_field_or<double>(j, "rms_norm_eps", 1e-6);
  c.rope_theta = get_field_or<double>(j, "rope_theta", 10000.0);
  c.rope_scaling = parse_rope_scaling(j, &c.rope_theta);
  c.max_position_embeddings = positive(j, "max_position_embeddings");
  c.tie_word_embeddings = get_field_or<bool>(j, "tie_word_embeddings", false);
  c.num_nextn_predict_layers = get_field_or<int>(j, "num_nextn_predict_layers", 0);

  auto act = get_field_or<std::string>(j, "hidden_act", "silu");
  TRI_CHECK(act == "silu", "config.json: hidden_act '{}' is not supported (only silu)", act);
  TRI_CHECK(!get_field_or<bool>(j, "attention_bias", false),
            "config.json: attention_bias true is not supported (DeepSeek models have none)");
  TRI_CHECK(get_field_or<bool>(j, "rope_interleave", true),
            "config.json: rope_interleave false is not supported (DeepSeek checkpoints rotate "
            "interleaved pairs)");

  c.bos_token_id = get_field_or<int>(j, "bos_token_id", -1);
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array())
    c.eos_token_ids = get_field<std::vector<int>>(j, "eos_token_id");
  else if (j.contains("eos_token_id") && !j["eos_token_id"].is_null())
    c.eos_token_ids = {get_field<int>(j, "eos_token_id")};

  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    parse_quantization(j["quantization_config"], c);
  return c;
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& path) {
  std::ifstream f(path);
  TRI_CHECK(f.good(), "cannot open model config {}", path.string());
  json j;
  try {
    j = json::parse(f);
  } catch (const json::parse_error& e) {
    fail("{} is not valid JSON: {}", path.string(), e.what());
  }
  try {
    return from_json(j);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

}  // namespace trident
