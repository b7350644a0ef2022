"""Checks the MoE kernels (moe_route.py, moe_gemm.py, moe_gate.py) under Triton's interpreter
against torch references written from the CPU backend's ops (cpu_moe.cpp, cpu_linear.cpp), on
fresh random inputs with NaN-poisoned outputs. No GPU needed:

    python3 kernels/tests/test_moe_kernels.py        (or pytest kernels/tests)

Shapes are small (the interpreter is slow) but cross the kernels' edges: experts with no rows,
one expert with every token, pairs computed elsewhere, rows and columns off every tile, K off the
128-column blocks. The real shapes run on the GPU (tests/gpu/test_cuda_moe.cpp).
"""
import math
import random

import interpreter  # noqa: F401  (must come before triton)
import numpy as np
import torch
import triton.language as tl
import triton.runtime.interpreter as triton_interpreter

import moe_gate
import moe_gemm
import moe_route

FP8_MAX = 448.0

# The interpreter converts f32 to e4m3 by truncation; the GPU (cvt.rn.satfinite) rounds to
# nearest even and saturates at 448, as torch does on clamped values.
_convert_float = triton_interpreter._convert_float


def _convert_float_rounding_fp8(data, input_dtype, output_dtype, rounding_mode):
    if input_dtype != tl.float32 or output_dtype != tl.float8e4nv:
        return _convert_float(data, input_dtype, output_dtype, rounding_mode)
    values = torch.from_numpy(np.ascontiguousarray(data).view(np.float32)).clamp(-FP8_MAX, FP8_MAX)
    return values.to(torch.float8_e4m3fn).view(torch.uint8).numpy()


triton_interpreter._convert_float = _convert_float_rounding_fp8


def cdiv(a, b):
    return (a + b - 1) // b


def rel_l2(got, want):
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm()).item()


def poisoned(*shape, dtype=torch.bfloat16):
    if dtype == torch.float8_e4m3fn:
        return torch.full(shape, 0xFF, dtype=torch.uint8).view(torch.float8_e4m3fn)
    if dtype in (torch.int32, torch.int64):
        return torch.full(shape, -7, dtype=dtype)
    return torch.full(shape, float("nan"), dtype=dtype)


def quantize_ref(x):
    """cpu::quantize_row_fp8 per row: e4m3 codes and f32 scales per 128 columns."""
    T, K = x.shape
    groups = cdiv(K, 128)
    xf = torch.nn.functional.pad(x.float(), (0, groups * 128 - K)).view(T, groups, 128)
    scale = xf.abs().amax(-1).clamp_min(1e-10) / FP8_MAX
    q = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(T, groups * 128)[:, :K].contiguous(), scale


