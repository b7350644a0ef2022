#!/usr/bin/env python3
"""Perplexity of a model directory on a text file with HuggingFace transformers, scored exactly as
`trident eval` scores it: the text encoded with the model's tokenizer.json (no special tokens),
cut into consecutive windows of --window tokens, each fed as BOS + the window's tokens but the
last, so every token is predicted once. An FP8 directory (quantization_config fp8, 128x128 blocks)
is run as DeepSeek runs it: weights dequantized with their block scales, the input of every FP8
linear quantized per token per 128 channels (see train_tiny_model.load_fp8_simulated).

  python3 tools/perplexity_reference.py --model models/trident-tiny --text tests/data/heldout/austen-test.txt
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny_model import load_bf16, load_fp8_simulated  # noqa: E402


def token_stream(model_dir, text):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).encode(
        text, add_special_tokens=False).ids


def bos_id(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)["bos_token_id"]


@torch.no_grad()
def score(model, stream, bos, window, max_windows, device):
    starts = list(range(0, len(stream), window))
    if max_windows:
        starts = starts[:max_windows]
    nll, tokens = 0.0, 0
    for s in starts:
        w = stream[s: s + window]
        inputs = torch.tensor([[bos] + w[:-1]], device=device)
        logits = model(input_ids=inputs).logits[0].double()
        nll += torch.nn.functional.cross_entropy(
            logits, torch.tensor(w, device=device), reduction="sum").item()
        tokens += len(w)
    return {"windows": len(starts), "tokens": tokens, "nll_sum": nll,
            "perplexity": math.exp(nll / tokens)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="model directory (repeatable)")
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=0, help="0: the whole text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    results = []
    for model_dir in args.model:
        with open(os.path.join(model_dir, "config.json")) as f:
            fp8 = "quantization_config" in json.load(f)
        model = (load_fp8_simulated if fp8 else load_bf16)(model_dir, args.device)
        r = score(model, token_stream(model_dir, text), bos_id(model_dir), args.window,
                  args.max_windows, args.device)
        r.update(model=model_dir, text=args.text, window=args.window,
                 weights="fp8 (simulated)" if fp8 else "bf16")
        print(f"{model_dir}: perplexity {r['perplexity']:.4f} over {r['tokens']} tokens "
              f"({r['windows']} windows)", flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
