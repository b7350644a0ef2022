#!/usr/bin/env python3
"""Makes the golden fixtures: small DeepSeek-V3-architecture models with seeded random weights,
written in the layout of DeepSeek's releases (tools/checkpoint_export.py), and the logits
HuggingFace transformers computes for them.

    python3 tools/make_golden.py [--out tests/data/golden]

Needs torch and transformers >= 5 (CPU). For every variant and precision,
<out>/<variant>-<precision>/ holds the checkpoint plus
  golden.json         prompts (token ids), decode_tokens (the greedy token fed at each decode step,
                      per prompt), precision, the versions used, and the smallest router margin
  golden.safetensors  f32 logits: prefill.<i> [len_i, vocab] for every position of prompt i, and
                      decode.<s> [n_prompts, vocab] after feeding decode_tokens[i][s] to prompt i;
                      FP8 fixtures also prefill_sensitivity.<i> [len_i] and decode_sensitivity.<s>
                      [n_prompts]: how far each row moves when the FP8 roundings are nudged (see
                      fp8_sensitivity)

The reference is transformers' own model in float32 (eager attention, eager experts) on the weights
exactly as stored: BF16 checkpoints are loaded with from_pretrained, which also proves the layout
(per-expert tensors, MTP layer) loads in transformers. FP8 checkpoints are dequantized blockwise
here (transformers' dequantizer refuses blocks cut short at the edges), and DeepSeek's activation
quantization is applied in front of every FP8 linear layer: per token and 128-channel group,
scale = amax / 448, cast to float8_e4m3fn and back. kv_b_proj is the exception: DeepSeek's
absorbed-attention inference multiplies its dequantized weight into the query and the output and
never quantizes the latent.

Top-k routing is discontinuous, so prompts are drawn until every routing decision of every token
has a margin (score gap between the last chosen and the first rejected expert or group) of at
least MIN_ROUTER_MARGIN: an implementation that computes the same function in another order then
picks the same experts. FP8 activation rounding is discontinuous too, and among the ~10^5
roundings of a fixture some are always within f32 noise of a tie; the sensitivity tensors say
which rows depend on such a rounding (tests/data/golden/README.md).
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoint_export import (BLOCK, FP8_MAX, dequantize_fp8_blockwise,  # noqa: E402
                               export_checkpoint)

PROMPT_LENGTHS = [1, 7, 23, 70]  # 70 crosses a 64-token KV page
DECODE_STEPS = 8
# Routing decisions must beat f32 noise (BF16 fixtures) or the perturbations an FP8 activation
# rounding differently upstream brings (FP8 fixtures).
MIN_ROUTER_MARGIN = {"bf16": 1e-4, "fp8": 1e-3}
# FP8 sensitivity: relative noise on every activation before it is quantized, and how many draws.
SENSITIVITY_NOISE = 1e-6
SENSITIVITY_TRIALS = 16
INSENSITIVE_BELOW = 1e-5  # a row whose sensitivity is below this moved only by the noise itself

# rms_norm_eps is 1e-2 in the V3 variants: q_a_layernorm and kv_a_layernorm take the default 1e-6
# instead, and using rms_norm_eps there moves the logits by ~1e-3 of their spread, which shows.
_COMMON = dict(hidden_act="silu", attention_bias=False, attention_dropout=0.0, bos_token_id=0,
               eos_token_id=1, tie_word_embeddings=False, moe_layer_freq=1, initializer_range=0.02,
               torch_dtype="bfloat16")

VARIANTS = {
    # A: DeepSeek-V3 as released, small. q_lora (192: a partial FP8 block), YaRN with
    # mscale != mscale_all_dim (so cos/sin get a factor too), 3 heads, 12 experts in 4 groups of
    # which 2 are kept, top-3, normalized and scaled by 2.5, one shared expert, a dense layer
    # first, kv_lora + rope = 112, intermediate 160 and moe_intermediate 32 (partial blocks), and
    # an MTP layer.
    # Two shards.
    "v3-yarn": dict(
        config=dict(
            _COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
            vocab_size=256, hidden_size=128, intermediate_size=160, moe_intermediate_size=32,
            num_hidden_layers=2, first_k_dense_replace=1, num_nextn_predict_layers=1,
            num_attention_heads=3, num_key_value_heads=3, q_lora_rank=192, kv_lora_rank=80,
            qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=40, n_routed_experts=12,
            n_shared_experts=1, num_experts_per_tok=3, n_group=4, topk_group=2,
            topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
            routed_scaling_factor=2.5, rms_norm_eps=1e-2, rope_theta=10000.0,
            rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                          "beta_fast": 32, "beta_slow": 1, "mscale": 0.9, "mscale_all_dim": 0.7},
            max_position_embeddings=512),
        precisions=["bf16", "fp8"], shards=2, seed=1),
    # B: no q compression (q_proj), plain RoPE, hidden 192 (a partial block in every input dim),
    # 2 heads, 8 experts in 2 groups keeping 1, top-2 unnormalized, scaled by 1.5, 2 shared
    # experts, no MTP layer. One shard.
    "v3-noqlora": dict(
        config=dict(
            _COMMON, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
            vocab_size=256, hidden_size=192, intermediate_size=224, moe_intermediate_size=32,
            num_hidden_layers=2, first_k_dense_replace=1, num_nextn_predict_layers=0,
            num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None, kv_lora_rank=80,
            qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=40, n_routed_experts=8,
            n_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1,
            topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=False,
            routed_scaling_factor=1.5, rms_norm_eps=1e-2, rope_theta=50000.0, rope_scaling=None,
            max_position_embeddings=256),
        precisions=["bf16", "fp8"], shards=1, seed=2),
    # C: DeepSeek-V2: softmax router, group-limited greedy top-2 (4 groups keeping 2), weights
    # neither normalized nor biased, scaled by 2.0; one dense then two MoE layers.
    "v2-softmax": dict(
        config=dict(
            _COMMON, architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
            vocab_size=256, hidden_size=128, intermediate_size=160, moe_intermediate_size=32,
            num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=2,
            num_key_value_heads=2, q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32,
            qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, n_shared_experts=1,
            num_experts_per_tok=2, n_group=4, topk_group=2, topk_method="group_limited_greedy",
            scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=2.0,
            rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None, max_position_embeddings=256),
        precisions=["bf16"], shards=1, seed=3),
}

_FP8_INPUT_LINEARS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "o_proj",
                      "gate_proj", "up_proj", "down_proj")


def build_model(config):
    """An empty transformers model for a release-style config dict."""
    # A copy: transformers rewrites rope_scaling in place.
    hf_config = transformers.AutoConfig.for_model(**{k: copy.deepcopy(v) for k, v in config.items()
                                                     if k not in ("architectures", "torch_dtype")})
    return transformers.AutoModelForCausalLM.from_config(
        hf_config, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager")


def random_weights(model, gen):
    """Seeded weights that keep activations O(1) and routing decisive: unit-variance embeddings,
    linear layers scaled by 1/sqrt(fan_in), router logits of spread ~2, norms near 1, nonzero
    correction biases."""
    sd = {}
    for name, p in model.state_dict().items():
        if name.endswith("e_score_correction_bias"):
            t = 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith("mlp.gate.weight"):
            t = torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(p.shape[-1]))
        elif "embed_tokens" in name:
            t = torch.randn(p.shape, generator=gen)
        else:  # linear weights [..., out, in]
            t = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1])
        sd[name] = t
    return sd


class ActivationNoise:
    """Relative noise act_quant adds to its input while `eps` is set (sensitivity trials)."""
    eps = 0.0
    gen = torch.Generator()


def act_quant(x):
    """DeepSeek's activation quantization, returned dequantized: per token, per 128 channels
    (the last group may be shorter), scale = amax / 448, float8_e4m3fn."""
    if ActivationNoise.eps:
        x = x * (1 + ActivationNoise.eps * torch.randn(x.shape, generator=ActivationNoise.gen))
    k = x.shape[-1]
    groups = math.ceil(k / BLOCK)
    padded = torch.nn.functional.pad(x, (0, groups * BLOCK - k)).unflatten(-1, (groups, BLOCK))
    scale = padded.abs().amax(-1, keepdim=True) / FP8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (padded / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale
    return q.flatten(-2)[..., :k]


class QuantizedInputLinear(torch.nn.Module):
    """A linear layer whose input goes through act_quant first, as DeepSeek's fp8_gemm."""

    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(act_quant(x))


