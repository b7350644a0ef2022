#include "model/weights.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <set>

#include "core/error.h"

namespace trident {

namespace {

constexpr int64_t kBlock = LinearWeight::kBlock;

bool is_float_weight(DType t) { return t == DType::BF16 || t == DType::F16 || t == DType::F32; }

class Loader {
 public:
  Loader(const Checkpoint& ckpt, Backend& backend, const LoadOptions& options)
      : ckpt_(ckpt), backend_(backend), options_(options), total_(ckpt.total_bytes()) {}

  // A float tensor (norm weights, embeddings) of the given shape.
  Tensor tensor(const std::string& name, std::initializer_list<int64_t> shape) {
    Tensor t = ckpt_.get(name);
    TRI_CHECK(is_float_weight(t.dtype), "{} ({}): dtype {} where BF16, F16 or F32 was expected",
              name, ckpt_.file_of(name).filename().string(), dtype_name(t.dtype));
    return finish(name, ckpt_.get(name, t.dtype, shape));
  }

  // A linear layer `prefix.weight` [out, in]: float, or FP8 with `prefix.weight_scale_inv`.
  LinearWeight linear(const std::string& prefix, int64_t out, int64_t in) {
    const std::string name = prefix + ".weight";
    Tensor w = ckpt_.get(name);
    LinearWeight lw;
    if (w.dtype == DType::F8E4M3) {
      lw.weight = finish(name, ckpt_.get(name, DType::F8E4M3, {out, in}));
      const std::string sname = prefix + ".weight_scale_inv";
      TRI_CHECK(ckpt_.has(sname), "{} is FP8 but its block scales {} are missing from {}", name,
                sname, ckpt_.file_of(name).string());
      lw.scale_inv = finish(sname, ckpt_.get(sname, DType::F32,
                                             {(out + kBlock - 1) / kBlock, (in + kBlock - 1) / kBlock}));
    } else {
      TRI_CHECK(is_float_weight(w.dtype), "{} ({}): dtype {} where BF16, F16, F32 or F8_E4M3 was expected",
                name, ckpt_.file_of(name).filename().string(), dtype_name(w.dtype));
      lw.weight = finish(name, ckpt_.get(name, w.dtype, {out, in}));
    }
    return lw;
  }

  // Checkpoint tensors no layer asked for: the multi-token-prediction layers (which Trident does
  // not run), other ranks' experts, or names it does not know, which are reported.
  void report_unused(const ModelConfig& c) const {
    int mtp = 0, other_experts = 0;
    std::vector<std::string> unknown;
    for (const std::string& name : ckpt_.names()) {
      if (used_.count(name)) continue;
      if (is_mtp(name, c))
        ++mtp;
      else if (options_.holds_expert && name.find(".mlp.experts.") != std::string::npos)
        ++other_experts;
      else
        unknown.push_back(name);
    }
    if (mtp)
      spdlog::info("skipping {} tensors of the multi-token-prediction layer(s) from layer {}", mtp,
                   c.num_hidden_layers);
    if (!unknown.empty())
      spdlog::warn("{} checkpoint tensors are not used by the model, e.g. {}", unknown.size(),
                   unknown.front());
  }

  static bool is_mtp(const std::string& name, const ModelConfig& c) {
    int layer = -1;
    return std::sscanf(name.c_str(), "model.layers.%d.", &layer) == 1 &&
           layer >= c.num_hidden_layers &&
           layer < c.num_hidden_layers + std::max(c.num_nextn_predict_layers, 1);
  }

 private:
  Tensor finish(const std::string& name, const Tensor& host) {
    used_.insert(name);
    done_ += host.nbytes();
    if (options_.progress) options_.progress(done_, total_);
    return backend_.upload(host);
  }

