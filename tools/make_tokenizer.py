#!/usr/bin/env python3
"""Trains a small byte-level BPE tokenizer laid out like DeepSeek-V3's.

It has DeepSeek-V3's pre-tokenizer (three regex Splits, then ByteLevel without a regex), its
normalizer, post-processor and decoder, its special tokens (BOS, EOS and pad at ids 0-2; the
FIM, chat and tool tokens added after the learned vocabulary, flagged as DeepSeek-V3 flags them),
and a tokenizer_config.json with DeepSeek-V3's BOS/EOS and chat_template. Only the merges are
learned, from the given text. Training is deterministic: the same files give the same tokenizer.

    python3 tools/make_tokenizer.py --vocab-size 512 --out tests/data/tokenizer/tiny \
        tests/data/tokenizer/corpus.txt

or, from Python, `train_tokenizer(text_files, vocab_size, out_dir)`.
"""

import argparse
import json
import os
from pathlib import Path

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"

# DeepSeek-V3's pre-tokenizer: digits in groups of up to three, runs of CJK ideographs and kana,
# then words, punctuation and whitespace.
DEEPSEEK_V3_SPLIT_PATTERNS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
    "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*"
    "|\\s*[\r\n]+"
    "|\\s+(?!\\S)"
    "|\\s+",
]

# Trained first, so they take ids 0, 1, 2 as in DeepSeek-V3.
LEADING_SPECIAL_TOKENS = [BOS, EOS, PAD]

# (content, special), added after the learned vocabulary in DeepSeek-V3's order; all have
# normalized=true there. Only <|EOT|> is special, so decode(skip_special) keeps the others.
TRAILING_ADDED_TOKENS = [
    ("<｜fim▁hole｜>", False),
    ("<｜fim▁begin｜>", False),
    ("<｜fim▁end｜>", False),
    ("<｜User｜>", False),
    ("<｜Assistant｜>", False),
    ("<|EOT|>", True),
    ("<｜tool▁calls▁begin｜>", False),
    ("<｜tool▁calls▁end｜>", False),
    ("<｜tool▁call▁begin｜>", False),
    ("<｜tool▁call▁end｜>", False),
    ("<｜tool▁outputs▁begin｜>", False),
    ("<｜tool▁outputs▁end｜>", False),
    ("<｜tool▁output▁begin｜>", False),
    ("<｜tool▁output▁end｜>", False),
    ("<｜tool▁sep｜>", False),
]

# DeepSeek-V3's chat_template, as its tokenizer_config.json has it.
DEEPSEEK_V3_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', "
    "is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}{%- else %}"
    "{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + "
    "'```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + "
    "'\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- endif %}{%- endif %}{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)


def _config_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
            "rstrip": False, "single_word": False}


def tokenizer_config(model_max_length=16384):
    """A tokenizer_config.json with DeepSeek-V3's fields and chat_template."""
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": _config_token(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": _config_token(EOS),
        "legacy": True,
        "model_max_length": model_max_length,
        "pad_token": _config_token(EOS),
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": DEEPSEEK_V3_CHAT_TEMPLATE,
    }


def _untrained_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([])
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False)
              for p in DEEPSEEK_V3_SPLIT_PATTERNS]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splits + [byte_level])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                                    use_regex=True)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    return tokenizer


def train_tokenizer(text_files: list[str], vocab_size: int, out_dir: str, *,
                    model_max_length: int = 16384) -> int:
    """Trains on `text_files` and writes tokenizer.json and tokenizer_config.json to `out_dir`.

    `vocab_size` counts every id, the special and added tokens included. Returns the size reached,
    which is smaller when the text has too few distinct pairs to learn from.
    """
    from tokenizers import AddedToken, pre_tokenizers, trainers

    minimum = len(LEADING_SPECIAL_TOKENS) + 256 + len(TRAILING_ADDED_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: the 256 bytes and "
                         f"{minimum - 256} special tokens alone take {minimum}")
    missing = [f for f in text_files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"training text files not found: {', '.join(missing)}")

    tokenizer = _untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TRAILING_ADDED_TOKENS),
        min_frequency=0,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False)
                        for t in LEADING_SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(f) for f in text_files], trainer)
    for content, special in TRAILING_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=True)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"), pretty=True)
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(model_max_length), f, ensure_ascii=False, indent=2)
        f.write("\n")
    return tokenizer.get_vocab_size(with_added_tokens=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text_files", nargs="+", help="UTF-8 text to learn merges from")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="total ids, special and added tokens included")
    parser.add_argument("--out", required=True, help="directory for the two JSON files")
    args = parser.parse_args()
    # Thread count does not change the result; one thread keeps the run quiet on small machines.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    reached = train_tokenizer(args.text_files, args.vocab_size, args.out)
    note = "" if reached == args.vocab_size else f" (asked for {args.vocab_size}: the text is too small)"
    print(f"wrote {args.out}/tokenizer.json with {reached} ids{note}")


if __name__ == "__main__":
    main()
