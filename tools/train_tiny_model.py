"""Trains Trident's default model: a small DeepSeek-V3-architecture model on Jane Austen's novels.

    python3 tools/fetch_training_text.py --out .train-data        # once, here (needs apt-get)
    python3 tools/train_tiny_model.py --data .train-data --out models     # on a GPU, ~1 minute

Everything runs in one process and is deterministic for a given --seed (on a given machine and
library versions): tokenizer, data order, initialisation and training.

1. Splits each novel into paragraphs: the last 4% of each novel is the test set (perplexity), the
   4% before it the validation set (picks the best step), the rest trains.
2. Trains a byte-level BPE tokenizer on the training split with tools/make_tokenizer.py
   (DeepSeek-V3's pre-tokenizer, special tokens and chat template).
3. Trains transformers' DeepseekV3ForCausalLM: MLA with q compression, one dense layer then MoE
   layers of 16 routed experts in 4 groups (top-2 groups, top-4 experts) plus a shared expert, the
   sigmoid router with DeepSeek-V3's auxiliary-loss-free balancing: after every step each MoE
   layer's e_score_correction_bias moves by --bias-update-speed towards the mean load
   (b_e += u * sign(mean load - load_e)). Samples are windows that start at a paragraph with BOS;
   a --chat-fraction share are chat turns in DeepSeek-V3's template (the user gives a paragraph's
   first sentence, the assistant continues the paragraph and ends with EOS), so that a prompt in
   the chat template gets a reply rather than noise.
4. Exports the best step in DeepSeek's release layout with tools/checkpoint_export.py:
   <out>/<name> (BF16) and <out>/<name>-fp8 (FP8 e4m3 weights with 128x128 block scales), each
   with tokenizer.json, tokenizer_config.json and generation_config.json.
5. Reloads both directories with transformers and reports test-set perplexity: BF16 weights, and
   FP8 the way DeepSeek runs it (weights dequantized from their block scales, and every FP8
   linear's input quantized to e4m3 per token per 128 channels), both computed in float32. Prints
   greedy and sampled continuations.

--report writes the numbers as JSON.
"""
import argparse
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time
import types

# cuBLAS needs this set before CUDA starts to make its matrix products deterministic.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoint_export import dequantize_fp8_blockwise, export_checkpoint  # noqa: E402
from make_tokenizer import BOS, EOS, train_tokenizer  # noqa: E402

FP8_MAX = 448.0
ACT_BLOCK = 128
FP8_LINEARS = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj",
               "gate_proj", "up_proj", "down_proj")
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"


def model_config(vocab_size, bos_id, eos_id):
    """The shipped model's shape: DeepSeek-V3's architecture at a size that fits in a few MB."""
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=768,
        moe_intermediate_size=64,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=192,
        kv_lora_rank=128,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rope_interleave=True,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=False,
        num_nextn_predict_layers=0,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        hidden_act="silu",
        attention_bias=False,
        attention_dropout=0.0,
        use_cache=True,
    )


# ---------------------------------------------------------------------------------------------
# Data


def read_novels(data_dir):
    """{name: [paragraph, ...]} from the .txt files fetch_training_text.py writes."""
    paths = sorted(p for p in glob.glob(os.path.join(data_dir, "*.txt"))
                   if os.path.basename(p) != "SOURCE.txt")
    if not paths:
        raise FileNotFoundError(f"no novels (*.txt) in {data_dir}: run tools/fetch_training_text.py "
                                f"--out {data_dir} first")
    novels = {}
    for p in paths:
        with open(p, encoding="utf-8") as f:
            novels[os.path.splitext(os.path.basename(p))[0]] = [
                para for para in f.read().split("\n\n") if para.strip()]
    return novels


def split_novels(novels, held_out_fraction):
    """Each novel's paragraphs -> (train, validation, test); the held-out parts are its end."""
    splits = {"train": [], "validation": [], "test": []}
    for paras in novels.values():
        n = len(paras)
        cut = max(1, int(n * held_out_fraction))
        splits["train"].append(paras[: n - 2 * cut])
        splits["validation"].append(paras[n - 2 * cut: n - cut])
        splits["test"].append(paras[n - cut:])
    return splits