def fp8_linear_ref(q, q_scale, w, w_scale):
    """cpu::linear with an FP8 weight on pre-quantized rows: 128-deep partial sums, each scaled
    by act_scale * weight_scale, in float64."""
    T, K = q.shape
    N = w.shape[0]
    out = torch.zeros(T, N, dtype=torch.float64)
    for b in range(cdiv(K, 128)):
        part = q[:, b * 128:(b + 1) * 128].double() @ w[:, b * 128:(b + 1) * 128].double().T
        ws = w_scale[torch.arange(N) // 128, b].double()
        out += part * (q_scale[:, b].double()[:, None] * ws[None, :])
    return out


def random_fp8_weight(n, k):
    w = torch.randn(n, k) * 0.05
    nb, kb = cdiv(n, 128), cdiv(k, 128)
    padded = torch.nn.functional.pad(w, (0, kb * 128 - k, 0, nb * 128 - n))
    blocks = padded.view(nb, 128, kb, 128)
    scale = blocks.abs().amax((1, 3)).clamp_min(1e-10) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(nb * 128, kb * 128)
    return q[:n, :k].contiguous(), scale.contiguous()


# ---- routing ---------------------------------------------------------------------------------


class Route:
    """The route of one step, run through the kernels: offsets, sorted pairs, pair rows, map."""

    def __init__(self, ids, g2l, n_local, e_block=32):
        T, k = ids.shape
        self.pairs = T * k
        self.n_local = n_local
        chunks = cdiv(self.pairs, moe_route.CHUNK)
        flat = ids.reshape(-1).contiguous()
        counts = poisoned(chunks, e_block, dtype=torch.int32)
        moe_route.moe_count[(chunks, )](flat, g2l, counts, self.pairs, len(g2l),
                                        CHUNK=moe_route.CHUNK, E_BLOCK=e_block)
        self.map_tiles = self.pairs // moe_route.MAP_BLOCK_M + min(n_local, self.pairs)
        self.chunk_base = poisoned(chunks, e_block, dtype=torch.int32)
        self.offsets = poisoned(n_local + 1, dtype=torch.int32)
        self.tiles = poisoned(2, self.map_tiles, dtype=torch.int32)
        moe_route.moe_offsets[(1, )](counts, self.chunk_base, self.offsets, self.tiles, chunks,
                                     n_local, self.map_tiles, E_BLOCK=e_block, ROWS=8192 // e_block,
                                     MAP_BLOCK_M=moe_route.MAP_BLOCK_M)
        self.sorted_pairs = poisoned(self.pairs, dtype=torch.int32)
        self.pair_rows = poisoned(self.pairs, dtype=torch.int32)
        moe_route.moe_scatter[(chunks, )](flat, g2l, self.chunk_base, self.sorted_pairs,
                                          self.pair_rows, self.pairs, len(g2l),
                                          CHUNK=moe_route.CHUNK, E_BLOCK=e_block)
        self.placed = int(self.offsets[-1])

    def tiles_m(self, block_m):
        """The host's bound on M tiles (cuda_moe.cpp)."""
        return (self.pairs + min(self.n_local, self.pairs) * (block_m - 1)) // block_m


def route_ref(ids, g2l, n_local):
    """Expert-sorted pairs, token order within an expert; a pair's row; -1 when elsewhere."""
    flat = ids.reshape(-1).tolist()
    local = [int(g2l[i]) if 0 <= i < len(g2l) else -1 for i in flat]
    order = sorted((e, p) for p, e in enumerate(local) if e >= 0)
    rows = [-1] * len(flat)
    for r, (_, p) in enumerate(order):
        rows[p] = r
    counts = [sum(1 for e in local if e == x) for x in range(n_local)]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    return [p for _, p in order], rows, offsets


def random_routing(T, k, n_global, skew=False):
    ids = torch.stack([torch.randperm(n_global)[:k] for _ in range(T)]).to(torch.int32)
    if skew:  # every token's first slot goes to expert 1
        for t in range(T):
            row = [e for e in ids[t].tolist() if e != 1][:k - 1]
            ids[t] = torch.tensor([1] + row, dtype=torch.int32)
    return ids


def test_route_sorts_pairs_by_expert_and_skips_the_elsewhere():
    for T, k, n_global, e_block in ((1, 8, 256, 256), (7, 4, 16, 32), (300, 6, 64, 128),
                                    (100, 8, 300, 512)):
        ids = random_routing(T, k, n_global, skew=T > 50)
        ids[0, 0] = n_global  # the "computed elsewhere" id an expert-parallel exchange passes
        g2l = torch.full((n_global, ), -1, dtype=torch.int32)
        held = sorted(random.sample(range(n_global), n_global * 3 // 4))
        g2l[torch.tensor(held)] = torch.arange(len(held), dtype=torch.int32)
        r = Route(ids, g2l, len(held), e_block)
        want_sorted, want_rows, want_offsets = route_ref(ids, g2l, len(held))
        assert r.offsets.tolist() == want_offsets
        assert r.sorted_pairs[:r.placed].tolist() == want_sorted
        assert r.pair_rows.tolist() == want_rows
        # The tile map: every tile of 128 rows, in expert order.
        want_tiles = [(e, want_offsets[e] + i * 128) for e in range(len(held))
                      for i in range(cdiv(want_offsets[e + 1] - want_offsets[e], 128))]
        got = list(zip(r.tiles[0].tolist(), r.tiles[1].tolist()))
        assert got[:len(want_tiles)] == want_tiles
        assert all(e == len(held) for e, _ in got[len(want_tiles):])


def test_permute_gathers_and_quantizes_like_act_quant():
    T, k, n_global, H = 9, 3, 8, 320
    ids = random_routing(T, k, n_global)
    g2l = torch.arange(n_global, dtype=torch.int32)
    g2l[5] = -1
    r = Route(ids, g2l, n_global)
    x = torch.randn(T, H).to(torch.bfloat16)
    a = poisoned(r.pairs, H, dtype=torch.float8_e4m3fn)
    a_scale = poisoned(r.pairs, cdiv(H, 128), dtype=torch.float32)
    moe_route.moe_permute[(r.pairs, cdiv(H, 8 * 128))](x, r.sorted_pairs, r.offsets, a, a_scale,
                                                       n_global, H, k, GROUPS=8, FP8=1)
    tokens = r.sorted_pairs[:r.placed].long() // k
    q, s = quantize_ref(x[tokens])
    assert torch.equal(a[:r.placed].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(a_scale[:r.placed], s)
    b = poisoned(r.pairs, H)
    moe_route.moe_permute[(r.pairs, cdiv(H, 8 * 128))](x, r.sorted_pairs, r.offsets, b, a_scale,
                                                       n_global, H, k, GROUPS=8, FP8=0)
    assert torch.equal(b[:r.placed], x[tokens])


def test_combine_weights_and_sums_the_placed_slots():
    T, k, H = 6, 4, 300
    pairs = T * k
    y = torch.randn(pairs, H).to(torch.bfloat16)
    rows = torch.randperm(pairs).to(torch.int32)
    rows[3] = -1
    rows[7] = -1
    w = torch.rand(T, k)
    out = poisoned(T, H)
    moe_route.moe_combine[(T, cdiv(H, 128))](y, rows, w, out, H, k, BLOCK=128)
    want = torch.zeros(T, H)
    for t in range(T):
        for j in range(k):
            if rows[t * k + j] >= 0:
                want[t] += w[t, j] * y[rows[t * k + j].long()].float()
    assert torch.equal(out, want.to(torch.bfloat16))


# ---- grouped GEMMs ---------------------------------------------------------------------------


class Experts:
    """Random experts and their address table (moe_gemm.py's layout)."""

    def __init__(self, n, H, inter, fp8):
        self.fp8 = fp8
        self.keep = []
        rows = []
        for _ in range(n):
            if fp8:
                g, gs = random_fp8_weight(inter, H)
                u, us = random_fp8_weight(inter, H)
                d, ds = random_fp8_weight(H, inter)
            else:
                g, u, d = ((torch.randn(a, b) * 0.05).to(torch.bfloat16)
                           for a, b in ((inter, H), (inter, H), (H, inter)))
                gs = us = ds = None
            self.keep.append((g, gs, u, us, d, ds))
            rows.append([0 if t is None else t.data_ptr() for t in (g, gs, u, us, d, ds)])
        self.table = torch.tensor(rows, dtype=torch.int64)

    def gate_up_ref(self, e, a, a_scale):
        g, gs, u, us, _, _ = self.keep[e]
        if self.fp8:
            gate, up = fp8_linear_ref(a, a_scale, g, gs), fp8_linear_ref(a, a_scale, u, us)
        else:
            gate, up = a.double() @ g.double().T, a.double() @ u.double().T
        return gate / (1 + torch.exp(-gate)) * up

    def down_ref(self, e, h, h_scale):
        _, _, _, _, d, ds = self.keep[e]
        return fp8_linear_ref(h, h_scale, d, ds) if self.fp8 else h.double() @ d.double().T


def run_gemms(route, experts, a, a_scale, H, inter, gate_up, down, ws=False):
    """Both projections with the given variants' constexprs; returns h, h_scale, y."""
    fp8 = experts.fp8
    act = torch.float8_e4m3fn if fp8 else torch.bfloat16
    h = poisoned(route.pairs, inter, dtype=act)
    h_scale = poisoned(route.pairs, cdiv(inter, 128), dtype=torch.float32)
    y = poisoned(route.pairs, H)
    n = route.n_local
    for kernel, variant, out, scale_out, N, K, src, src_scale in (
            (moe_gemm.moe_gate_up_ws if ws else moe_gemm.moe_gate_up, gate_up, h, h_scale, inter,
             H, a, a_scale),
            (moe_gemm.moe_down_ws if ws else moe_gemm.moe_down, down, y, None, H, inter, h,
             h_scale)):
        c = variant.constexprs
        tiles_m = route.tiles_m(c["BLOCK_M"]) if not ws else route.map_tiles
        grid = (tiles_m * cdiv(N, c["BLOCK_N"]), )
        head = [src, src_scale, route.offsets] + ([route.tiles] if ws else [])
        tail = [n, route.pairs, tiles_m, N, K]
        if scale_out is not None:
            kernel[grid](*head, experts.table, out, scale_out, *tail, **c, num_warps=4)
        else:
            kernel[grid](*head, experts.table, out, *tail, **c, num_warps=4)
    return h, h_scale, y


def check_gemms(T, k, n_experts, H, inter, fp8, gate_up, down, skew=False, ws=False):
    ids = random_routing(T, k, n_experts, skew)
    g2l = torch.arange(n_experts, dtype=torch.int32)
    r = Route(ids, g2l, n_experts)
    x = torch.randn(T, H).to(torch.bfloat16)
    experts = Experts(n_experts, H, inter, fp8)
    if fp8:
        a = poisoned(r.pairs, H, dtype=torch.float8_e4m3fn)
        a_scale = poisoned(r.pairs, cdiv(H, 128), dtype=torch.float32)
    else:
        a, a_scale = poisoned(r.pairs, H), torch.zeros(1)
    moe_route.moe_permute[(r.pairs, cdiv(H, 1024))](x, r.sorted_pairs, r.offsets, a, a_scale,
                                                    n_experts, H, k, GROUPS=8, FP8=int(fp8))
    h, h_scale, y = run_gemms(r, experts, a, a_scale, H, inter, gate_up, down, ws)
    offsets = r.offsets.tolist()
    for e in range(n_experts):
        lo, hi = offsets[e], offsets[e + 1]
        if lo == hi:
            continue
        h_want = experts.gate_up_ref(e, a[lo:hi], a_scale[lo:hi] if fp8 else None)
        if fp8:
            # Quantization of h from the reference values; codes may differ where the GPU's sum
            # rounds the other way, so compare dequantized values.
            q, s = quantize_ref(h_want.float())
            got = h[lo:hi].float() * h_scale[lo:hi].repeat_interleave(128, 1)[:, :inter]
            want = q.float() * s.repeat_interleave(128, 1)[:, :inter]
            assert rel_l2(got, want) < 2e-2, (e, rel_l2(got, want))
            y_want = experts.down_ref(e, h[lo:hi], h_scale[lo:hi])
        else:
            assert rel_l2(h[lo:hi].float(), h_want) < 8e-3, (e, rel_l2(h[lo:hi].float(), h_want))
            y_want = experts.down_ref(e, h[lo:hi], None)
        assert rel_l2(y[lo:hi].float(), y_want) < 8e-3, (e, rel_l2(y[lo:hi].float(), y_want))
    assert not torch.isnan(y[:r.placed].float()).any()


def variant(kernel, name):
    return next(v for v in kernel.variants if v.name == name)


GATE_UP, DOWN = moe_gemm.KERNELS[0], moe_gemm.KERNELS[1]
GATE_UP_WS, DOWN_WS = moe_gemm.KERNELS[2], moe_gemm.KERNELS[3]


def test_fp8_gemms_prefill_and_decode_tiles():
    # Many rows per expert, one expert with every token, experts with none.
    check_gemms(70, 3, 6, 256, 256, True, variant(GATE_UP, "fp8_m64n128_w8s3"),
                variant(DOWN, "fp8_m64n128_w4s3"), skew=True)
    check_gemms(5, 4, 12, 256, 384, True, variant(GATE_UP, "fp8_m16n128_swap_w4s4"),
                variant(DOWN, "fp8_m16n64_swap_w4s6"))


def test_fp8_gemms_ragged_intermediate():
    # The tiny model: intermediate 64, hidden 256.
    check_gemms(9, 4, 16, 256, 64, True, variant(GATE_UP, "fp8_m64n128_w8s3"),
                variant(DOWN, "fp8_m64n64_w4s3_anyk"))


def test_bf16_gemms():
    check_gemms(40, 2, 5, 192, 128, False, variant(GATE_UP, "bf16_m64n64_w4s4"),
                variant(DOWN, "bf16_m64n128_w4s4"), skew=True)
    check_gemms(6, 4, 8, 256, 64, False, variant(GATE_UP, "bf16_m16n64_swap_w4s5"),
                variant(DOWN, "bf16_m64n64_w4s3_anyk"))


def test_warp_specialized_gemms():
    check_gemms(150, 2, 3, 256, 256, True, GATE_UP_WS.variants[0], DOWN_WS.variants[0], ws=True)


# ---- router --------------------------------------------------------------------------------


def gate_ref(logits, bias, n_group, topk_group, top_k, scoring, method, norm, scaling):
    """cpu_moe.cpp's moe_gate, row by row in f32: (ids, weights)."""
    T, E = logits.shape
    per_group = E // n_group
    ids, weights = [], []
    for t in range(T):
        x = logits[t]
        if scoring == moe_gate.SOFTMAX:
            scores = torch.softmax(x, 0)
        else:
            scores = 1.0 / (1.0 + torch.exp(-x))
        choice = scores + (bias if method == moe_gate.NOAUX_TC else 0.0)
        if method != moe_gate.GREEDY and n_group > 1:
            group_score = []
            for g in range(n_group):
                members = choice[g * per_group:(g + 1) * per_group].tolist()
                order = sorted(range(per_group), key=lambda i: (-members[i], i))
                group_score.append(members[order[0]] + members[order[1]]
                                   if method == moe_gate.NOAUX_TC else members[order[0]])
            keep = sorted(range(n_group), key=lambda g: (-group_score[g], g))[:topk_group]
            fill = -math.inf if method == moe_gate.NOAUX_TC else 0.0
            choice = torch.tensor([c if e // per_group in keep else fill
                                   for e, c in enumerate(choice.tolist())])
        c = choice.tolist()
        chosen = sorted(range(E), key=lambda e: (-c[e], e))[:top_k]
        w = scores[chosen]
        if norm and (method == moe_gate.NOAUX_TC or top_k > 1):
            w = w / (w.sum() + 1e-20)
        ids.append(chosen)
        weights.append((w * scaling).tolist())
    return torch.tensor(ids, dtype=torch.int32), torch.tensor(weights)


def run_gate(logits, bias, n_group, topk_group, top_k, scoring, method, norm, scaling):
    T, E = logits.shape
    e_block = next(b for b in moe_gate.E_BLOCKS if b >= E)
    ids = poisoned(T, top_k, dtype=torch.int32)
    weights = poisoned(T, top_k, dtype=torch.float32)
    moe_gate.moe_gate[(T, )](logits, bias if bias is not None else logits, ids, weights, E,
                             E // n_group, n_group, topk_group, top_k, scoring, method,
                             int(norm and (method == moe_gate.NOAUX_TC or top_k > 1)),
                             int(bias is not None), scaling, E_BLOCK=e_block,
                             G_BLOCK=moe_gate.G_BLOCK, K_BLOCK=moe_gate.K_BLOCK)
    return ids, weights


GATE_CONFIGS = [  # E, n_group, topk_group, top_k, scoring, method, norm, scaling, bias
    (256, 8, 4, 8, moe_gate.SIGMOID, moe_gate.NOAUX_TC, True, 2.5, True),  # DeepSeek-V3
    (16, 4, 2, 4, moe_gate.SIGMOID, moe_gate.NOAUX_TC, True, 2.5, True),  # trident-tiny
    (64, 1, 1, 6, moe_gate.SOFTMAX, moe_gate.GREEDY, False, 1.0, False),  # V2-Lite
    (160, 8, 3, 6, moe_gate.SOFTMAX, moe_gate.GROUP_LIMITED_GREEDY, False, 16.0, False),  # V2
    (48, 1, 1, 1, moe_gate.SIGMOID, moe_gate.NOAUX_TC, True, 1.0, True),
]


def test_gate_matches_reference_on_distinct_scores():
    for E, n_group, topk_group, top_k, scoring, method, norm, scaling, has_bias in GATE_CONFIGS:
        T = 23
        # A shuffled grid of logits: every choice at least ~1e-4 from every other.
        logits = torch.stack([(torch.randperm(E).float() - E / 2) * (6.0 / E) for _ in range(T)])
        bias = torch.randn(E) * 1e-3 if has_bias else None
        want_ids, want_w = gate_ref(logits, bias if has_bias else 0.0, n_group, topk_group,
                                    top_k, scoring, method, norm, scaling)
        ids, w = run_gate(logits, bias, n_group, topk_group, top_k, scoring, method, norm,
                          scaling)
        assert torch.equal(ids, want_ids), (E, method)
        assert torch.allclose(w, want_w, rtol=2e-6, atol=1e-7), (E, method)


def test_gate_breaks_ties_toward_the_lower_index():
    for E, n_group, topk_group, top_k, scoring, method, norm, scaling, has_bias in GATE_CONFIGS:
        T = 17
        logits = torch.randint(0, 4, (T, E)).float()
        logits[0] = 1.0  # every expert and group tied
        bias = torch.full((E, ), 0.125) if has_bias else None
        want_ids, want_w = gate_ref(logits, bias if has_bias else 0.0, n_group, topk_group,
                                    top_k, scoring, method, norm, scaling)
        ids, w = run_gate(logits, bias, n_group, topk_group, top_k, scoring, method, norm,
                          scaling)
        assert torch.equal(ids, want_ids), (E, method, ids[0], want_ids[0])
        assert torch.allclose(w, want_w, rtol=2e-6, atol=1e-7), (E, method)


if __name__ == "__main__":
    random.seed()
    seed = random.randrange(1 << 30)
    torch.manual_seed(seed)
    print(f"seed {seed}")
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"{name}: ok", flush=True)
