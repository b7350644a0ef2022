// The pieces of `trident bench e2e`: random weights in the release's layout, routing targets and
// their steering rule, the load figures, the roofline's bytes and FLOPs, and the stage marks of
// the forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "backend/stage_timer.h"
#include "model/deepseek_v3.h"
#include "model/presets.h"
#include "model/random_weights.h"
#include "runtime/routing_target.h"
#include "runtime/step_builder.h"
#include "runtime/step_roofline.h"

using namespace trident;

namespace {

int64_t linear_bytes(const LinearWeight& w) {
  return int64_t(w.weight.nbytes()) + (w.scale_inv.defined() ? int64_t(w.scale_inv.nbytes()) : 0);
}

int64_t mlp_bytes(const MlpWeights& m) {
  return linear_bytes(m.gate) + linear_bytes(m.up) + linear_bytes(m.down);
}

int64_t layer_tensor_bytes(const LayerWeights& l) {
  const AttentionWeights& a = l.attn;
  int64_t n = int64_t(l.input_norm.nbytes() + l.post_attention_norm.nbytes());
  n += linear_bytes(a.q_a) + int64_t(a.q_a_norm.nbytes()) + linear_bytes(a.q_b) +
       linear_bytes(a.kv_a) + int64_t(a.mla.kv_a_norm.nbytes()) + linear_bytes(a.mla.kv_b) +
       int64_t(a.mla.w_uk.nbytes() + a.mla.w_uv.nbytes()) + linear_bytes(a.o);
  if (!l.is_moe) return n + mlp_bytes(l.mlp);
  n += linear_bytes(l.moe.router) + int64_t(l.moe.router_bias.nbytes());
  for (size_t e = 0; e < l.moe.experts.gate.size(); ++e)
    n += linear_bytes(l.moe.experts.gate[e]) + linear_bytes(l.moe.experts.up[e]) +
         linear_bytes(l.moe.experts.down[e]);
  return n + mlp_bytes(l.moe.shared);
}

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s / double(v.size()));
}

}  // namespace

TEST(RandomWeights, LayersHaveTheReleaseLayoutAndTheSizesTheirCountSays) {
  auto backend = make_cpu_backend();
  const ModelConfig c = preset_config("tiny");
  RandomWeights random(*backend, c, 3);
  const LayerWeights dense = random.layer(0);
  const LayerWeights moe = random.layer(1, [](int e) { return e % 2 == 0; });
  EXPECT_FALSE(dense.is_moe);
  ASSERT_TRUE(moe.is_moe);
  EXPECT_TRUE(dense.attn.q_a.fp8() && dense.attn.o.fp8() && dense.mlp.down.fp8());
  EXPECT_EQ(dense.attn.q_b.scale_inv.dim(0), (c.num_attention_heads * c.qk_head_dim() + 127) / 128);
  EXPECT_EQ(moe.moe.router.weight.dtype, DType::BF16);
  EXPECT_EQ(moe.moe.router_bias.dtype, DType::F32);
  EXPECT_EQ(int(moe.moe.experts.gate.size()), c.n_routed_experts / 2);
  EXPECT_EQ(moe.moe.experts.global_to_local[2], 1);
  EXPECT_EQ(moe.moe.experts.global_to_local[3], -1);
  const DType act = backend->activation_dtype();
  EXPECT_EQ(layer_tensor_bytes(dense), RandomWeights::layer_bytes(c, false, 0, act));
  EXPECT_EQ(layer_tensor_bytes(moe), RandomWeights::layer_bytes(c, true, c.n_routed_experts / 2, act));
}

TEST(RandomWeights, Fp8CodesAreFiniteAndALayerKeepsItsInputsSize) {
  auto backend = make_cpu_backend();
  const ModelConfig c = preset_config("tiny");
  RandomWeights random(*backend, c, 5);
  const LayerWeights l = random.layer(0);
  const LinearWeight& w = l.mlp.down;  // [hidden, intermediate]
  const auto* codes = w.weight.ptr<uint8_t>();
  int zeros = 0;
  for (size_t i = 0; i < w.weight.nbytes(); ++i) {
    ASSERT_NE(codes[i] & 0x7f, 0x7f) << "NaN code at " << i;
    zeros += codes[i] == 0;
  }
  EXPECT_LT(zeros, int(w.weight.nbytes()) / 50);  // filled, not left as allocated
  const int64_t T = 64, in = w.in_features();
  Tensor x = cpu_tensor(DType::F32, {T, in});
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = normal(rng);
  Tensor y = backend->alloc(DType::F32, {T, w.out_features()});
  backend->linear(x, w, y);
  std::vector<float> out(y.ptr<float>(), y.ptr<float>() + y.numel());
  EXPECT_GT(rms(out), 0.4);
  EXPECT_LT(rms(out), 2.5);
}