def encode_stream(tokenizer, novels_paragraphs):
    """Paragraphs -> one token stream (paragraphs joined by a blank line) and paragraph starts."""
    ids, starts = [], []
    for paras in novels_paragraphs:
        encoded = tokenizer.encode_batch([p + "\n\n" for p in paras], add_special_tokens=False)
        for e in encoded:
            starts.append(len(ids))
            ids.extend(e.ids)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


def chat_turns(tokenizer, novels_paragraphs, bos_id, eos_id, max_len):
    """Chat samples: the user gives a paragraph's first sentence, the assistant the rest + EOS.
    Returns (token ids, index of the first assistant-content token) per usable paragraph."""
    user_id, assistant_id = tokenizer.token_to_id(USER), tokenizer.token_to_id(ASSISTANT)
    pairs = []
    for paras in novels_paragraphs:
        for p in paras:
            end = next((i + 1 for i, ch in enumerate(p) if ch in ".!?" and i + 1 < len(p)
                        and p[i + 1] == " "), 0)
            if end == 0 or len(p) - end < 40:
                continue
            pairs.append((p[:end], p[end + 1:]))
    users = tokenizer.encode_batch([u for u, _ in pairs], add_special_tokens=False)
    replies = tokenizer.encode_batch([r for _, r in pairs], add_special_tokens=False)
    out = []
    for u, r in zip(users, replies):
        prompt = [bos_id, user_id] + u.ids + [assistant_id]
        sample = (prompt + r.ids + [eos_id])[: max_len + 1]
        if len(prompt) < max_len // 2:
            out.append((sample, len(prompt)))
    return out


class Batches:
    """Deterministic training batches: inputs and next-token labels, seq_len tokens each.

    Plain samples: BOS, then the stream from a random paragraph start. Chat samples: a chat turn,
    loss only on the assistant's reply and its EOS, padded with label -100."""

    def __init__(self, stream, starts, chats, bos_id, seq_len, batch_size, chat_fraction, seed):
        self.stream, self.bos_id, self.seq_len, self.batch_size = stream, bos_id, seq_len, batch_size
        self.starts = starts[starts + seq_len <= len(stream)]
        self.chats, self.chat_fraction = chats, chat_fraction
        self.gen = torch.Generator().manual_seed(seed)

    def next(self):
        inputs = torch.zeros(self.batch_size, self.seq_len, dtype=torch.long)
        labels = torch.full((self.batch_size, self.seq_len), -100, dtype=torch.long)
        is_chat = torch.rand(self.batch_size, generator=self.gen) < self.chat_fraction
        picks = torch.randint(0, len(self.starts), (self.batch_size,), generator=self.gen)
        chat_picks = torch.randint(0, max(1, len(self.chats)), (self.batch_size,), generator=self.gen)
        for b in range(self.batch_size):
            if is_chat[b] and self.chats:
                ids, reply_at = self.chats[chat_picks[b]]
                ids = torch.tensor(ids)
                n = len(ids) - 1
                inputs[b, :n] = ids[:-1]
                labels[b, reply_at - 1: n] = ids[reply_at:]
            else:
                s = self.starts[picks[b]]
                window = torch.cat([torch.tensor([self.bos_id]), self.stream[s: s + self.seq_len]])
                inputs[b] = window[:-1]
                labels[b] = window[1:]
        return inputs, labels


def eval_windows(stream, bos_id, seq_len):
    """The held-out stream cut into consecutive windows, each BOS + seq_len tokens (the last one
    shorter); every token is scored once. Returns (inputs, labels) padded with -100."""
    windows = [stream[i: i + seq_len] for i in range(0, len(stream), seq_len)]
    inputs = torch.zeros(len(windows), seq_len, dtype=torch.long)
    labels = torch.full((len(windows), seq_len), -100, dtype=torch.long)
    for i, w in enumerate(windows):
        full = torch.cat([torch.tensor([bos_id]), w])
        inputs[i, : len(w)] = full[:-1]
        labels[i, : len(w)] = full[1:]
    return inputs, labels


# ---------------------------------------------------------------------------------------------
# Training


