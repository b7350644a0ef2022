"""Routing a step's (token, slot) pairs to the experts held here and back. Pair i = t * top_k + j
is slot j of token t; ids[i] is its global expert, mapped to a local one by global_to_local (i32
[n_global], -1: held elsewhere); an id outside [0, n_global) is also skipped. Every step is a
fixed grid, so the whole route needs no synchronization with the host.

  moe_count    per chunk of CHUNK pairs: counts i32 [chunks, E_BLOCK], pairs per local expert.
  moe_offsets  one program: offsets i32 [E + 1] (local expert e owns rows [offsets[e],
               offsets[e + 1]) of the expert-sorted order); chunk_base i32 [chunks, E_BLOCK],
               where each chunk's pairs of each expert start; and the tile map of the
               warp-specialized GEMMs (moe_gemm.py) for MAP_BLOCK_M-row tiles, i32 [2, map_tiles]:
               each tile's expert (E past the last tile), then its first row.
  moe_scatter  per chunk: the row of each placed pair, in token order within an expert:
               sorted_pairs i32 [pairs] (row -> pair) and pair_rows i32 [pairs] (pair -> row, -1
               where the pair is computed elsewhere).
  moe_permute  a[row] = x[token of the row's pair] for the placed rows, bf16 x; FP8 a is quantized
               per 128 columns as act_quant.py does (e4m3 codes and f32 scales, the same bits).
  moe_combine  out[t] = sum over the token's placed slots of weights[t, j] * y[pair_rows[t, j]],
               an f32 sum in slot order, rounded once to bf16: the routing weights applied on the
               way back to token order.
"""
import triton
import triton.language as tl

from variant import Kernel, Variant

CHUNK = 512
# Rows of the tile map's tiles: the warp-specialized GEMMs' BLOCK_M.
MAP_BLOCK_M = 128
GROUP = tl.constexpr(128)


@triton.jit
def local_experts(ids_ptr, g2l_ptr, pairs, n_pairs, n_global):
    """The local expert of each pair, -1 where the pair is not computed here."""
    inside = pairs < n_pairs
    ids = tl.load(ids_ptr + pairs, mask=inside, other=-1)
    known = inside & (ids >= 0) & (ids < n_global)
    return tl.load(g2l_ptr + ids, mask=known, other=-1)


@triton.jit
def moe_count(ids_ptr, g2l_ptr, counts_ptr, n_pairs, n_global, CHUNK: tl.constexpr,
              E_BLOCK: tl.constexpr):
    chunk = tl.program_id(0)
    local = local_experts(ids_ptr, g2l_ptr, chunk * CHUNK + tl.arange(0, CHUNK), n_pairs, n_global)
    counts = tl.histogram(local, E_BLOCK, mask=local >= 0)
    tl.store(counts_ptr + chunk * E_BLOCK + tl.arange(0, E_BLOCK), counts)


@triton.jit
def moe_offsets(counts_ptr, chunk_base_ptr, offsets_ptr, tiles_ptr, n_chunks, n_experts, map_tiles,
                E_BLOCK: tl.constexpr, ROWS: tl.constexpr, MAP_BLOCK_M: tl.constexpr):
    experts = tl.arange(0, E_BLOCK)
    rows = tl.arange(0, ROWS)
    total = tl.zeros((E_BLOCK, ), tl.int32)
    for c in range(0, n_chunks, ROWS):
        block = tl.load(counts_ptr + (c + rows)[:, None] * E_BLOCK + experts[None, :],
                        mask=(c + rows < n_chunks)[:, None], other=0)
        total += tl.sum(block, axis=0)
    start = tl.cumsum(total, 0) - total
    tl.store(offsets_ptr + experts, start, mask=experts < n_experts)
    tl.store(offsets_ptr + n_experts, tl.sum(total))

    running = start
    for c in range(0, n_chunks, ROWS):
        inside = (c + rows < n_chunks)[:, None]
        block = tl.load(counts_ptr + (c + rows)[:, None] * E_BLOCK + experts[None, :], mask=inside,
                        other=0)
        tl.store(chunk_base_ptr + (c + rows)[:, None] * E_BLOCK + experts[None, :],
                 running[None, :] + tl.cumsum(block, 0) - block, mask=inside)
        running += tl.sum(block, axis=0)

    # Tile t belongs to the first expert whose tiles end after it.
    tiles = tl.cdiv(total, MAP_BLOCK_M)
    ends = tl.cumsum(tiles, 0)
    for t0 in range(0, map_tiles, ROWS):
        t = t0 + rows
        done = (ends[None, :] <= t[:, None]) & (experts < n_experts)[None, :]
        e = tl.sum(done.to(tl.int32), axis=1)
        tiles_before = tl.sum(tl.where(done, tiles[None, :], 0), axis=1)
        first = tl.sum(tl.where(experts[None, :] == e[:, None], start[None, :], 0), axis=1)
        tl.store(tiles_ptr + t, e, mask=t < map_tiles)
        tl.store(tiles_ptr + map_tiles + t, first + (t - tiles_before) * MAP_BLOCK_M,
                 mask=t < map_tiles)