TEST(RandomWeights, FillCopiesWholeRowsAndLeavesAPartialRowAlone) {
  auto backend = make_cpu_backend();
  RandomWeights random(*backend, preset_config("tiny"), 7);
  const int64_t row = RandomWeights::kRowBytes / 2;
  Tensor t = cpu_tensor(DType::BF16, {3 * row + 5});
  random.fill(t, 0.5f);
  std::vector<float> filled;
  for (int64_t i = 0; i < 3 * row; ++i) filled.push_back(bf16_to_f32(t.ptr<uint16_t>()[i]));
  EXPECT_NEAR(rms(filled), 0.5, 0.05);
  for (int64_t i = 3 * row; i < t.numel(); ++i) EXPECT_EQ(t.ptr<uint16_t>()[i], 0);
}

TEST(RoutingTarget, SharesSumToOneAndNoExpertExceedsOneChoicePerToken) {
  const std::vector<double> even = target_shares(RoutingKind::Uniform, 256, 8, 1.0, 1);
  for (double s : even) EXPECT_DOUBLE_EQ(s, 1.0 / 256);
  const std::vector<double> zipf = target_shares(RoutingKind::Zipf, 256, 8, 1.0, 1);
  EXPECT_NEAR(std::accumulate(zipf.begin(), zipf.end(), 0.0), 1.0, 1e-9);
  std::vector<double> sorted = zipf;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  EXPECT_NEAR(sorted[0], 1.0 / 8, 1e-9);  // 1/H(256) = 0.16 is capped
  // Uncapped ranks keep the Zipf ratio r^-1.
  EXPECT_NEAR(sorted[1] / sorted[3], 4.0 / 2.0, 1e-9);
  EXPECT_NEAR(sorted[9] / sorted[99], 100.0 / 10.0, 1e-9);
  // Another seed puts the busiest experts elsewhere.
  const std::vector<double> other = target_shares(RoutingKind::Zipf, 256, 8, 1.0, 2);
  EXPECT_NE(std::max_element(zipf.begin(), zipf.end()) - zipf.begin(),
            std::max_element(other.begin(), other.end()) - other.begin());
}

TEST(RoutingTarget, SteeringRaisesTheBiasOfExpertsBelowTheirShareAndLowersTheOthers) {
  std::vector<float> bias = {0, 0, 0, 0};
  steer_bias(bias, {10, 30, 40, 20}, {0.25, 0.25, 0.25, 0.25}, 0.1f);
  EXPECT_FLOAT_EQ(bias[0], 0.1f);
  EXPECT_FLOAT_EQ(bias[1], -0.1f);
  EXPECT_FLOAT_EQ(bias[2], -0.1f);
  EXPECT_FLOAT_EQ(bias[3], 0.1f);
  EXPECT_GT(steering_step(0), steering_step(10));
}

