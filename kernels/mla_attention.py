"""MLA attention in the absorbed form over the paged latent cache, for decode and prefill alike.

Each new token t attends causally to positions 0..pos[t] of its sequence: scores are
(q_lat . c_j + q_rope . k_rope_j) * scale and the output is the latent o_lat = softmax . c_j, with
c_j (L = kv_lora_rank) and k_rope_j (R = qk_rope_head_dim) the rows of the cache
[pages, 64, L + R] (bf16) that the page table maps position j to. The mask is the token's
position: no mask tensor, so a step may mix decodes, whole prefills and chunks of prefills whose
prefix is already in the cache.

mla_attention: program (head block, token, split). BLOCK_H heads of one token share each key
tile (the cache holds one latent for all heads), so the tensor cores see M = BLOCK_H. The
token's context is cut into n_splits chunks of whole BLOCK_N tiles (flash-decoding); a tile never
straddles a page. SPLIT=0 (one chunk) writes o_lat in bf16 [T, H, L]; SPLIT=1 writes each
chunk's normalized f32 output [n_splits, T, H, L] and its log2-sum-exp [n_splits, T, H], which
mla_combine merges into o_lat. An empty chunk (a split past a short context) writes only its
lse, -inf, and mla_combine skips it: a step whose splits were chosen for a longer context than
it has (a CUDA graph sized for its bucket) pays for its empty splits little more than a launch.

Latent and rope dims: the tuned variants (TUNED_DIMS) are compiled for their exact dims, which are
the blocks KV_BLOCK and ROPE_BLOCK. Any other kv_lora_rank <= 512 and qk_rope_head_dim <= 64 (the
golden-test models' 64/16, 80/16, 80/32, ...) runs on a PADDED variant: blocks the next power of
two (at least 16, what a tensor-core product takes), the dims passed at run time (kv_lora, rope),
columns past them loaded as zeros (they add nothing to scores or sums) and never stored.

PREFETCH = d > 0 (DeepSeek's 64-head tile): at each tile, one thread asks the copy engine to bring
the page d tiles ahead into L2 (cp.async.bulk.prefetch.L2 of 73728 contiguous bytes: a page is a
tile). The pipeliner issues a tile's copies into shared memory only after the previous tile's
products (two 72 KB buffers and the 72 KB query fill shared memory) and the next iteration waits
for them at once, so the copies sit on the critical path; with the prefetch they come from L2.

Precision: q_lat (an f32 product rounded to bf16 by mla_head_gemm), the keys and the
probabilities enter the tensor cores as bf16; scores, softmax and sums are f32.
"""
import triton
import triton.language as tl

from variant import Kernel, Variant

PAGE = 64
# (kv_lora_rank, qk_rope_head_dim) with variants of their own: DeepSeek-V2/V3/R1 and Kimi-K2;
# trident-tiny.
TUNED_DIMS = [(512, 64), (128, 32)]
# Every other pair pads to these blocks (padded_block below) with one small-head tile.
PADDED_KV_BLOCKS = [16, 32, 64, 128, 256, 512]
PADDED_ROPE_BLOCKS = [16, 32, 64]
PADDED_TILE = (16, 64, 4, 2)
# (BLOCK_H, BLOCK_N, num_warps, num_stages) per latent size: 64 heads fill a Hopper warpgroup's
# M; 16 is the least a tensor-core product takes, for models with few heads. Tiles of 32
# positions (two or three in flight) measured 0.7 to 0.85 times as fast on an H200
# (bench/RESULTS.md).
ATTENTION_TILES = {
    512: [(64, 64, 8, 2), (16, 64, 4, 2)],
    128: [(64, 64, 4, 2), (16, 64, 4, 2)],
}
# L2 prefetch distances (tiles ahead) compiled for the 64-head tile of the 512/64 latent, the
# first the default (cuda_attention.cpp takes the first variant that matches); 0 is the reference
# the benchmark compares with. Two tiles ahead measured 1% slower than one on an H200.
PREFETCH_512 = [1, 0]


def padded_block(dim):
    """The block a padded variant covers `dim` with (cuda_attention.cpp computes the same)."""
    return max(16, 1 << (dim - 1).bit_length())


