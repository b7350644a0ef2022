"""Per-token-group FP8 activation quantization (DeepSeek's act_quant): for each row of x [M, K]
(bf16) and each group of 128 columns (the last may be shorter), scale = max(|x|, 1e-10) / 448 and
q = e4m3(x / scale), rounded to nearest even and saturated at 448. Writes q [M, K] (e4m3) and
scales [M, ceil(K / 128)] (f32). Divisions are IEEE round-to-nearest so the codes match the CPU
reference bit for bit.

A program quantizes GROUPS consecutive groups of one row.
"""
import triton
import triton.language as tl

from variant import Kernel, Variant

GROUP = 128


@triton.jit
def act_quant(x_ptr, q_ptr, scale_ptr, M, K, GROUP_SIZE: tl.constexpr, GROUPS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    groups = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    cols = groups[:, None] * GROUP_SIZE + tl.arange(0, GROUP_SIZE)[None, :]
    in_row = cols < K
    x = tl.load(x_ptr + row * K + cols, mask=in_row, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.math.div_rn(tl.maximum(amax, 1e-10), 448.0)
    q = tl.math.div_rn(x, scale[:, None]).to(tl.float8e4nv)
    tl.store(q_ptr + row * K + cols, q, mask=in_row)
    group_count = tl.cdiv(K, GROUP_SIZE)
    tl.store(scale_ptr + row * group_count + groups, scale, mask=groups < group_count)


def _variant(groups, aligned):
    signature = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "M": "i32",
                 "K": "i32", "GROUP_SIZE": "constexpr", "GROUPS": "constexpr"}
    return Variant(name=f"g{groups}{'' if aligned else '_any'}", signature=signature,
                   constexprs={"GROUP_SIZE": GROUP, "GROUPS": groups}, num_warps=4, num_stages=1,
                   divisible_by_16=("x_ptr", "q_ptr", "K") if aligned else (),
                   tags={"GROUPS": groups, "ALIGNED": int(aligned)})


VARIANTS = [_variant(8, True), _variant(8, False)]

KERNELS = [Kernel("act_quant", act_quant, VARIANTS,
                  "q, scale = FP8 e4m3 quantization of bf16 rows per group of 128 columns",
                  min_arch=89)]
