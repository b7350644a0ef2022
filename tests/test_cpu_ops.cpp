// The CPU reference ops against independent, more literal computations in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

using namespace trident;

namespace {

Tensor random_tensor(std::mt19937& rng, DType dt, std::initializer_list<int64_t> shape, float scale = 1.0f) {
  Tensor t = cpu_tensor(dt, shape);
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) {
    float v = d(rng);
    if (dt == DType::F32) t.ptr<float>()[i] = v;
    else if (dt == DType::BF16) t.ptr<uint16_t>()[i] = f32_to_bf16(v);
  }
  return t;
}

// Quantizes w [out, in] to FP8 with 128x128 block scales, as the release does.
LinearWeight quantize_weight(const Tensor& w) {
  const int64_t N = w.dim(0), K = w.dim(1), NB = (N + 127) / 128, KB = (K + 127) / 128;
  LinearWeight lw;
  lw.weight = cpu_tensor(DType::F8E4M3, {N, K});
  lw.scale_inv = cpu_tensor(DType::F32, {NB, KB});
  for (int64_t bn = 0; bn < NB; ++bn)
    for (int64_t bk = 0; bk < KB; ++bk) {
      float amax = 0;
      for (int64_t n = bn * 128; n < std::min(N, bn * 128 + 128); ++n)
        for (int64_t k = bk * 128; k < std::min(K, bk * 128 + 128); ++k)
          amax = std::max(amax, std::fabs(load_f32(w, n * K + k)));
      float s = amax / 448.0f;
      lw.scale_inv.ptr<float>()[bn * KB + bk] = s;
      for (int64_t n = bn * 128; n < std::min(N, bn * 128 + 128); ++n)
        for (int64_t k = bk * 128; k < std::min(K, bk * 128 + 128); ++k)
          lw.weight.ptr<uint8_t>()[n * K + k] = f32_to_fp8e4m3(load_f32(w, n * K + k) / s);
    }
  return lw;
}

double rel_error(const std::vector<double>& ref, const Tensor& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double d = load_f32(got, int64_t(i)) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST(CpuLinear, Bf16WeightsMatchDoublePrecisionProduct) {
  std::mt19937 rng(1);
  for (auto [T, K, N] : {std::tuple{1, 64, 3}, {7, 200, 130}, {33, 257, 65}}) {
    Tensor x = random_tensor(rng, DType::F32, {T, K});
    LinearWeight w{random_tensor(rng, DType::BF16, {N, K}), {}};
    Tensor y = cpu_tensor(DType::F32, {T, N});
    cpu::linear(x, w, y);
    std::vector<double> ref(T * N);
    for (int t = 0; t < T; ++t)
      for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k)
          ref[t * N + n] += double(x.ptr<float>()[t * K + k]) * load_f32(w.weight, n * K + k);
    EXPECT_LT(rel_error(ref, y), 1e-6) << T << "x" << K << "x" << N;
  }
}

TEST(CpuLinear, Fp8WeightsQuantizeActivationsPerTokenPer128Channels) {
  std::mt19937 rng(2);
  // K = 300 leaves a partial last block of 44 channels; N = 200 a partial block of rows.
  const int T = 5, K = 300, N = 200;
  Tensor x = random_tensor(rng, DType::F32, {T, K});
  x.ptr<float>()[7] = 40.0f;  // an outlier: its block's scale must absorb it
  Tensor wf = random_tensor(rng, DType::F32, {N, K}, 0.05f);
  LinearWeight w = quantize_weight(wf);
  Tensor y = cpu_tensor(DType::F32, {T, N});
  cpu::linear(x, w, y);
  // Reference: dequantize both sides in double, as if the product ran on exact FP8 inputs.
  std::vector<double> ref(T * N);
  for (int t = 0; t < T; ++t) {
    std::vector<double> xq(K);
    for (int b = 0; b * 128 < K; ++b) {
      float amax = 0;
      for (int k = b * 128; k < std::min(K, b * 128 + 128); ++k)
        amax = std::max(amax, std::fabs(x.ptr<float>()[t * K + k]));
      float s = amax / 448.0f;
      for (int k = b * 128; k < std::min(K, b * 128 + 128); ++k)
        xq[k] = double(fp8e4m3_to_f32(f32_to_fp8e4m3(x.ptr<float>()[t * K + k] / s))) * s;
    }
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k)
        ref[t * N + n] += xq[k] * double(fp8e4m3_to_f32(w.weight.ptr<uint8_t>()[n * K + k])) *
                          w.scale_inv.ptr<float>()[(n / 128) * 3 + k / 128];
  }
  EXPECT_LT(rel_error(ref, y), 1e-6);
  // And the whole FP8 path stays within FP8's precision of the unquantized product.
  std::vector<double> exact(T * N);
  for (int t = 0; t < T; ++t)
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) exact[t * N + n] += double(x.ptr<float>()[t * K + k]) * wf.ptr<float>()[n * K + k];
  EXPECT_LT(rel_error(exact, y), 0.08);
  EXPECT_GT(rel_error(exact, y), 1e-4);  // it really was quantized
}

