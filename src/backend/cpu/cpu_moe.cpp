// Reference MoE: the router (DeepSeek-V3's noaux_tc, DeepSeek-V2's greedy and group-limited
// greedy), the routed experts, each a SiLU-gated MLP, weighted and summed per token, and the
// count of tokens each expert was given (the expert load balancer's input).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace trident::cpu {

namespace {

// Indices of the k largest values, largest first; ties go to the lower index.
std::vector<int> top_indices(const std::vector<float>& v, int k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(k);
  return idx;
}

}  // namespace

void moe_gate(const Tensor& logits, const Tensor& bias, const GateParams& p, Tensor& topk_ids,
              Tensor& topk_weights) {
  const int64_t T = logits.dim(0);
  const int E = p.n_experts, K = p.top_k, G = p.n_group, per_group = E / G;
  TRI_CHECK(logits.row_size() == E, "moe_gate: logits {} do not have {} experts",
            logits.shape_str(), E);
  TRI_CHECK(topk_ids.dtype == DType::I32 && topk_ids.numel() == T * K,
            "moe_gate: topk_ids must be i32 [{}, {}]", T, K);
  std::vector<float> b(E, 0.0f);
  if (bias.defined()) read_row(bias.reshape({1, E}), 0, b.data());

  std::vector<float> scores(E), choice(E), group_score(G);
  std::vector<float> wrow(K);
  for (int64_t t = 0; t < T; ++t) {
    read_row(logits, t, scores.data());
    if (p.scoring == ScoringFunc::Sigmoid) {
      for (float& s : scores) s = 1.0f / (1.0f + std::exp(-s));
    } else {
      float m = *std::max_element(scores.begin(), scores.end()), sum = 0;
      for (float& s : scores) sum += s = std::exp(s - m);
      for (float& s : scores) s /= sum;
    }
    // `choice` decides which experts; the weights always come from the unbiased scores.
    for (int e = 0; e < E; ++e) choice[e] = scores[e] + (p.method == TopkMethod::NoauxTc ? b[e] : 0);
    if (p.method != TopkMethod::Greedy && G > 1) {
      for (int g = 0; g < G; ++g) {
        std::vector<float> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        if (p.method == TopkMethod::NoauxTc) {
          auto best = top_indices(members, 2);
          group_score[g] = members[best[0]] + members[best[1]];
        } else {
          group_score[g] = *std::max_element(members.begin(), members.end());
        }
      }
      std::vector<bool> keep(G, false);
      for (int g : top_indices(group_score, p.topk_group)) keep[g] = true;
      for (int e = 0; e < E; ++e)
        if (!keep[e / per_group]) choice[e] = p.method == TopkMethod::NoauxTc ? -INFINITY : 0.0f;
    }
    std::vector<int> chosen = top_indices(choice, K);
    float sum = 0;
    for (int j = 0; j < K; ++j) sum += wrow[j] = scores[chosen[j]];
    bool normalize = p.norm_topk_prob && (p.method == TopkMethod::NoauxTc || K > 1);
    for (int j = 0; j < K; ++j) {
      float wj = normalize ? wrow[j] / (sum + 1e-20f) : wrow[j];
      topk_ids.ptr<int32_t>()[t * K + j] = chosen[j];
      topk_weights.ptr<float>()[t * K + j] = wj * p.routed_scaling_factor;
    }
  }
}

void moe_experts(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                 const ExpertWeights& experts, Tensor& out) {
  const int64_t T = x.dim(0), H = x.row_size(), K = topk_ids.row_size();
  const int n_global = int(experts.global_to_local.size());
  std::vector<float> acc(T * H, 0.0f);
  // Tokens per local expert, so each expert runs once over all its tokens.
  std::vector<std::vector<std::pair<int64_t, float>>> routed(experts.gate.size());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      int e = topk_ids.ptr<int32_t>()[t * K + j];
      TRI_CHECK(e >= 0 && e < n_global, "moe_experts: expert id {} out of range [0, {})", e, n_global);
      int local = experts.global_to_local[e];
      if (local >= 0) routed[local].push_back({t, topk_weights.ptr<float>()[t * K + j]});
    }
  }
  std::vector<float> row(H);
  for (size_t e = 0; e < routed.size(); ++e) {
    if (routed[e].empty()) continue;
    const int64_t n = int64_t(routed[e].size());
    const int64_t I = experts.gate[e].out_features();
    Tensor xin = cpu_tensor(DType::F32, {n, H});
    for (int64_t i = 0; i < n; ++i) {
      read_row(x, routed[e][i].first, row.data());
      write_row(xin, i, row.data());
    }
    Tensor g = cpu_tensor(DType::F32, {n, I}), u = cpu_tensor(DType::F32, {n, I});
    Tensor y = cpu_tensor(DType::F32, {n, H});
    linear(xin, experts.gate[e], g);
    linear(xin, experts.up[e], u);
    silu_mul(g, u, g);
    linear(g, experts.down[e], y);
    for (int64_t i = 0; i < n; ++i) {
      auto [t, wt] = routed[e][i];
      const float* yr = y.ptr<float>() + i * H;
      for (int64_t c = 0; c < H; ++c) acc[t * H + c] += wt * yr[c];
    }
  }
  for (int64_t t = 0; t < T; ++t) write_row(out, t, &acc[t * H]);
}

void add_expert_counts(const Tensor& topk_ids, Tensor& counts) {
  if (!topk_ids.defined()) return;
  TRI_CHECK(topk_ids.dtype == DType::I32, "add_expert_counts: expert ids must be i32, got {}",
            dtype_name(topk_ids.dtype));
  TRI_CHECK(counts.dtype == DType::I64, "add_expert_counts: counts must be i64, got {}",
            dtype_name(counts.dtype));
  const int64_t n = topk_ids.numel();
  const int64_t E = counts.numel();
  const int32_t* ids = topk_ids.ptr<int32_t>();
  int64_t* c = counts.ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] >= 0 && ids[i] < E) ++c[ids[i]];
}

}  // namespace trident::cpu