def dense_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The same function as transformers' experts loop, computed densely for training speed and
    determinism: every expert runs on every token, and an unchosen expert's output is weighted by
    0, so outputs and gradients equal the sparse computation's (no index_add_, whose CUDA
    accumulation order varies between runs)."""
    tokens, n_experts = hidden_states.shape[0], self.num_experts
    weights = torch.zeros(tokens, n_experts, dtype=top_k_weights.dtype, device=top_k_weights.device)
    weights = weights.scatter(1, top_k_index, top_k_weights)
    inter = self.gate_up_proj.shape[1] // 2
    gate_up = F.linear(hidden_states, self.gate_up_proj.reshape(-1, hidden_states.shape[-1]))
    gate_up = gate_up.view(tokens, n_experts, 2 * inter)
    act = self.act_fn(gate_up[..., :inter]) * gate_up[..., inter:]
    act = act * weights.unsqueeze(-1).to(act.dtype)
    down = self.down_proj.permute(1, 0, 2).reshape(self.down_proj.shape[1], -1)  # [H, E*I]
    return F.linear(act.reshape(tokens, -1), down).to(hidden_states.dtype)


def full_precision_router(gate):
    """Wraps a router's forward so it runs in float32 under autocast, as at inference."""
    original = gate.forward

    def forward(hidden_states):
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            return original(hidden_states.float())
    return forward


class LoadBalancer:
    """DeepSeek-V3's auxiliary-loss-free balancing: counts each MoE layer's expert choices during
    a step, then nudges e_score_correction_bias towards equal load."""

    def __init__(self, model, speed):
        self.speed, self.routers, self.counts = speed, [], []
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is None:
                continue
            self.routers.append(gate)
            self.counts.append(torch.zeros(gate.num_experts, device=gate.weight.device))
            gate.register_forward_hook(self._hook(len(self.routers) - 1))

    def _hook(self, i):
        def hook(module, args, output):
            if module.training:
                topk_indices = output[2]
                self.counts[i] += F.one_hot(topk_indices.flatten(), module.num_experts).sum(0).float()
        return hook

    @torch.no_grad()
    def update(self):
        """Applies one bias update; returns each layer's max/mean load ratio for this step (a
        tensor, so that the GPU need not stop for it)."""
        imbalance = []
        for gate, counts in zip(self.routers, self.counts):
            gate.e_score_correction_bias += self.speed * torch.sign(counts.mean() - counts)
            imbalance.append(counts.max() / counts.mean().clamp(min=1))
            counts.zero_()
        return torch.stack(imbalance)


def build_model(config, device, seed):
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = DeepseekV3ForCausalLM(config).float().to(device)
    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts"):
            layer.mlp.experts.forward = types.MethodType(dense_experts_forward, layer.mlp.experts)
            layer.mlp.gate.forward = full_precision_router(layer.mlp.gate)
    return model


def lm_loss(model, inputs, labels, device):
    """Mean cross-entropy over the labelled tokens, and their count."""
    logits = model(input_ids=inputs.to(device, non_blocking=True)).logits.float()
    labels = labels.to(device, non_blocking=True)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100,
                           reduction="sum")
    return loss, (labels != -100).sum()


@torch.no_grad()
def evaluate(model, inputs, labels, device, batch_size, autocast):
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(inputs), batch_size):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, n = lm_loss(model, inputs[i: i + batch_size], labels[i: i + batch_size], device)
        total += loss.item()
        count += n.item()
    model.train(was_training)
    return total / count


