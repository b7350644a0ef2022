#include "runtime/step_roofline.h"

#include <algorithm>

#include "core/error.h"

namespace trident {

namespace {

constexpr double kFp8ScaleBytesPerWeight = 4.0 / (128.0 * 128.0);  // one f32 per 128x128 block

// An FP8 linear layer of `rows` tokens: its weight (and scales) read once.
Work fp8_linear(double rows, double out, double in) {
  return {out * in * (1.0 + kFp8ScaleBytesPerWeight), 2.0 * rows * out * in, 0.0};
}

// MLA over one sequence in both forms; the cheaper one counts.
Work attention_core(const ModelConfig& c, const SequenceShape& s, const DeviceCeilings& ceil) {
  const double H = c.num_attention_heads, L = c.kv_lora_rank, R = c.qk_rope_head_dim;
  const double nope = c.qk_nope_head_dim, V = c.v_head_dim;
  const double n = s.new_tokens, before = s.context - s.new_tokens;
  // Positions each new token attends to, summed: causal within the new tokens.
  const double pairs = n * before + n * (n + 1) / 2;
  const double kv_bytes = (double(s.context) + n) * (L + R) * 2;  // read the context, write n
  Work absorbed{kv_bytes, 0, 2 * H * (n * (nope * L + V * L) + pairs * (L + R + L))};
  Work expanded{kv_bytes, 2 * double(s.context) * L * H * (nope + V),
                2 * H * pairs * (nope + R + V)};
  return expanded.floor_seconds(ceil) < absorbed.floor_seconds(ceil) ? expanded : absorbed;
}

}  // namespace

Work& Work::operator+=(const Work& o) {
  bytes += o.bytes;
  fp8_flops += o.fp8_flops;
  bf16_flops += o.bf16_flops;
  return *this;
}

Work Work::scaled(double k) const { return {bytes * k, fp8_flops * k, bf16_flops * k}; }

double Work::floor_seconds(const DeviceCeilings& c) const {
  TRI_CHECK(c.copy_bytes_per_s > 0 && c.fp8_flops_per_s > 0 && c.bf16_flops_per_s > 0,
            "roofline: ceilings must be measured first (copy {} B/s, FP8 {} FLOP/s, BF16 {})",
            c.copy_bytes_per_s, c.fp8_flops_per_s, c.bf16_flops_per_s);
  return std::max(bytes / c.copy_bytes_per_s,
                  fp8_flops / c.fp8_flops_per_s + bf16_flops / c.bf16_flops_per_s);
}

Work total(const StageWork& w) {
  Work t;
  for (const Work& s : w) t += s;
  return t;
}

StepWork step_work(const ModelConfig& c, const std::vector<SequenceShape>& sequences,
                   int logit_rows, const std::vector<int64_t>& routed_rows,
                   const std::vector<int>& experts_touched, const DeviceCeilings& ceilings) {
  TRI_CHECK(int(routed_rows.size()) == c.num_hidden_layers &&
                int(experts_touched.size()) == c.num_hidden_layers,
            "step_work: {} layers of routed rows and {} of touched experts for {} layers",
            routed_rows.size(), experts_touched.size(), c.num_hidden_layers);
  const double hidden = c.hidden_size, H = c.num_attention_heads;
  double T = 0;
  for (const SequenceShape& s : sequences) T += s.new_tokens;

  StageWork attention{};
  Work& attn = attention[int(Stage::Attention)];
  if (c.q_lora_rank > 0) {
    attn += fp8_linear(T, c.q_lora_rank, hidden);
    attn += fp8_linear(T, H * c.qk_head_dim(), c.q_lora_rank);
  } else {
    attn += fp8_linear(T, H * c.qk_head_dim(), hidden);
  }
  attn += fp8_linear(T, c.kv_cache_dim(), hidden);
  attn += fp8_linear(T, hidden, H * c.v_head_dim);
  bool absorbed = false, expanded = false;
  for (const SequenceShape& s : sequences) {
    const Work core = attention_core(c, s, ceilings);
    if (core.fp8_flops > 0)
      expanded = true;
    else
      absorbed = true;
    attn += core;
  }
  const double L = c.kv_lora_rank;
  if (absorbed) attn.bytes += 2 * H * (c.qk_nope_head_dim + c.v_head_dim) * L * 2;  // w_uk, w_uv
  if (expanded)
    attn.bytes += H * (c.qk_nope_head_dim + c.v_head_dim) * L * (1 + kFp8ScaleBytesPerWeight);

  auto mlp = [&](double inter) {
    Work w = fp8_linear(T, inter, hidden);
    w += fp8_linear(T, inter, hidden);
    w += fp8_linear(T, hidden, inter);
    return w;
  };
  StepWork out;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    StageWork w = attention;
    if (!c.is_moe_layer(l)) {
      w[int(Stage::Mlp)] = mlp(c.intermediate_size);
    } else {
      const double E = c.n_routed_experts, I = c.moe_intermediate_size;
      w[int(Stage::Gate)] = {E * hidden * 2, 0, 2 * T * hidden * E};  // BF16 router
      const double per_expert = 3 * hidden * I;
      w[int(Stage::Experts)] = {experts_touched[l] * per_expert * (1 + kFp8ScaleBytesPerWeight),
                                2.0 * double(routed_rows[l]) * per_expert, 0};
      if (c.n_shared_experts > 0) w[int(Stage::Mlp)] = mlp(I * c.n_shared_experts);
    }
    out.layers.push_back(w);
  }
  // Embedding rows in; lm_head (BF16 in the release) over the rows whose logits are wanted.
  const double vocab = c.vocab_size;
  out.outside[int(Stage::Rest)] = {T * hidden * 2 + vocab * hidden * 2, 0,
                                   2.0 * logit_rows * hidden * vocab};
  return out;
}

}  // namespace trident
