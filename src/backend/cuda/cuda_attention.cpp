// MLA on the GPU: attention preparation (kernels/mla_rope_cache.py) and attention in the absorbed
// form over the paged latent cache, as four launches: queries into the latent (mla_head_gemm.py),
// attention with the context split across programs when there are too few tokens to fill the GPU
// (mla_attention.py), the splits' combine, and the latent output to values (mla_head_gemm.py).
// Prefill takes the same absorbed path: 1088 MACs per (token, position, head), where DeepSeek's
// prefill expands keys and values per head through kv_b_proj (16.8M MACs per position, once)
// and then needs 320: for long prompts the expanded form does about a third of the work.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <string_view>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/trident_kernels.h"
#include "core/error.h"

namespace trident::cuda {

namespace {

constexpr int kPage = AttentionMeta::kPageSize;
// A split covers at least one tile of positions (the kernels' BLOCK_N, at most a page).
constexpr int kMinPositionsPerSplit = 64;
constexpr int kMaxSplits = 64;
constexpr int64_t kI32Limit = int64_t(1) << 31;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The latent and rope dims the MLA kernels cover (kernels/mla_attention.py): tuned variants for
// DeepSeek's 512/64 and trident-tiny's 128/32, padded ones (blocks the next power of two, at least
// 16) for any other pair up to these, checked up front so the error says what to change rather
// than which tag no variant has.
constexpr int kMaxPaddedLatent = 512;
constexpr int kMaxPaddedRope = 64;

void expect_supported_latent(const char* op, const MlaParams& p) {
  TRI_CHECK(p.kv_lora_rank >= 1 && p.kv_lora_rank <= kMaxPaddedLatent && p.qk_rope_dim >= 2 &&
                p.qk_rope_dim <= kMaxPaddedRope && p.qk_rope_dim % 2 == 0,
            "{}: kv_lora_rank {} with qk_rope_head_dim {} has no compiled MLA kernel (compiled: "
            "kv_lora_rank 1..{} with an even qk_rope_head_dim 2..{}); add larger blocks to "
            "PADDED_KV_BLOCKS / PADDED_ROPE_BLOCKS in kernels/mla_rope_cache.py and "
            "kernels/mla_attention.py",
            op, p.kv_lora_rank, p.qk_rope_dim, kMaxPaddedLatent, kMaxPaddedRope);
}

// Which variants of `kernel` a latent takes: tuned ones compiled for exactly (L, R) when the build
// has them (and the query's nope part keeps their 16-element alignment), else padded ones.
struct LatentBlocks {
  int kv_block, rope_block, padded;
};

int padded_block(int64_t dim) {
  int block = 16;
  while (block < dim) block *= 2;
  return block;
}

LatentBlocks latent_blocks(std::string_view kernel, int arch, const MlaParams& p) {
  const int L = int(p.kv_lora_rank), R = int(p.qk_rope_dim);
  if (p.qk_nope_dim % 16 == 0) {
    for (const KernelVariant& v : compiled_kernel_variants())
      if (v.arch == arch && kernel == v.kernel &&
          v.matches({{"KV_BLOCK", L}, {"ROPE_BLOCK", R}, {"PADDED", 0}}))
        return {L, R, 0};
  }
  return {padded_block(L), padded_block(R), 1};
}

void expect_cache(const OpContext& ctx, const char* op, const KvLayer& cache, const MlaParams& p) {
  expect_device_tensor(ctx, cache.pages, op, "cache pages", {DType::BF16});
  const int64_t row = p.kv_lora_rank + p.qk_rope_dim;
  TRI_CHECK(cache.pages.row_size() == kPage * row, "{}: cache pages {} are not [n, {}, {}]", op,
            cache.pages.shape_str(), kPage, row);
}

void expect_meta_tensor(const OpContext& ctx, const char* op, const Tensor& t, const char* name,
                        int64_t numel) {
  expect_device_tensor(ctx, t, op, name, {DType::I32});
  TRI_CHECK(t.numel() == numel, "{}: meta.{} {} should hold {} values", op, name, t.shape_str(),
            numel);
}

void expect_query(const OpContext& ctx, const char* op, const Tensor& q, const MlaParams& p,
                  int T) {
  expect_device_tensor(ctx, q, op, "q", {DType::BF16});
  const int64_t qk = p.qk_nope_dim + p.qk_rope_dim;
  TRI_CHECK(q.dim(0) == T && q.numel() == int64_t(T) * p.n_heads * qk,
            "{}: q {} does not hold {} tokens x {} heads x {}", op, q.shape_str(), T, p.n_heads,
            qk);
}

// C[h] = A[h] B[h] for every head h (kernels/mla_head_gemm.py); strides in elements.
struct HeadGemm {
  CUdeviceptr a, b, c;
  int64_t M, N, K;
  int64_t stride_am, stride_ab, stride_bb, stride_b_row, stride_cm, stride_cb;
  bool b_nk;
};

void head_gemm(const OpContext& ctx, int heads, const HeadGemm& g) {
  const int block_m = g.M <= 16 ? 16 : g.M <= 64 ? 64 : 128;
  // Head dims such as v_head_dim 40 leave N and the strides off multiples of 16.
  const bool aligned = g.N % 16 == 0 && g.K % 16 == 0 && g.stride_am % 16 == 0 &&
                       g.stride_ab % 16 == 0 && g.stride_bb % 16 == 0 &&
                       g.stride_b_row % 16 == 0 && g.stride_cm % 16 == 0 && g.stride_cb % 16 == 0;
  const KernelVariant& variant =
      select_variant("mla_head_gemm", ctx.device.arch(),
                     {{"B_NK", g.b_nk ? 1 : 0},
                      {"BLOCK_M", block_m},
                      {"ALIGNED", aligned ? 1 : 0}});
  const int64_t tiles =
      ceil_div(g.M, variant.tag("BLOCK_M")) * ceil_div(g.N, variant.tag("BLOCK_N"));
  TRI_CHECK(tiles < kI32Limit, "mla_attention: {} tokens are too many for one launch", g.M);
  kernels::mla_head_gemm({ctx.device, ctx.stream, {unsigned(tiles), unsigned(heads), 1}}, variant,
                         g.a, g.b, g.c, int32_t(g.M), int32_t(g.N), int32_t(g.K),
                         int32_t(g.stride_am), int32_t(g.stride_ab), g.stride_bb,
                         int32_t(g.stride_b_row), int32_t(g.stride_cm), int32_t(g.stride_cb));
}

// Context splits for `programs` (token, head block) pairs. A 64-head attention program takes most
// of a multiprocessor's shared memory, so programs run one per multiprocessor, in waves; the
// time is that of the waves, the last one counted whole. Take the fewest splits whose waves are
// within 95% of the best filling (FlashAttention's rule); none once the tokens fill a wave.
// Splits are whole tiles of the longest context, so only counts that divide its tiles evenly
// (ceil(tiles / per-split tiles)) are considered.
int choose_splits(int64_t programs, int max_kv_len, int sm_count) {
  if (programs * 5 >= int64_t(sm_count) * 4) return 1;
  const int64_t tiles = ceil_div(max_kv_len, kMinPositionsPerSplit);
  const int max_splits = int(std::clamp<int64_t>(tiles, 1, kMaxSplits));
  auto effective = [&](int splits) { return int(ceil_div(tiles, ceil_div(tiles, splits))); };
  auto filling = [&](int splits) {
    const double waves = double(programs * splits) / sm_count;
    return waves / std::ceil(waves);
  };
  double best = 0;
  for (int s = 1; s <= max_splits; ++s) best = std::max(best, filling(effective(s)));
  for (int s = 1; s <= max_splits; ++s)
    if (filling(effective(s)) >= 0.95 * best) return effective(s);
  return effective(max_splits);
}

}  // namespace

void mla_rope_cache_write(const OpContext& ctx, Tensor& q, const Tensor& kv, const MlaWeights& w,
                          const MlaParams& p, const RopeTable& rope, const AttentionMeta& meta,
                          KvLayer& cache) {
  const char* op = "mla_rope_cache_write";
  const int T = meta.n_tokens;
  expect_supported_latent(op, p);
  expect_query(ctx, op, q, p, T);
  expect_device_tensor(ctx, kv, op, "kv", {DType::BF16});
  const int64_t row = p.kv_lora_rank + p.qk_rope_dim;
  TRI_CHECK(kv.dim(0) == T && kv.row_size() == row, "{}: kv {} does not hold {} tokens x {}", op,
            kv.shape_str(), T, row);
  expect_device_tensor(ctx, w.kv_a_norm, op, "kv_a_norm", {DType::BF16, DType::F32});
  TRI_CHECK(w.kv_a_norm.numel() == p.kv_lora_rank, "{}: kv_a_norm has {} elements, not {}", op,
            w.kv_a_norm.numel(), p.kv_lora_rank);
  expect_device_tensor(ctx, rope.inv_freq, op, "rope inv_freq", {DType::F32});
  TRI_CHECK(rope.inv_freq.numel() == p.qk_rope_dim / 2, "{}: inv_freq has {} elements, not {}",
            op, rope.inv_freq.numel(), p.qk_rope_dim / 2);
  expect_meta_tensor(ctx, op, meta.positions, "positions", T);
  expect_meta_tensor(ctx, op, meta.slot, "slot", T);
  expect_cache(ctx, op, cache, p);
  if (T == 0) return;
  const LatentBlocks blocks = latent_blocks(op, ctx.device.arch(), p);
  const KernelVariant& variant = select_variant(
      op, ctx.device.arch(),
      {{"KV_BLOCK", blocks.kv_block},
       {"ROPE_BLOCK", blocks.rope_block},
       {"PADDED", blocks.padded},
       {"W", int(w.kv_a_norm.dtype == DType::F32 ? KernelDType::F32 : KernelDType::BF16)}});
  kernels::mla_rope_cache_write({ctx.device, ctx.stream, {unsigned(T), 1, 1}}, variant,
                                device_ptr(q), device_ptr(kv), device_ptr(w.kv_a_norm),
                                device_ptr(rope.inv_freq), device_ptr(meta.positions),
                                device_ptr(meta.slot), device_ptr(cache.pages), p.n_heads,
                                p.qk_nope_dim, p.kv_lora_rank, p.qk_rope_dim,
                                cache.pages.dim(0) * kPage, p.kv_norm_eps,
                                rope.attention_factor);
}

MlaChoice mla_attention(const OpContext& ctx, const Tensor& q, const MlaWeights& w,
                        const MlaParams& p, const AttentionMeta& meta, const KvLayer& cache,
                        Tensor& out, const MlaChoice* forced) {
  const char* op = "mla_attention";
  const int T = meta.n_tokens, S = meta.n_seqs, H = p.n_heads;
  const int64_t L = p.kv_lora_rank, R = p.qk_rope_dim, nope = p.qk_nope_dim, V = p.v_dim;
  expect_supported_latent(op, p);
  expect_query(ctx, op, q, p, T);
  expect_device_tensor(ctx, w.w_uk, op, "w_uk", {DType::BF16});
  expect_device_tensor(ctx, w.w_uv, op, "w_uv", {DType::BF16});
  TRI_CHECK(w.w_uk.numel() == H * nope * L, "{}: w_uk {} is not [{}, {}, {}]", op,
            w.w_uk.shape_str(), H, nope, L);
  TRI_CHECK(w.w_uv.numel() == H * V * L, "{}: w_uv {} is not [{}, {}, {}]", op,
            w.w_uv.shape_str(), H, V, L);
  expect_device_tensor(ctx, out, op, "out", {DType::BF16});
  TRI_CHECK(out.dim(0) == T && out.numel() == int64_t(T) * H * V,
            "{}: out {} does not hold {} tokens x {} heads x {}", op, out.shape_str(), T, H, V);
  expect_meta_tensor(ctx, op, meta.positions, "positions", T);
  expect_meta_tensor(ctx, op, meta.token_seq, "token_seq", T);
  expect_meta_tensor(ctx, op, meta.page_table, "page_table", int64_t(S) * meta.max_pages_per_seq);
  expect_cache(ctx, op, cache, p);
  if (T == 0) return {};
  TRI_CHECK(meta.max_kv_len > 0,
            "{}: meta.max_kv_len is {}; the context split needs the longest context in the step "
            "(build_step sets it)",
            op, meta.max_kv_len);

  Tensor q_lat = device_tensor(ctx.device, DType::BF16, {T, H, L});
  const int64_t qk = nope + R;
  head_gemm(ctx, H, {device_ptr(q), device_ptr(w.w_uk), device_ptr(q_lat), T, L, nope, H * qk, qk,
                     nope * L, L, H * L, L, false});

  // 64 heads fill a Hopper warpgroup's rows; models with fewer heads take the 16-row tiles, as
  // padded latents always do.
  const int arch = ctx.device.arch();
  const LatentBlocks blocks = latent_blocks(op, arch, p);
  const KernelVariant* direct = nullptr;
  if (forced && !forced->variant.empty()) {
    direct = &find_variant("mla_attention", arch, forced->variant);
    TRI_CHECK(direct->matches({{"KV_BLOCK", blocks.kv_block},
                               {"ROPE_BLOCK", blocks.rope_block},
                               {"PADDED", blocks.padded}}),
              "{}: variant {} covers a latent of {}/{} ({}), the model's {}/{} takes {}/{} ({})",
              op, forced->variant, direct->tag("KV_BLOCK"), direct->tag("ROPE_BLOCK"),
              direct->tag("PADDED") ? "padded" : "exact", L, R, blocks.kv_block,
              blocks.rope_block, blocks.padded ? "padded" : "exact");
  } else {
    direct = &select_variant("mla_attention", arch,
                             {{"KV_BLOCK", blocks.kv_block},
                              {"ROPE_BLOCK", blocks.rope_block},
                              {"PADDED", blocks.padded},
                              {"BLOCK_H", H >= 64 && !blocks.padded ? 64 : 16},
                              {"SPLIT", 0}});
  }
  const int block_h = direct->tag("BLOCK_H");
  const int64_t head_blocks = ceil_div(H, block_h);
  TRI_CHECK(head_blocks < 65536 && T < 65536,
            "{}: {} tokens x {} heads exceed the attention grid (65535 x 65535); split the step",
            op, T, H);
  int splits = forced && forced->splits > 0
                   ? forced->splits
                   : choose_splits(T * head_blocks, meta.max_kv_len, ctx.device.sm_count());
  splits = std::clamp(splits, 1, 65535);
  const float scale_log2 = p.softmax_scale * std::numbers::log2e_v<float>;
  const Launch attend{ctx.device, ctx.stream, {unsigned(head_blocks), unsigned(T), unsigned(splits)}};

  Tensor o_lat = device_tensor(ctx.device, DType::BF16, {T, H, L});
  if (splits == 1) {
    kernels::mla_attention(attend, *direct, device_ptr(q_lat), device_ptr(q),
                           device_ptr(cache.pages), device_ptr(meta.page_table),
                           device_ptr(meta.token_seq), device_ptr(meta.positions),
                           device_ptr(o_lat), device_ptr(o_lat), H, int32_t(nope), int32_t(L),
                           int32_t(R), meta.max_pages_per_seq, 1, scale_log2);
  } else {
    const KernelVariant& partial =
        find_variant("mla_attention", arch, std::string(direct->name) + "_split");
    Tensor partial_out = device_tensor(ctx.device, DType::F32, {splits, T, H, L});
    Tensor lse = device_tensor(ctx.device, DType::F32, {splits, T, H});
    kernels::mla_attention(attend, partial, device_ptr(q_lat), device_ptr(q),
                           device_ptr(cache.pages), device_ptr(meta.page_table),
                           device_ptr(meta.token_seq), device_ptr(meta.positions),
                           device_ptr(partial_out), device_ptr(lse), H, int32_t(nope),
                           int32_t(L), int32_t(R), meta.max_pages_per_seq, splits, scale_log2);
    const KernelVariant& combine = select_variant(
        "mla_combine", arch, {{"KV_BLOCK", blocks.kv_block}, {"PADDED", blocks.padded}});
    const int64_t rows = int64_t(T) * H;
    TRI_CHECK(rows < kI32Limit, "{}: {} token-heads are too many for one launch", op, rows);
    kernels::mla_combine({ctx.device, ctx.stream, {unsigned(rows), 1, 1}}, combine,
                         device_ptr(partial_out), device_ptr(lse), device_ptr(o_lat), rows, splits,
                         int32_t(L));
  }

  head_gemm(ctx, H, {device_ptr(o_lat), device_ptr(w.w_uv), device_ptr(out), T, V, L, H * L, L,
                     V * L, L, H * V, V, true});
  const std::string name = direct->name;
  return {name, splits};
}

}  // namespace trident::cuda
