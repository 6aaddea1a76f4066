#!/usr/bin/env python3
"""Golden ids for portagrad's GPT-2 BPE tokenizer, made with Hugging Face's GPT-2 tokenizer.

Writes tests/golden/gpt2_tokenizer.json:
  {"made_by": ..., "encode": [{"text": s, "ids": [...]}, ...],
   "decode": [{"ids": [...], "text": s}, ...]}
from data/gpt2-tokenizer/{vocab.json, merges.txt}. The ids come from transformers' GPT2Tokenizer
(backed by the Rust `tokenizers` library; since transformers 5 it is the same class as
GPT2TokenizerFast). Every encoding is also checked against OpenAI's original GPT-2 encoder
(encoder.py: the `regex` module and the merge loop, reimplemented below) for texts without
`<|endoftext|>`; the script stops if they ever disagree, so the golden ids are what both give.
The texts: hand-picked edge cases (emoji, CJK, combining marks, scripts whose vowel signs are
marks, whitespace runs with trailing spaces and newlines, contractions, numbers, mixed scripts,
the special token) plus seeded random strings drawn from a pool of tricky pieces.

Run: python3 scripts/make_tokenizer_golden.py (needs transformers, tokenizers, regex).
"""
import json
import os
import random
import unicodedata

import regex
import tokenizers
import transformers
from transformers import GPT2Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOK_DIR = os.path.join(ROOT, "data", "gpt2-tokenizer")
OUT = os.path.join(ROOT, "tests", "golden", "gpt2_tokenizer.json")

hf = GPT2Tokenizer.from_pretrained(TOK_DIR)


# OpenAI's encoder.py (github.com/openai/gpt-2/blob/master/src/encoder.py), condensed.
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


with open(os.path.join(TOK_DIR, "vocab.json"), encoding="utf-8") as f:
    ENCODER = json.load(f)
with open(os.path.join(TOK_DIR, "merges.txt"), encoding="utf-8") as f:
    MERGES = [tuple(l.split()) for l in f.read().split("\n")[1:] if l]
RANKS = dict(zip(MERGES, range(len(MERGES))))
BYTE_ENC = bytes_to_unicode()
PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def openai_bpe(token):
    word = tuple(token)
    pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
    if not pairs:
        return [token]
    while True:
        bigram = min(pairs, key=lambda p: RANKS.get(p, float("inf")))
        if bigram not in RANKS:
            break
        first, second = bigram
        new_word = []
        i = 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new_word.extend(word[i:])
                break
            new_word.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        if len(word) == 1:
            break
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
    return list(word)


def openai_encode(text):
    ids = []
    for piece in regex.findall(PAT, text):
        piece = "".join(BYTE_ENC[b] for b in piece.encode("utf-8"))
        ids.extend(ENCODER[t] for t in openai_bpe(piece))
    return ids