  const Checkpoint& ckpt_;
  Backend& backend_;
  const LoadOptions& options_;
  uint64_t done_ = 0, total_ = 0;
  std::set<std::string> used_;
};

MlpWeights load_mlp(Loader& ld, const std::string& prefix, int64_t hidden, int64_t inter) {
  MlpWeights m;
  m.gate = ld.linear(prefix + ".gate_proj", inter, hidden);
  m.up = ld.linear(prefix + ".up_proj", inter, hidden);
  m.down = ld.linear(prefix + ".down_proj", hidden, inter);
  return m;
}

// Splits kv_b_proj [H * (nope + v), kv_lora] into per-head w_uk [H, nope, kv_lora] and
// w_uv [H, v, kv_lora], dequantized, in the backend's activation dtype.
void absorb_kv_b(const Checkpoint& ckpt, const std::string& name, const ModelConfig& c,
                 MlaWeights& mla, Backend& backend) {
  const int H = c.num_attention_heads, nope = c.qk_nope_head_dim, V = c.v_head_dim;
  const int L = c.kv_lora_rank;
  Tensor w = ckpt.get(name + ".weight");
  Tensor scale;
  if (w.dtype == DType::F8E4M3) scale = ckpt.get(name + ".weight_scale_inv");
  const int64_t kb = (L + kBlock - 1) / kBlock;
  auto value = [&](int64_t row, int64_t col) {
    float v = load_f32(w, row * L + col);
    if (scale.defined()) v *= scale.ptr<float>()[(row / kBlock) * kb + col / kBlock];
    return v;
  };
  DType dt = backend.activation_dtype();
  Tensor uk = cpu_tensor(dt, {H, nope, L}), uv = cpu_tensor(dt, {H, V, L});
  auto store = [&](Tensor& t, int64_t i, float v) {
    if (dt == DType::F32)
      t.ptr<float>()[i] = v;
    else
      t.ptr<uint16_t>()[i] = f32_to_bf16(v);
  };
  for (int h = 0; h < H; ++h) {
    for (int d = 0; d < nope + V; ++d) {
      int64_t row = int64_t(h) * (nope + V) + d;
      for (int col = 0; col < L; ++col) {
        if (d < nope)
          store(uk, (int64_t(h) * nope + d) * L + col, value(row, col));
        else
          store(uv, (int64_t(h) * V + (d - nope)) * L + col, value(row, col));
      }
    }
  }
  mla.w_uk = backend.upload(uk);
  mla.w_uv = backend.upload(uv);
}

}  // namespace

ModelWeights load_weights(const Checkpoint& ckpt, const ModelConfig& c, Backend& backend,
                          const LoadOptions& options) {
  Loader ld(ckpt, backend, options);
  const int64_t hidden = c.hidden_size;
  const int H = c.num_attention_heads;
  ModelWeights m;
  m.embed = ld.tensor("model.embed_tokens.weight", {c.vocab_size, hidden});
  m.final_norm = ld.tensor("model.norm.weight", {hidden});
  if (c.tie_word_embeddings && !ckpt.has("lm_head.weight"))
    m.lm_head.weight = m.embed;
  else
    m.lm_head = ld.linear("lm_head", c.vocab_size, hidden);

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}", l);
    LayerWeights L;
    L.input_norm = ld.tensor(p + ".input_layernorm.weight", {hidden});
    L.post_attention_norm = ld.tensor(p + ".post_attention_layernorm.weight", {hidden});

    AttentionWeights& a = L.attn;
    const std::string ap = p + ".self_attn";
    if (c.q_lora_rank > 0) {
      a.q_a = ld.linear(ap + ".q_a_proj", c.q_lora_rank, hidden);
      a.q_a_norm = ld.tensor(ap + ".q_a_layernorm.weight", {c.q_lora_rank});
      a.q_b = ld.linear(ap + ".q_b_proj", int64_t(H) * c.qk_head_dim(), c.q_lora_rank);
    } else {
      a.q_proj = ld.linear(ap + ".q_proj", int64_t(H) * c.qk_head_dim(), hidden);
    }
    a.kv_a = ld.linear(ap + ".kv_a_proj_with_mqa", c.kv_cache_dim(), hidden);
    a.mla.kv_a_norm = ld.tensor(ap + ".kv_a_layernorm.weight", {c.kv_lora_rank});
    a.mla.kv_b = ld.linear(ap + ".kv_b_proj", int64_t(H) * (c.qk_nope_head_dim + c.v_head_dim),
                           c.kv_lora_rank);
    absorb_kv_b(ckpt, ap + ".kv_b_proj", c, a.mla, backend);
    a.o = ld.linear(ap + ".o_proj", hidden, int64_t(H) * c.v_head_dim);

    L.is_moe = c.is_moe_layer(l);
    const std::string mp = p + ".mlp";
    if (!L.is_moe) {
      L.mlp = load_mlp(ld, mp, hidden, c.intermediate_size);
    } else {
      MoeWeights& moe = L.moe;
      moe.router = ld.linear(mp + ".gate", c.n_routed_experts, hidden);
      if (c.topk_method == TopkMethod::NoauxTc) {
        const std::string bias = mp + ".gate.e_score_correction_bias";
        moe.router_bias = ld.tensor(bias, {c.n_routed_experts});
      }
      moe.experts.global_to_local.assign(c.n_routed_experts, -1);
      for (int e = 0; e < c.n_routed_experts; ++e) {
        if (options.holds_expert && !options.holds_expert(l, e)) continue;
        MlpWeights ex = load_mlp(ld, fmt::format("{}.experts.{}", mp, e), hidden, c.moe_intermediate_size);
        moe.experts.global_to_local[e] = int32_t(moe.experts.gate.size());
        moe.experts.gate.push_back(ex.gate);
        moe.experts.up.push_back(ex.up);
        moe.experts.down.push_back(ex.down);
      }
      if (c.n_shared_experts > 0) {
        moe.has_shared = true;
        moe.shared = load_mlp(ld, mp + ".shared_experts", hidden,
                              int64_t(c.moe_intermediate_size) * c.n_shared_experts);
      }
    }
    m.layers.push_back(std::move(L));
  }
  ld.report_unused(c);
  return m;
}

MlpWeights load_routed_expert(const Checkpoint& ckpt, const ModelConfig& c, Backend& backend,
                              int layer, int expert) {
  TRI_CHECK(layer >= 0 && layer < c.num_hidden_layers && c.is_moe_layer(layer),
            "layer {} is not a MoE layer of this model ({} layers, the first {} dense)", layer,
            c.num_hidden_layers, c.first_k_dense_replace);
  TRI_CHECK(expert >= 0 && expert < c.n_routed_experts,
            "routed expert {} is outside the model's {} experts", expert, c.n_routed_experts);
  const LoadOptions none;
  Loader ld(ckpt, backend, none);
  return load_mlp(ld, fmt::format("model.layers.{}.mlp.experts.{}", layer, expert), c.hidden_size,
                  c.moe_intermediate_size);
}

}  // namespace trident
