// MLA on the GPU against the CPU backend: the fused RoPE / latent-cache write, and absorbed
// attention over the paged cache for decode batches (one split or many), ragged prefills, chunked
// prefills over a cached prefix and steps that mix them, at DeepSeek-V3's head shapes and small
// ones. Cache rows outside every sequence's context are NaN, so a read past the causal limit or
// from the wrong page shows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "backend/cuda/kernel_launch.h"
#include "gpu_test_support.h"

namespace trident::gpu_test {
namespace {

constexpr int kPage = AttentionMeta::kPageSize;

struct MlaShape {
  const char* name;
  int heads, nope, rope, v, latent;
};

const MlaShape kDeepSeekV3{"DeepSeek-V3", 128, 128, 64, 128, 512};
const MlaShape kTiny{"trident-tiny", 4, 64, 32, 64, 128};
// Head blocks of 16 with a partial last one.
const MlaShape kTwentyHeads{"20 heads, tiny latent", 20, 64, 32, 64, 128};
// DeepSeek-V2-Lite: DeepSeek's latent with few heads.
const MlaShape kSixteenHeads{"16 heads, DeepSeek latent", 16, 128, 64, 128, 512};
// The golden-test models (tests/data/golden/*/config.json): latent and rope dims that are not
// powers of two run on padded variants; v_head_dim 40 takes the unaligned per-head GEMM.
const MlaShape kGoldenV2{"golden v2, latent 64 rope 16", 2, 32, 16, 32, 64};
const MlaShape kGoldenV3{"golden v3, latent 80 rope 16 v 40", 2, 48, 16, 40, 80};
const MlaShape kGoldenV3Yarn{"golden v3 yarn, latent 80 rope 32 v 40", 3, 32, 32, 40, 80};

MlaParams params(const MlaShape& s) {
  // Softmax scale as DeepSeek's with YaRN's mscale^2 folded in: peakier than 1/sqrt(d).
  return {s.heads, s.nope, s.rope, s.v, s.latent, 1.5f / std::sqrt(float(s.nope + s.rope)), 1e-6f};
}

uint16_t bf16_nan() { return f32_to_bf16(NAN); }

// --- RoPE + latent-cache write ---------------------------------------------------------------

RopeTable yarn_like_rope(int rope_dim) {
  RopeTable t{cpu_tensor(DType::F32, {rope_dim / 2}), 1.21f};
  for (int i = 0; i < rope_dim / 2; ++i) {
    const float plain = std::pow(10000.0f, -2.0f * float(i) / float(rope_dim));
    t.inv_freq.ptr<float>()[i] = i < rope_dim / 4 ? plain : plain / 40.0f;  // interpolated half
  }
  return t;
}

void expect_rope_cache_write_matches(const MlaShape& s, DType norm_dtype) {
  SCOPED_TRACE(fmt::format("{}, kv_a_norm {}", s.name, dtype_name(norm_dtype)));
  const MlaParams p = params(s);
  // First positions, page edges, and positions far out (DeepSeek-V3 runs to 163840).
  const std::vector<int32_t> positions = {0, 1, 63, 64, 65, 127, 1000, 32767, 163839};
  const int T = int(positions.size()), n_pages = 4, row = s.latent + s.rope;
  const int qk = s.nope + s.rope;

  AttentionMeta host;
  host.n_tokens = T;
  host.positions = cpu_tensor(DType::I32, {T});
  host.slot = cpu_tensor(DType::I32, {T});
  std::vector<int32_t> slots(n_pages * kPage);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng());
  for (int t = 0; t < T; ++t) {
    host.positions.ptr<int32_t>()[t] = positions[t];
    host.slot.ptr<int32_t>()[t] = slots[t];
  }
  AttentionMeta device = host;
  device.positions = gpu().upload(host.positions);
  device.slot = gpu().upload(host.slot);

  Tensor q = random_host(DType::BF16, {T, int64_t(s.heads) * qk});
  Tensor kv = random_host(DType::BF16, {T, row}, 2.0f);
  MlaWeights w;
  w.kv_a_norm = random_host(norm_dtype, {s.latent});
  const RopeTable rope = yarn_like_rope(s.rope);

  // Both caches start as NaN: the rows the op does not write must stay so.
  Tensor cache_cpu = cpu_tensor(DType::BF16, {n_pages, kPage, row});
  std::fill_n(cache_cpu.ptr<uint16_t>(), cache_cpu.numel(), bf16_nan());
  KvLayer layer_gpu{poisoned(DType::BF16, {n_pages, kPage, row})};
  Tensor q_gpu = gpu().upload(q);
  MlaWeights w_gpu;
  w_gpu.kv_a_norm = gpu().upload(w.kv_a_norm);
  const RopeTable rope_gpu{gpu().upload(rope.inv_freq), rope.attention_factor};
  gpu().mla_rope_cache_write(q_gpu, gpu().upload(kv), w_gpu, p, rope_gpu, device, layer_gpu);