def train(model, batches, val, args, device, log, steps):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n
             and not n.endswith("gate.weight")]
    no_decay = [p for n, p in model.named_parameters() if not any(p is d for d in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=device.type == "cuda")
    warmup = max(1, steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    balancer = LoadBalancer(model, args.bias_update_speed)
    autocast = device.type == "cuda"
    best = (float("inf"), -1, None)
    start = time.time()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        inputs, labels = batches.next()
        if device.type == "cuda":  # pinned, so that the copy does not wait for the GPU
            inputs, labels = inputs.pin_memory(), labels.pin_memory()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss_sum, n = lm_loss(model, inputs, labels, device)
        loss = loss_sum / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        imbalance = balancer.update()
        out_of_time = args.time_limit and time.time() - start > args.time_limit
        if out_of_time:
            log(f"stopping at step {step + 1} of {steps}: --time-limit {args.time_limit}s "
                "reached (a run cut short by time is not reproducible step for step)")
        last = step == steps - 1 or out_of_time
        if (step + 1) % args.eval_every == 0 or last:
            val_loss = evaluate(model, *val, device, args.batch_size, autocast)
            if val_loss < best[0]:
                best = (val_loss, step + 1, {k: v.detach().clone() for k, v in
                                             model.state_dict().items()})
            log(f"step {step + 1:5d}  train loss {loss.item():.3f}  val loss {val_loss:.3f} "
                f"(ppl {math.exp(val_loss):.1f})  lr {lr_at(step):.2e}  max/mean expert load "
                f"{'/'.join(f'{x:.2f}' for x in imbalance.tolist())}  {time.time() - start:.0f}s")
        if out_of_time:
            break
    return best


# ---------------------------------------------------------------------------------------------
# Export


def write_generation_config(out_dir, bos_id, eos_id):
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": True,
                   "temperature": 0.7, "top_p": 0.95}, f, indent=2)
        f.write("\n")


# The fields of DeepSeek-V3's own config.json; transformers' to_dict adds generic ones it lacks.
RELEASE_CONFIG_FIELDS = (
    "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "first_k_dense_replace",
    "hidden_act", "hidden_size", "initializer_range", "intermediate_size", "kv_lora_rank",
    "max_position_embeddings", "moe_intermediate_size", "n_group", "n_routed_experts",
    "n_shared_experts", "norm_topk_prob", "num_attention_heads", "num_experts_per_tok",
    "num_hidden_layers", "num_key_value_heads", "num_nextn_predict_layers", "q_lora_rank",
    "qk_nope_head_dim", "qk_rope_head_dim", "rms_norm_eps", "rope_interleave", "rope_parameters",
    "rope_scaling", "rope_theta", "routed_scaling_factor", "tie_word_embeddings", "topk_group",
    "use_cache", "v_head_dim", "vocab_size")


def release_config_dict(config):
    """config.json as DeepSeek-V3's release spells it (checkpoint_export turns rope_parameters
    back into rope_theta and rope_scaling)."""
    full = config.to_dict()
    out = {k: full[k] for k in RELEASE_CONFIG_FIELDS if k in full}
    out.update(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
               torch_dtype="bfloat16", scoring_func="sigmoid", topk_method="noaux_tc",
               moe_layer_freq=1, ep_size=1)
    return out


def export_model(state_dict, config, tokenizer_dir, out_dir, fp8, bos_id, eos_id):
    config_dict = release_config_dict(config)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    export_checkpoint({k: v.cpu() for k, v in state_dict.items()}, config_dict, out_dir, fp8=fp8,
                      max_shard_bytes=8 * 10**6)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    write_generation_config(out_dir, bos_id, eos_id)


# ---------------------------------------------------------------------------------------------
# Evaluation of the exported directories with stock transformers


