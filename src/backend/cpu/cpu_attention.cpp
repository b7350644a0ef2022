// Reference MLA: rotary embedding, latent-cache write, and attention in the absorbed form
// (scores against the cached latent through w_uk, values through w_uv), which equals the expanded
// form of the paper: q_nope . (W_UK c) = (W_UK^T q_nope) . c.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace trident::cpu {

namespace {

// Rotates interleaved pairs (2i, 2i+1) of x[0..dim) for position pos.
void rotate(float* x, int dim, int pos, const RopeTable& rope) {
  const float* inv = rope.inv_freq.ptr<float>();
  for (int i = 0; i < dim / 2; ++i) {
    float angle = float(pos) * inv[i];
    float c = std::cos(angle) * rope.attention_factor;
    float s = std::sin(angle) * rope.attention_factor;
    float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = b * c + a * s;
  }
}

}  // namespace

void mla_rope_cache_write(Tensor& q, const Tensor& kv, const MlaWeights& w, const MlaParams& p,
                          const RopeTable& rope, const AttentionMeta& meta, KvLayer& cache) {
  const int T = meta.n_tokens;
  const int qk = p.qk_nope_dim + p.qk_rope_dim;
  const int kv_dim = p.kv_lora_rank + p.qk_rope_dim;
  TRI_CHECK(q.dim(0) == T && q.row_size() == int64_t(p.n_heads) * qk,
            "mla_rope_cache_write: q {} does not hold {} tokens x {} heads x {}", q.shape_str(), T,
            p.n_heads, qk);
  TRI_CHECK(kv.dim(0) == T && kv.row_size() == kv_dim,
            "mla_rope_cache_write: kv {} does not hold {} tokens x {}", kv.shape_str(), T, kv_dim);
  TRI_CHECK(cache.pages.row_size() == int64_t(AttentionMeta::kPageSize) * kv_dim,
            "mla_rope_cache_write: cache pages {} are not [n, {}, {}]", cache.pages.shape_str(),
            AttentionMeta::kPageSize, kv_dim);
  const int32_t* pos = meta.positions.ptr<int32_t>();
  const int32_t* slot = meta.slot.ptr<int32_t>();
  const int64_t n_slots = cache.pages.dim(0) * AttentionMeta::kPageSize;
  std::vector<float> norm_w(p.kv_lora_rank);
  read_row(w.kv_a_norm.reshape({1, p.kv_lora_rank}), 0, norm_w.data());
  Tensor slots = cache.pages.reshape({n_slots, kv_dim});

  std::vector<float> qrow(q.row_size()), kvrow(kv_dim);
  for (int t = 0; t < T; ++t) {
    read_row(q, t, qrow.data());
    for (int h = 0; h < p.n_heads; ++h) rotate(&qrow[h * qk + p.qk_nope_dim], p.qk_rope_dim, pos[t], rope);
    write_row(q, t, qrow.data());

    read_row(kv, t, kvrow.data());
    float sum = 0;
    for (int i = 0; i < p.kv_lora_rank; ++i) sum += kvrow[i] * kvrow[i];
    float r = 1.0f / std::sqrt(sum / float(p.kv_lora_rank) + p.kv_norm_eps);
    for (int i = 0; i < p.kv_lora_rank; ++i) kvrow[i] = norm_w[i] * (kvrow[i] * r);
    rotate(&kvrow[p.kv_lora_rank], p.qk_rope_dim, pos[t], rope);
    TRI_CHECK(slot[t] >= 0 && slot[t] < n_slots, "mla_rope_cache_write: slot {} out of [0, {})",
              slot[t], n_slots);
    write_row(slots, slot[t], kvrow.data());
  }
}

void mla_attention(const Tensor& q, const MlaWeights& w, const MlaParams& p,
                   const AttentionMeta& meta, const KvLayer& cache, Tensor& out) {
  const int T = meta.n_tokens, H = p.n_heads, L = p.kv_lora_rank, R = p.qk_rope_dim;
  const int nope = p.qk_nope_dim, V = p.v_dim, qk = nope + R, kv_dim = L + R;
  const int P = AttentionMeta::kPageSize;
  TRI_CHECK(out.dim(0) == T && out.row_size() == int64_t(H) * V,
            "mla_attention: out {} does not hold {} tokens x {} heads x {}", out.shape_str(), T, H, V);
  const int32_t* pos = meta.positions.ptr<int32_t>();
  const int32_t* seq = meta.token_seq.ptr<int32_t>();
  const int32_t* pages = meta.page_table.ptr<int32_t>();
  const Tensor slots = cache.pages.reshape({cache.pages.dim(0) * P, kv_dim});

  std::vector<float> qs(int64_t(T) * H * qk);
  for (int t = 0; t < T; ++t) read_row(q, t, &qs[int64_t(t) * H * qk]);
  std::vector<float> w_uk(w.w_uk.numel()), w_uv(w.w_uv.numel());
  read_row(w.w_uk.reshape({1, w.w_uk.numel()}), 0, w_uk.data());
  read_row(w.w_uv.reshape({1, w.w_uv.numel()}), 0, w_uv.data());
  std::vector<float> result(int64_t(T) * H * V);

#pragma omp parallel
  {
    std::vector<float> q_lat(L), o_lat(L), kvrow(kv_dim), scores;
#pragma omp for collapse(2) schedule(dynamic)
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < H; ++h) {
        const float* qh = &qs[(int64_t(t) * H + h) * qk];
        const float* uk = &w_uk[int64_t(h) * nope * L];
        std::fill(q_lat.begin(), q_lat.end(), 0.0f);
        for (int d = 0; d < nope; ++d)
          for (int c = 0; c < L; ++c) q_lat[c] += qh[d] * uk[int64_t(d) * L + c];
        const int n_ctx = pos[t] + 1;
        const int32_t* table = pages + int64_t(seq[t]) * meta.max_pages_per_seq;
        scores.assign(n_ctx, 0.0f);
        float smax = -INFINITY;
        for (int j = 0; j < n_ctx; ++j) {
          read_row(slots, int64_t(table[j / P]) * P + j % P, kvrow.data());
          float s = 0;
          for (int c = 0; c < L; ++c) s += q_lat[c] * kvrow[c];
          for (int r = 0; r < R; ++r) s += qh[nope + r] * kvrow[L + r];
          scores[j] = s * p.softmax_scale;
          smax = std::max(smax, scores[j]);
        }
        float denom = 0;
        for (int j = 0; j < n_ctx; ++j) denom += scores[j] = std::exp(scores[j] - smax);
        std::fill(o_lat.begin(), o_lat.end(), 0.0f);
        for (int j = 0; j < n_ctx; ++j) {
          read_row(slots, int64_t(table[j / P]) * P + j % P, kvrow.data());
          float pj = scores[j] / denom;
          for (int c = 0; c < L; ++c) o_lat[c] += pj * kvrow[c];
        }
        const float* uv = &w_uv[int64_t(h) * V * L];
        float* o = &result[(int64_t(t) * H + h) * V];
        for (int v = 0; v < V; ++v) {
          float acc = 0;
          for (int c = 0; c < L; ++c) acc += uv[int64_t(v) * L + c] * o_lat[c];
          o[v] = acc;
        }
      }
    }
  }
  for (int t = 0; t < T; ++t) write_row(out, t, &result[int64_t(t) * H * V]);
}

}  // namespace trident::cpu