  KvLayer layer_cpu{cache_cpu};
  cpu().mla_rope_cache_write(q, kv, w, p, rope, host, layer_cpu);

  const Diff dq = compare(download(q_gpu), q);
  EXPECT_EQ(dq.nan + dq.over_ulps, 0) << "q: " << describe(dq);
  Tensor cache_got = download(layer_gpu.pages);
  const int64_t n_rows = int64_t(n_pages) * kPage;
  Tensor got_rows = cpu_tensor(DType::BF16, {T, row}), want_rows = cpu_tensor(DType::BF16, {T, row});
  for (int t = 0; t < T; ++t) {
    const int64_t r = host.slot.ptr<int32_t>()[t];
    std::memcpy(got_rows.ptr<uint16_t>() + t * row, cache_got.ptr<uint16_t>() + r * row, row * 2);
    std::memcpy(want_rows.ptr<uint16_t>() + t * row, cache_cpu.ptr<uint16_t>() + r * row, row * 2);
  }
  const Diff dc = compare(got_rows, want_rows);
  EXPECT_EQ(dc.nan + dc.over_ulps, 0) << "written cache rows: " << describe(dc);
  int64_t touched = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    if (std::find(slots.begin(), slots.begin() + T, int32_t(r)) != slots.begin() + T) continue;
    for (int c = 0; c < row; ++c)
      touched += !std::isnan(bf16_to_f32(cache_got.ptr<uint16_t>()[r * row + c]));
  }
  EXPECT_EQ(touched, 0) << "elements written outside the tokens' slots";
}

TEST(CudaMlaRopeCacheWrite, RotatesQueriesAndWritesNormalizedLatentWithinOneBf16Ulp) {
  SCOPED_TRACE(seed_note());
  for (const MlaShape& s :
       {kDeepSeekV3, kTiny, kTwentyHeads, kGoldenV2, kGoldenV3, kGoldenV3Yarn})
    for (DType norm : {DType::BF16, DType::F32}) expect_rope_cache_write_matches(s, norm);
}

// --- attention -------------------------------------------------------------------------------

// A sequence in a step: its context after the step and how many of its last positions are new.
struct Seq {
  int context, new_tokens;
};

struct Step {
  AttentionMeta host, device;
  int n_pages = 0;
  std::vector<bool> in_context;  // per cache row: some sequence's position < its context
};

Step make_step(const std::vector<Seq>& seqs) {
  Step st;
  const int S = int(seqs.size());
  int T = 0, max_pages = 1, max_kv = 0;
  for (const Seq& s : seqs) {
    T += s.new_tokens;
    st.n_pages += (s.context + kPage - 1) / kPage;
    max_pages = std::max(max_pages, (s.context + kPage - 1) / kPage);
    max_kv = std::max(max_kv, s.context);
  }
  st.n_pages += 2;  // pages no sequence owns
  std::vector<int32_t> pool(st.n_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng());

  AttentionMeta& m = st.host;
  m.n_tokens = T;
  m.n_seqs = S;
  m.max_pages_per_seq = max_pages;
  m.max_kv_len = max_kv;
  m.positions = cpu_tensor(DType::I32, {T});
  m.token_seq = cpu_tensor(DType::I32, {T});
  m.slot = cpu_tensor(DType::I32, {T});
  m.seq_start = cpu_tensor(DType::I32, {S + 1});
  m.seq_kv_len = cpu_tensor(DType::I32, {S});
  m.page_table = cpu_tensor(DType::I32, {S, max_pages});
  std::fill_n(m.page_table.ptr<int32_t>(), S * max_pages, -1);  // never read
  st.in_context.assign(size_t(st.n_pages) * kPage, false);
  int t = 0, next_page = 0;
  for (int s = 0; s < S; ++s) {
    m.seq_start.ptr<int32_t>()[s] = t;
    m.seq_kv_len.ptr<int32_t>()[s] = seqs[s].context;
    int32_t* table = m.page_table.ptr<int32_t>() + s * max_pages;
    for (int i = 0; i < (seqs[s].context + kPage - 1) / kPage; ++i) table[i] = pool[next_page++];
    for (int j = 0; j < seqs[s].context; ++j) st.in_context[table[j / kPage] * kPage + j % kPage] = true;
    for (int j = seqs[s].context - seqs[s].new_tokens; j < seqs[s].context; ++j, ++t) {
      m.positions.ptr<int32_t>()[t] = j;
      m.token_seq.ptr<int32_t>()[t] = s;
      m.slot.ptr<int32_t>()[t] = table[j / kPage] * kPage + j % kPage;
    }
  }
  m.seq_start.ptr<int32_t>()[S] = t;
  st.device = m;
  for (Tensor AttentionMeta::*field : {&AttentionMeta::positions, &AttentionMeta::token_seq,
                                       &AttentionMeta::slot, &AttentionMeta::seq_start,
                                       &AttentionMeta::seq_kv_len, &AttentionMeta::page_table})
    st.device.*field = gpu().upload(m.*field);
  return st;
}

