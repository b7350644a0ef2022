"""Checks the attention-side kernels (mla_*.py, elementwise.py) under Triton's interpreter against
torch references written from the CPU backend's ops, on fresh random inputs with NaN-poisoned
outputs. No GPU needed:

    python3 kernels/tests/test_mla_kernels.py        (or pytest kernels/tests)

The interpreter is slow, so shapes are small but cross every boundary the kernels have: page and
tile edges (63/64/65 positions), ragged batches mixing prefill chunks and decodes, head counts
off the head block, empty splits, and the golden-test models' latent, rope and head dims that are
not powers of two (padded variants). The real shapes run on the GPU (tests/gpu/).
"""
import itertools
import math
import random

import interpreter  # noqa: F401  (must come before triton)
import torch

import elementwise
import mla_attention
import mla_head_gemm
import mla_rope_cache
import numpy as np
import triton.language as tl
import triton.runtime.interpreter as triton_interpreter


def _inline_asm_as_no_op(self, asm, constraints, values, ret_type, is_pure, pack):
    """mla_attention's only inline PTX is an L2 prefetch hint whose result is unused: under the
    interpreter it does nothing."""

    class Call:
        def get_result(self, _):
            return triton_interpreter.TensorHandle(np.zeros_like(values[0].data, np.int32),
                                                   tl.int32)

    return Call()


triton_interpreter.InterpreterBuilder.create_inline_asm = _inline_asm_as_no_op

PAGE = mla_attention.PAGE
# tests/data/golden/*/config.json: (kv_lora_rank, qk_rope_head_dim, heads, qk_nope_head_dim,
# v_head_dim); none of their latent or rope dims has a tuned variant.
GOLDEN_SHAPES = [(64, 16, 2, 32, 32), (80, 16, 2, 48, 40), (80, 32, 3, 32, 40)]
BF16_EPS = 2.0**-8  # spacing of bf16 values in [1, 2)


def poisoned(*shape, dtype=torch.bfloat16):
    return torch.full(shape, float("nan"), dtype=dtype)


GUARD = 256  # elements of poison after a guarded output


def guarded(*shape, dtype=torch.bfloat16):
    """A poisoned output followed in memory by GUARD poisoned elements; returns (output, guard)."""
    buffer = poisoned(math.prod(shape) + GUARD, dtype=dtype)
    return buffer[:math.prod(shape)].view(shape), buffer[math.prod(shape):]


def bf16_ulps(got, want):
    """Largest |got - want| in units of want's bf16 spacing."""
    got, want = got.double(), want.double()
    spacing = torch.exp2(torch.floor(torch.log2(want.abs().clamp_min(1e-30)))) * BF16_EPS
    return ((got - want).abs() / spacing).max().item()


def rel_l2(got, want):
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm()).item()


# ---- elementwise ---------------------------------------------------------------------------


def test_embedding_copies_rows_and_marks_unknown_ids():
    for table_dtype in (torch.bfloat16, torch.float32):
        vocab, width = 37, 200
        table = torch.randn(vocab, width).to(table_dtype)
        ids = torch.tensor([3, 0, 36, 3, 37, -1], dtype=torch.int32)
        out = poisoned(len(ids), width)
        block = 128
        elementwise.embedding_rows[(len(ids), triton_cdiv(width, block))](ids, table, out, width,
                                                                          vocab, BLOCK=block)
        want = table[ids[:4].long()].to(torch.bfloat16)
        assert torch.equal(out[:4], want)
        assert torch.isnan(out[4:].float()).all()


def test_silu_mul_within_one_bf16_ulp():
    n = 1000
    g = (torch.randn(n) * 4).to(torch.bfloat16)
    u = torch.randn(n).to(torch.bfloat16)
    out = poisoned(n)
    elementwise.silu_mul[(triton_cdiv(n, 256), )](g, u, out, n, BLOCK=256)
    gf, uf = g.float(), u.float()
    want = (gf / (1 + torch.exp(-gf)) * uf).to(torch.bfloat16)
    assert bf16_ulps(out, want) <= 1


def test_add_is_one_rounding():
    n = 777
    a = torch.randn(n).to(torch.bfloat16)
    b = torch.randn(n).to(torch.bfloat16)
    want = (a.float() + b.float()).to(torch.bfloat16)
    elementwise.add[(triton_cdiv(n, 256), )](a, b, n, BLOCK=256)
    assert torch.equal(a, want)


def triton_cdiv(a, b):
    return (a + b - 1) // b


