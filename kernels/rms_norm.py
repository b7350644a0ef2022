"""RMSNorm over rows, optionally with the residual add fused in front (bf16 activations):

    HAS_RESIDUAL=0:  out = x / rms(x) * w
    HAS_RESIDUAL=1:  residual = bf16(residual + x);  out = residual / rms(residual) * w

rms(v) = sqrt(mean(v^2) + eps), computed in f32 from the stored (rounded) bf16 residual, as the
CPU reference does. w is bf16 or f32; out is bf16 and may alias x. One program per row: rows up
to BLOCK columns stay in registers (SINGLE_PASS); longer rows are read twice, in BLOCK chunks.
"""
import triton
import triton.language as tl

from variant import DTYPE_CODES, Kernel, Variant


@triton.jit
def rms_norm(x_ptr, residual_ptr, w_ptr, out_ptr, n_cols, eps, HAS_RESIDUAL: tl.constexpr,
             BLOCK: tl.constexpr, SINGLE_PASS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    if SINGLE_PASS:
        in_row = cols < n_cols
        v = tl.load(x_ptr + row + cols, mask=in_row, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(residual_ptr + row + cols, mask=in_row, other=0.0).to(tl.float32)
            stored = (v + r).to(residual_ptr.dtype.element_ty)
            tl.store(residual_ptr + row + cols, stored, mask=in_row)
            v = stored.to(tl.float32)
        inv_rms = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(v * v) / n_cols + eps))
        w = tl.load(w_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
        tl.store(out_ptr + row + cols, (w * (v * inv_rms)).to(out_ptr.dtype.element_ty),
                 mask=in_row)
    else:
        sum_sq = tl.zeros((BLOCK, ), dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            in_row = start + cols < n_cols
            v = tl.load(x_ptr + row + start + cols, mask=in_row, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                r = tl.load(residual_ptr + row + start + cols, mask=in_row, other=0.0)
                stored = (v + r.to(tl.float32)).to(residual_ptr.dtype.element_ty)
                tl.store(residual_ptr + row + start + cols, stored, mask=in_row)
                v = stored.to(tl.float32)
            sum_sq += v * v
        inv_rms = tl.math.div_rn(1.0, tl.sqrt_rn(tl.sum(sum_sq) / n_cols + eps))
        for start in range(0, n_cols, BLOCK):
            in_row = start + cols < n_cols
            src = residual_ptr if HAS_RESIDUAL else x_ptr
            v = tl.load(src + row + start + cols, mask=in_row, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + start + cols, mask=in_row, other=0.0).to(tl.float32)
            tl.store(out_ptr + row + start + cols,
                     (w * (v * inv_rms)).to(out_ptr.dtype.element_ty), mask=in_row)


# (BLOCK, num_warps): single-pass blocks cover rows up to 8192 columns (DeepSeek-V3's hidden size
# is 7168); the looping variant takes anything longer. Aligned variants assume 16-byte aligned
# rows (n_cols % 16 == 0), which lets them load 16 bytes at a time; the others take any shape.
SINGLE_PASS_BLOCKS = [(512, 2), (1024, 4), (2048, 4), (4096, 8), (8192, 8)]
LOOP_BLOCK = (4096, 8)
UNALIGNED_BLOCK = (1024, 4)


def _variant(has_residual, w_dtype, block, warps, single_pass, aligned=True):
    signature = {"x_ptr": "*bf16", "residual_ptr": "*bf16", "w_ptr": f"*{w_dtype}",
                 "out_ptr": "*bf16", "n_cols": "i32", "eps": "fp32", "HAS_RESIDUAL": "constexpr",
                 "BLOCK": "constexpr", "SINGLE_PASS": "constexpr"}
    name = (f"{'add_' if has_residual else ''}b{block}{'' if single_pass else '_loop'}"
            f"_w{w_dtype}{'' if aligned else '_any'}")
    return Variant(name=name, signature=signature,
                   constexprs={"HAS_RESIDUAL": has_residual, "BLOCK": block,
                               "SINGLE_PASS": single_pass},
                   num_warps=warps, num_stages=1,
                   divisible_by_16=(("x_ptr", "residual_ptr", "w_ptr", "out_ptr", "n_cols")
                                    if aligned else ()),
                   tags={"HAS_RESIDUAL": has_residual, "BLOCK": block, "SINGLE_PASS": single_pass,
                         "W": DTYPE_CODES[w_dtype], "ALIGNED": int(aligned)})


VARIANTS = [
    _variant(res, w, block, warps, 1)
    for res in (0, 1) for w in ("bf16", "fp32") for block, warps in SINGLE_PASS_BLOCKS
] + [
    _variant(res, w, block, warps, 0, aligned)
    for res in (0, 1) for w in ("bf16", "fp32")
    for (block, warps), aligned in ((LOOP_BLOCK, True), (UNALIGNED_BLOCK, False))
]

KERNELS = [Kernel("rms_norm", rms_norm, VARIANTS,
                  "out = rms_norm(x) * w, or residual += x then out = rms_norm(residual) * w")]
