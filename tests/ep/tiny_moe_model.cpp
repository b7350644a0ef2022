#include "tiny_moe_model.h"

#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

namespace trident::testing {

namespace {

constexpr int64_t kBlock = LinearWeight::kBlock;

// Each tensor draws from its own generator, seeded by its name, so a tensor's values do not
// depend on which other tensors a rank builds.
std::mt19937_64 generator(const TinyMoeSpec& spec, const std::string& name) {
  return std::mt19937_64(spec.seed * 0x9e3779b97f4a7c15ull ^ std::hash<std::string>{}(name));
}

Tensor random_f32(const TinyMoeSpec& spec, const std::string& name, int64_t rows, int64_t cols,
                  float mean, float stddev) {
  auto rng = generator(spec, name);
  std::normal_distribution<float> dist(mean, stddev);
  Tensor t = cpu_tensor(DType::F32, {rows, cols});
  for (int64_t i = 0; i < rows * cols; ++i) t.ptr<float>()[i] = dist(rng);
  return t;
}

Tensor norm_weight(const TinyMoeSpec& spec, const std::string& name, int64_t n) {
  return random_f32(spec, name, 1, n, 1.0f, 0.1f).reshape({n});
}

LinearWeight linear(const TinyMoeSpec& spec, const std::string& name, int64_t out, int64_t in,
                    bool fp8) {
  Tensor w = random_f32(spec, name, out, in, 0.0f, 1.0f / std::sqrt(float(in)));
  if (!fp8) return {w, {}};
  const int64_t ob = (out + kBlock - 1) / kBlock, ib = (in + kBlock - 1) / kBlock;
  LinearWeight lw{cpu_tensor(DType::F8E4M3, {out, in}), cpu_tensor(DType::F32, {ob, ib})};
  for (int64_t bo = 0; bo < ob; ++bo) {
    for (int64_t bi = 0; bi < ib; ++bi) {
      float amax = 0;
      for (int64_t o = bo * kBlock; o < std::min(out, (bo + 1) * kBlock); ++o)
        for (int64_t i = bi * kBlock; i < std::min(in, (bi + 1) * kBlock); ++i)
          amax = std::max(amax, std::fabs(w.ptr<float>()[o * in + i]));
      const float scale = std::max(amax, 1e-10f) / kFp8E4M3Max;
      lw.scale_inv.ptr<float>()[bo * ib + bi] = scale;
      for (int64_t o = bo * kBlock; o < std::min(out, (bo + 1) * kBlock); ++o)
        for (int64_t i = bi * kBlock; i < std::min(in, (bi + 1) * kBlock); ++i)
          lw.weight.ptr<uint8_t>()[o * in + i] = f32_to_fp8e4m3(w.ptr<float>()[o * in + i] / scale);
    }
  }
  return lw;
}

MlpWeights mlp(const TinyMoeSpec& spec, const std::string& prefix, int64_t hidden, int64_t inter,
               bool fp8) {
  return {linear(spec, prefix + ".gate_proj", inter, hidden, fp8),
          linear(spec, prefix + ".up_proj", inter, hidden, fp8),
          linear(spec, prefix + ".down_proj", hidden, inter, fp8)};
}

}  // namespace

ModelConfig tiny_moe_config(const TinyMoeSpec& spec) {
  nlohmann::json j = {
      {"model_type", "deepseek_v3"},
      {"vocab_size", 512},
      {"hidden_size", 256},
      {"intermediate_size", 256},
      {"moe_intermediate_size", spec.moe_intermediate},
      {"num_hidden_layers", 3},
      {"num_attention_heads", 4},
      {"q_lora_rank", 96},
      {"kv_lora_rank", 64},
      {"qk_nope_head_dim", 32},
      {"qk_rope_head_dim", 16},
      {"v_head_dim", 32},
      {"n_routed_experts", 16},
      {"n_shared_experts", 1},
      {"num_experts_per_tok", 4},
      {"n_group", 4},
      {"topk_group", 2},
      {"routed_scaling_factor", 2.5},
      {"first_k_dense_replace", 1},
      {"max_position_embeddings", 512},
      {"rms_norm_eps", 1e-6},
      {"eos_token_id", 1},
  };
  if (spec.fp8)
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", "e4m3"},
                                {"activation_scheme", "dynamic"},
                                {"weight_block_size", {128, 128}}};
  return ModelConfig::from_json(j);
}

