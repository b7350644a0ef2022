"""MLA attention preparation, one program per token, fused in one pass:

  q [T, H, nope + ROPE] (bf16): the rope part of every head rotated in place;
  kv [T, L + R] (bf16, kv_a_proj's output): the latent (L = kv_lora_rank) RMS-normalized with w
      (bf16 or f32), the rope part (R = qk_rope_head_dim) rotated, both written as one row of the
      paged latent cache [n_slots, L + R] (bf16) at slot[t]. A slot outside [0, n_slots) is not
      written.

Dims as in mla_attention.py: tuned variants for the pairs in TUNED_DIMS, their dims the blocks
KV_BLOCK and ROPE_BLOCK; PADDED variants for any other L <= 512 and R <= 64, with blocks the next
power of two (at least 16), the dims passed at run time and the columns past them masked.

Rotation (plain RoPE or YaRN): pair (2i, 2i+1) at position p turns by angle f32(p) * inv_freq[i],
cos and sin both scaled by attention_factor. Arithmetic is f32 in the CPU reference's order
(tl.cos and tl.sin compile to libdevice's, with full range reduction for angles of any
position; IEEE division and square root), so results agree within one bf16 rounding.
"""
import triton
import triton.language as tl

from variant import DTYPE_CODES, Kernel, Variant

# (kv_lora_rank, qk_rope_head_dim) with variants of their own: DeepSeek-V2/V3/R1 and Kimi-K2;
# trident-tiny. Every other pair pads to the blocks below.
TUNED_DIMS = [(512, 64), (128, 32)]
PADDED_KV_BLOCKS = [16, 32, 64, 128, 256, 512]
PADDED_ROPE_BLOCKS = [16, 32, 64]
HEAD_BLOCK = 16


@triton.jit
def _rotate_pairs(ptrs, mask, cos, sin):
    """Rotates the interleaved pairs at ptrs (even elements) and ptrs + 1 in place."""
    a = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(ptrs + 1, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptrs, (a * cos - b * sin).to(ptrs.dtype.element_ty), mask=mask)
    tl.store(ptrs + 1, (b * cos + a * sin).to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def mla_rope_cache_write(q_ptr, kv_ptr, norm_w_ptr, inv_freq_ptr, positions_ptr, slot_ptr,
                         cache_ptr, n_heads, nope, kv_lora, rope, n_slots, eps, attention_factor,
                         KV_BLOCK: tl.constexpr, ROPE_BLOCK: tl.constexpr, PADDED: tl.constexpr,
                         HEAD_BLOCK: tl.constexpr):
    # Tuned variants take their dims as constants (kv_lora and rope unused) and need no column
    # masks: their code is that of a kernel written for those dims alone.
    if PADDED:
        L = kv_lora
        R = rope
    else:
        L = KV_BLOCK
        R = ROPE_BLOCK
    t = tl.program_id(0).to(tl.int64)
    half = tl.arange(0, ROPE_BLOCK // 2)
    position = tl.load(positions_ptr + t).to(tl.float32)
    if PADDED:
        in_half = half < R // 2
        angle = position * tl.load(inv_freq_ptr + half, mask=in_half, other=0.0)
    else:
        in_half = half >= 0
        angle = position * tl.load(inv_freq_ptr + half)
    cos = tl.cos(angle) * attention_factor
    sin = tl.sin(angle) * attention_factor

    head_dim = nope + R
    q_row = q_ptr + t * n_heads * head_dim + nope + 2 * half[None, :]
    for h0 in range(0, n_heads, HEAD_BLOCK):
        heads = h0 + tl.arange(0, HEAD_BLOCK)
        if PADDED:
            in_q = (heads[:, None] < n_heads) & in_half[None, :]
        else:
            in_q = heads[:, None] < n_heads
        _rotate_pairs(q_row + heads[:, None] * head_dim, in_q, cos[None, :], sin[None, :])

    row = L + R
    c = tl.arange(0, KV_BLOCK)
    if PADDED:
        in_c = c < L
        x = tl.load(kv_ptr + t * row + c, mask=in_c, other=0.0).to(tl.float32)
    else:
        in_c = c >= 0
        x = tl.load(kv_ptr + t * row + c).to(tl.float32)
    inv_rms = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(x * x) / L + eps))
    if PADDED:
        w = tl.load(norm_w_ptr + c, mask=in_c, other=0.0).to(tl.float32)
    else:
        w = tl.load(norm_w_ptr + c).to(tl.float32)
    slot = tl.load(slot_ptr + t)
    writes = (slot >= 0) & (slot < n_slots)
    dst = cache_ptr + slot.to(tl.int64) * row
    tl.store(dst + c, (w * (x * inv_rms)).to(cache_ptr.dtype.element_ty), mask=writes & in_c)
    # The shared rope key; kv itself is left as it was.
    if PADDED:
        a = tl.load(kv_ptr + t * row + L + 2 * half, mask=in_half, other=0.0).to(tl.float32)
        b = tl.load(kv_ptr + t * row + L + 2 * half + 1, mask=in_half, other=0.0).to(tl.float32)
    else:
        a = tl.load(kv_ptr + t * row + L + 2 * half).to(tl.float32)
        b = tl.load(kv_ptr + t * row + L + 2 * half + 1).to(tl.float32)
    tl.store(dst + L + 2 * half, (a * cos - b * sin).to(cache_ptr.dtype.element_ty),
             mask=writes & in_half)
    tl.store(dst + L + 2 * half + 1, (b * cos + a * sin).to(cache_ptr.dtype.element_ty),
             mask=writes & in_half)


def _variant(kv_block, rope_block, padded, norm_w):
    signature = {"q_ptr": "*bf16", "kv_ptr": "*bf16", "norm_w_ptr": f"*{norm_w}",
                 "inv_freq_ptr": "*fp32", "positions_ptr": "*i32", "slot_ptr": "*i32",
                 "cache_ptr": "*bf16", "n_heads": "i32", "nope": "i32", "kv_lora": "i32",
                 "rope": "i32", "n_slots": "i64", "eps": "fp32", "attention_factor": "fp32",
                 "KV_BLOCK": "constexpr", "ROPE_BLOCK": "constexpr", "PADDED": "constexpr",
                 "HEAD_BLOCK": "constexpr"}
    return Variant(name=f"{'pad' if padded else ''}l{kv_block}r{rope_block}_w{norm_w}",
                   signature=signature,
                   constexprs={"KV_BLOCK": kv_block, "ROPE_BLOCK": rope_block, "PADDED": padded,
                               "HEAD_BLOCK": HEAD_BLOCK},
                   num_warps=4, num_stages=1,
                   tags={"KV_BLOCK": kv_block, "ROPE_BLOCK": rope_block, "PADDED": padded,
                         "W": DTYPE_CODES[norm_w]})


KERNELS = [Kernel("mla_rope_cache_write", mla_rope_cache_write,
                  [_variant(l, r, 0, w) for l, r in TUNED_DIMS for w in ("bf16", "fp32")] +
                  [_variant(kb, rb, 1, w) for kb in PADDED_KV_BLOCKS for rb in PADDED_ROPE_BLOCKS
                   for w in ("bf16", "fp32")],
                  "q's rope part rotated in place; kv normalized, rotated, written to the cache")]
