"""The per-head products of MLA's absorbed form, as one batched GEMM with the head as batch:

  queries into the latent:  q_lat[t, h, :] = q[t, h, :nope] @ w_uk[h]      (w_uk [H, nope, L])
  latent out to values:     out[t, h, :]   = o_lat[t, h, :] @ w_uv[h]^T    (w_uv [H, V, L])

C[b][m, n] = sum_k A[b][m, k] B[b][k, n], bf16 operands, f32 accumulation, bf16 out. Rows of A
and C are strided (A[b][m, k] at a + b * stride_ab + m * stride_am + k, C likewise), so q's nope
part and the heads of [T, H, d] activations are read and written in place. B is [K, N] per batch
(B_NK=0, w_uk) or [N, K] (B_NK=1, w_uv), at b + batch * stride_bb with rows stride_b_row apart.
Grid: (tiles of M x N, batch). ALIGNED variants assume N, K and every stride are multiples of 16
(DeepSeek's dims are); the others assume only 16-byte aligned bases, for head dims such as
v_head_dim 40 (rows and columns are bounded by M, N and K either way).
"""
import triton
import triton.language as tl

from variant import Kernel, Variant


@triton.jit
def mla_head_gemm(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ab, stride_bb, stride_b_row,
                  stride_cm, stride_cb, B_NK: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // tiles_n
    pid_n = tl.program_id(0) % tiles_n
    batch = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows and columns past the edge read valid ones instead of masking; they are never stored.
    rows = (offs_m % M).to(tl.int64)
    cols = offs_n % N
    a_ptrs = a_ptr + batch * stride_ab + rows[:, None] * stride_am + offs_k[None, :]
    if B_NK:
        b_ptrs = b_ptr + batch * stride_bb + cols[None, :] * stride_b_row + offs_k[:, None]
        b_step = BLOCK_K
    else:
        b_ptrs = b_ptr + batch * stride_bb + offs_k[:, None] * stride_b_row + cols[None, :]
        b_step = BLOCK_K * stride_b_row
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        in_k = offs_k < K - k
        a = tl.load(a_ptrs, mask=in_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=in_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += b_step
    c_ptrs = (c_ptr + batch * stride_cb + offs_m.to(tl.int64)[:, None] * stride_cm +
              offs_n[None, :])
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# (BLOCK_M, BLOCK_N, num_warps, num_stages): decode batches (weight-bandwidth bound: each head's
# 128 KB matrix is read once per M tile) and prefill.
TILES = [(16, 128, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3)]
BLOCK_K = 64


def _variant(b_nk, aligned, block_m, block_n, warps, stages):
    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32",
                 "K": "i32", "stride_am": "i32", "stride_ab": "i32", "stride_bb": "i64",
                 "stride_b_row": "i32", "stride_cm": "i32", "stride_cb": "i32",
                 "B_NK": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
                 "BLOCK_K": "constexpr"}
    multiples = ("N", "K", "stride_am", "stride_ab", "stride_bb", "stride_b_row", "stride_cm",
                 "stride_cb") if aligned else ()
    return Variant(name=f"{'nk' if b_nk else 'kn'}_m{block_m}n{block_n}_w{warps}s{stages}"
                   f"{'' if aligned else '_any'}",
                   signature=signature,
                   constexprs={"B_NK": b_nk, "BLOCK_M": block_m, "BLOCK_N": block_n,
                               "BLOCK_K": BLOCK_K},
                   num_warps=warps, num_stages=stages,
                   divisible_by_16=("a_ptr", "b_ptr", "c_ptr") + multiples,
                   tags={"B_NK": b_nk, "BLOCK_M": block_m, "BLOCK_N": block_n,
                         "ALIGNED": int(aligned)})


KERNELS = [Kernel("mla_head_gemm", mla_head_gemm,
                  [_variant(b_nk, aligned, *tile) for aligned in (1, 0) for b_nk in (0, 1)
                   for tile in TILES],
                  "C[b] = A[b] B[b] per attention head, bf16 in, f32 accumulation, bf16 out")]
