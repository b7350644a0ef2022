"""Grouped GEMMs of the routed experts: one launch per projection covers every expert held here.

Rows are the routed (token, slot) pairs in expert-sorted order, already gathered there by
moe_permute (moe_route.py): local expert e owns rows [offsets[e], offsets[e + 1]) of `a`. A
program computes one BLOCK_M x BLOCK_N tile of one expert. The host cannot see the counts without
a synchronization, so programs are numbered over an upper bound of M tiles (tiles_m) and those
past the last expert's tiles return at once; each program finds its expert from the offsets
(expert_tile).

Weights stay where the loader put them, one tensor per expert: weights_ptr is a table of device
addresses, i64 [experts, 6]: gate, gate scales, up, up scales, down, down scales (DeepSeek's
w1, w3, w2; scales 0 for BF16 weights). Every address is 16-byte aligned (checked by the host).

  moe_gate_up  h = silu(a W_gate^T) * (a W_up^T). FP8: a is e4m3 with 1x128 scales, the weights
               e4m3 with 128x128 scales, each 128-deep partial product scaled into an f32 sum (as
               in fp8_gemm.py), and h is quantized in the epilogue per row per 128 columns
               (BLOCK_N = 128: one group a tile; scale = max(|h|, 1e-10) / 448) into e4m3 codes
               and f32 scales, what moe_down reads. BF16: h is bf16.
  moe_down     y = h W_down^T, bf16, rows in sorted order; moe_combine (moe_route.py) applies the
               routing weights on the way back to token order.

Two structures of each:
  - pointer loads (cp.async), all warps loading and multiplying. The gate and up tiles of the
    same BLOCK_N columns are one 2*BLOCK_N-wide product. SWAP_AB computes the tile transposed so a
    handful of rows per expert (decode) fills the narrow N side of the tensor-core instruction.
    EVEN_K variants assume K % BLOCK_K == 0 and 16-byte aligned rows; the others mask the last
    K block.
  - *_ws: tensor-memory-accelerator loads through descriptors made on the device, and Triton's
    warp specialization (Hopper): a producer warpgroup loads, two consumer warpgroups (BLOCK_M / 2
    rows each) multiply, each waiting only for its own products, so one's scaling overlaps the
    other's matrix work. K needs only K % 16 == 0 (the descriptor fills past K with zeros).
"""
import triton
import triton.language as tl

from gemm_tiles import tile_coords
from variant import Kernel, Variant

SCALE_BLOCK = tl.constexpr(128)
BF16_BLOCK_K = 64
# Columns of the weight table: the address of each projection's weight and scales.
TABLE_WIDTH = tl.constexpr(6)
GATE, GATE_SCALE, UP, UP_SCALE, DOWN, DOWN_SCALE = (tl.constexpr(c) for c in range(6))
# Experts looked at per step when a program searches the offsets for its tile.
EXPERT_CHUNK = tl.constexpr(128)


@triton.jit
def expert_tile(tile, offsets_ptr, n_experts, BLOCK_M: tl.constexpr):
    """(e, first row, end row) of M tile `tile`, numbering each expert's BLOCK_M-row tiles in
    expert order; e == n_experts when the tile is past the last expert's."""
    e = tl.zeros((), tl.int32)
    tiles_before = tl.zeros((), tl.int32)
    carry = tl.zeros((), tl.int32)
    for first in range(0, n_experts, EXPERT_CHUNK):
        idx = first + tl.arange(0, EXPERT_CHUNK)
        inside = idx < n_experts
        lo = tl.load(offsets_ptr + idx, mask=inside, other=0)
        hi = tl.load(offsets_ptr + idx + 1, mask=inside, other=0)
        tiles = tl.cdiv(hi - lo, BLOCK_M)
        # Experts whose tiles all come before this one (empty experts included).
        done = inside & (carry + tl.cumsum(tiles, 0) <= tile)
        e += tl.sum(done.to(tl.int32))
        tiles_before += tl.sum(tl.where(done, tiles, 0))
        carry += tl.sum(tiles)
    row0 = tl.load(offsets_ptr + e) + (tile - tiles_before) * BLOCK_M
    row_end = tl.load(offsets_ptr + tl.minimum(e + 1, n_experts))
    return e, row0, row_end