@triton.jit
def _prefetch_page_to_l2(page_ptr, wanted):
    """Thread 0 asks the copy engine to bring one 512/64 page (73728 bytes) into L2; a hint that
    nothing waits for. Skipped where `wanted` is 0."""
    tl.inline_asm_elementwise(
        "{ .reg .pred pf; .reg .b32 tx; mov.u32 tx, %tid.x; setp.eq.u32 pf, tx, 0; "
        "setp.ne.and.u32 pf, $2, 0, pf; @pf cp.async.bulk.prefetch.L2.global [$1], 73728; "
        "mov.b32 $0, 0; }", "=r,l,r", [page_ptr.to(tl.int64, bitcast=True), wanted.to(tl.int32)],
        dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def mla_attention(q_lat_ptr, q_ptr, cache_ptr, page_table_ptr, token_seq_ptr, positions_ptr,
                  out_ptr, lse_ptr, n_heads, nope, kv_lora, rope, max_pages, n_splits,
                  scale_log2, KV_BLOCK: tl.constexpr, ROPE_BLOCK: tl.constexpr,
                  PADDED: tl.constexpr, PAGE: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PREFETCH: tl.constexpr):
    # Tuned variants take their dims as constants (kv_lora and rope unused) and need no column
    # masks: their code is that of a kernel written for those dims alone.
    if PADDED:
        L = kv_lora
        R = rope
    else:
        L = KV_BLOCK
        R = ROPE_BLOCK
    t = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    n_tokens = tl.num_programs(1)
    context = tl.load(positions_ptr + t) + 1
    per_split = tl.cdiv(tl.cdiv(context, n_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, context)

    heads = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    in_heads = heads < n_heads
    c = tl.arange(0, KV_BLOCK)
    r = tl.arange(0, ROPE_BLOCK)
    if PADDED:
        heads_c = in_heads[:, None] & (c < L)[None, :]
        heads_r = in_heads[:, None] & (r < R)[None, :]
    else:
        heads_c = in_heads[:, None]
        heads_r = in_heads[:, None]
    row_heads = t * n_heads + heads
    # An empty chunk reads no query either.
    live = start < end
    q_lat = tl.load(q_lat_ptr + row_heads[:, None] * L + c[None, :], mask=heads_c & live,
                    other=0.0)
    q_rope = tl.load(q_ptr + row_heads[:, None] * (nope + R) + nope + r[None, :],
                     mask=heads_r & live, other=0.0)

    table = page_table_ptr + tl.load(token_seq_ptr + t).to(tl.int64) * max_pages
    n = tl.arange(0, BLOCK_N)
    m_i = tl.full((BLOCK_H, ), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_H, ), tl.float32)
    acc = tl.zeros((BLOCK_H, KV_BLOCK), tl.float32)
    if PREFETCH:
        tl.static_assert(BLOCK_N == PAGE and PAGE * (KV_BLOCK + ROPE_BLOCK) * 2 == 73728,
                         "the L2 prefetch moves whole 512/64 pages")
        for ahead in tl.static_range(1, PREFETCH):
            jp = start + ahead * BLOCK_N
            page_p = tl.load(table + jp // PAGE, mask=jp < end, other=0).to(tl.int64)
            _prefetch_page_to_l2(cache_ptr + page_p * PAGE * (L + R), jp < end)
    for j in range(start, end, BLOCK_N):
        if PREFETCH:
            jp = j + PREFETCH * BLOCK_N
            page_p = tl.load(table + jp // PAGE, mask=jp < end, other=0).to(tl.int64)
            _prefetch_page_to_l2(cache_ptr + page_p * PAGE * (L + R), jp < end)
        page = tl.load(table + j // PAGE).to(tl.int64)
        rows = (page * PAGE + j % PAGE + n) * (L + R)
        valid = j + n < end
        if PADDED:
            valid_c = valid[:, None] & (c < L)[None, :]
            valid_r = valid[:, None] & (r < R)[None, :]
        else:
            valid_c = valid[:, None]
            valid_r = valid[:, None]
        kv = tl.load(cache_ptr + rows[:, None] + c[None, :], mask=valid_c, other=0.0)
        k_rope = tl.load(cache_ptr + rows[:, None] + L + r[None, :], mask=valid_r, other=0.0)
        s = tl.dot(q_lat, tl.trans(kv))
        s = tl.dot(q_rope, tl.trans(k_rope), s)
        s = tl.where(valid[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(kv.dtype), kv, acc * alpha[:, None])
        m_i = m_new

    # An empty chunk has l_i = 0: it writes only lse = -inf, which mla_combine skips.
    o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    if SPLIT:
        part = split * n_tokens * n_heads + row_heads
        tl.store(out_ptr + part[:, None] * L + c[None, :], o, mask=heads_c & live)
        tl.store(lse_ptr + part, m_i + tl.math.log2(l_i), mask=in_heads)
    else:
        tl.store(out_ptr + row_heads[:, None] * L + c[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=heads_c)


@triton.jit
def mla_combine(partial_ptr, lse_ptr, out_ptr, rows, n_splits, kv_lora, KV_BLOCK: tl.constexpr,
                PADDED: tl.constexpr):
    """o_lat[row] = sum_s 2^(lse_s - lse) partial[s, row] with lse = log2 sum_s 2^lse_s, for each
    row = t * H + h, over the splits that saw a position; bf16 out. Latent dims as in
    mla_attention."""
    if PADDED:
        L = kv_lora
    else:
        L = KV_BLOCK
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, KV_BLOCK)
    m = float("-inf")
    for s in range(0, n_splits):
        m = tl.maximum(m, tl.load(lse_ptr + s * rows + row))
    acc = tl.zeros((KV_BLOCK, ), tl.float32)
    total = 0.0
    for s in range(0, n_splits):
        lse = tl.load(lse_ptr + s * rows + row)
        # Empty splits (lse = -inf) wrote no partial: skip them without reading it.
        if lse > float("-inf"):
            w = tl.math.exp2(lse - m)
            if PADDED:
                acc += w * tl.load(partial_ptr + (s * rows + row) * L + c, mask=c < L, other=0.0)
            else:
                acc += w * tl.load(partial_ptr + (s * rows + row) * L + c)
            total += w
    if PADDED:
        tl.store(out_ptr + row * L + c, (acc / total).to(out_ptr.dtype.element_ty), mask=c < L)
    else:
        tl.store(out_ptr + row * L + c, (acc / total).to(out_ptr.dtype.element_ty))


def _attention_variant(kv_block, rope_block, padded, block_h, block_n, warps, stages, split,
                       prefetch=0):
    signature = {"q_lat_ptr": "*bf16", "q_ptr": "*bf16", "cache_ptr": "*bf16",
                 "page_table_ptr": "*i32", "token_seq_ptr": "*i32", "positions_ptr": "*i32",
                 "out_ptr": "*fp32" if split else "*bf16", "lse_ptr": "*fp32", "n_heads": "i32",
                 "nope": "i32", "kv_lora": "i32", "rope": "i32", "max_pages": "i32",
                 "n_splits": "i32", "scale_log2": "fp32"}
    constexprs = {"KV_BLOCK": kv_block, "ROPE_BLOCK": rope_block, "PADDED": padded, "PAGE": PAGE,
                  "BLOCK_H": block_h, "BLOCK_N": block_n, "SPLIT": split, "PREFETCH": prefetch}
    signature.update({k: "constexpr" for k in constexprs})
    # Padded rows (L + R) need not be multiples of 16 elements: only the bases are aligned.
    aligned = ("q_lat_ptr", "q_ptr", "cache_ptr", "out_ptr") + (() if padded else ("nope", ))
    return Variant(name=f"{'pad' if padded else ''}l{kv_block}r{rope_block}_h{block_h}n{block_n}"
                   f"_w{warps}s{stages}{f'_pf{prefetch}' if prefetch else ''}"
                   f"{'_split' if split else ''}", signature=signature,
                   constexprs=constexprs, num_warps=warps, num_stages=stages,
                   divisible_by_16=aligned,
                   tags={"KV_BLOCK": kv_block, "ROPE_BLOCK": rope_block, "PADDED": padded,
                         "BLOCK_H": block_h, "BLOCK_N": block_n, "SPLIT": split,
                         "PREFETCH": prefetch})


def _tuned_variants(kv_lora, rope, split):
    """A latent's tiles; the 64-head tile of the 512/64 latent at each of PREFETCH_512."""
    variants = []
    for tile in ATTENTION_TILES[kv_lora]:
        distances = PREFETCH_512 if (kv_lora, rope, tile[0]) == (512, 64, 64) else [0]
        variants += [_attention_variant(kv_lora, rope, 0, *tile, split, d) for d in distances]
    return variants


def _combine_variant(kv_block, padded):
    signature = {"partial_ptr": "*fp32", "lse_ptr": "*fp32", "out_ptr": "*bf16", "rows": "i64",
                 "n_splits": "i32", "kv_lora": "i32", "KV_BLOCK": "constexpr",
                 "PADDED": "constexpr"}
    return Variant(name=f"{'pad' if padded else ''}l{kv_block}", signature=signature,
                   constexprs={"KV_BLOCK": kv_block, "PADDED": padded}, num_warps=4,
                   num_stages=1, divisible_by_16=("partial_ptr", "out_ptr"),
                   tags={"KV_BLOCK": kv_block, "PADDED": padded})


_PADDED_PAIRS = [(kb, rb) for kb in PADDED_KV_BLOCKS for rb in PADDED_ROPE_BLOCKS]

KERNELS = [
    Kernel("mla_attention", mla_attention,
           [v for l, r in TUNED_DIMS for split in (0, 1) for v in _tuned_variants(l, r, split)] +
           [_attention_variant(kb, rb, 1, *PADDED_TILE, split) for kb, rb in _PADDED_PAIRS
            for split in (0, 1)],
           "causal absorbed MLA over the paged latent cache: o_lat, or per-split partials"),
    Kernel("mla_combine", mla_combine,
           [_combine_variant(l, 0) for l, _ in TUNED_DIMS] +
           [_combine_variant(kb, 1) for kb in PADDED_KV_BLOCKS],
           "o_lat = the splits' partial outputs weighted by their log-sum-exp"),
]
