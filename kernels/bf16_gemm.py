"""BF16 GEMM: C[M, N] = A[M, K] B[N, K]^T with f32 accumulation, for the layers DeepSeek-V3 keeps
in BF16 (router, lm_head) and for BF16 checkpoints. C is bf16 or f32, row-major and contiguous.

Tiling, split-K and SWAP_AB work as in fp8_gemm.py. EVEN_K variants assume K % 64 == 0 and
16-byte aligned rows; the others mask the last K block.
"""
import triton
import triton.language as tl

from gemm_tiles import tile_coords
from variant import DTYPE_CODES, Kernel, Variant


@triton.jit
def bf16_gemm(a_ptr, b_ptr, c_ptr, M, N, K, k_blocks_per_split, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
              SWAP_AB: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    k_blocks = tl.cdiv(K, BLOCK_K)
    kb_begin = pid_k * k_blocks_per_split
    kb_end = min(kb_begin + k_blocks_per_split, k_blocks)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_a = (offs_m % M).to(tl.int64)
    rows_b = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + rows_a[:, None] * K + (kb_begin * BLOCK_K + offs_k)[None, :]
    b_ptrs = b_ptr + rows_b[:, None] * K + (kb_begin * BLOCK_K + offs_k)[None, :]

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_begin, kb_end):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            in_k = offs_k < K - kb * BLOCK_K
            a = tl.load(a_ptrs, mask=in_k[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=in_k[None, :], other=0.0)
        if SWAP_AB:
            acc = tl.dot(b, tl.trans(a), acc)
        else:
            acc = tl.dot(a, tl.trans(b), acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SWAP_AB:
        acc = tl.trans(acc)
    # Split-K slices start at 16-element boundaries (see split_k_reduce.py).
    slice_stride = (M.to(tl.int64) * N + 15) // 16 * 16
    c_ptrs = c_ptr + pid_k * slice_stride + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


BLOCK_K = 64
# (BLOCK_M, BLOCK_N, SWAP_AB, num_warps, num_stages), as in fp8_gemm.py.
TILES = [
    (16, 64, 1, 4, 6),
    (32, 64, 1, 4, 6),
    (32, 128, 1, 4, 5),
    (64, 128, 1, 4, 4),
    (64, 128, 0, 4, 4),
    (128, 128, 0, 8, 4),
    (128, 256, 0, 8, 3),
]


def _variant(block_m, block_n, swap_ab, warps, stages, out, even_k):
    signature = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": f"*{out}", "M": "i32", "N": "i32",
                 "K": "i32", "k_blocks_per_split": "i32"}
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": BLOCK_K, "GROUP_M": 8,
                  "SWAP_AB": swap_ab, "EVEN_K": even_k}
    signature.update({k: "constexpr" for k in constexprs})
    name = f"m{block_m}n{block_n}{'_swap' if swap_ab else ''}_w{warps}s{stages}_{out}"
    if not even_k:
        name += "_anyk"
    return Variant(name=name, signature=signature, constexprs=constexprs, num_warps=warps,
                   num_stages=stages,
                   divisible_by_16=("a_ptr", "b_ptr", "c_ptr", "N", "K") if even_k else (),
                   tags={"BLOCK_M": block_m, "BLOCK_N": block_n, "SWAP_AB": swap_ab,
                         "EVEN_K": even_k, "OUT": DTYPE_CODES[out]})


VARIANTS = [_variant(*tile, out, 1) for tile in TILES for out in ("bf16", "fp32")]
VARIANTS += [_variant(64, 64, 0, 4, 3, out, 0) for out in ("bf16", "fp32")]

KERNELS = [Kernel("bf16_gemm", bf16_gemm, VARIANTS, "C = A B^T, bf16 inputs, f32 accumulation")]