TEST(RoutingTarget, LoadSummaryRecoversAZipfExponentAndTheImbalance) {
  std::vector<int64_t> load(256);
  for (int r = 0; r < 256; ++r) load[r] = int64_t(std::llround(100000.0 / std::pow(r + 1, 0.8)));
  const LoadSummary s = summarize_load(load);
  EXPECT_NEAR(s.zipf_exponent, 0.8, 0.01);
  EXPECT_EQ(s.touched, 256);
  EXPECT_NEAR(s.max_over_mean, 100000.0 / (double(s.choices) / 256), 1e-9);
  const LoadSummary even = summarize_load(std::vector<int64_t>(16, 5));
  EXPECT_DOUBLE_EQ(even.max_over_mean, 1.0);
  EXPECT_NEAR(even.zipf_exponent, 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(even.top_decile_share, 1.0 / 16);
}

TEST(StepRoofline, DecodeReadsWeightsAndCacheAndPrefillPaysForFlops) {
  const ModelConfig c = preset_config("deepseek-v3");
  const DeviceCeilings ceil{4.2e12, 7.0e14, 5.0e14};
  std::vector<int64_t> rows(c.num_hidden_layers, 0);
  std::vector<int> touched(c.num_hidden_layers, 0);
  for (int l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l) {
    rows[l] = 256 * 8;
    touched[l] = 256;
  }
  const StepWork decode =
      step_work(c, std::vector<SequenceShape>(256, {1, 2001}), 256, rows, touched, ceil);
  // An MoE layer of a 256-request decode: all 256 experts' FP8 weights and 256 contexts of
  // latents dominate the bytes.
  const StageWork& moe = decode.layers.back();
  const double expert_bytes = 256.0 * 3 * 7168 * 2048;
  EXPECT_NEAR(moe[int(Stage::Experts)].bytes / expert_bytes, 1.0, 0.001);
  const double kv = 256.0 * (2001 + 1) * 576 * 2;
  EXPECT_GT(moe[int(Stage::Attention)].bytes, kv);
  EXPECT_LT(moe[int(Stage::Attention)].bytes, kv + 300e6);
  // Decode attention takes the absorbed form: no FP8 work beyond the four projections.
  const double projections = 2.0 * 256 * (1536.0 * 7168 + 24576.0 * 1536 + 576.0 * 7168 + 7168.0 * 16384);
  EXPECT_NEAR(moe[int(Stage::Attention)].fp8_flops / projections, 1.0, 1e-9);
  const Work layer = total(moe);
  EXPECT_GT(layer.bytes / ceil.copy_bytes_per_s,
            layer.fp8_flops / ceil.fp8_flops_per_s + layer.bf16_flops / ceil.bf16_flops_per_s);
  EXPECT_DOUBLE_EQ(layer.floor_seconds(ceil), layer.bytes / ceil.copy_bytes_per_s);

  // Whole 2000-token prompts: the expanded form (kv_b over the prompt, 320 MACs a pair) is
  // cheaper than the absorbed one (1088), and the step is bound by FLOPs.
  const StepWork prefill =
      step_work(c, std::vector<SequenceShape>(8, {2000, 2000}), 8, rows, touched, ceil);
  const Work& attn = prefill.layers.back()[int(Stage::Attention)];
  EXPECT_GT(attn.fp8_flops, 2.0 * 16000 * (1536.0 * 7168 + 24576.0 * 1536 + 576.0 * 7168 + 7168.0 * 16384));
  const double pairs = 8 * 2000.0 * 2001 / 2;
  EXPECT_NEAR(attn.bf16_flops / (2 * 128 * pairs * 320), 1.0, 1e-9);
  const Work all = total(prefill.layers.back());
  EXPECT_GT(all.fp8_flops / ceil.fp8_flops_per_s, all.bytes / ceil.copy_bytes_per_s);
  // The lm_head is read once per step, outside the layers.
  EXPECT_NEAR(decode.outside[int(Stage::Rest)].bytes, 129280.0 * 7168 * 2 + 256.0 * 7168 * 2, 1);
}

TEST(StageTimer, ForwardMarksEveryLayersStagesAndLeavesTheLogitsAlone) {
  auto backend = make_cpu_backend();
  const ModelConfig c = preset_config("tiny");
  RandomWeights random(*backend, c, 11);
  ModelWeights w = random.globals();
  for (int l = 0; l < c.num_hidden_layers; ++l) w.layers.push_back(random.layer(l));
  DeepseekV3 model(c, std::move(w), *backend);
  KvCache cache = make_kv_cache(*backend, c, 2);
  std::vector<int32_t> tokens = {5, 17, 99, 3, 1000, 7}, pages = {0, 1};
  const StepInput in = upload_step(*backend, build_step({{&tokens, 0, 6, &pages, true}}));
  const Tensor plain = model.forward(in, cache);
  std::vector<float> a(plain.numel());
  backend->to_host(plain, a.data());

  std::unique_ptr<StageTimer> timer = make_stage_timer(*backend);
  model.set_stage_timer(timer.get());
  const Tensor marked = model.forward(in, cache);
  std::vector<float> b(marked.numel());
  backend->to_host(marked, b.data());
  EXPECT_EQ(a, b);

  const std::vector<StageTimer::Interval> intervals = timer->finish();
  ASSERT_FALSE(intervals.empty());
  EXPECT_EQ(intervals.front().layer, -1);
  EXPECT_EQ(intervals.back().layer, -1);
  std::vector<std::vector<int>> seen(c.num_hidden_layers, std::vector<int>(kStageCount, 0));
  for (const StageTimer::Interval& i : intervals) {
    EXPECT_GE(i.seconds, 0.0);
    if (i.layer >= 0) seen[i.layer][int(i.stage)]++;
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    EXPECT_EQ(seen[l][int(Stage::Attention)], 1) << l;
    EXPECT_EQ(seen[l][int(Stage::Rest)], 2) << l;  // the two norms
    EXPECT_EQ(seen[l][int(Stage::Mlp)], 1) << l;   // dense MLP or shared expert
    EXPECT_EQ(seen[l][int(Stage::Gate)], c.is_moe_layer(l) ? 1 : 0) << l;
    EXPECT_EQ(seen[l][int(Stage::Experts)], c.is_moe_layer(l) ? 1 : 0) << l;
    EXPECT_EQ(seen[l][int(Stage::Dispatch)], 0) << l;  // one rank: no exchange
  }
  EXPECT_TRUE(timer->finish().empty());  // finish starts afresh
}