@triton.jit
def moe_scatter(ids_ptr, g2l_ptr, chunk_base_ptr, sorted_pairs_ptr, pair_rows_ptr, n_pairs,
                n_global, CHUNK: tl.constexpr, E_BLOCK: tl.constexpr):
    chunk = tl.program_id(0)
    lane = tl.arange(0, CHUNK)
    pairs = chunk * CHUNK + lane
    local = local_experts(ids_ptr, g2l_ptr, pairs, n_pairs, n_global)
    tl.store(pair_rows_ptr + pairs, tl.full((CHUNK, ), -1, tl.int32),
             mask=(pairs < n_pairs) & (local < 0))
    # Sorting by (expert, lane) lists each expert's pairs in token order; a pair's rank among its
    # expert's is its sorted position less where the expert starts in the chunk.
    placed = local >= 0
    keys = tl.sort(tl.where(placed, local * CHUNK + lane, E_BLOCK * CHUNK))
    counts = tl.histogram(local, E_BLOCK, mask=placed)
    expert = tl.minimum(keys // CHUNK, E_BLOCK - 1)
    rank = lane - tl.gather(tl.cumsum(counts, 0) - counts, expert, 0)
    is_pair = keys < E_BLOCK * CHUNK
    row = tl.load(chunk_base_ptr + chunk * E_BLOCK + expert, mask=is_pair, other=0) + rank
    sorted_pair = chunk * CHUNK + keys % CHUNK
    tl.store(sorted_pairs_ptr + row, sorted_pair, mask=is_pair)
    tl.store(pair_rows_ptr + sorted_pair, row, mask=is_pair)


@triton.jit
def moe_permute(x_ptr, sorted_pairs_ptr, offsets_ptr, a_ptr, a_scale_ptr, n_experts, H, top_k,
                GROUPS: tl.constexpr, FP8: tl.constexpr):
    row = tl.program_id(0)
    if row >= tl.load(offsets_ptr + n_experts):
        return
    token = (tl.load(sorted_pairs_ptr + row) // top_k).to(tl.int64)
    groups = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    cols = groups[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    in_row = cols < H
    x = tl.load(x_ptr + token * H + cols, mask=in_row, other=0.0)
    out = a_ptr + row.to(tl.int64) * H + cols
    if FP8:
        f = x.to(tl.float32)
        scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(f), axis=1), 1e-10), 448.0)
        tl.store(out, tl.math.div_rn(f, scale[:, None]).to(tl.float8e4nv), mask=in_row)
        n_groups = tl.cdiv(H, GROUP)
        tl.store(a_scale_ptr + row.to(tl.int64) * n_groups + groups, scale,
                 mask=groups < n_groups)
    else:
        tl.store(out, x, mask=in_row)


