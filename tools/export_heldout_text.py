#!/usr/bin/env python3
"""Writes the test split of the training corpus (the last 4% of each novel's paragraphs, which
the tiny model never saw) as one UTF-8 text file, paragraphs separated by a blank line, for
`trident eval` and tools/perplexity_reference.py.

  python3 tools/export_heldout_text.py --data .train-data --out tests/data/heldout/austen-test.txt
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny_model import read_novels, split_novels  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".train-data", help="folder of novels from fetch_training_text.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--held-out-fraction", type=float, default=0.04,
                    help="must equal the value the model was trained with")
    args = ap.parse_args()
    test = split_novels(read_novels(args.data), args.held_out_fraction)["test"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("".join(p + "\n\n" for paras in test for p in paras))


if __name__ == "__main__":
    main()
