"""Writes a DeepSeek-V3-architecture model as a checkpoint laid out like DeepSeek's own releases.

    import sys; sys.path.insert(0, "tools")
    from checkpoint_export import export_checkpoint
    export_checkpoint(model, config, "out/my-model", fp8=True, max_shard_bytes=5 * 10**9)

model_or_state_dict: a transformers DeepseekV3ForCausalLM (or DeepseekV2ForCausalLM), or its
    state dict. Experts may be fused as transformers 5 keeps them in memory
    (`mlp.experts.gate_up_proj` [E, 2I, H] holding gate then up, `mlp.experts.down_proj` [E, H, I])
    or already one by one (`mlp.experts.<e>.{gate,up,down}_proj.weight`).
config: the model's config, a dict (or a transformers config). transformers 5 spellings are
    turned back into the release's: `rope_parameters` into `rope_theta` + `rope_scaling`,
    `num_mtp_layers` into `num_nextn_predict_layers`.

Writes into out_dir (replacing any checkpoint already there):
- config.json; with fp8, plus quantization_config {"activation_scheme": "dynamic", "fmt": "e4m3",
  "quant_method": "fp8", "weight_block_size": [128, 128]}.
- model-0000i-of-0000n.safetensors, each at most max_shard_bytes unless one tensor is larger, in
  layer order; an FP8 weight and its scales share a shard.
- model.safetensors.index.json: {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}.

Dtypes, as in DeepSeek-V3's release: with fp8, every linear weight of self_attn and mlp (experts,
shared experts, dense MLPs; in the MTP layer too) is float8_e4m3fn with `<name>_scale_inv`, f32
[ceil(out/128), ceil(in/128)], one scale per 128x128 block: dequantized = fp8 * scale_inv,
scale_inv = amax(|block|) / 448 (1 for an all-zero block). The router (mlp.gate.weight),
embeddings, norms, lm_head and the MTP layer's eh_proj and heads are BF16;
e_score_correction_bias is F32. Without fp8 everything but e_score_correction_bias is BF16.

Multi-token prediction: transformers does not model DeepSeek's MTP layer and drops it on load. When
the config asks for num_nextn_predict_layers >= 1 and the state dict has no such layer, layer
num_hidden_layers (+k) is written with random weights (seeded by mtp_seed): a decoder layer shaped
like the last MoE layer, plus enorm, hnorm, eh_proj [H, 2H], shared_head.norm, and copies of the
embedding (embed_tokens) and output head (shared_head.head), which DeepSeek's release also stores
in that layer. Set num_nextn_predict_layers to 0 to write none.
"""
import copy
import glob
import json
import math
import os
import re

import torch
from safetensors.torch import save_file

BLOCK = 128
FP8_MAX = 448.0
FP8_QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                           "weight_block_size": [BLOCK, BLOCK]}

_FP8_LINEAR = re.compile(
    r"^model\.layers\.\d+\."
    r"(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def export_checkpoint(model_or_state_dict, config, out_dir, fp8=False, max_shard_bytes=5 * 10**9,
                      mtp_seed=0):
    """Writes config.json, the shards and their index into out_dir; returns the weight map."""
    config = release_config(config, fp8)
    state_dict = (model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict")
                  else dict(model_or_state_dict))
    state_dict = split_experts(state_dict)
    if config.get("tie_word_embeddings"):
        state_dict.pop("lm_head.weight", None)  # tied: the embedding is the head, stored once
    state_dict.update(mtp_layers(state_dict, config, mtp_seed))
    tensors = stored_tensors(state_dict, fp8)

    os.makedirs(out_dir, exist_ok=True)
    stale = glob.glob(os.path.join(out_dir, "model-*-of-*.safetensors"))
    stale += glob.glob(os.path.join(out_dir, "model.safetensors*"))
    for path in stale:
        os.remove(path)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")

    shards = _pack_shards(tensors, max_shard_bytes)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, os.path.join(out_dir, fname),
                  metadata={"format": "pt"})
        for n in names:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)
        f.write("\n")
    return weight_map


