"""Rows of an expert-parallel exchange, shared by the normal-mode (ep_dispatch.py) and low-latency
(ep_low_latency.py) kernels. A dispatched row is one token as one destination rank receives it:

    payload   BF16: H bf16 values, or FP8: H e4m3 codes then ceil(H / 128) f32 scales (DeepSeek's
              activation quantization: scale = max(|x|, 1e-10) / 448 per 128 channels, codes
              rounded to nearest even, divisions IEEE-rounded so codes match the CPU bit for bit)
    ids       K i32 at byte ids_off: the token's expert ids as the destination applies them, E
              (no expert) where another rank computes that expert
    weights   K f32 right after the ids: the gate's weights

Rows start every row_bytes bytes (a multiple of 16); H must be a multiple of 16. The host computes
the same offsets (src/parallel/cuda/exchange_rows.h). Received FP8 payloads are dequantized to
bf16, which is what the expert kernels read.
"""
import triton
import triton.language as tl

GROUP = 128


@triton.jit
def chunk_columns(g0, H, GROUPS: tl.constexpr):
    """Groups [g0, g0 + GROUPS) of 128 channels: (group ids, column ids [GROUPS, 128], in row)."""
    groups = g0 + tl.arange(0, GROUPS)
    cols = groups[:, None] * 128 + tl.arange(0, 128)[None, :]
    return groups, cols, cols < H


@triton.jit
def quantize_chunk(v, FP8: tl.constexpr):
    """bf16 values [GROUPS, 128] -> (what the row stores, the groups' scales)."""
    if FP8:
        f = v.to(tl.float32)
        scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(f), axis=1), 1e-10), 448.0)
        return tl.math.div_rn(f, scale[:, None]).to(tl.float8e4nv), scale
    else:
        return v, tl.zeros([v.shape[0]], tl.float32)


@triton.jit
def store_chunk(row, data, scale, groups, cols, in_row, H, FP8: tl.constexpr):
    """Writes one chunk of payload (from quantize_chunk) into the row at `row` (a byte pointer)."""
    if FP8:
        tl.store(row.to(tl.pointer_type(tl.float8e4nv)) + cols, data, mask=in_row)
        tl.store((row + H).to(tl.pointer_type(tl.float32)) + groups, scale,
                 mask=groups < tl.cdiv(H, 128))
    else:
        tl.store(row.to(tl.pointer_type(tl.bfloat16)) + cols, data, mask=in_row)


@triton.jit
def load_chunk(row, groups, cols, in_row, H, FP8: tl.constexpr):
    """One chunk of a row's payload as bf16, dequantized when FP8."""
    if FP8:
        q = tl.load(row.to(tl.pointer_type(tl.float8e4nv)) + cols, mask=in_row, other=0.0)
        s = tl.load((row + H).to(tl.pointer_type(tl.float32)) + groups,
                    mask=groups < tl.cdiv(H, 128), other=0.0)
        return (q.to(tl.float32) * s[:, None]).to(tl.bfloat16)
    else:
        return tl.load(row.to(tl.pointer_type(tl.bfloat16)) + cols, mask=in_row, other=0.0)


@triton.jit
def store_meta(row, ids, weights, k, k_in, ids_off, K):
    tl.store((row + ids_off).to(tl.pointer_type(tl.int32)) + k, ids, mask=k_in)
    tl.store((row + ids_off + 4 * K).to(tl.pointer_type(tl.float32)) + k, weights, mask=k_in)


@triton.jit
def copy_row_out(row, x_out, ids_out, weights_out, j, H, K, ids_off, FP8: tl.constexpr,
                 GROUPS: tl.constexpr, K_BLOCK: tl.constexpr):
    """Row `row` -> x_out[j] (bf16), ids_out[j], weights_out[j]."""
    j = tl.cast(j, tl.int64)
    for g0 in range(0, tl.cdiv(H, 128), GROUPS):
        groups, cols, in_row = chunk_columns(g0, H, GROUPS)
        tl.store(x_out + j * H + cols, load_chunk(row, groups, cols, in_row, H, FP8), mask=in_row)
    k = tl.arange(0, K_BLOCK)
    k_in = k < K
    ids = tl.load((row + ids_off).to(tl.pointer_type(tl.int32)) + k, mask=k_in)
    w = tl.load((row + ids_off + 4 * K).to(tl.pointer_type(tl.float32)) + k, mask=k_in)
    tl.store(ids_out + j * K + k, ids, mask=k_in)
    tl.store(weights_out + j * K + k, w, mask=k_in)
