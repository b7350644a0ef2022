"""Expert load, the expert-parallel load balancer's input: how many tokens the gate gave each
routed expert.

  add_expert_counts  counts[e] += |{i : ids[i] == e}| for the `numel` expert ids of a step
                     (i32, topk_ids flattened); ids outside [0, n_experts) are not counted.
                     counts is i64 [n_experts], one layer's row of a [layers, experts] counter.

One atomic add per id, relaxed: no host synchronization and no workspace, so the op can sit in a
CUDA graph, where a replay adds the replayed step's ids. A program covers BLOCK ids.
"""
import triton
import triton.language as tl

from variant import Kernel, Variant

BLOCK = 1024


@triton.jit
def add_expert_counts(ids_ptr, counts_ptr, numel, n_experts, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    expert = tl.load(ids_ptr + offs, mask=inside, other=-1)
    counted = inside & (expert >= 0) & (expert < n_experts)
    ones = tl.full([BLOCK], 1, dtype=tl.int64)
    tl.atomic_add(counts_ptr + expert, ones, mask=counted, sem="relaxed")


KERNELS = [
    Kernel("add_expert_counts", add_expert_counts, [
        Variant(name="any",
                signature={"ids_ptr": "*i32", "counts_ptr": "*i64", "numel": "i64",
                           "n_experts": "i32", "BLOCK": "constexpr"},
                constexprs={"BLOCK": BLOCK}, num_warps=4, num_stages=1, tags={"BLOCK": BLOCK}),
    ], "counts[e] += number of expert ids equal to e (i64 counts, ids outside the range skipped)"),
]