@triton.jit
def mapped_tile(tile, tiles_ptr, tiles_m, offsets_ptr, n_experts, K, BLOCK_K: tl.constexpr):
    """expert_tile for the warp-specialized kernels, which can neither search in a loop nor
    return early: (e, first row, end row, K blocks) from the tile map moe_offsets made, i32
    [2, tiles_m] (each tile's expert, then its first row). A tile past the last expert's gets
    expert n_experts - 1, no rows and no K blocks."""
    e = tl.load(tiles_ptr + tile)
    live = e < n_experts
    e = tl.minimum(e, n_experts - 1)
    row0 = tl.load(tiles_ptr + tiles_m + tile)
    row_end = tl.where(live, tl.load(offsets_ptr + e + 1), 0)
    return e, row0, row_end, tl.where(live, tl.cdiv(K, BLOCK_K), 0)


@triton.jit
def table_pointer(entry, column: tl.constexpr, dtype: tl.constexpr):
    """The address in column `column` of an expert's table row, as a 16-byte aligned pointer."""
    return tl.multiple_of(tl.load(entry + column).to(tl.pointer_type(dtype)), 16)


@triton.jit
def scaled_product(acc, a, b, a_s, b_s, FP8: tl.constexpr, SWAP_AB: tl.constexpr):
    """acc + a b^T (acc^T + b a^T with SWAP_AB); FP8 scales the 128-deep product by a_s (per row
    of a) times b_s (per row of b, or one scalar) before adding it."""
    if FP8:
        if SWAP_AB:
            return acc + tl.dot(b, tl.trans(a)) * (b_s[:, None] * a_s[None, :])
        else:
            return acc + tl.dot(a, tl.trans(b)) * (a_s[:, None] * b_s[None, :])
    else:
        if SWAP_AB:
            return tl.dot(b, tl.trans(a), acc)
        else:
            return tl.dot(a, tl.trans(b), acc)