TEST(CpuNorm, AddRmsNormUpdatesResidualAndNormalizes) {
  std::mt19937 rng(3);
  Tensor x = random_tensor(rng, DType::F32, {4, 96}), res = random_tensor(rng, DType::F32, {4, 96});
  Tensor w = random_tensor(rng, DType::F32, {96});
  std::vector<float> sum(4 * 96);
  for (int i = 0; i < 4 * 96; ++i) sum[i] = x.ptr<float>()[i] + res.ptr<float>()[i];
  Tensor out = cpu_tensor(DType::F32, {4, 96});
  cpu::add_rms_norm(x, res, w, 1e-6f, out);
  for (int r = 0; r < 4; ++r) {
    double ms = 0;
    for (int i = 0; i < 96; ++i) ms += double(sum[r * 96 + i]) * sum[r * 96 + i];
    double inv = 1.0 / std::sqrt(ms / 96 + 1e-6);
    for (int i = 0; i < 96; ++i) {
      EXPECT_FLOAT_EQ(res.ptr<float>()[r * 96 + i], sum[r * 96 + i]);
      EXPECT_NEAR(out.ptr<float>()[r * 96 + i], sum[r * 96 + i] * inv * w.ptr<float>()[i], 1e-5);
    }
  }
}

TEST(CpuMoeGate, NoauxTcPicksWithBiasWithinBestGroupsAndWeighsWithoutIt) {
  // 8 experts in 4 groups of 2; keep 2 groups; top-2.
  GateParams p{8, 2, 4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5f};
  Tensor logits = cpu_tensor(DType::F32, {1, 8});
  float l[8] = {3.0f, -2.0f, 0.5f, 0.4f, 2.0f, 1.9f, -1.0f, -1.0f};
  std::copy(l, l + 8, logits.ptr<float>());
  Tensor bias = cpu_tensor(DType::F32, {8});
  // Expert 0 has the best score alone, but its group (0, 1) sums lower than groups 1 and 2.
  bias.ptr<float>()[1] = -1.0f;
  Tensor ids = cpu_tensor(DType::I32, {1, 2}), wts = cpu_tensor(DType::F32, {1, 2});
  cpu::moe_gate(logits, bias, p, ids, wts);
  auto sig = [](float v) { return 1.0f / (1.0f + std::exp(-v)); };
  // Group sums with bias: g0 = s0 + s1 - 1 = 0.95 + 0.12 - 1, g1 = 0.62 + 0.60, g2 = 0.88 + 0.87.
  std::vector<int> got{ids.ptr<int32_t>()[0], ids.ptr<int32_t>()[1]};
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int>{4, 5}));
  float denom = sig(2.0f) + sig(1.9f);
  for (int j = 0; j < 2; ++j) {
    int e = ids.ptr<int32_t>()[j];
    EXPECT_NEAR(wts.ptr<float>()[j], sig(l[e]) / denom * 2.5f, 1e-6);
  }
}

