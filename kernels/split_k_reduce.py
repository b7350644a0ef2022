"""Split-K epilogue: c[i] = sum over s of partial[s * slice_stride + i], partial f32
[splits, slice_stride] (slice_stride >= numel, a multiple of 16 so every slice is 16-byte
aligned), c bf16 or f32. The GEMMs write their K slices into `partial` when one output tile per
multiprocessor would leave most of the GPU idle (decode-sized M, narrow N).
"""
import triton
import triton.language as tl

from variant import DTYPE_CODES, Kernel, Variant


@triton.jit
def split_k_reduce(partial_ptr, c_ptr, numel, slice_stride, splits, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    acc = tl.zeros((BLOCK, ), dtype=tl.float32)
    for s in range(0, splits):
        acc += tl.load(partial_ptr + s * slice_stride + offs, mask=inside, other=0.0)
    tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=inside)


def _variant(out):
    signature = {"partial_ptr": "*fp32", "c_ptr": f"*{out}", "numel": "i64",
                 "slice_stride": "i64", "splits": "i32",
                 "BLOCK": "constexpr"}
    return Variant(name=out, signature=signature, constexprs={"BLOCK": 1024}, num_warps=4,
                   num_stages=1, divisible_by_16=("partial_ptr", "slice_stride"),
                   tags={"BLOCK": 1024, "OUT": DTYPE_CODES[out]})


KERNELS = [Kernel("split_k_reduce", split_k_reduce, [_variant("bf16"), _variant("fp32")],
                  "c = sum of the split-K partial sums")]