def latent_constexprs(kv_lora, rope):
    """The variant cuda_attention.cpp picks for a latent: its tuned one, else the padded one."""
    if (kv_lora, rope) in mla_attention.TUNED_DIMS:
        return {"KV_BLOCK": kv_lora, "ROPE_BLOCK": rope, "PADDED": 0}
    return {"KV_BLOCK": mla_attention.padded_block(kv_lora),
            "ROPE_BLOCK": mla_attention.padded_block(rope), "PADDED": 1}


# ---- rope + latent-cache write ---------------------------------------------------------------


def rotate_ref(x, pos, inv_freq, attention_factor):
    """x [..., R] f32 rotated by pairs (2i, 2i+1), as cpu_attention.cpp's rotate()."""
    angle = pos.float()[:, None] * inv_freq[None, :]
    c = torch.cos(angle) * attention_factor
    s = torch.sin(angle) * attention_factor
    while c.dim() < x.dim():
        c, s = c.unsqueeze(1), s.unsqueeze(1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


def test_rope_cache_write_matches_reference():
    shapes = [(l, r, 5, 32) for l, r in mla_rope_cache.TUNED_DIMS]
    shapes += [(l, r, h, nope) for l, r, h, nope, _ in GOLDEN_SHAPES]
    for kv_lora, rope, H, nope in shapes:
        T, n_pages = 7, 3
        eps, factor = 1e-6, 1.3
        q = torch.randn(T, H, nope + rope).to(torch.bfloat16)
        kv = torch.randn(T, kv_lora + rope).to(torch.bfloat16)
        w = torch.randn(kv_lora)
        inv_freq = 10000.0**(-torch.arange(0, rope, 2).float() / rope) * 0.7
        positions = torch.tensor([0, 1, 63, 64, 65, 1000, 32767], dtype=torch.int32)
        slots = torch.randperm(n_pages * PAGE)[:T].to(torch.int32)
        slots[2] = n_pages * PAGE  # outside the cache: skipped
        cache = poisoned(n_pages * PAGE, kv_lora + rope)
        q_ref = q.clone()
        mla_rope_cache.mla_rope_cache_write[(T, )](q, kv, w, inv_freq, positions, slots, cache, H,
                                                   nope, kv_lora, rope, n_pages * PAGE, eps,
                                                   factor, HEAD_BLOCK=4,
                                                   **latent_constexprs(kv_lora, rope))
        want_q = q_ref.float()
        want_q[..., nope:] = rotate_ref(want_q[..., nope:], positions, inv_freq, factor)
        assert bf16_ulps(q, want_q.to(torch.bfloat16)) <= 1
        x = kv.float()
        lat = w * (x[:, :kv_lora] / torch.sqrt((x[:, :kv_lora]**2).mean(1, keepdim=True) + eps))
        k_rope = rotate_ref(x[:, kv_lora:], positions, inv_freq, factor)
        want_rows = torch.cat([lat, k_rope], 1).to(torch.bfloat16)
        written = [i for i in range(T) if i != 2]
        assert bf16_ulps(cache[slots[written].long()], want_rows[written]) <= 1
        untouched = torch.ones(n_pages * PAGE, dtype=torch.bool)
        untouched[slots[written].long()] = False
        assert torch.isnan(cache[untouched].float()).all()


# ---- per-head GEMM -------------------------------------------------------------------------


def test_head_gemm_both_layouts_ragged_m():
    # trident-tiny's dims, then head and latent dims off multiples of 16 (v_head_dim 40, latent 80).
    for (H, nope, rope, L, V), M in itertools.product(
            [(3, 64, 32, 128, 64), (3, 48, 16, 80, 40), (2, 32, 32, 80, 40)], (1, 17, 70)):
        q = torch.randn(M, H, nope + rope).to(torch.bfloat16)
        w_uk = (torch.randn(H, nope, L) * 0.1).to(torch.bfloat16)
        q_lat = poisoned(M, H, L)
        bm, bn = 16, 64
        grid = (triton_cdiv(M, bm) * triton_cdiv(L, bn), H)
        mla_head_gemm.mla_head_gemm[grid](q, w_uk, q_lat, M, L, nope, H * (nope + rope),
                                          nope + rope, nope * L, L, H * L, L, B_NK=0,
                                          BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=32)
        want = torch.einsum("thd,hdc->thc", q[..., :nope].double(), w_uk.double())
        assert rel_l2(q_lat, want) < 4e-3

        w_uv = (torch.randn(H, V, L) * 0.1).to(torch.bfloat16)
        out = poisoned(M, H * V)
        grid = (triton_cdiv(M, bm) * triton_cdiv(V, bn), H)
        mla_head_gemm.mla_head_gemm[grid](q_lat, w_uv, out, M, V, L, H * L, L, V * L, L, H * V, V,
                                          B_NK=1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=32)
        want = torch.einsum("thc,hvc->thv", q_lat.double(), w_uv.double()).reshape(M, H * V)
        assert rel_l2(out, want) < 4e-3


# ---- attention -----------------------------------------------------------------------------


def make_step(seqs, n_pages):
    """seqs: [(context after the step, new tokens)]. Returns positions, token_seq, page table
    (pages scattered over the pool) and max pages per sequence."""
    pool = list(range(n_pages))
    random.shuffle(pool)
    max_pages = max(triton_cdiv(ctx, PAGE) for ctx, _ in seqs)
    table = torch.zeros(len(seqs), max_pages, dtype=torch.int32)
    positions, token_seq = [], []
    for s, (ctx, new) in enumerate(seqs):
        for i in range(triton_cdiv(ctx, PAGE)):
            table[s, i] = pool.pop()
        positions += list(range(ctx - new, ctx))
        token_seq += [s] * new
    return (torch.tensor(positions, dtype=torch.int32), torch.tensor(token_seq, dtype=torch.int32),
            table, max_pages)


def attention_ref(q, w_uk, w_uv, cache, positions, token_seq, table, nope, kv_lora, scale):
    """cpu_attention.cpp's mla_attention in f64: absorbed scores over positions 0..pos."""
    T, H, _ = q.shape
    V = w_uv.shape[1]
    rows = cache.double().reshape(-1, cache.shape[-1])
    out = torch.zeros(T, H, V, dtype=torch.float64)
    for t in range(T):
        ctx = int(positions[t]) + 1
        j = torch.arange(ctx)
        kv = rows[(table[token_seq[t]].long()[j // PAGE] * PAGE + j % PAGE)]
        q_lat = torch.einsum("hd,hdc->hc", q[t, :, :nope].double(), w_uk.double())
        s = (q_lat @ kv[:, :kv_lora].T + q[t, :, nope:].double() @ kv[:, kv_lora:].T) * scale
        o_lat = torch.softmax(s, 1) @ kv[:, :kv_lora]
        out[t] = torch.einsum("hc,hvc->hv", o_lat, w_uv.double())
    return out.reshape(T, H * V)


def run_attention(q, w_uk, w_uv, cache, positions, token_seq, table, max_pages, nope, scale,
                  n_splits, block_h, block_n, prefetch=0):
    """The CUDA op's sequence of launches (cuda_attention.cpp), under the interpreter."""
    T, H, qk = q.shape
    kv_lora = w_uk.shape[2]
    rope = qk - nope
    V = w_uv.shape[1]
    q_lat = poisoned(T, H, kv_lora)
    mla_head_gemm.mla_head_gemm[(triton_cdiv(T, 16) * triton_cdiv(kv_lora, 128), H)](
        q, w_uk, q_lat, T, kv_lora, nope, H * qk, qk, nope * kv_lora, kv_lora, H * kv_lora,
        kv_lora, B_NK=0, BLOCK_M=16, BLOCK_N=128, BLOCK_K=64)
    # Columns past a padded latent must not be stored: the guard behind o_lat catches the last
    # row's (earlier rows' would be overwritten by the next row under the interpreter).
    o_lat, o_lat_guard = guarded(T, H, kv_lora)
    grid = (triton_cdiv(H, block_h), T, n_splits)
    scale_log2 = scale * math.log2(math.e)
    dims = latent_constexprs(kv_lora, rope)
    if n_splits == 1:
        mla_attention.mla_attention[grid](q_lat, q, cache, table, token_seq, positions, o_lat,
                                          o_lat, H, nope, kv_lora, rope, max_pages, 1, scale_log2,
                                          PAGE=PAGE, BLOCK_H=block_h, BLOCK_N=block_n, SPLIT=0,
                                          PREFETCH=prefetch, **dims)
    else:
        # Partials poisoned: an empty split writes none, and the combine must not read them.
        partial, partial_guard = guarded(n_splits, T, H, kv_lora, dtype=torch.float32)
        lse = poisoned(n_splits, T, H, dtype=torch.float32)
        mla_attention.mla_attention[grid](q_lat, q, cache, table, token_seq, positions, partial,
                                          lse, H, nope, kv_lora, rope, max_pages, n_splits,
                                          scale_log2, PAGE=PAGE, BLOCK_H=block_h, BLOCK_N=block_n,
                                          SPLIT=1, PREFETCH=prefetch, **dims)
        mla_attention.mla_combine[(T * H, )](partial, lse, o_lat, T * H, n_splits, kv_lora,
                                             KV_BLOCK=dims["KV_BLOCK"], PADDED=dims["PADDED"])
        assert torch.isnan(partial_guard).all(), "partial outputs written past their end"
    assert torch.isnan(o_lat_guard.float()).all(), "o_lat written past its end"
    out = poisoned(T, H * V)
    mla_head_gemm.mla_head_gemm[(triton_cdiv(T, 16) * triton_cdiv(V, 128), H)](
        o_lat, w_uv, out, T, V, kv_lora, H * kv_lora, kv_lora, V * kv_lora, kv_lora, H * V, V,
        B_NK=1, BLOCK_M=16, BLOCK_N=128, BLOCK_K=64)
    return out


def check_attention(kv_lora, rope, H, nope, V, seqs, n_splits, block_h, block_n=64, prefetch=0):
    n_pages = sum(triton_cdiv(ctx, PAGE) for ctx, _ in seqs) + 2
    positions, token_seq, table, max_pages = make_step(seqs, n_pages)
    T = len(positions)
    # Latent rows as mla_rope_cache_write leaves them (unit RMS), rope keys and queries O(1).
    # Rows outside every context are NaN, so a read past a context, past a row's latent or rope
    # columns (padded variants), or from the wrong page shows.
    cache = torch.randn(n_pages, PAGE, kv_lora + rope).to(torch.bfloat16)
    in_context = torch.zeros(n_pages * PAGE, dtype=torch.bool)
    for s, (ctx, _) in enumerate(seqs):
        j = torch.arange(ctx)
        in_context[table[s].long()[j // PAGE] * PAGE + j % PAGE] = True
    cache.view(-1, kv_lora + rope)[~in_context] = float("nan")
    q = torch.randn(T, H, nope + rope).to(torch.bfloat16)
    w_uk = (torch.randn(H, nope, kv_lora) / math.sqrt(nope)).to(torch.bfloat16)
    w_uv = (torch.randn(H, V, kv_lora) / math.sqrt(kv_lora)).to(torch.bfloat16)
    scale = 1.0 / math.sqrt(nope + rope)
    got = run_attention(q, w_uk, w_uv, cache, positions, token_seq, table, max_pages, nope, scale,
                        n_splits, block_h, block_n, prefetch)
    want = attention_ref(q, w_uk, w_uv, cache, positions, token_seq, table, nope, kv_lora, scale)
    assert not torch.isnan(got.float()).any()
    err = rel_l2(got, want)
    print(f"  L={kv_lora} R={rope} H={H} seqs={seqs} splits={n_splits} tile {block_h}x{block_n} "
          f"prefetch {prefetch}: rel_l2 {err:.2e}")
    return err


def test_attention_ragged_prefill_and_decode():
    # Chunked prefill over a cached prefix, a fresh prefill crossing a page edge, decodes at
    # 1/63/64/65 positions; heads off the head block.
    seqs = [(70, 6), (65, 65), (1, 1), (63, 1), (64, 1), (130, 1)]
    worst = 0
    for kv_lora, rope in mla_attention.TUNED_DIMS:
        for splits in (1, 3):
            worst = max(worst, check_attention(kv_lora, rope, 5, 32, 32, seqs, splits, 16))
    assert worst < 1e-2, worst


def test_attention_golden_model_dims_padded():
    # Latent and rope dims that are not powers of two run padded: the zero columns past them must
    # add nothing and never be stored (o_lat is poisoned; a stray column shows as NaN or error).
    seqs = [(70, 6), (1, 1), (64, 1), (130, 1)]
    worst = 0
    for kv_lora, rope, H, nope, V in GOLDEN_SHAPES:
        for splits in (1, 3):
            worst = max(worst, check_attention(kv_lora, rope, H, nope, V, seqs, splits, 16))
    assert worst < 1e-2, worst


def test_attention_long_decode_many_splits_wide_head_block():
    worst = 0
    for splits, block_n in ((1, 64), (2, 64), (7, 64), (2, 32)):
        worst = max(worst, check_attention(128, 32, 20, 64, 64, [(700, 1), (129, 1), (3, 1)],
                                           splits, 64, block_n))
    assert worst < 1e-2, worst


def test_attention_deepseek_tile_prefetch_distances():
    # The 64-head tile of DeepSeek's 512/64 latent at every compiled prefetch distance (pages
    # ahead of a context's end are not prefetched); a split past a short context is empty.
    seqs = [(200, 1), (64, 1), (1, 1), (130, 2)]
    worst = 0
    for prefetch in mla_attention.PREFETCH_512:
        for splits in (1, 3):
            worst = max(worst, check_attention(512, 64, 70, 32, 32, seqs, splits, 64, 64,
                                               prefetch))
    assert worst < 1e-2, worst


if __name__ == "__main__":
    random.seed(0)
    torch.manual_seed(0)
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            print(name)
            fn()
    print("all passed")