@triton.jit
def store_h(gate, up, h_ptr, h_scale_ptr, rows, row_end, pid_n, N, BLOCK_N: tl.constexpr,
            FP8: tl.constexpr):
    """h = silu(gate) * up for the tile's rows and BLOCK_N columns; FP8: quantized per row."""
    h = tl.math.div_rn(gate, 1.0 + tl.exp(-gate)) * up
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_rows = rows.to(tl.int64)
    in_out = (rows < row_end)[:, None] & (cols < N)[None, :]
    if FP8:
        h = tl.where((cols < N)[None, :], h, 0.0)
        scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(h), axis=1), 1e-10), 448.0)
        q = tl.math.div_rn(h, scale[:, None]).to(tl.float8e4nv)
        tl.store(h_ptr + out_rows[:, None] * N + cols[None, :], q, mask=in_out)
        tl.store(h_scale_ptr + out_rows * tl.cdiv(N, SCALE_BLOCK) + pid_n, scale,
                 mask=rows < row_end)
    else:
        tl.store(h_ptr + out_rows[:, None] * N + cols[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=in_out)


@triton.jit
def moe_gate_up(a_ptr, a_scale_ptr, offsets_ptr, weights_ptr, h_ptr, h_scale_ptr, n_experts,
                n_rows, tiles_m, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr,
                EVEN_K: tl.constexpr, FP8: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), tiles_m * BLOCK_M, N, BLOCK_M, BLOCK_N, GROUP_M)
    e, row0, row_end = expert_tile(pid_m, offsets_ptr, n_experts, BLOCK_M)
    if e >= n_experts:
        return
    if FP8:
        tl.static_assert(BLOCK_N == SCALE_BLOCK, "FP8 h is quantized per tile: BLOCK_N = 128")
    rows = row0 + tl.arange(0, BLOCK_M)
    # Rows past the expert's end read its last row; their results are never stored.
    rows_a = tl.minimum(rows, row_end - 1).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows_a[:, None] * K + offs_k[None, :]
    # The 2*BLOCK_N weight rows of the product: the gate's tile columns, then the up's.
    entry = weights_ptr + e.to(tl.int64) * TABLE_WIDTH
    r = tl.arange(0, 2 * BLOCK_N)
    is_gate = r < BLOCK_N
    w_rows = tl.minimum(pid_n * BLOCK_N + r % BLOCK_N, N - 1).to(tl.int64)
    w_base = tl.where(is_gate, table_pointer(entry, GATE, a_ptr.dtype.element_ty),
                      table_pointer(entry, UP, a_ptr.dtype.element_ty))
    b_ptrs = w_base[:, None] + w_rows[:, None] * K + offs_k[None, :]

    k_blocks = tl.cdiv(K, BLOCK_K)
    if FP8:
        a_scale_ptrs = a_scale_ptr + rows_a * k_blocks
        gate_scales = table_pointer(entry, GATE_SCALE, tl.float32) + pid_n * k_blocks
        up_scales = table_pointer(entry, UP_SCALE, tl.float32) + pid_n * k_blocks
    if SWAP_AB:
        acc = tl.zeros((2 * BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    for kb in range(0, k_blocks):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            in_k = offs_k < K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=in_k[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=in_k[None, :], other=0.0)
        if FP8:
            a_s = tl.load(a_scale_ptrs + kb)
            b_s = tl.where(is_gate, tl.load(gate_scales + kb), tl.load(up_scales + kb))
        else:
            a_s = 1.0
            b_s = 1.0
        acc = scaled_product(acc, a, b, a_s, b_s, FP8, SWAP_AB)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SWAP_AB:
        acc = tl.trans(acc)
    gate, up = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
    store_h(gate, up, h_ptr, h_scale_ptr, rows, row_end, pid_n, N, BLOCK_N, FP8)


@triton.jit
def moe_gate_up_ws(a_ptr, a_scale_ptr, offsets_ptr, tiles_ptr, weights_ptr, h_ptr, h_scale_ptr,
                   n_experts, n_rows, tiles_m, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, STAGES: tl.constexpr,
                   FP8: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), tiles_m * BLOCK_M, N, BLOCK_M, BLOCK_N, GROUP_M)
    e, row0, row_end, k_blocks = mapped_tile(pid_m, tiles_ptr, tiles_m, offsets_ptr,
                                              n_experts, K, BLOCK_K)
    if FP8:
        tl.static_assert(BLOCK_N == SCALE_BLOCK, "FP8 h is quantized per tile: BLOCK_N = 128")
    entry = weights_ptr + e.to(tl.int64) * TABLE_WIDTH
    dtype = a_ptr.dtype.element_ty
    a_desc = tl.make_tensor_descriptor(a_ptr, [n_rows, K], [K, 1], [BLOCK_M, BLOCK_K])
    gate_desc = tl.make_tensor_descriptor(table_pointer(entry, GATE, dtype), [N, K], [K, 1],
                                          [BLOCK_N, BLOCK_K])
    up_desc = tl.make_tensor_descriptor(table_pointer(entry, UP, dtype), [N, K], [K, 1],
                                        [BLOCK_N, BLOCK_K])
    rows = row0 + tl.arange(0, BLOCK_M)
    if FP8:
        a_scale_ptrs = a_scale_ptr + tl.minimum(rows, row_end - 1).to(tl.int64) * k_blocks
        gate_scales = table_pointer(entry, GATE_SCALE, tl.float32) + pid_n * k_blocks
        up_scales = table_pointer(entry, UP_SCALE, tl.float32) + pid_n * k_blocks
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in tl.range(0, k_blocks, num_stages=STAGES, warp_specialize=True):
        a = a_desc.load([row0, kb * BLOCK_K])
        g = gate_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
        u = up_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
        if FP8:
            a_s = tl.load(a_scale_ptrs + kb)
            g_s = tl.load(gate_scales + kb)
            u_s = tl.load(up_scales + kb)
        else:
            a_s = 1.0
            g_s = 1.0
            u_s = 1.0
        acc_g = scaled_product(acc_g, a, g, a_s, g_s, FP8, False)
        acc_u = scaled_product(acc_u, a, u, a_s, u_s, FP8, False)
    store_h(acc_g, acc_u, h_ptr, h_scale_ptr, rows, row_end, pid_n, N, BLOCK_N, FP8)


@triton.jit
def moe_down(a_ptr, a_scale_ptr, offsets_ptr, weights_ptr, y_ptr, n_experts, n_rows, tiles_m, N,
             K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr, EVEN_K: tl.constexpr,
             FP8: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), tiles_m * BLOCK_M, N, BLOCK_M, BLOCK_N, GROUP_M)
    e, row0, row_end = expert_tile(pid_m, offsets_ptr, n_experts, BLOCK_M)
    if e >= n_experts:
        return
    rows = row0 + tl.arange(0, BLOCK_M)
    rows_a = tl.minimum(rows, row_end - 1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_b = tl.minimum(offs_n, N - 1).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    entry = weights_ptr + e.to(tl.int64) * TABLE_WIDTH
    a_ptrs = a_ptr + rows_a[:, None] * K + offs_k[None, :]
    b_ptrs = (table_pointer(entry, DOWN, a_ptr.dtype.element_ty) + rows_b[:, None] * K +
              offs_k[None, :])

    k_blocks = tl.cdiv(K, BLOCK_K)
    if FP8:
        a_scale_ptrs = a_scale_ptr + rows_a * k_blocks
        b_scale_ptrs = (table_pointer(entry, DOWN_SCALE, tl.float32) +
                        (rows_b // SCALE_BLOCK) * k_blocks)
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, k_blocks):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            in_k = offs_k < K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=in_k[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=in_k[None, :], other=0.0)
        if FP8:
            a_s = tl.load(a_scale_ptrs + kb)
            b_s = tl.load(b_scale_ptrs + kb)
        else:
            a_s = 1.0
            b_s = 1.0
        acc = scaled_product(acc, a, b, a_s, b_s, FP8, SWAP_AB)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SWAP_AB:
        acc = tl.trans(acc)
    mask = (rows < row_end)[:, None] & (offs_n < N)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def moe_down_ws(a_ptr, a_scale_ptr, offsets_ptr, tiles_ptr, weights_ptr, y_ptr, n_experts, n_rows,
                tiles_m, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, STAGES: tl.constexpr, FP8: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), tiles_m * BLOCK_M, N, BLOCK_M, BLOCK_N, GROUP_M)
    e, row0, row_end, k_blocks = mapped_tile(pid_m, tiles_ptr, tiles_m, offsets_ptr,
                                              n_experts, K, BLOCK_K)
    entry = weights_ptr + e.to(tl.int64) * TABLE_WIDTH
    a_desc = tl.make_tensor_descriptor(a_ptr, [n_rows, K], [K, 1], [BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(table_pointer(entry, DOWN, a_ptr.dtype.element_ty), [N, K],
                                       [K, 1], [BLOCK_N, BLOCK_K])
    rows = row0 + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if FP8:
        tl.static_assert(BLOCK_N % 128 == 0, "one weight scale per tile and K block")
        a_scale_ptrs = a_scale_ptr + tl.minimum(rows, row_end - 1).to(tl.int64) * k_blocks
        b_scale_ptrs = (table_pointer(entry, DOWN_SCALE, tl.float32) +
                        (pid_n * BLOCK_N // SCALE_BLOCK) * k_blocks)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in tl.range(0, k_blocks, num_stages=STAGES, warp_specialize=True):
        a = a_desc.load([row0, kb * BLOCK_K])
        b = b_desc.load([pid_n * BLOCK_N, kb * BLOCK_K])
        if FP8:
            a_s = tl.load(a_scale_ptrs + kb)
            b_s = tl.load(b_scale_ptrs + kb)
        else:
            a_s = 1.0
            b_s = 1.0
        acc = scaled_product(acc, a, b, a_s, b_s, FP8, False)
    mask = (rows < row_end)[:, None] & (offs_n < N)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask)


# Tiles, (BLOCK_M, BLOCK_N, SWAP_AB, num_warps, num_stages). Gate/up: BLOCK_N is the width of h
# a program makes (the product is twice as wide); FP8 keeps it at the 128-column quantization
# group. Its 2*128-wide product holds two f32 tiles per program (the 128-deep product and the
# sum), so 64 rows take two warpgroups (64 + 64 registers a thread each) and wider row blocks
# spill. SWAP_AB tiles serve a few rows per expert (decode), the others many (prefill); the
# 32-row one with three stages (108 KB) fits two programs per multiprocessor.
GATE_UP_FP8_TILES = [
    (16, 128, 1, 4, 4),
    (32, 128, 1, 4, 4),
    (32, 128, 1, 4, 3),
    (64, 128, 1, 8, 3),
    (64, 128, 0, 8, 3),
    (64, 128, 0, 8, 4),
]
GATE_UP_BF16_TILES = [
    (16, 64, 1, 4, 5),
    (32, 64, 1, 4, 4),
    (64, 64, 0, 4, 4),
    (128, 64, 0, 8, 4),
    (64, 128, 0, 8, 3),
]
# Down, as the dense GEMMs' tiles (fp8_gemm.py, bf16_gemm.py).
DOWN_FP8_TILES = [
    (16, 64, 1, 4, 6),
    (32, 64, 1, 4, 6),
    (64, 128, 1, 4, 4),
    (64, 64, 0, 4, 4),
    (64, 128, 0, 4, 3),
    (128, 128, 0, 8, 4),
]
DOWN_BF16_TILES = [
    (16, 64, 1, 4, 6),
    (32, 64, 1, 4, 6),
    (64, 128, 0, 4, 4),
    (128, 128, 0, 8, 4),
]
# K off the 128 grid (a multiple of 16): the tiny model's intermediate size, 64.
ANY_K_TILE = {"gate_up": (64, 128, 0, 8, 3), "down": (64, 64, 0, 4, 3)}
# Warp-specialized tiles, (BLOCK_M, BLOCK_N, num_warps, stages): num_warps is the consumer
# count's warps before specialization (the compiled kernel has a producer warpgroup more).
WS_TILES = {"gate_up": [(128, 128, 4, 3)], "down": [(128, 128, 4, 4), (128, 128, 4, 3)]}

_TYPES = {"a_scale_ptr": "*fp32", "h_scale_ptr": "*fp32", "offsets_ptr": "*i32",
          "tiles_ptr": "*i32", "weights_ptr": "*i64", "y_ptr": "*bf16"}
_ARGS = {
    "gate_up": ["a_ptr", "a_scale_ptr", "offsets_ptr", "weights_ptr", "h_ptr", "h_scale_ptr",
                "n_experts", "n_rows", "tiles_m", "N", "K"],
    "down": ["a_ptr", "a_scale_ptr", "offsets_ptr", "weights_ptr", "y_ptr", "n_experts",
             "n_rows", "tiles_m", "N", "K"],
}
_DATA = {"gate_up": ("a_ptr", "h_ptr"), "down": ("a_ptr", "y_ptr")}


def _signature(kind, fp8, constexprs, tile_map=False):
    act = "fp8e4nv" if fp8 else "bf16"
    args = list(_ARGS[kind])
    if tile_map:
        args.insert(args.index("offsets_ptr") + 1, "tiles_ptr")
    signature = {a: _TYPES.get(a, f"*{act}" if a.endswith("_ptr") else "i32") for a in args}
    signature.update({k: "constexpr" for k in constexprs})
    return signature


def _variant(kind, fp8, tile, even_k):
    block_m, block_n, swap_ab, warps, stages = tile
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n,
                  "BLOCK_K": SCALE_BLOCK.value if fp8 else BF16_BLOCK_K, "GROUP_M": 8,
                  "SWAP_AB": swap_ab, "EVEN_K": even_k, "FP8": int(fp8)}
    name = (f"{'fp8' if fp8 else 'bf16'}_m{block_m}n{block_n}{'_swap' if swap_ab else ''}"
            f"_w{warps}s{stages}{'' if even_k else '_anyk'}")
    return Variant(name=name, signature=_signature(kind, fp8, constexprs), constexprs=constexprs,
                   num_warps=warps, num_stages=stages,
                   divisible_by_16=_DATA[kind] + ("N", "K"),
                   tags={"BLOCK_M": block_m, "BLOCK_N": block_n, "SWAP_AB": swap_ab,
                         "EVEN_K": even_k, "FP8": int(fp8)})


def _ws_variant(kind, fp8, tile):
    block_m, block_n, warps, stages = tile
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n,
                  "BLOCK_K": SCALE_BLOCK.value if fp8 else BF16_BLOCK_K, "GROUP_M": 8,
                  "STAGES": stages, "FP8": int(fp8)}
    return Variant(name=f"{'fp8' if fp8 else 'bf16'}_m{block_m}n{block_n}_w{warps}s{stages}",
                   signature=_signature(kind, fp8, constexprs, tile_map=True),
                   constexprs=constexprs, num_warps=warps, num_stages=stages,
                   divisible_by_16=_DATA[kind] + ("N", "K"),
                   tags={"BLOCK_M": block_m, "BLOCK_N": block_n, "SWAP_AB": 0, "EVEN_K": 0,
                         "FP8": int(fp8)})


def _variants(kind, fp8_tiles, bf16_tiles):
    out = [_variant(kind, True, t, 1) for t in fp8_tiles]
    out += [_variant(kind, False, t, 1) for t in bf16_tiles]
    out += [_variant(kind, fp8, ANY_K_TILE[kind], 0) for fp8 in (True, False)]
    return out


KERNELS = [
    Kernel("moe_gate_up", moe_gate_up, _variants("gate_up", GATE_UP_FP8_TILES, GATE_UP_BF16_TILES),
           "h = silu(a W_gate^T) * (a W_up^T) per expert over expert-sorted rows (FP8: quantized)",
           min_arch=89),
    Kernel("moe_down", moe_down, _variants("down", DOWN_FP8_TILES, DOWN_BF16_TILES),
           "y = h W_down^T per expert over expert-sorted rows", min_arch=89),
    Kernel("moe_gate_up_ws", moe_gate_up_ws,
           [_ws_variant("gate_up", True, t) for t in WS_TILES["gate_up"]],
           "moe_gate_up with descriptor loads and warp specialization", min_arch=90),
    Kernel("moe_down_ws", moe_down_ws, [_ws_variant("down", True, t) for t in WS_TILES["down"]],
           "moe_down with descriptor loads and warp specialization", min_arch=90),
]