def quantize_activation(x):
    """x rounded through e4m3 with one scale per token per 128 channels (DeepSeek's act_quant)."""
    shape, k = x.shape, x.shape[-1]
    pad = (-k) % ACT_BLOCK
    xf = F.pad(x.float().reshape(-1, k), (0, pad)).view(-1, (k + pad) // ACT_BLOCK, ACT_BLOCK)
    amax = xf.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (xf / scale).to(torch.float8_e4m3fn).float() * scale
    return q.view(-1, k + pad)[:, :k].reshape(shape).to(x.dtype)


def fp8_sim_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' expert loop with each expert's inputs quantized like its FP8 GEMM's."""
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        token_idx, k_pos = torch.where(top_k_index == e)
        if token_idx.numel() == 0:
            continue
        x = quantize_activation(hidden_states[token_idx])
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        h = quantize_activation(self.act_fn(gate) * up)
        y = F.linear(h, self.down_proj[e]) * top_k_weights[token_idx, k_pos, None]
        out.index_add_(0, token_idx, y.to(out.dtype))
    return out


def load_bf16(model_dir, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


def load_fp8_simulated(model_dir, device):
    """The FP8 directory as DeepSeek runs it: each FP8 weight dequantized with its block scales
    (exactly, in float32) and each FP8 linear's input quantized per token per 128 channels."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    if config.get("quantization_config", {}).get("weight_block_size") != [128, 128]:
        raise ValueError(f"{model_dir}/config.json has no 128x128 FP8 quantization_config")
    config.pop("quantization_config")
    tensors = {}
    for shard in sorted(glob.glob(os.path.join(model_dir, "model-*.safetensors"))):
        tensors.update(load_file(shard))
    dequantized = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            dequantized[name] = dequantize_fp8_blockwise(t, tensors[name + "_scale_inv"])
        else:
            dequantized[name] = t.float()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        save_file(dequantized, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    model = model.to(device).eval()
    for layer in model.model.layers:
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in FP8_LINEARS:
                module.register_forward_pre_hook(lambda m, args: (quantize_activation(args[0]),))
        if hasattr(layer.mlp, "experts"):
            layer.mlp.experts.forward = types.MethodType(fp8_sim_experts_forward, layer.mlp.experts)
    return model


@torch.no_grad()
def perplexity(model, inputs, labels, device, batch_size):
    total, count = 0.0, 0
    for i in range(0, len(inputs), batch_size):
        loss, n = lm_loss(model, inputs[i: i + batch_size], labels[i: i + batch_size], device)
        total += loss.item()
        count += n.item()
    return math.exp(total / count), count


@torch.no_grad()
def continuations(model, tokenizer, prompts, device, max_new_tokens, seed, chat=False):
    from transformers import GenerationConfig

    bos, user = tokenizer.token_to_id(BOS), tokenizer.token_to_id(USER)
    assistant, eos = tokenizer.token_to_id(ASSISTANT), tokenizer.token_to_id(EOS)
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        ids = [bos, user] + ids + [assistant] if chat else [bos] + ids
        row = {"prompt": prompt}
        for mode, gen in (("greedy", GenerationConfig(do_sample=False)),
                          ("sampled", GenerationConfig(do_sample=True, temperature=0.7, top_p=0.95))):
            gen.max_new_tokens, gen.eos_token_id, gen.pad_token_id = max_new_tokens, eos, eos
            torch.manual_seed(seed)
            result = model.generate(torch.tensor([ids], device=device), generation_config=gen)
            row[mode] = tokenizer.decode(result[0, len(ids):].tolist(), skip_special_tokens=False)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".train-data", help="folder of novels from fetch_training_text.py")
    ap.add_argument("--out", default="models", help="the two model folders go here")
    ap.add_argument("--name", default="trident-tiny")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--bias-update-speed", type=float, default=1e-3,
                    help="u in DeepSeek-V3's correction-bias update")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--held-out-fraction", type=float, default=0.04,
                    help="of each novel's paragraphs, for each of validation and test")
    ap.add_argument("--chat-fraction", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--check-determinism", type=int, default=0, metavar="STEPS",
                    help="first train this many steps twice and report whether the weights match")
    ap.add_argument("--time-limit", type=float, default=0,
                    help="stop training after this many seconds (0: never), keeping the best step")
    ap.add_argument("--eval-windows", type=int, default=0,
                    help="score only this many held-out windows (0: all; less for a quick trial)")
    ap.add_argument("--max-bytes", type=int, default=25 * 10**6,
                    help="refuse to finish if the two exported folders together are larger")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--report", help="write the perplexities and samples here as JSON")
    args = ap.parse_args()

    from tokenizers import Tokenizer

    # warn_only: an op without a deterministic kernel warns instead of stopping the run; the
    # --check-determinism run is what shows that the result repeats.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    started = time.time()

    def log(msg):
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    novels = read_novels(args.data)
    splits = split_novels(novels, args.held_out_fraction)
    with tempfile.TemporaryDirectory() as tmp:
        train_files = []
        for i, paras in enumerate(splits["train"]):
            path = os.path.join(tmp, f"train-{i}.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n\n".join(paras) + "\n")
            train_files.append(path)
        tokenizer_dir = os.path.join(tmp, "tokenizer")
        vocab = train_tokenizer(train_files, args.vocab_size, tokenizer_dir)
        tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
        bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
        log(f"tokenizer: {vocab} ids (BOS {bos_id}, EOS {eos_id})")

        streams = {k: encode_stream(tokenizer, v) for k, v in splits.items()}
        for k, (ids, starts) in streams.items():
            log(f"{k}: {len(starts)} paragraphs, {len(ids):,} tokens")
        chats = chat_turns(tokenizer, splits["train"], bos_id, eos_id, args.seq_len)
        limit = args.eval_windows or None
        val = tuple(t[:limit] for t in eval_windows(streams["validation"][0], bos_id, args.seq_len))
        test = tuple(t[:limit] for t in eval_windows(streams["test"][0], bos_id, args.seq_len))

        config = model_config(vocab, bos_id, eos_id)

        def training_run(steps):
            batches = Batches(*streams["train"], chats, bos_id, args.seq_len, args.batch_size,
                              args.chat_fraction, args.seed)
            model = build_model(config, device, args.seed)
            log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; training "
                f"{steps} steps of {args.batch_size}x{args.seq_len} tokens on {device}")
            return model, train(model, batches, val, args, device, log, steps)

        deterministic = None
        if args.check_determinism:
            log(f"determinism check: training {args.check_determinism} steps twice")
            first, second = (training_run(args.check_determinism)[0].state_dict() for _ in range(2))
            deterministic = all(torch.equal(first[k], second[k]) for k in first)
            log(f"determinism check: the two runs' weights are "
                f"{'bitwise identical' if deterministic else 'DIFFERENT'}")
        model, (best_loss, best_step, best_state) = training_run(args.steps)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"best validation loss {best_loss:.3f} (ppl {math.exp(best_loss):.2f}) at step {best_step}")

        bf16_dir = os.path.join(args.out, args.name)
        fp8_dir = os.path.join(args.out, args.name + "-fp8")
        export_model(best_state, config, tokenizer_dir, bf16_dir, False, bos_id, eos_id)
        export_model(best_state, config, tokenizer_dir, fp8_dir, True, bos_id, eos_id)
    sizes = {d: sum(os.path.getsize(p) for p in glob.glob(os.path.join(d, "*"))) for d in
             (bf16_dir, fp8_dir)}
    for d, s in sizes.items():
        log(f"exported {d}: {s / 2**20:.2f} MiB")
    if sum(sizes.values()) > args.max_bytes:
        raise SystemExit(f"the two exports take {sum(sizes.values()):,} bytes, over --max-bytes "
                         f"{args.max_bytes:,}: shrink the model in model_config()")

    report = {"seed": args.seed, "steps": args.steps, "best_step": best_step,
              "deterministic": deterministic,
              "validation_loss": best_loss, "parameters": n_params, "vocab_size": vocab,
              "test_tokens": int((test[1] != -100).sum()), "sizes_bytes": sizes,
              "train_tokens": len(streams["train"][0]), "device": str(device)}
    prompts = ["It is a truth universally acknowledged", "Mr. Darcy", "The weather was"]
    for label, loader in (("bf16", load_bf16), ("fp8", load_fp8_simulated)):
        model_dir = bf16_dir if label == "bf16" else fp8_dir
        model = loader(model_dir, device)
        ppl, count = perplexity(model, *test, device, args.batch_size)
        report[f"test_perplexity_{label}"] = ppl
        log(f"{label}: test perplexity {ppl:.3f} over {count:,} tokens (transformers, float32)")
        report[f"samples_{label}"] = continuations(model, tokenizer, prompts, device, 60, args.seed)
        report[f"chat_samples_{label}"] = continuations(
            model, tokenizer, ["Tell me about Mr. Bingley."], device, 60, args.seed, chat=True)
        for row in report[f"samples_{label}"] + report[f"chat_samples_{label}"]:
            log(f"{label} | {row['prompt']!r}\n  greedy:  {row['greedy']!r}\n  sampled: {row['sampled']!r}")
    log(f"done in {time.time() - started:.0f}s")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