double rel_l2_rows(const Tensor& got, const Tensor& want, int64_t row, int64_t* worst_row) {
  double worst = 0;
  for (int64_t r = 0; r < got.dim(0); ++r) {
    double err = 0, ref = 0;
    for (int64_t i = r * row; i < (r + 1) * row; ++i) {
      const double e = double(load_f32(got, i)) - load_f32(want, i);
      err += e * e;
      ref += double(load_f32(want, i)) * load_f32(want, i);
    }
    const double rel = std::sqrt(err / std::max(ref, 1e-30));
    if (!(rel <= worst)) {
      worst = rel;
      *worst_row = r;
    }
  }
  return worst;
}

// Bounds against the CPU's f32 result on the same bf16 inputs. The GPU rounds three
// intermediates to bf16 for the tensor cores (the latent query, the probabilities, the latent
// output) and the output itself: four roundings of relative size 2^-9 each, about 3e-3 in
// rel_l2 altogether (seen under Triton's interpreter against f64, kernels/tests/). A wrong key,
// position or page moves a token's error to order 1.
constexpr double kStepRelL2 = 1e-2;
constexpr double kTokenRelL2 = 2e-2;
double g_worst_token = 0;

// Runs the step on both backends; `splits` 0 lets the GPU choose, and an empty `variant` the
// attention variant. Returns the split it used.
int expect_attention_matches(const MlaShape& s, const std::vector<Seq>& seqs, int splits,
                             const std::string& variant = "") {
  std::string what = fmt::format("{}, {}, splits {}, seqs", s.name,
                                 variant.empty() ? "default variant" : variant, splits);
  for (const Seq& q : seqs) what += fmt::format(" ({}, {})", q.context, q.new_tokens);
  SCOPED_TRACE(what);
  const MlaParams p = params(s);
  const Step st = make_step(seqs);
  const int T = st.host.n_tokens, row = s.latent + s.rope, qk = s.nope + s.rope;

  Tensor cache = random_host(DType::BF16, {st.n_pages, kPage, row});
  for (int64_t r = 0; r < int64_t(st.n_pages) * kPage; ++r)
    if (!st.in_context[r]) std::fill_n(cache.ptr<uint16_t>() + r * row, row, bf16_nan());
  Tensor q = random_host(DType::BF16, {T, int64_t(s.heads) * qk});
  MlaWeights w;
  w.w_uk = random_host(DType::BF16, {s.heads, s.nope, s.latent}, 1.0f / std::sqrt(float(s.nope)));
  w.w_uv = random_host(DType::BF16, {s.heads, s.v, s.latent}, 1.0f / std::sqrt(float(s.latent)));

  Tensor want = cpu_tensor(DType::F32, {T, int64_t(s.heads) * s.v});
  cpu().mla_attention(q, w, p, st.host, KvLayer{cache}, want);

  MlaWeights w_gpu;
  w_gpu.w_uk = gpu().upload(w.w_uk);
  w_gpu.w_uv = gpu().upload(w.w_uv);
  Tensor out = poisoned(DType::BF16, {T, int64_t(s.heads) * s.v});
  gpu().set_mla_override(splits > 0 || !variant.empty()
                             ? std::optional<cuda::MlaChoice>(cuda::MlaChoice{variant, splits})
                             : std::nullopt);
  gpu().mla_attention(gpu().upload(q), w_gpu, p, st.device, KvLayer{gpu().upload(cache)}, out);
  gpu().set_mla_override(std::nullopt);
  const int used = gpu().last_mla().splits;
  if (!variant.empty()) {
    EXPECT_EQ(gpu().last_mla().variant, variant);
  }

  Tensor got = download(out);
  const Diff d = compare(got, want);
  EXPECT_EQ(d.nan, 0) << describe(d);
  EXPECT_LT(d.rel_l2, kStepRelL2) << describe(d);
  int64_t worst_row = -1;
  const double worst = rel_l2_rows(got, want, int64_t(s.heads) * s.v, &worst_row);
  EXPECT_LT(worst, kTokenRelL2) << "token " << worst_row << " (of " << T << "), " << describe(d);
  if (worst > g_worst_token) {
    g_worst_token = worst;
    ::testing::Test::RecordProperty("worst_token_rel_l2",
                                    fmt::format("{:.3g} ({}, split {})", worst, what, used));
  }
  return used;
}

