"""MLA attention preparation, one program per token, fused in one pass:

  q [T, H, nope + ROPE] (bf16): the rope part of every head rotated in place;
  kv [T, KV_LORA + ROPE] (bf16, kv_a_proj's output): the latent RMS-normalized with w
      (bf16 or f32), the rope part rotated, both written as one row of the paged latent cache
      [n_slots, KV_LORA + ROPE] (bf16) at slot[t]. A slot outside [0, n_slots) is not written.

Rotation (plain RoPE or YaRN): pair (2i, 2i+1) at position p turns by angle f32(p) * inv_freq[i],
cos and sin both scaled by attention_factor. Arithmetic is f32 in the CPU reference's order
(tl.cos and tl.sin compile to libdevice's, with full range reduction for angles of any
position; IEEE division and square root), so results agree within one bf16 rounding.
"""
import triton
import triton.language as tl

from variant import DTYPE_CODES, Kernel, Variant

# (kv_lora_rank, qk_rope_head_dim) compiled: DeepSeek-V2/V3/R1 and Kimi-K2; trident-tiny.
LATENT_DIMS = [(512, 64), (128, 32)]
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
                         cache_ptr, n_heads, nope, n_slots, eps, attention_factor,
                         KV_LORA: tl.constexpr, ROPE: tl.constexpr, HEAD_BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    half = tl.arange(0, ROPE // 2)
    angle = tl.load(positions_ptr + t).to(tl.float32) * tl.load(inv_freq_ptr + half)
    cos = tl.cos(angle) * attention_factor
    sin = tl.sin(angle) * attention_factor

    head_dim = nope + ROPE
    q_row = q_ptr + t * n_heads * head_dim + nope + 2 * half[None, :]
    for h0 in range(0, n_heads, HEAD_BLOCK):
        heads = h0 + tl.arange(0, HEAD_BLOCK)
        _rotate_pairs(q_row + heads[:, None] * head_dim, heads[:, None] < n_heads, cos[None, :],
                      sin[None, :])

    row = KV_LORA + ROPE
    c = tl.arange(0, KV_LORA)
    x = tl.load(kv_ptr + t * row + c).to(tl.float32)
    inv_rms = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(x * x) / KV_LORA + eps))
    w = tl.load(norm_w_ptr + c).to(tl.float32)
    slot = tl.load(slot_ptr + t)
    writes = (slot >= 0) & (slot < n_slots)
    dst = cache_ptr + slot.to(tl.int64) * row
    tl.store(dst + c, (w * (x * inv_rms)).to(cache_ptr.dtype.element_ty), mask=writes & (c >= 0))
    # The shared rope key; kv itself is left as it was.
    a = tl.load(kv_ptr + t * row + KV_LORA + 2 * half).to(tl.float32)
    b = tl.load(kv_ptr + t * row + KV_LORA + 2 * half + 1).to(tl.float32)
    tl.store(dst + KV_LORA + 2 * half, (a * cos - b * sin).to(cache_ptr.dtype.element_ty),
             mask=writes & (half >= 0))
    tl.store(dst + KV_LORA + 2 * half + 1, (b * cos + a * sin).to(cache_ptr.dtype.element_ty),
             mask=writes & (half >= 0))


def _variant(kv_lora, rope, norm_w):
    signature = {"q_ptr": "*bf16", "kv_ptr": "*bf16", "norm_w_ptr": f"*{norm_w}",
                 "inv_freq_ptr": "*fp32", "positions_ptr": "*i32", "slot_ptr": "*i32",
                 "cache_ptr": "*bf16", "n_heads": "i32", "nope": "i32", "n_slots": "i64",
                 "eps": "fp32", "attention_factor": "fp32", "KV_LORA": "constexpr",
                 "ROPE": "constexpr", "HEAD_BLOCK": "constexpr"}
    return Variant(name=f"l{kv_lora}r{rope}_w{norm_w}", signature=signature,
                   constexprs={"KV_LORA": kv_lora, "ROPE": rope, "HEAD_BLOCK": HEAD_BLOCK},
                   num_warps=4, num_stages=1,
                   tags={"KV_LORA": kv_lora, "ROPE": rope, "W": DTYPE_CODES[norm_w]})


KERNELS = [Kernel("mla_rope_cache_write", mla_rope_cache_write,
                  [_variant(l, r, w) for l, r in LATENT_DIMS for w in ("bf16", "fp32")],
                  "q's rope part rotated in place; kv normalized, rotated, written to the cache")]