def _quantized_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' eager experts loop with act_quant in front of both expert matmuls."""
    out = torch.zeros_like(hidden_states)
    for e in range(self.gate_up_proj.shape[0]):
        token, slot = torch.where(top_k_index == e)
        if token.numel() == 0:
            continue
        gate, up = torch.nn.functional.linear(act_quant(hidden_states[token]),
                                              self.gate_up_proj[e]).chunk(2, dim=-1)
        y = torch.nn.functional.linear(act_quant(self.act_fn(gate) * up), self.down_proj[e])
        out.index_add_(0, token, y * top_k_weights[token, slot, None])
    return out


def simulate_fp8_activations(model):
    """Puts act_quant in front of every linear layer stored as FP8 but kv_b_proj."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child_name in _FP8_INPUT_LINEARS:
                setattr(module, child_name, QuantizedInputLinear(child))
        if hasattr(module, "gate_up_proj") and isinstance(module.gate_up_proj, torch.nn.Parameter):
            module.forward = _quantized_experts_forward.__get__(module)


def fuse_experts(sd):
    """Release names -> transformers 5's fused expert tensors."""
    out, experts = {}, {}
    for name, t in sd.items():
        if ".mlp.experts." in name:
            prefix, rest = name.split(".mlp.experts.")
            e, proj = rest.split(".")[:2]
            experts.setdefault(prefix, {}).setdefault(int(e), {})[proj] = t
        else:
            out[name] = t
    for prefix, by_e in experts.items():
        order = sorted(by_e)
        out[prefix + ".mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([by_e[e]["gate_proj"], by_e[e]["up_proj"]]) for e in order])
        out[prefix + ".mlp.experts.down_proj"] = torch.stack([by_e[e]["down_proj"] for e in order])
    return out


def stored_weights_f32(ckpt_dir, num_layers):
    """The checkpoint's tensors (MTP layer left out) in f32, FP8 ones times their block scales."""
    tensors = {}
    for f in sorted(os.listdir(ckpt_dir)):
        if f.startswith("model-") and f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(ckpt_dir, f)))
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv") or (name.startswith("model.layers.")
                                            and int(name.split(".")[2]) >= num_layers):
            continue
        if t.dtype == torch.float8_e4m3fn:
            t = dequantize_fp8_blockwise(t, tensors[name + "_scale_inv"])
        out[name] = t.float()
    return out


