#include "model/deepseek_v3.h"

#include "core/error.h"
#include "model/rope.h"

namespace trident {

int64_t kv_page_bytes(const ModelConfig& config, DType dtype) {
  return int64_t(config.num_hidden_layers) * AttentionMeta::kPageSize * config.kv_cache_dim() *
         int64_t(dtype_size(dtype));
}

KvCache make_kv_cache(Backend& backend, const ModelConfig& config, int n_pages) {
  KvCache cache;
  cache.n_pages = n_pages;
  for (int l = 0; l < config.num_hidden_layers; ++l)
    cache.layers.push_back(
        {backend.alloc(backend.activation_dtype(),
                       {n_pages, AttentionMeta::kPageSize, config.kv_cache_dim()})});
  return cache;
}

DeepseekV3::DeepseekV3(ModelConfig config, ModelWeights weights, Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(backend) {
  RopeTable host = make_rope_table(config_);
  rope_.inv_freq = backend_.upload(host.inv_freq);
  rope_.attention_factor = host.attention_factor;
  mla_ = config_.mla_params();
  gate_ = config_.gate_params();
}

Tensor DeepseekV3::forward(const StepInput& in, KvCache& cache) {
  const int64_t T = in.meta.n_tokens, hidden = config_.hidden_size;
  const DType act = backend_.activation_dtype();
  const float eps = float(config_.rms_norm_eps);
  TRI_CHECK(T > 0, "forward: the step has no tokens");
  TRI_CHECK(int(cache.layers.size()) == config_.num_hidden_layers,
            "forward: cache has {} layers, model {}", cache.layers.size(), config_.num_hidden_layers);

  // Pre-norm residual stream: residual accumulates each sublayer's output, h is its normalized
  // input to the next sublayer.
  mark(Stage::Rest, -1);
  Tensor residual = backend_.alloc(act, {T, hidden});
  Tensor h = backend_.alloc(act, {T, hidden});
  backend_.embedding(in.token_ids, weights_.embed, residual);
  Tensor sublayer_out;
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    mark(Stage::Rest, l);
    if (l == 0)
      backend_.rms_norm(residual, lw.input_norm, eps, h);
    else
      backend_.add_rms_norm(sublayer_out, residual, lw.input_norm, eps, h);
    mark(Stage::Attention, l);
    Tensor attn_out = attention(l, h, in, cache);
    mark(Stage::Rest, l);
    backend_.add_rms_norm(attn_out, residual, lw.post_attention_norm, eps, h);
    if (lw.is_moe) {
      sublayer_out = moe(l, lw.moe, h);
    } else {
      mark(Stage::Mlp, l);
      sublayer_out = mlp(lw.mlp, h);
    }
  }
  mark(Stage::Rest, -1);
  backend_.add(residual, sublayer_out);

  const int64_t L = in.logit_rows.numel();
  Tensor last = backend_.alloc(act, {L, hidden});
  backend_.embedding(in.logit_rows, residual, last);  // a row gather
  Tensor normed = backend_.alloc(act, {L, hidden});
  backend_.rms_norm(last, weights_.final_norm, eps, normed);
  Tensor logits = backend_.alloc(DType::F32, {L, config_.vocab_size});
  backend_.linear(normed, weights_.lm_head, logits);
  return logits;
}

Tensor DeepseekV3::attention(int layer, const Tensor& h, const StepInput& in, KvCache& cache) {
  const AttentionWeights& w = weights_.layers[layer].attn;
  const int64_t T = h.dim(0);
  const int H = config_.num_attention_heads;
  const DType act = backend_.activation_dtype();

  Tensor q = backend_.alloc(act, {T, int64_t(H) * config_.qk_head_dim()});
  if (config_.q_lora_rank > 0) {
    Tensor qa = backend_.alloc(act, {T, config_.q_lora_rank});
    backend_.linear(h, w.q_a, qa);
    backend_.rms_norm(qa, w.q_a_norm, kLatentNormEps, qa);
    backend_.linear(qa, w.q_b, q);
  } else {
    backend_.linear(h, w.q_proj, q);
  }
  Tensor kv = backend_.alloc(act, {T, config_.kv_cache_dim()});
  backend_.linear(h, w.kv_a, kv);
  backend_.mla_rope_cache_write(q, kv, w.mla, mla_, rope_, in.meta, cache.layers[layer]);

  Tensor o = backend_.alloc(act, {T, int64_t(H) * config_.v_head_dim});
  backend_.mla_attention(q, w.mla, mla_, in.meta, cache.layers[layer], o);
  Tensor out = backend_.alloc(act, {T, config_.hidden_size});
  backend_.linear(o, w.o, out);
  return out;
}

Tensor DeepseekV3::mlp(const MlpWeights& w, const Tensor& h) {
  const int64_t T = h.dim(0), inter = w.gate.out_features();
  const DType act = backend_.activation_dtype();
  Tensor g = backend_.alloc(act, {T, inter}), u = backend_.alloc(act, {T, inter});
  backend_.linear(h, w.gate, g);
  backend_.linear(h, w.up, u);
  backend_.silu_mul(g, u, g);
  Tensor out = backend_.alloc(act, {T, config_.hidden_size});
  backend_.linear(g, w.down, out);
  return out;
}

void DeepseekV3::idle_step() {
  TRI_CHECK(experts_hook_ != nullptr, "idle_step: only ranks of an expert-parallel group idle");
  for (int l = 0; l < config_.num_hidden_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    if (!lw.is_moe) continue;
    Tensor none;
    experts_hook_->moe_experts(l, none, none, none, lw.moe.experts, none);
  }
}

Tensor DeepseekV3::moe(int layer, const MoeWeights& w, const Tensor& h) {
  const int64_t T = h.dim(0);
  mark(Stage::Gate, layer);
  Tensor logits = backend_.alloc(DType::F32, {T, config_.n_routed_experts});
  backend_.linear(h, w.router, logits);
  Tensor ids = backend_.alloc(DType::I32, {T, gate_.top_k});
  Tensor weights = backend_.alloc(DType::F32, {T, gate_.top_k});
  backend_.moe_gate(logits, w.router_bias, gate_, ids, weights);
  if (expert_counts_.defined()) {
    Tensor row = expert_counts_.rows(layer, layer + 1).reshape({config_.n_routed_experts});
    backend_.add_expert_counts(ids, row);
  }
  // The hook marks its own dispatch, experts and combine.
  mark(Stage::Experts, layer);
  Tensor out = backend_.alloc(backend_.activation_dtype(), {T, config_.hidden_size});
  if (experts_hook_)
    experts_hook_->moe_experts(layer, h, ids, weights, w.experts, out);
  else
    backend_.moe_experts(h, ids, weights, w.experts, out);
  if (w.has_shared) {
    mark(Stage::Mlp, layer);
    backend_.add(out, mlp(w.shared, h));
  }
  return out;
}

}  // namespace trident