ModelWeights tiny_moe_weights(const ModelConfig& c, const TinyMoeSpec& spec,
                              const std::function<bool(int, int)>& holds) {
  const int64_t hidden = c.hidden_size, H = c.num_attention_heads;
  ModelWeights m;
  m.embed = random_f32(spec, "embed", c.vocab_size, hidden, 0.0f, 1.0f);
  m.final_norm = norm_weight(spec, "norm", hidden);
  m.lm_head = linear(spec, "lm_head", c.vocab_size, hidden, false);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("layers.{}", l);
    LayerWeights L;
    L.input_norm = norm_weight(spec, p + ".input_norm", hidden);
    L.post_attention_norm = norm_weight(spec, p + ".post_attention_norm", hidden);
    AttentionWeights& a = L.attn;
    a.q_a = linear(spec, p + ".q_a", c.q_lora_rank, hidden, spec.fp8);
    a.q_a_norm = norm_weight(spec, p + ".q_a_norm", c.q_lora_rank);
    a.q_b = linear(spec, p + ".q_b", H * c.qk_head_dim(), c.q_lora_rank, spec.fp8);
    a.kv_a = linear(spec, p + ".kv_a", c.kv_cache_dim(), hidden, spec.fp8);
    a.mla.kv_a_norm = norm_weight(spec, p + ".kv_a_norm", c.kv_lora_rank);
    const float latent_std = 1.0f / std::sqrt(float(c.kv_lora_rank));
    a.mla.w_uk =
        random_f32(spec, p + ".w_uk", H * c.qk_nope_head_dim, c.kv_lora_rank, 0.0f, latent_std)
            .reshape({H, c.qk_nope_head_dim, c.kv_lora_rank});
    a.mla.w_uv = random_f32(spec, p + ".w_uv", H * c.v_head_dim, c.kv_lora_rank, 0.0f, latent_std)
                     .reshape({H, c.v_head_dim, c.kv_lora_rank});
    a.o = linear(spec, p + ".o", hidden, H * c.v_head_dim, spec.fp8);
    L.is_moe = c.is_moe_layer(l);
    if (!L.is_moe) {
      L.mlp = mlp(spec, p + ".mlp", hidden, c.intermediate_size, spec.fp8);
    } else {
      MoeWeights& moe = L.moe;
      moe.router = linear(spec, p + ".router", c.n_routed_experts, hidden, false);
      moe.router_bias = random_f32(spec, p + ".router_bias", 1, c.n_routed_experts, 0.0f, 0.1f)
                            .reshape({c.n_routed_experts});
      for (int e : spec.favoured_experts) moe.router_bias.ptr<float>()[e] += 100.0f;
      moe.experts.global_to_local.assign(c.n_routed_experts, -1);
      for (int e = 0; e < c.n_routed_experts; ++e) {
        if (holds && !holds(l, e)) continue;
        MlpWeights ex = tiny_moe_expert(c, spec, l, e);
        moe.experts.global_to_local[e] = int32_t(moe.experts.gate.size());
        moe.experts.gate.push_back(ex.gate);
        moe.experts.up.push_back(ex.up);
        moe.experts.down.push_back(ex.down);
      }
      moe.has_shared = true;
      moe.shared = mlp(spec, p + ".shared", hidden, c.moe_intermediate_size, spec.fp8);
    }
    m.layers.push_back(std::move(L));
  }
  return m;
}

MlpWeights tiny_moe_expert(const ModelConfig& c, const TinyMoeSpec& spec, int layer,
                           int expert) {
  return mlp(spec, fmt::format("layers.{}.experts.{}", layer, expert), c.hidden_size,
             c.moe_intermediate_size, spec.fp8);
}

}  // namespace trident::testing