// Decodes of every length class: one position, a page edge either side, two pages, long.
const std::vector<Seq> kDecodeBatch = {{1, 1},    {63, 1},   {64, 1},   {65, 1},
                                       {127, 1},  {1000, 1}, {3000, 1}, {2049, 1}};
// Prefill: a chunk over a cached prefix, fresh prompts across page edges, a one-token prompt.
const std::vector<Seq> kRaggedPrefill = {{70, 6}, {65, 65}, {1, 1}, {130, 130}, {64, 63}};
// One step of a continuous batch: a prompt, decodes, and a prompt's chunk.
const std::vector<Seq> kMixedStep = {{200, 200}, {4000, 1}, {64, 1}, {1500, 37}, {9, 9}};

class CudaMlaAttention : public ::testing::TestWithParam<MlaShape> {
 protected:
  void SetUp() override { g_worst_token = 0; }
};

TEST_P(CudaMlaAttention, DecodeBatchMatchesCpuWithOneSplitOrMany) {
  SCOPED_TRACE(seed_note());
  for (int splits : {0, 1, 5}) expect_attention_matches(GetParam(), kDecodeBatch, splits);
}

TEST_P(CudaMlaAttention, RaggedPrefillWithCachedPrefixMatchesCpu) {
  SCOPED_TRACE(seed_note());
  for (int splits : {0, 3}) expect_attention_matches(GetParam(), kRaggedPrefill, splits);
}

TEST_P(CudaMlaAttention, StepMixingPrefillChunksAndDecodesMatchesCpu) {
  SCOPED_TRACE(seed_note());
  for (int splits : {0, 2}) expect_attention_matches(GetParam(), kMixedStep, splits);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaMlaAttention,
                         ::testing::Values(kDeepSeekV3, kTiny, kTwentyHeads, kSixteenHeads,
                                           kGoldenV2, kGoldenV3, kGoldenV3Yarn),
                         [](const ::testing::TestParamInfo<MlaShape>& info) {
                           std::string name = info.param.name;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(CudaMlaAttentionSplits, SplitsALongSingleDecodeAcrossPrograms) {
  SCOPED_TRACE(seed_note());
  const int used = expect_attention_matches(kDeepSeekV3, {{4096, 1}}, 0);
  EXPECT_GT(used, 1) << "one token's 4096 positions should be shared by several programs";
}

TEST(CudaMlaAttentionSplits, LargeDecodeBatchOfRandomContextsMatchesCpu) {
  SCOPED_TRACE(seed_note());
  std::vector<Seq> seqs;
  std::uniform_int_distribution<int> length(1, 2500);
  for (int i = 0; i < 48; ++i) seqs.push_back({length(rng()), 1});
  expect_attention_matches(kDeepSeekV3, seqs, 0);
}

// DeepSeek's 64-head tile at every compiled L2 prefetch distance (PREFETCH_512 in
// kernels/mla_attention.py), forced whatever the default: decodes of every length class and a
// step mixing prefill chunks, with one split and with several (splits past the short contexts
// are empty).
TEST(CudaMlaAttentionSplits, EveryPrefetchDistanceOfTheDeepSeekTileMatchesCpu) {
  SCOPED_TRACE(seed_note());
  const int arch = gpu().context().arch();
  int distances = 0;
  for (const cuda::KernelVariant& v : cuda::compiled_kernel_variants()) {
    if (v.arch != arch || std::string_view(v.kernel) != "mla_attention" ||
        !v.matches({{"KV_BLOCK", 512}, {"ROPE_BLOCK", 64}, {"PADDED", 0}, {"BLOCK_H", 64},
                    {"SPLIT", 0}}))
      continue;
    ++distances;
    for (int splits : {1, 6}) {
      expect_attention_matches(kDeepSeekV3, kDecodeBatch, splits, v.name);
      expect_attention_matches(kDeepSeekV3, kMixedStep, splits, v.name);
    }
  }
  EXPECT_GE(distances, 2) << "DeepSeek's tile should be compiled with and without the prefetch";
}

TEST(CudaMlaAttentionSplits, RejectsLatentSizesBeyondThePaddedBlocks) {
  // Any latent up to 512 runs padded; 1024 has no block.
  const MlaShape odd{"latent 1024", 4, 64, 32, 64, 1024};
  const Step st = make_step({{3, 3}});
  MlaWeights w;
  w.w_uk = gpu().alloc(DType::BF16, {4, 64, 1024});
  w.w_uv = gpu().alloc(DType::BF16, {4, 64, 1024});
  Tensor q = gpu().alloc(DType::BF16, {3, 4 * 96});
  Tensor out = gpu().alloc(DType::BF16, {3, 4 * 64});
  KvLayer cache{gpu().alloc(DType::BF16, {st.n_pages, kPage, 1056})};
  EXPECT_THROW(gpu().mla_attention(q, w, params(odd), st.device, cache, out), Error);
}

}  // namespace
}  // namespace trident::gpu_test