@triton.jit
def moe_combine(y_ptr, pair_rows_ptr, weights_ptr, out_ptr, H, top_k, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < H
    acc = tl.zeros((BLOCK, ), tl.float32)
    for j in range(0, top_k):
        row = tl.load(pair_rows_ptr + token * top_k + j)
        w = tl.load(weights_ptr + token * top_k + j)
        y = tl.load(y_ptr + tl.maximum(row, 0).to(tl.int64) * H + cols, mask=in_row & (row >= 0),
                    other=0.0)
        acc += w * y.to(tl.float32)
    tl.store(out_ptr + token * H + cols, acc.to(out_ptr.dtype.element_ty), mask=in_row)


# Local experts per launch: the counts' width (a power of two) bounds them.
E_BLOCKS = [32, 128, 256, 512]


def _route_variants(name, signature, constexprs, warps=4):
    out = []
    for e_block in E_BLOCKS:
        c = dict(constexprs(e_block), E_BLOCK=e_block)
        sig = dict(signature, **{k: "constexpr" for k in c})
        out.append(Variant(name=f"e{e_block}", signature=sig, constexprs=c, num_warps=warps,
                           num_stages=1, tags={"E_BLOCK": e_block}))
    return out


_COUNT = {"ids_ptr": "*i32", "g2l_ptr": "*i32", "counts_ptr": "*i32", "n_pairs": "i32",
          "n_global": "i32"}
_OFFSETS = {"counts_ptr": "*i32", "chunk_base_ptr": "*i32", "offsets_ptr": "*i32",
            "tiles_ptr": "*i32", "n_chunks": "i32", "n_experts": "i32", "map_tiles": "i32"}
_SCATTER = {"ids_ptr": "*i32", "g2l_ptr": "*i32", "chunk_base_ptr": "*i32",
            "sorted_pairs_ptr": "*i32", "pair_rows_ptr": "*i32", "n_pairs": "i32",
            "n_global": "i32"}


def _permute_variant(fp8):
    act = "fp8e4nv" if fp8 else "bf16"
    sig = {"x_ptr": "*bf16", "sorted_pairs_ptr": "*i32", "offsets_ptr": "*i32", "a_ptr": f"*{act}",
           "a_scale_ptr": "*fp32", "n_experts": "i32", "H": "i32", "top_k": "i32",
           "GROUPS": "constexpr", "FP8": "constexpr"}
    return Variant(name=act, signature=sig, constexprs={"GROUPS": 8, "FP8": int(fp8)},
                   num_warps=4, num_stages=1, divisible_by_16=("x_ptr", "a_ptr", "H"),
                   tags={"GROUPS": 8, "FP8": int(fp8)})


_COMBINE = {"y_ptr": "*bf16", "pair_rows_ptr": "*i32", "weights_ptr": "*fp32",
            "out_ptr": "*bf16", "H": "i32", "top_k": "i32", "BLOCK": "constexpr"}

KERNELS = [
    Kernel("moe_count", moe_count,
           _route_variants("count", _COUNT, lambda e: {"CHUNK": CHUNK}),
           "pairs per local expert, per chunk of routed (token, slot) pairs"),
    Kernel("moe_offsets", moe_offsets,
           _route_variants("offsets", _OFFSETS,
                           lambda e: {"ROWS": max(1, 8192 // e), "MAP_BLOCK_M": MAP_BLOCK_M}),
           "expert row offsets, each chunk's start per expert, the GEMM tile map"),
    Kernel("moe_scatter", moe_scatter,
           _route_variants("scatter", _SCATTER, lambda e: {"CHUNK": CHUNK}),
           "the expert-sorted row of each routed pair, and its inverse"),
    Kernel("moe_permute", moe_permute, [_permute_variant(True), _permute_variant(False)],
           "a[row] = x[token of row] in expert-sorted order, FP8 quantized per 128 columns",
           min_arch=89),
    Kernel("moe_combine", moe_combine,
           [Variant(name="b1024", signature=_COMBINE, constexprs={"BLOCK": 1024}, num_warps=4,
                    num_stages=1, divisible_by_16=("y_ptr", "out_ptr", "H"),
                    tags={"BLOCK": 1024})],
           "out[t] = sum of weights[t, j] * y[row of (t, j)], bf16"),
]