HAND = [
    "", "Hello world", "Hello, world!", " Hello", "  Hello", "hello\n", "\n", "\n\n\n", " ", "   ",
    "a  b", "a   b", "a \n b", "a\n\nb", "trailing spaces   ", "trailing newline\n",
    "trailing mix \n \n", "\t\ttabs\tand\r\nCRLF\r\n", "x \t y", " \n",
    "I'm here, you're there, we've been, they'll go, he'd say, it's, don't, can't",
    "'s 't 're 've 'm 'll 'd", "'S 'T 'RE", "'sup 'tis 'rell", "O'Neill's", "''s", "?'s", " 's",
    "rock 'n' roll", "it’s curly",
    "3.14159 1,000,000 12345678901234567890 2024-01-01 0x1F 1e-5 -42 +7",
    "  123", "abc123def", "½ ¼ ² ³ Ⅻ ⅻ ① １２３ ٣٤٥ ४२",
    "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🇺🇸🇫🇷 flags", "I ❤️ Rust 🦀!", " 🤖robot",
    "中文测试", "日本語のテキスト、カタカナ。", "한국어 텍스트", "中文 English 混合 mixed",
    "café", "cafe\u0301", "e\u0301\u0301\u0301", " \u0301", "\u0301abc", "Zalgo: Z\u0351\u0352a\u0353l\u0354g\u0355o",
    "नमस्ते दुनिया", "مَرْحَبًا بِالْعَالَمِ", "สวัสดีครับ", "שָׁלוֹם", "Привет, мир!", "Γειά σου Κόσμε",
    "ⓐⓑⓒ circled", "Ǆungla ǅ ǆ", "ʰʲ modifier", "ﬁ ligature", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math", "∑∫√∞ ≠ ≤",
    "\u00a0nbsp\u00a0", "em\u2003space", "ideographic\u3000space", "zero\u200bwidth", "bom\ufeffhere",
    "nel\u0085line", "ls\u2028ps\u2029", "x\u001cy\u001dz\u001e\u001f", "vt\u000bff\u000c",
    "ctrl\u0000\u0001\u007f", "\u00ad soft hyphen", "@#$%^&*()_+-=[]{}|;:,.<>/?`~\\\"",
    "<|endoftext|>", "a <|endoftext|> b", "<|endoftext|><|endoftext|>", "x<|endoftext|>\n",
    "<|endoftext", "<|endoftext|", "endoftext", "<|endoftext|>The start",
    "https://example.com/path?q=1&r=2#frag", "user@example.com", "snake_case camelCase kebab-case",
    "    def f(x):\n        return x ** 2\n", "ALLCAPS WORDS AND lowercase",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!!!!!!!!!!!!!!????????????", "-" * 100, " " * 50 + "x", "\n" * 20 + "end",
    "Mixed: русский, 中文, العربية, and emoji 🎉 in one line.\n",
]

POOL = [
    "a", "b", "Z", "the", " the", "The", "ing", "xyz", "0", "7", "42", "3.5", " ", " ", " ", "  ", "\n",
    "\n\n", "\t", "\r\n", "'", "'s", "'t", "'re", "'ll", "'d", "'m", "'ve", "!", "?", ".", ",", "-", "...",
    "\"", "(", ")", "é", "e\u0301", "\u0301", "ñ", "ß", "中", "文", "日本", "한", "😀", "👍🏽", "🇺🇸",
    "👨‍👩‍👧", "ा", "न", "्", "َ", "م", "ั", "ส", "Ⅻ", "²", "½", "１", "\u00a0", "\u3000", "\u2003",
    "\u200b", "\u0085", "\u001f", "ⓐ", "∑", "<|endoftext|>", "<|", "|>", "_", "@", "#", "$", "€", "\ufeff",
]
rng = random.Random(20240611)
FUZZ = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 24))) for _ in range(400)]

encode_cases = []
seen = set()
for text in HAND + FUZZ:
    if text in seen:
        continue
    seen.add(text)
    ids = hf.encode(text)
    if "<|endoftext|>" not in text:
        ref = openai_encode(text)
        if ref != ids:
            raise SystemExit(f"transformers and OpenAI's encoder disagree on {text!r}: {ids} vs {ref}")
    assert hf.decode(ids, clean_up_tokenization_spaces=False) == text, repr(text)
    encode_cases.append({"text": text, "ids": ids})

# Decoding ids that split a UTF-8 character: the bytes that do not form a character become U+FFFD.
DECODE_IDS = [
    [15496, 995], [50256], [15496, 50256, 995], hf.encode("😀")[:1], hf.encode("😀")[1:],
    hf.encode("中文")[:1], hf.encode("नमस्ते")[:3], [188, 189, 190], [34754, 222], [],
]
decode_cases = [{"ids": ids, "text": hf.decode(ids, clean_up_tokenization_spaces=False)} for ids in DECODE_IDS]

made_by = "scripts/make_tokenizer_golden.py with transformers %s, tokenizers %s, Unicode %s (Python)" % (
    transformers.__version__, tokenizers.__version__, unicodedata.unidata_version)
with open(OUT, "w", encoding="utf-8") as f:
    # One case a line, ASCII-escaped, so diffs stay readable.
    line = lambda c: json.dumps(c, ensure_ascii=True)
    f.write('{"made_by": %s,\n"encode": [\n' % json.dumps(made_by))
    f.write(",\n".join(map(line, encode_cases)))
    f.write('\n],\n"decode": [\n')
    f.write(",\n".join(map(line, decode_cases)))
    f.write("\n]}\n")
print(f"{len(encode_cases)} encode cases, {len(decode_cases)} decode cases -> {OUT}")
