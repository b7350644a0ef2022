"""Normal-mode dispatch and combine on GPU buffers (the exchange itself is NCCL's all-to-all; rows
are laid out as ep_rows.py says). The host plans which token goes where (it needs the counts for
NCCL anyway) and these kernels move the bytes:

    ep_pack     send row i <- token send_token[i] of x [T, H] bf16 (FP8-quantized when FP8), its
                ids send_ids[i, :K] and gate weights weights[send_token[i], :K]; one program a row
    ep_unpack   received row i -> x [n, H] bf16 (dequantized), ids [n, K], weights [n, K]
    ep_combine  out[t] = bf16(sum over ranks r of partials[row_of[t, r]]), f32 sums in rank order
                (row_of -1: nothing from r), as the CPU combine adds them; grid (T, H / BLOCK)

K <= 16 (K_BLOCK); H a multiple of 16.
"""
import triton
import triton.language as tl

from ep_rows import chunk_columns, copy_row_out, quantize_chunk, store_chunk, store_meta
from variant import Kernel, Variant

GROUPS = 8  # 128-channel groups a program handles at a time (1024 columns)
K_BLOCK = 16


@triton.jit
def ep_pack(x_ptr, send_token_ptr, send_ids_ptr, weights_ptr, buf_ptr, H, K, ids_off, row_bytes,
            FP8: tl.constexpr, GROUPS: tl.constexpr, K_BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    t = tl.load(send_token_ptr + i).to(tl.int64)
    row = buf_ptr + i * row_bytes
    for g0 in range(0, tl.cdiv(H, 128), GROUPS):
        groups, cols, in_row = chunk_columns(g0, H, GROUPS)
        v = tl.load(x_ptr + t * H + cols, mask=in_row, other=0.0)
        data, scale = quantize_chunk(v, FP8)
        store_chunk(row, data, scale, groups, cols, in_row, H, FP8)
    k = tl.arange(0, K_BLOCK)
    k_in = k < K
    ids = tl.load(send_ids_ptr + i * K + k, mask=k_in)
    w = tl.load(weights_ptr + t * K + k, mask=k_in)
    store_meta(row, ids, w, k, k_in, ids_off, K)


@triton.jit
def ep_unpack(buf_ptr, x_ptr, ids_ptr, weights_ptr, H, K, ids_off, row_bytes, FP8: tl.constexpr,
              GROUPS: tl.constexpr, K_BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    copy_row_out(buf_ptr + i * row_bytes, x_ptr, ids_ptr, weights_ptr, i, H, K, ids_off, FP8,
                 GROUPS, K_BLOCK)


@triton.jit
def ep_combine(partials_ptr, row_of_ptr, out_ptr, R, H, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < H
    acc = tl.zeros([BLOCK], tl.float32)
    for r in range(0, R):
        row = tl.load(row_of_ptr + t * R + r).to(tl.int64)
        if row >= 0:
            acc += tl.load(partials_ptr + row * H + cols, mask=in_row, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * H + cols, acc.to(tl.bfloat16), mask=in_row)


def _row_variant(fp8, signature):
    return Variant(name="fp8" if fp8 else "bf16", signature=signature,
                   constexprs={"FP8": fp8, "GROUPS": GROUPS, "K_BLOCK": K_BLOCK}, num_warps=4,
                   num_stages=1, divisible_by_16=("buf_ptr", "x_ptr", "H", "row_bytes"),
                   tags={"FP8": fp8})


PACK_SIGNATURE = {"x_ptr": "*bf16", "send_token_ptr": "*i32", "send_ids_ptr": "*i32",
                  "weights_ptr": "*fp32", "buf_ptr": "*u8", "H": "i32", "K": "i32",
                  "ids_off": "i32", "row_bytes": "i32", "FP8": "constexpr",
                  "GROUPS": "constexpr", "K_BLOCK": "constexpr"}
UNPACK_SIGNATURE = {"buf_ptr": "*u8", "x_ptr": "*bf16", "ids_ptr": "*i32", "weights_ptr": "*fp32",
                    "H": "i32", "K": "i32", "ids_off": "i32", "row_bytes": "i32",
                    "FP8": "constexpr", "GROUPS": "constexpr", "K_BLOCK": "constexpr"}
COMBINE_BLOCK = 1024

KERNELS = [
    Kernel("ep_pack", ep_pack, [_row_variant(f, PACK_SIGNATURE) for f in (0, 1)],
           "dispatch rows (payload, expert ids, gate weights) gathered from tokens", min_arch=89),
    Kernel("ep_unpack", ep_unpack, [_row_variant(f, UNPACK_SIGNATURE) for f in (0, 1)],
           "received dispatch rows split into bf16 tokens, expert ids and gate weights",
           min_arch=89),
    Kernel("ep_combine", ep_combine, [
        Variant(name=f"b{COMBINE_BLOCK}",
                signature={"partials_ptr": "*bf16", "row_of_ptr": "*i32", "out_ptr": "*bf16",
                           "R": "i32", "H": "i32", "BLOCK": "constexpr"},
                constexprs={"BLOCK": COMBINE_BLOCK}, num_warps=4, num_stages=1,
                divisible_by_16=("partials_ptr", "out_ptr", "H"), tags={"BLOCK": COMBINE_BLOCK})
    ], "out[t] = sum of the expert partials sent back for token t, in rank order"),
]