TEST(CpuMoeGate, SoftmaxGreedyKeepsRawProbabilities) {
  GateParams p{4, 2, 1, 1, ScoringFunc::Softmax, TopkMethod::Greedy, false, 1.0f};
  Tensor logits = cpu_tensor(DType::F32, {1, 4});
  float l[4] = {0.1f, 2.0f, -1.0f, 1.0f};
  std::copy(l, l + 4, logits.ptr<float>());
  Tensor ids = cpu_tensor(DType::I32, {1, 2}), wts = cpu_tensor(DType::F32, {1, 2});
  cpu::moe_gate(logits, Tensor(), p, ids, wts);
  double z = std::exp(0.1) + std::exp(2.0) + std::exp(-1.0) + std::exp(1.0);
  EXPECT_EQ(ids.ptr<int32_t>()[0], 1);
  EXPECT_EQ(ids.ptr<int32_t>()[1], 3);
  EXPECT_NEAR(wts.ptr<float>()[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(wts.ptr<float>()[1], std::exp(1.0) / z, 1e-6);
}

TEST(CpuMoeExperts, SumsWeightedExpertsHeldHereOnly) {
  std::mt19937 rng(4);
  const int T = 6, H = 40, I = 24, E = 4;
  ExpertWeights ex;
  ex.global_to_local = {0, -1, 1, 2};  // expert 1 lives on another rank
  for (int e = 0; e < 3; ++e) {
    ex.gate.push_back({random_tensor(rng, DType::F32, {I, H}, 0.2f), {}});
    ex.up.push_back({random_tensor(rng, DType::F32, {I, H}, 0.2f), {}});
    ex.down.push_back({random_tensor(rng, DType::F32, {H, I}, 0.2f), {}});
  }
  Tensor x = random_tensor(rng, DType::F32, {T, H});
  Tensor ids = cpu_tensor(DType::I32, {T, 2}), wts = cpu_tensor(DType::F32, {T, 2});
  for (int i = 0; i < T * 2; ++i) {
    ids.ptr<int32_t>()[i] = (i * 3 + 1) % E;
    wts.ptr<float>()[i] = 0.25f * float(i % 3 + 1);
  }
  Tensor out = cpu_tensor(DType::F32, {T, H});
  cpu::moe_experts(x, ids, wts, ex, out);
  std::vector<double> ref(T * H);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j < 2; ++j) {
      int local = ex.global_to_local[ids.ptr<int32_t>()[t * 2 + j]];
      if (local < 0) continue;
      std::vector<double> a(I);
      for (int i = 0; i < I; ++i) {
        double g = 0, u = 0;
        for (int h = 0; h < H; ++h) {
          g += double(x.ptr<float>()[t * H + h]) * ex.gate[local].weight.ptr<float>()[i * H + h];
          u += double(x.ptr<float>()[t * H + h]) * ex.up[local].weight.ptr<float>()[i * H + h];
        }
        a[i] = g / (1 + std::exp(-g)) * u;
      }
      for (int h = 0; h < H; ++h) {
        double y = 0;
        for (int i = 0; i < I; ++i) y += a[i] * ex.down[local].weight.ptr<float>()[h * I + i];
        ref[t * H + h] += wts.ptr<float>()[t * 2 + j] * y;
      }
    }
  EXPECT_LT(rel_error(ref, out), 1e-5);
}

TEST(CpuMla, AbsorbedAttentionEqualsExpandedAttentionOverPagedCache) {
  std::mt19937 rng(5);
  const int H = 3, nope = 16, R = 8, V = 12, L = 32, kv_dim = L + R, qk = nope + R;
  MlaParams p{H, nope, R, V, L, 0.3f, 1e-6f};
  MlaWeights w;
  w.kv_a_norm = random_tensor(rng, DType::F32, {L});
  w.w_uk = random_tensor(rng, DType::F32, {H, nope, L}, 0.3f);
  w.w_uv = random_tensor(rng, DType::F32, {H, V, L}, 0.3f);
  RopeTable rope{cpu_tensor(DType::F32, {R / 2}), 1.1f};
  for (int i = 0; i < R / 2; ++i) rope.inv_freq.ptr<float>()[i] = std::pow(100.0f, -2.0f * i / R);

  // Two sequences: one of 70 cached tokens plus a 3-token chunk, one fresh prefill of 5 tokens.
  // Pages are scattered so the page table matters.
  const int P = AttentionMeta::kPageSize, n_pages = 6;
  KvLayer cache{random_tensor(rng, DType::F32, {n_pages, P, kv_dim})};
  std::vector<int> seq_pages[2] = {{4, 1}, {3}};
  std::vector<std::pair<int, int>> toks;  // (seq, pos)
  for (int i = 0; i < 3; ++i) toks.push_back({0, 70 + i});
  for (int i = 0; i < 5; ++i) toks.push_back({1, i});
  const int T = int(toks.size());
  AttentionMeta m;
  m.n_tokens = T;
  m.n_seqs = 2;
  m.max_pages_per_seq = 2;
  m.positions = cpu_tensor(DType::I32, {T});
  m.token_seq = cpu_tensor(DType::I32, {T});
  m.slot = cpu_tensor(DType::I32, {T});
  m.page_table = cpu_tensor(DType::I32, {2, 2});
  m.page_table.ptr<int32_t>()[0] = 4;
  m.page_table.ptr<int32_t>()[1] = 1;
  m.page_table.ptr<int32_t>()[2] = 3;
  for (int t = 0; t < T; ++t) {
    auto [s, pos] = toks[t];
    m.positions.ptr<int32_t>()[t] = pos;
    m.token_seq.ptr<int32_t>()[t] = s;
    m.slot.ptr<int32_t>()[t] = seq_pages[s][pos / P] * P + pos % P;
  }
  Tensor q = random_tensor(rng, DType::F32, {T, H * qk});
  Tensor kv = random_tensor(rng, DType::F32, {T, kv_dim});
  Tensor q_before = cpu_tensor(DType::F32, {T, H * qk});
  std::copy(q.ptr<float>(), q.ptr<float>() + q.numel(), q_before.ptr<float>());
  cpu::mla_rope_cache_write(q, kv, w, p, rope, m, cache);
  Tensor out = cpu_tensor(DType::F32, {T, H * V});
  cpu::mla_attention(q, w, p, m, cache, out);

  // The written latent: normalized compressed KV, then the rotated rope key.
  auto rot = [&](const float* x, int pos, double* y) {
    for (int i = 0; i < R / 2; ++i) {
      double a = double(pos) * rope.inv_freq.ptr<float>()[i];
      double c = std::cos(a) * rope.attention_factor, s = std::sin(a) * rope.attention_factor;
      y[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
      y[2 * i + 1] = x[2 * i + 1] * c + x[2 * i] * s;
    }
  };
  for (int t = 0; t < T; ++t) {
    const float* k = kv.ptr<float>() + t * kv_dim;
    const float* row = cache.pages.ptr<float>() + int64_t(m.slot.ptr<int32_t>()[t]) * kv_dim;
    double ms = 0;
    for (int c = 0; c < L; ++c) ms += double(k[c]) * k[c];
    double inv = 1 / std::sqrt(ms / L + 1e-6);
    for (int c = 0; c < L; ++c) EXPECT_NEAR(row[c], k[c] * inv * w.kv_a_norm.ptr<float>()[c], 1e-5);
    double kr[R];
    rot(k + L, toks[t].second, kr);
    for (int r = 0; r < R; ++r) EXPECT_NEAR(row[L + r], kr[r], 1e-5);
  }
  // Expanded attention: keys and values per head from the latent, softmax over positions 0..pos.
  std::vector<double> ref(T * H * V);
  for (int t = 0; t < T; ++t) {
    auto [s, pos] = toks[t];
    for (int h = 0; h < H; ++h) {
      const float* qh = q_before.ptr<float>() + (t * H + h) * qk;
      double qr[R];
      rot(qh + nope, pos, qr);
      std::vector<double> sc(pos + 1);
      std::vector<std::vector<double>> vals(pos + 1, std::vector<double>(V));
      for (int j = 0; j <= pos; ++j) {
        const float* row = cache.pages.ptr<float>() + int64_t(seq_pages[s][j / P] * P + j % P) * kv_dim;
        double score = 0;
        for (int d = 0; d < nope; ++d) {
          double kd = 0;
          for (int c = 0; c < L; ++c) kd += double(w.w_uk.ptr<float>()[(h * nope + d) * L + c]) * row[c];
          score += qh[d] * kd;
        }
        for (int r = 0; r < R; ++r) score += qr[r] * row[L + r];
        sc[j] = score * p.softmax_scale;
        for (int v = 0; v < V; ++v)
          for (int c = 0; c < L; ++c) vals[j][v] += double(w.w_uv.ptr<float>()[(h * V + v) * L + c]) * row[c];
      }
      double mx = *std::max_element(sc.begin(), sc.end()), z = 0;
      for (double& x : sc) z += x = std::exp(x - mx);
      for (int j = 0; j <= pos; ++j)
        for (int v = 0; v < V; ++v) ref[(t * H + h) * V + v] += sc[j] / z * vals[j][v];
    }
  }
  EXPECT_LT(rel_error(ref, out), 1e-5);
}