def reference_model(ckpt_dir, config, precision):
    """transformers' model on the checkpoint as stored, in float32."""
    if precision == "bf16":
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            ckpt_dir, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager", output_loading_info=True)
        mtp = f"model.layers.{config['num_hidden_layers']}."
        unexpected = [k for k in info["unexpected_keys"] if not k.startswith(mtp)]
        assert not info["missing_keys"] and not unexpected and not info["mismatched_keys"], info
    else:
        model = build_model(config)
        state = fuse_experts(stored_weights_f32(ckpt_dir, config["num_hidden_layers"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        simulate_fp8_activations(model)
    return model.eval()


def check_loaded_weights(model, exported):
    """transformers' loading of the BF16 checkpoint gives back exactly the weights exported."""
    loaded = model.state_dict()
    for name, t in exported.items():
        stored = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
        want = t.to(stored).float()
        assert torch.equal(loaded[name], want), f"{name} does not round-trip through the checkpoint"


class RouterMargins:
    """Records, over every token routed until close(), the smallest gap between the last chosen
    and the first rejected group and expert, recomputed from the router logits the way
    transformers chooses."""

    def __init__(self, model, config):
        self.config, self.smallest = config, math.inf
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if type(m).__name__.endswith("TopkRouter")]

    def close(self):
        """Stops recording; returns the smallest margin seen."""
        for h in self.handles:
            h.remove()
        return self.smallest

    @staticmethod
    def _gap(scores, k):
        if k >= scores.shape[-1]:
            return math.inf
        top = scores.topk(k + 1, dim=-1).values
        return float((top[..., k - 1] - top[..., k]).min())

    def _hook(self, module, inputs, output):
        c = self.config
        logits = output[0].double()
        n_group, topk_group, k = c["n_group"], c["topk_group"], c["num_experts_per_tok"]
        per_group = c["n_routed_experts"] // n_group
        if c["model_type"] == "deepseek_v3":
            choice = logits.sigmoid() + module.e_score_correction_bias.double()
            group_scores = choice.unflatten(-1, (n_group, per_group)).topk(2, dim=-1).values.sum(-1)
            fill = -math.inf
        else:
            choice = logits.softmax(-1)
            group_scores = choice.unflatten(-1, (n_group, per_group)).amax(-1)
            fill = 0.0
        if c["model_type"] == "deepseek_v2" and c["topk_method"] == "greedy":
            self.smallest = min(self.smallest, self._gap(choice, k))
            return
        kept = group_scores.topk(topk_group, dim=-1).indices
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(-1, kept, True)
        allowed = choice.masked_fill(~mask.repeat_interleave(per_group, -1), fill)
        self.smallest = min(self.smallest, self._gap(group_scores, topk_group),
                            self._gap(allowed, k))


def reference_logits(model, prompts, fed=None):
    """Prefill logits of every prompt position, then DECODE_STEPS greedy steps per prompt (or the
    tokens `fed` gives). Each prompt runs alone (no padding); a decode step reruns the whole
    sequence, which is the same function as a step on a KV cache."""
    with torch.no_grad():
        prefill = [model(torch.tensor([p])).logits[0].float() for p in prompts]
        seqs = [list(p) for p in prompts]
        greedy = fed is None
        if greedy:
            fed = [[int(rows[-1].argmax())] for rows in prefill]
        decode = []
        for step in range(DECODE_STEPS):
            rows = []
            for i, seq in enumerate(seqs):
                seq.append(fed[i][step])
                rows.append(model(torch.tensor([seq])).logits[0, -1].float())
                if greedy and step + 1 < DECODE_STEPS:
                    fed[i].append(int(rows[-1].argmax()))
            decode.append(torch.stack(rows))
    return prefill, fed, decode


def relative_row_errors(got, want):
    """max |got - want| over each row, divided by the spread (max - min) of want's row."""
    spread = want.max(-1).values - want.min(-1).values
    return (got - want).abs().max(-1).values / spread


def fp8_sensitivity(model, prompts, reference):
    """For every row of the reference, the largest relative change SENSITIVITY_TRIALS runs with
    relative noise SENSITIVITY_NOISE on the quantizers' inputs bring. The noise exceeds what
    computing in another order causes, so a row that no trial moves is one whose FP8 roundings
    are not on a knife edge; a row some trial moves inherits a flipped rounding (of its own
    token, or of an earlier token through attention) and may differ by percents in any correct
    implementation."""
    prefill, fed, decode = reference
    worst_prefill = [torch.zeros(len(p)) for p in prompts]
    worst_decode = [torch.zeros(len(prompts)) for _ in decode]
    try:
        ActivationNoise.eps = SENSITIVITY_NOISE
        for trial in range(SENSITIVITY_TRIALS):
            ActivationNoise.gen.manual_seed(trial)
            p, _, d = reference_logits(model, prompts, fed)
            for w, got, want in zip(worst_prefill + worst_decode, p + d, prefill + decode):
                torch.maximum(w, relative_row_errors(got, want), out=w)
    finally:
        ActivationNoise.eps = 0.0
    return worst_prefill, worst_decode


def make_variant(name, spec, out_root):
    config, gen = spec["config"], torch.Generator().manual_seed(spec["seed"])
    weights = random_weights(build_model(config), gen)
    dirs = {p: export_fixture(weights, config, os.path.join(out_root, f"{name}-{p}"), p == "fp8",
                              spec["shards"], spec["seed"]) for p in spec["precisions"]}
    models = {p: reference_model(d, config, p) for p, d in dirs.items()}
    if "bf16" in models:
        check_loaded_weights(models["bf16"], weights)
    prompts, refs, margins = well_routed_prompts(name, config, models, gen)
    for precision, d in dirs.items():
        write_golden(d, name, precision, prompts, refs[precision], margins[precision],
                     models[precision])


def export_fixture(weights, config, out_dir, fp8, shards, seed):
    """Exports the checkpoint into out_dir, split into `shards` shards."""
    shutil.rmtree(out_dir, ignore_errors=True)
    export_checkpoint(weights, config, out_dir, fp8=fp8, max_shard_bytes=1 << 40, mtp_seed=seed)
    if shards > 1:  # again, with shards sized from the total to get that many
        with open(os.path.join(out_dir, "model.safetensors.index.json")) as f:
            total = json.load(f)["metadata"]["total_size"]
        export_checkpoint(weights, config, out_dir, fp8=fp8, mtp_seed=seed,
                          max_shard_bytes=int(1.2 * total / shards))
    written = len([f for f in os.listdir(out_dir) if f.startswith("model-")])
    assert written == shards, f"{out_dir}: {written} shards, wanted {shards}"
    return out_dir


def well_routed_prompts(name, config, models, gen):
    """Draws prompts until every model routes every token with MIN_ROUTER_MARGIN; returns them,
    each model's reference logits and its smallest margin."""
    for draw in range(200):
        prompts = [torch.randint(2, config["vocab_size"], (n,), generator=gen).tolist()
                   for n in PROMPT_LENGTHS]
        margins = {p: RouterMargins(m, config) for p, m in models.items()}
        refs = {p: reference_logits(m, prompts) for p, m in models.items()}
        smallest = {p: m.close() for p, m in margins.items()}
        short = [f"{p} {v:.1e}" for p, v in smallest.items() if v < MIN_ROUTER_MARGIN[p]]
        if not short:
            return prompts, refs, smallest
        print(f"{name}: prompt draw {draw} routes a token with margin {', '.join(short)}; "
              "drawing again")
    raise SystemExit(f"{name}: no prompts with router margins {MIN_ROUTER_MARGIN} in 200 draws")


def write_golden(d, name, precision, prompts, reference, margin, model):
    """golden.json and golden.safetensors (see the top of this file) into fixture directory d."""
    prefill, fed, decode = reference
    tensors = {f"prefill.{i}": t.contiguous() for i, t in enumerate(prefill)}
    tensors.update({f"decode.{s}": t.contiguous() for s, t in enumerate(decode)})
    info = {"variant": name, "precision": precision, "prompts": prompts, "decode_tokens": fed,
            "min_router_margin": margin, "transformers_version": transformers.__version__,
            "torch_version": torch.__version__}
    summary = f"smallest router margin {margin:.1e}"
    if precision == "fp8":
        worst_prefill, worst_decode = fp8_sensitivity(model, prompts, reference)
        tensors.update({f"prefill_sensitivity.{i}": t for i, t in enumerate(worst_prefill)})
        tensors.update({f"decode_sensitivity.{s}": t for s, t in enumerate(worst_decode)})
        rows = torch.cat(worst_prefill + worst_decode)
        insensitive = int((rows < INSENSITIVE_BELOW).sum())
        info["sensitivity"] = {"noise": SENSITIVITY_NOISE, "trials": SENSITIVITY_TRIALS,
                               "insensitive_below": INSENSITIVE_BELOW,
                               "insensitive_rows": insensitive, "rows": rows.numel(),
                               "worst": float(rows.max())}
        summary += f", {insensitive} of {rows.numel()} rows insensitive"
    save_file(tensors, os.path.join(d, "golden.safetensors"))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(info, f)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    print(f"{d}: {size / 1e6:.2f} MB, {summary}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                  "tests", "data", "golden"))
    ap.add_argument("--only", help="make one variant (v3-yarn, v3-noqlora, v2-softmax)")
    args = ap.parse_args()
    assert int(transformers.__version__.split(".")[0]) >= 5, "needs transformers >= 5"
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()  # the MTP layer is reported as unexpected on load
    transformers.utils.logging.disable_progress_bar()
    for name, spec in VARIANTS.items():
        if args.only in (None, name):
            make_variant(name, spec, args.out)


if __name__ == "__main__":
    main()