def release_config(config, fp8):
    """The config.json dict in the release's spelling, with quantization_config iff fp8."""
    c = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    rope = c.pop("rope_parameters", None) or c.get("rope_scaling")
    if rope:
        rope = dict(rope)
        c["rope_theta"] = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
        rope_type = rope.pop("rope_type", None) or rope.pop("type", "default")
        rope.pop("type", None)
        c["rope_scaling"] = None if rope_type == "default" else {**rope, "type": rope_type}
    if "num_mtp_layers" in c:
        c.setdefault("num_nextn_predict_layers", c.pop("num_mtp_layers"))
    c.pop("quantization_config", None)
    if fp8:
        c["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
    return c


def split_experts(state_dict):
    """transformers 5's fused expert tensors -> the release's one tensor per expert and matrix."""
    out = {}
    for name, t in state_dict.items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            prefix, inter = name[: -len("gate_up_proj")], t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inter]
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inter:]
        elif name.endswith(".mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e]
        else:
            out[name] = t
    return out


def mtp_layers(state_dict, config, seed):
    """Random MTP layers the config asks for and the state dict lacks (release names)."""
    n_layers = config["num_hidden_layers"]
    wanted = config.get("num_nextn_predict_layers") or 0
    present = {int(m.group(1)) for m in map(_LAYER.match, state_dict) if m}
    template_layer = n_layers - 1
    template = {name[len(f"model.layers.{template_layer}."):]: t for name, t in state_dict.items()
                if name.startswith(f"model.layers.{template_layer}.")}
    if wanted and not any(k.startswith("mlp.experts.") for k in template):
        raise ValueError(f"num_nextn_predict_layers={wanted} needs an MoE layer to shape the MTP "
                         f"layer after, but the last layer ({template_layer}) is dense")
    gen = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    head = state_dict.get("lm_head.weight", state_dict["model.embed_tokens.weight"])
    out = {}
    for layer in range(n_layers, n_layers + wanted):
        if layer in present:
            continue
        p = f"model.layers.{layer}."
        for name, t in template.items():
            t = t.float()
            if t.dim() == 1 and name.endswith("norm.weight"):
                out[p + name] = torch.ones_like(t)
            else:  # same spread as the template's tensor, so activations keep their scale
                out[p + name] = torch.randn(t.shape, generator=gen) * t.std() + t.mean()
        out[p + "enorm.weight"] = torch.ones(hidden)
        out[p + "hnorm.weight"] = torch.ones(hidden)
        eh_proj = torch.randn(hidden, 2 * hidden, generator=gen) / math.sqrt(2 * hidden)
        out[p + "eh_proj.weight"] = eh_proj
        out[p + "shared_head.norm.weight"] = torch.ones(hidden)
        out[p + "embed_tokens.weight"] = state_dict["model.embed_tokens.weight"].clone()
        out[p + "shared_head.head.weight"] = head.clone()
    return out


def stored_tensors(state_dict, fp8):
    """Name -> the tensor as stored (dtype per the release), contiguous and unshared."""
    out = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if name.endswith("e_score_correction_bias"):
            out[name] = t.float().contiguous().clone()
        elif fp8 and t.dim() == 2 and _FP8_LINEAR.match(name):
            out[name], out[name + "_scale_inv"] = quantize_fp8_blockwise(t)
        else:
            out[name] = t.to(torch.bfloat16).contiguous().clone()
    return out


def quantize_fp8_blockwise(w):
    """w [out, in] -> (float8_e4m3fn [out, in], f32 scale_inv [ceil(out/128), ceil(in/128)]).
    Edge blocks are zero-padded to 128x128 for their amax, as DeepSeek's release documents."""
    w = w.float()
    n, k = w.shape
    nb, kb = math.ceil(n / BLOCK), math.ceil(k / BLOCK)
    padded = torch.zeros(nb * BLOCK, kb * BLOCK)
    padded[:n, :k] = w
    blocks = padded.view(nb, BLOCK, kb, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale_inv[:, None, :, None]).to(torch.float8_e4m3fn)
    return q.view(nb * BLOCK, kb * BLOCK)[:n, :k].contiguous(), scale_inv.contiguous()


def dequantize_fp8_blockwise(q, scale_inv):
    """The inverse: float8_e4m3fn [out, in] and its block scales -> f32 [out, in]."""
    n, k = q.shape
    s = scale_inv.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :k]
    return q.float() * s


def _release_order(name):
    """Embeddings, then layer by layer, then the final norm and head, as the release orders them."""
    m = _LAYER.match(name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith("model.embed_tokens") else 2, 0, name)


def _pack_shards(tensors, max_shard_bytes):
    """Groups names into shards in release order; a weight and its _scale_inv stay together."""
    groups = []
    for name in sorted(tensors, key=_release_order):
        if name.endswith("_scale_inv") and name[: -len("_scale_inv")] in tensors:
            continue
        group = [name] + ([name + "_scale_inv"] if name + "_scale_inv" in tensors else [])
        groups.append(group)
    shards, current, size = [], [], 0
    for group in groups:
        nbytes = sum(tensors[n].numel() * tensors[n].element_size() for n in group)
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current += group
        size += nbytes
    shards.append(current)
    return shards
