"""The MoE router's choice, as cpu_moe.cpp's moe_gate computes it, one token per program:

  scores   sigmoid(logits) (1 / (1 + exp(-x)), IEEE division) or softmax(logits)
  choice   scores + bias (DeepSeek-V3's noaux_tc only; the bias decides which experts, never the
           weights)
  groups   unless greedy or one group: each group of per_group consecutive experts scores the sum
           of its two best choices (noaux_tc) or its best (group-limited greedy); the topk_group
           best groups stay, the others' choices become -inf (noaux_tc) or 0 (greedy)
  top-k    the top_k best choices, best first; every tie goes to the lower index, as the CPU's
           sort does, at each step (groups and experts)
  weights  the chosen experts' scores, divided by their sum (+ 1e-20) when normalizing, times
           routed_scaling_factor; the sum adds them in choice order, as the CPU does

logits f32 [T, n_experts]; ids i32 [T, top_k] (global expert ids); weights f32 [T, top_k].
Limits: n_experts <= E_BLOCK, n_group <= 16, top_k <= 16.
"""
import triton
import triton.language as tl

from variant import Kernel, Variant

G_BLOCK = 16
K_BLOCK = 16
SIGMOID, SOFTMAX = 0, 1
NOAUX_TC, GREEDY, GROUP_LIMITED_GREEDY = 0, 1, 2


@triton.jit
def moe_gate(logits_ptr, bias_ptr, ids_ptr, weights_ptr, n_experts, per_group, n_group,
             topk_group, top_k, scoring, method, normalize, has_bias, scaling,
             E_BLOCK: tl.constexpr, G_BLOCK: tl.constexpr, K_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, E_BLOCK)
    valid = e < n_experts
    x = tl.load(logits_ptr + row * n_experts + e, mask=valid, other=0.0)
    if scoring == 1:
        shifted = tl.where(valid, tl.exp(x - tl.max(tl.where(valid, x, -float("inf")))), 0.0)
        scores = tl.math.div_rn(shifted, tl.sum(shifted))
    else:
        scores = tl.math.div_rn(1.0, 1.0 + tl.exp(-x))
    noaux = method == 0
    bias = tl.load(bias_ptr + e, mask=valid & (has_bias != 0) & noaux, other=0.0)
    choice = scores + bias

    if (method != 1) & (n_group > 1):
        g = tl.arange(0, G_BLOCK)
        member = ((e // per_group)[None, :] == g[:, None]) & valid[None, :]
        vals = tl.where(member, choice[None, :], -float("inf"))
        best = tl.max(vals, axis=1)
        first = tl.min(tl.where(member & (vals == best[:, None]), e[None, :], E_BLOCK), axis=1)
        second = tl.max(tl.where(e[None, :] == first[:, None], -float("inf"), vals), axis=1)
        group_score = tl.where(noaux, best + second, best)
        keep = g < 0
        for _ in range(0, topk_group):
            free = (g < n_group) & ~keep
            top = tl.max(tl.where(free, group_score, -float("inf")))
            keep |= g == tl.min(tl.where(free & (group_score == top), g, G_BLOCK))
        kept = tl.max((member & keep[:, None]).to(tl.int32), axis=0) > 0
        choice = tl.where(kept, choice, tl.where(noaux, -float("inf"), 0.0))

    k = tl.arange(0, K_BLOCK)
    taken = e < 0
    ids = tl.zeros((K_BLOCK, ), tl.int32)
    weights = tl.zeros((K_BLOCK, ), tl.float32)
    total = tl.zeros((), tl.float32)
    for j in range(0, top_k):
        free = valid & ~taken
        top = tl.max(tl.where(free, choice, -float("inf")))
        pick = tl.min(tl.where(free & (choice == top), e, E_BLOCK))
        taken |= e == pick
        score = tl.sum(tl.where(e == pick, scores, 0.0))
        ids = tl.where(k == j, pick, ids)
        weights = tl.where(k == j, score, weights)
        total += score
    if normalize != 0:
        weights = tl.math.div_rn(weights, total + 1e-20)
    tl.store(ids_ptr + row * top_k + k, ids, mask=k < top_k)
    tl.store(weights_ptr + row * top_k + k, weights * scaling, mask=k < top_k)


E_BLOCKS = [16, 32, 64, 128, 256, 512]


def _variant(e_block):
    signature = {"logits_ptr": "*fp32", "bias_ptr": "*fp32", "ids_ptr": "*i32",
                 "weights_ptr": "*fp32", "n_experts": "i32", "per_group": "i32", "n_group": "i32",
                 "topk_group": "i32", "top_k": "i32", "scoring": "i32", "method": "i32",
                 "normalize": "i32", "has_bias": "i32", "scaling": "fp32",
                 "E_BLOCK": "constexpr", "G_BLOCK": "constexpr", "K_BLOCK": "constexpr"}
    return Variant(name=f"e{e_block}", signature=signature,
                   constexprs={"E_BLOCK": e_block, "G_BLOCK": G_BLOCK, "K_BLOCK": K_BLOCK},
                   num_warps=4 if e_block <= 256 else 8, num_stages=1,
                   tags={"E_BLOCK": e_block, "G_BLOCK": G_BLOCK, "K_BLOCK": K_BLOCK})


KERNELS = [Kernel("moe_gate", moe_gate, [_variant(b) for b in E_BLOCKS],
                  "MoE router: scores, bias, group-limited top-k, weights")]
