"""FP8 block-scaled GEMM, DeepSeek-V3's recipe: C[M, N] = A[M, K] B[N, K]^T where A is e4m3 with
one f32 scale per row per 128 columns (a_scale [M, ceil(K/128)]) and B is e4m3 with one f32 scale
per 128x128 block (b_scale [ceil(N/128), ceil(K/128)]). Each 128-deep partial product is scaled
and added to an f32 accumulator, so the tensor cores' reduced-precision FP8 accumulation spans 128
products at most. C is bf16 or f32, row-major and contiguous.

Split-K: program (tile, s) covers K blocks [s * k_blocks_per_split, (s + 1) * k_blocks_per_split)
and writes its partial sums to slice s of C (an f32 workspace when there are several slices;
split_k_reduce.py adds them up).

SWAP_AB computes the tile transposed (B rows on the MMA's M side), so a decode batch of 16 or 32
tokens fills the narrow N side of the instruction instead of wasting most of a 64-row one.
EVEN_K variants assume K % 128 == 0 and 16-byte aligned rows; the others mask the last block.
"""
import triton
import triton.language as tl

from gemm_tiles import tile_coords
from variant import DTYPE_CODES, Kernel, Variant

# BLOCK_K is the scale block: one activation and one weight scale per K step.
SCALE_BLOCK = 128


@triton.jit
def fp8_gemm(a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, c_ptr, M, N, K, k_blocks_per_split,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr, EVEN_K: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    k_blocks = tl.cdiv(K, BLOCK_K)
    kb_begin = pid_k * k_blocks_per_split
    kb_end = min(kb_begin + k_blocks_per_split, k_blocks)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past the edge read a valid row instead of masking; their results are never stored.
    rows_a = (offs_m % M).to(tl.int64)
    rows_b = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + rows_a[:, None] * K + (kb_begin * BLOCK_K + offs_k)[None, :]
    b_ptrs = b_ptr + rows_b[:, None] * K + (kb_begin * BLOCK_K + offs_k)[None, :]
    a_scale_ptrs = a_scale_ptr + rows_a * k_blocks
    b_scale_ptrs = b_scale_ptr + (rows_b // BLOCK_K) * k_blocks

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
        a_s = tl.load(a_scale_ptrs + kb)
        b_s = tl.load(b_scale_ptrs + kb)
        if SWAP_AB:
            acc += tl.dot(b, tl.trans(a)) * (b_s[:, None] * a_s[None, :])
        else:
            acc += tl.dot(a, tl.trans(b)) * (a_s[:, None] * b_s[None, :])
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SWAP_AB:
        acc = tl.trans(acc)
    # Split-K slices start at 16-element boundaries (see split_k_reduce.py).
    slice_stride = (M.to(tl.int64) * N + 15) // 16 * 16
    c_ptrs = c_ptr + pid_k * slice_stride + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


# (BLOCK_M, BLOCK_N, SWAP_AB, num_warps, num_stages): SWAP_AB tiles serve decode-sized M, the
# others prefill; kernels/tuned/<arch>.json picks among them per M. The scaled accumulation
# keeps two f32 tiles live (the 128-deep product and the sum), so 128x256 tiles on two
# warpgroups spill registers (ptxas, sm_90) and are left out. Triton waits for each product
# before scaling it, so the tensor cores idle during the scaling; 64x128 tiles with three stages
# fit two programs per multiprocessor (196 registers, 74 KB), whose products and scalings
# overlap: the fastest tile from M = 128 up on an H200 (bench/RESULTS.md).
TILES = [
    (16, 64, 1, 4, 6),
    (16, 128, 1, 4, 5),
    (32, 64, 1, 4, 6),
    (32, 128, 1, 4, 5),
    (64, 128, 1, 4, 4),
    (64, 64, 0, 4, 6),
    (64, 64, 0, 4, 4),
    (64, 128, 1, 4, 3),
    (64, 128, 0, 4, 5),
    (64, 128, 0, 4, 3),
    (64, 256, 0, 8, 4),
    (128, 128, 0, 8, 4),
    (128, 128, 0, 8, 5),
]


def _variant(block_m, block_n, swap_ab, warps, stages, out, even_k):
    signature = {"a_ptr": "*fp8e4nv", "a_scale_ptr": "*fp32", "b_ptr": "*fp8e4nv",
                 "b_scale_ptr": "*fp32", "c_ptr": f"*{out}", "M": "i32", "N": "i32", "K": "i32",
                 "k_blocks_per_split": "i32"}
    constexprs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": SCALE_BLOCK, "GROUP_M": 8,
                  "SWAP_AB": swap_ab, "EVEN_K": even_k}
    signature.update({k: "constexpr" for k in constexprs})
    aligned = ("a_ptr", "b_ptr", "c_ptr", "N", "K") if even_k else ()
    name = f"m{block_m}n{block_n}{'_swap' if swap_ab else ''}_w{warps}s{stages}_{out}"
    if not even_k:
        name += "_anyk"
    return Variant(name=name, signature=signature, constexprs=constexprs, num_warps=warps,
                   num_stages=stages, divisible_by_16=aligned,
                   tags={"BLOCK_M": block_m, "BLOCK_N": block_n, "SWAP_AB": swap_ab,
                         "EVEN_K": even_k, "OUT": DTYPE_CODES[out]})


VARIANTS = [_variant(*tile, out, 1) for tile in TILES for out in ("bf16", "fp32")]
# Any shape, any alignment: ragged K, odd row lengths.
VARIANTS += [_variant(64, 64, 0, 4, 3, out, 0) for out in ("bf16", "fp32")]

KERNELS = [Kernel("fp8_gemm", fp8_gemm, VARIANTS,
                  "C = (A * a_scale) (B * b_scale)^T, FP8 e4m3 with 1x128 / 128x128 block scales",
                  min_arch=89)]
