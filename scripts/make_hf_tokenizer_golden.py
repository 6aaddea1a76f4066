#!/usr/bin/env python3
"""Fixtures and golden outputs for portagrad's Hugging Face tokenizer.json + chat-template support.

Real model tokenizers cannot be downloaded here, so this script trains small ones with the Python
`tokenizers` library (a few hundred merges on data/shakespeare.txt plus a multilingual snippet),
each with exactly the structure of a real model's tokenizer.json:

  llama3     byte-level BPE; pre_tokenizer Sequence[Split(Llama 3's regex, isolated),
             ByteLevel(use_regex=False)]; ignore_merges; the post-processor adds <|begin_of_text|>;
             Llama 3.2 Instruct's chat template (raise_exception, strftime_now / date_string).
  llama3_0   the same tokenizer with Llama 3 (3.0) Instruct's short template (bos_token, | trim).
  qwen2      byte-level BPE; NFC normalizer; Split(Qwen2's regex: single digits) + ByteLevel;
             no BOS; <tool_call> a non-special added token; Qwen2.5 Instruct's ChatML template
             (tools, tool calls through tojson).
  smollm2    byte-level BPE with GPT-2's ByteLevel(use_regex=True) pre-tokenizer; SmolLM2's
             ChatML template (default system prompt).
  tinyllama  SentencePiece-style BPE with byte_fallback and fuse_unk: normalizer
             Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer, <0x00>..<0xFF> byte
             tokens, decoder Sequence[Replace, ByteFallback, Fuse, Strip]; <s> added by the
             post-processor; TinyLlama's Zephyr-style template.
  llama2     the same vocabulary with the newer conversion: no normalizer, Metaspace
             pre-tokenizer (prepend_scheme "first", split false), Metaspace decoder; Llama 2
             chat's [INST] template (raise_exception, .strip()).

For each it writes tests/golden/hf_tokenizers/<name>/{tokenizer.json, tokenizer_config.json,
golden.json}. golden.json holds, from `tokenizers` (the Python package):
  encode: [{"text", "ids" (add_special_tokens=True), "ids_no_special" (False),
            "ids_split_special" (False, with special tokens encoded as plain text)}]
  decode: [{"ids", "text" (skip_special_tokens=False), "text_skip" (True)}]
and, from transformers' AutoTokenizer on the written directory:
  chat: [{"messages_json", "kwargs_json" (JSON texts, so that key order survives), "text"
          (apply_chat_template(tokenize=False, add_generation_prompt=True, **kwargs)), "ids"
          (apply_chat_template(tokenize=True, ...): the text encoded without added specials)}]
  chat_errors: [{"messages_json", "error"}] (templates that raise_exception)
The script checks that transformers' encode/decode agree with `tokenizers` on every text.
The chat templates are the models' published ones (the `chat_template` of the tokenizer_config.json
of meta-llama/Meta-Llama-3-8B-Instruct, meta-llama/Llama-3.2-1B-Instruct, Qwen/Qwen2.5-0.5B-Instruct,
HuggingFaceTB/SmolLM2-135M-Instruct, TinyLlama/TinyLlama-1.1B-Chat-v1.0 and
meta-llama/Llama-2-7b-chat-hf on the Hugging Face Hub), written in below.

GPT-2's real tokenizer (data/gpt2-tokenizer, vocab.json + merges.txt) is covered by
tests/golden/gpt2_tokenizer.json from scripts/make_tokenizer_golden.py.

Run: python3 scripts/make_hf_tokenizer_golden.py (needs tokenizers, transformers, jinja2).
"""
import json
import os
import random

import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "golden", "hf_tokenizers")

with open(os.path.join(ROOT, "data", "shakespeare.txt"), encoding="utf-8") as f:
    SHAKESPEARE = f.read()[:300_000]
MULTILINGUAL = """
你好，世界！我的笔记本电脑坏了，请问保修期是多久？保修期为一年。谢谢你的帮助。中文测试，汉字。
日本語のテキスト、カタカナ。한국어 텍스트. Привет, мир! Γειά σου Κόσμε. café naïve façade.
Emoji: 😀 👍 🎉 ❤️ 🦀. Numbers: 12345 3.14159 2024-01-01 1,000,000.
    def f(x):\n\treturn x ** 2\n
"""
TRAIN_TEXT = [SHAKESPEARE[i:i + 2000] for i in range(0, len(SHAKESPEARE), 2000)] + [MULTILINGUAL] * 20

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# --- The published chat templates ----------------------------------------------------------------

LLAMA3_0_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA3_2_TEMPLATE = '{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n        {%- set date_string = strftime_now("%d %b %Y") %}\n    {%- else %}\n        {%- set date_string = "26 Jul 2024" %}\n    {%- endif %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0][\'role\'] == \'system\' %}\n    {%- set system_message = messages[0][\'content\']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = "" %}\n{%- endif %}\n\n{#- System message #}\n{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n{%- if tools is not none %}\n    {{- "Environment: ipython\\n" }}\n{%- endif %}\n{{- "Cutting Knowledge Date: December 2023\\n" }}\n{{- "Today Date: " + date_string + "\\n\\n" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}\n    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n    {{- "Do not use variables.\\n\\n" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- "\\n\\n" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- "<|eot_id|>" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0][\'content\']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}\n{%- endif %}\n    {{- \'<|start_header_id|>user<|end_header_id|>\\n\\n\' -}}\n    {{- "Given the following functions, please respond with a JSON for a function call " }}\n    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n    {{- "Do not use variables.\\n\\n" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- "\\n\\n" }}\n    {%- endfor %}\n    {{- first_user_message + "<|eot_id|>"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == \'ipython\' or message.role == \'tool\' or \'tool_calls\' in message) %}\n        {{- \'<|start_header_id|>\' + message[\'role\'] + \'<|end_header_id|>\\n\\n\'+ message[\'content\'] | trim + \'<|eot_id|>\' }}\n    {%- elif \'tool_calls\' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception("This model only supports single tool-calls at once!") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {{- \'<|start_header_id|>assistant<|end_header_id|>\\n\\n\' -}}\n        {{- \'{"name": "\' + tool_call.name + \'", \' }}\n        {{- \'"parameters": \' }}\n        {{- tool_call.arguments | tojson }}\n        {{- "}" }}\n        {{- "<|eot_id|>" }}\n    {%- elif message.role == "tool" or message.role == "ipython" %}\n        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- "<|eot_id|>" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- \'<|start_header_id|>assistant<|end_header_id|>\\n\\n\' }}\n{%- endif %}\n'

QWEN2_5_TEMPLATE = '{%- if tools %}\n    {{- \'<|im_start|>system\\n\' }}\n    {%- if messages[0][\'role\'] == \'system\' %}\n        {{- messages[0][\'content\'] }}\n    {%- else %}\n        {{- \'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\' }}\n    {%- endif %}\n    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n{%- else %}\n    {%- if messages[0][\'role\'] == \'system\' %}\n        {{- \'<|im_start|>system\\n\' + messages[0][\'content\'] + \'<|im_end|>\\n\' }}\n    {%- else %}\n        {{- \'<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n\' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}\n        {{- \'<|im_start|>\' + message.role + \'\\n\' + message.content + \'<|im_end|>\' + \'\\n\' }}\n    {%- elif message.role == "assistant" %}\n        {{- \'<|im_start|>\' + message.role }}\n        {%- if message.content %}\n            {{- \'\\n\' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- \'\\n<tool_call>\\n{"name": "\' }}\n            {{- tool_call.name }}\n            {{- \'", "arguments": \' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \'}\\n</tool_call>\' }}\n        {%- endfor %}\n        {{- \'<|im_end|>\\n\' }}\n    {%- elif message.role == "tool" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n            {{- \'<|im_start|>user\' }}\n        {%- endif %}\n        {{- \'\\n<tool_response>\\n\' }}\n        {{- message.content }}\n        {{- \'\\n</tool_response>\' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n            {{- \'<|im_end|>\\n\' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- \'<|im_start|>assistant\\n\' }}\n{%- endif %}\n'

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINYLLAMA_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# --- Training -------------------------------------------------------------------------------------


def added(content, special=True, id_=None):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def byte_level(pre, normalizer, specials, merges, extra_added=(), post=None, ignore_merges=False):
    """Train a byte-level BPE with the given pre-tokenizer; specials get the ids after the vocab."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = ignore_merges
    n = len(d["model"]["vocab"])
    d["added_tokens"] = [dict(added(s), id=n + i) for i, s in enumerate(specials)]
    d["added_tokens"] += [dict(added(s, special=False), id=n + len(specials) + i) for i, s in enumerate(extra_added)]
    d["post_processor"] = post
    return d


def llama3():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                "<|eot_id|>", "<|python_tag|>"]
    d = byte_level(pre, None, specials, 400, ignore_merges=True)
    bos = d["added_tokens"][0]["id"]
    d["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}},
        ],
    }
    return d


def qwen2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    d = byte_level(pre, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 400,
                   extra_added=["<tool_call>", "</tool_call>"])
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return d


def smollm2():
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    d = byte_level(pre, None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 300)
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    return d


def sentencepiece_bpe():
    """Llama 2 / TinyLlama layout: <unk> <s> </s>, the 256 <0xNN> byte tokens, then the pieces."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=700, show_progress=False, special_tokens=[], limit_alphabet=200)
    tok.train_from_iterator(TRAIN_TEXT, trainer)
    m = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": m["merges"]}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added("<unk>", id_=0), added("<s>", id_=1), added("</s>", id_=2)],
        "model": model,
    }


def tinyllama():
    d = sentencepiece_bpe()
    d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    d["pre_tokenizer"] = None
    d["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    return d


def llama2():
    d = tinyllama()
    d["normalizer"] = None
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return d


def order(d):
    keys = ["version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor",
            "decoder", "model"]
    return {k: d.get(k) for k in keys}


# --- Texts ----------------------------------------------------------------------------------------

HAND = [
    "", "Hello world", "Hello, world!", " Hello", "  Hello", "hello\n", "\n", "\n\n\n", " ", "   ", "a  b",
    "a \n b", "a\n\nb", "trailing spaces   ", "trailing newline\n", "trailing mix \n \n", "\t\ttabs\tand\r\nCRLF\r\n",
    "x \t y", " \n", "    def f(x):\n        return x ** 2\n",
    "I'm here, you're there, we've been, they'll go, he'd say, it's, don't, CAN'T, I'LL",
    "3.14159 1,000,000 12345678901234567890 2024-01-01 0x1F 1e-5 -42 +7", "  123", "abc123def", "1234567",
    "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧‍👦 family", "I ❤️ Rust 🦀!", " 🤖robot",
    "中文测试", "你好，世界！", "我的笔记本电脑保修期是多久？", "日本語のテキスト、カタカナ。", "한국어 텍스트", "中文 English 混合 mixed",
    "café", "cafe\u0301", "e\u0301\u0301", "Привет, мир!", "Γειά σου Κόσμε", "नमस्ते दुनिया", "مَرْحَبًا",
    "\u00a0nbsp\u00a0", "ideographic\u3000space", "zero\u200bwidth", "ctrl\u0000\u0001\u007f",
    "@#$%^&*()_+-=[]{}|;:,.<>/?`~\\\"", "https://example.com/path?q=1&r=2#frag",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "!!!!!!!!!!????????", " " * 30 + "x", "\n" * 12 + "end",
]
SPECIAL_TEXTS = {
    "llama3": ["<|begin_of_text|>Hello<|eot_id|>", "a <|eot_id|> b", "<|start_header_id|>user<|end_header_id|>\n\nHi",
               "<|eot_id|><|eot_id|>", "<|eot_id", "<|eot_id|", "x<|end_of_text|>\n", "<|python_tag|>print(1)"],
    "qwen2": ["<|im_start|>user\nHi<|im_end|>\n", "a <|im_end|> b", "<|endoftext|><|endoftext|>", "<|im_end",
              "<tool_call>\n{}\n</tool_call>", "x<tool_call>y", "<|im_start|>assistant\n<tool_call>"],
    "smollm2": ["<|im_start|>user\nHi<|im_end|>\n", "a <|im_end|> b", "<|endoftext|>x", "<|im_end"],
    "tinyllama": ["<s>Hello</s>", "a </s> b", "<s><s>", "</s>", "<unk>", "<s", "x</s>\n<|user|>", "<|assistant|>"],
}
SPECIAL_TEXTS["llama3_0"] = SPECIAL_TEXTS["llama3"]
SPECIAL_TEXTS["llama2"] = SPECIAL_TEXTS["tinyllama"]
POOL = ["a", "Z", "the", " the", "The", "ing", "0", "7", "42", "3.5", "1234", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n",
        "'", "'s", "'T", "'ll", "!", "?", ".", ",", "...", "é", "e\u0301", "中", "文", "保修", "😀", "👍🏽", "ा", "न",
        "\u00a0", "\u3000", "\u200b", "_", "@", "€", "▁"]


def texts(name):
    rng = random.Random(sum(map(ord, name)))
    fuzz_pool = POOL + SPECIAL_TEXTS[name][:3]
    fuzz = ["".join(rng.choice(fuzz_pool) for _ in range(rng.randint(1, 20))) for _ in range(50)]
    out, seen = [], set()
    for t in HAND + SPECIAL_TEXTS[name] + fuzz:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


# --- Chats ----------------------------------------------------------------------------------------

WARRANTY = [
    {"role": "system", "content": "You are a helpful customer-service assistant. 请用中文回答。"},
    {"role": "user", "content": "你好！我的笔记本电脑保修期是多久？"},
    {"role": "assistant", "content": "您好！保修期为一年 (12 months) 😀"},
    {"role": "user", "content": "  Does it cover the battery?\n\n"},
]
CHATS = [
    ([{"role": "user", "content": "Hello!"}], {}),
    (WARRANTY, {}),
    ([{"role": "user", "content": "  padded\twith whitespace \n"}, {"role": "assistant", "content": " ok "},
      {"role": "user", "content": "Special <|eot_id|> and <|im_end|> and </s> in content"}], {}),
]
EXTRA_CHATS = {
    "llama3": [(WARRANTY, {"date_string": "07 Dec 2026"}),
               ([{"role": "user", "content": "What is the weather in Paris?"}],
                {"date_string": "26 Jul 2024",
                 "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather: 天气",
                                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                                            "required": ["city"]}}}]}),
               ([{"role": "user", "content": "Weather?"},
                 {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}}]},
                 {"role": "tool", "content": "21 °C, 晴"}], {"date_string": "26 Jul 2024"})],
    "qwen2": [([{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}}]},
                {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "晴"}],
               {"tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & \"later\"",
                                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]})],
}
ERROR_CHATS = {
    "llama2": [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]],
    "llama3": [[{"role": "user", "content": "a"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}},
                                                     {"type": "function", "function": {"name": "g", "arguments": {}}}]}]],
}

FIXTURES = {
    "llama3": (llama3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_2_TEMPLATE},
               {"bos_token_id": None, "eos_token_id": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]}),
    "llama3_0": (llama3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "chat_template": LLAMA3_0_TEMPLATE},
                 None),
    "qwen2": (qwen2, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": QWEN2_5_TEMPLATE},
              None),
    "smollm2": (smollm2, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                          "unk_token": "<|endoftext|>", "chat_template": SMOLLM2_TEMPLATE}, None),
    "tinyllama": (tinyllama, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
                              "chat_template": TINYLLAMA_TEMPLATE, "legacy": True}, None),
    "llama2": (llama2, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": LLAMA2_TEMPLATE,
                        "legacy": False}, None),
}


def main():
    made_by = "scripts/make_hf_tokenizer_golden.py with tokenizers %s, transformers %s" % (
        tokenizers.__version__, transformers.__version__)
    trained = {}
    for name, (make, config, gen) in FIXTURES.items():
        fn = make.__name__
        if fn not in trained:
            trained[fn] = order(make())
        d = trained[fn]
        tj = json.dumps(d, ensure_ascii=False, separators=(",", ":"))
        tok = Tokenizer.from_str(tj)
        os.makedirs(os.path.join(OUT, name), exist_ok=True)
        with open(os.path.join(OUT, name, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(tj)
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
               "model_max_length": 131072, **config}
        with open(os.path.join(OUT, name, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, ensure_ascii=False, indent=2)
        if gen is not None:
            gen = {k: ([tok.token_to_id(t) for t in v] if isinstance(v, list) else v) for k, v in gen.items()}
            with open(os.path.join(OUT, name, "generation_config.json"), "w", encoding="utf-8") as f:
                json.dump(gen, f, indent=2)
        hf = AutoTokenizer.from_pretrained(os.path.join(OUT, name))

        encode = []
        for t in texts(name):
            ids = tok.encode(t, add_special_tokens=True).ids
            ids_no = tok.encode(t, add_special_tokens=False).ids
            tok.encode_special_tokens = True
            ids_split = tok.encode(t, add_special_tokens=False).ids
            tok.encode_special_tokens = False
            assert hf.encode(t) == ids, (name, t, hf.encode(t), ids)
            assert hf.encode(t, add_special_tokens=False) == ids_no, (name, t)
            encode.append({"text": t, "ids": ids, "ids_no_special": ids_no, "ids_split_special": ids_split})
        decode = []
        rng = random.Random(5)
        id_lists = [c["ids"] for c in encode[::7]] + [c["ids"][:k] for c in encode[20:40] for k in (1, 2, 3)]
        id_lists += [[rng.randrange(tok.get_vocab_size(True)) for _ in range(rng.randint(1, 12))] for _ in range(30)]
        for ids in id_lists:
            text = tok.decode(ids, skip_special_tokens=False)
            skip = tok.decode(ids, skip_special_tokens=True)
            assert hf.decode(ids) == text and hf.decode(ids, skip_special_tokens=True) == skip, (name, ids)
            decode.append({"ids": ids, "text": text, "text_skip": skip})
        chat = []
        for messages, kwargs in CHATS + EXTRA_CHATS.get(name, []):
            if name == "llama3":  # else the template writes today's date (strftime_now; tested separately)
                kwargs = {"date_string": "26 Jul 2024", **kwargs}
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
            ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False, **kwargs)
            assert ids == tok.encode(text, add_special_tokens=False).ids, (name, text)
            chat.append({"messages_json": json.dumps(messages, ensure_ascii=False),
                         "kwargs_json": json.dumps(kwargs, ensure_ascii=False), "text": text, "ids": ids})
        errors = []
        for messages in ERROR_CHATS.get(name, []):
            try:
                hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                raise SystemExit(f"{name}: expected a template error")
            except Exception as e:
                errors.append({"messages_json": json.dumps(messages, ensure_ascii=False), "error": str(e)})
        golden = {"made_by": made_by, "special_tokens_map": hf.special_tokens_map, "encode": encode,
                  "decode": decode, "chat": chat, "chat_errors": errors}
        with open(os.path.join(OUT, name, "golden.json"), "w", encoding="utf-8") as f:
            line = lambda c: json.dumps(c, ensure_ascii=True)
            f.write('{"made_by": %s,\n"special_tokens_map": %s,\n' % (json.dumps(made_by), line(hf.special_tokens_map)))
            for k, v in [("encode", encode), ("decode", decode), ("chat", chat)]:
                f.write('"%s": [\n%s\n],\n' % (k, ",\n".join(map(line, v))))
            f.write('"chat_errors": [\n%s\n]}\n' % ",\n".join(map(line, errors)))
        print(f"{name}: vocab {tok.get_vocab_size(True)}, {len(encode)} encode, {len(decode)} decode, "
              f"{len(chat)} chats, {len(errors)} errors")


if __name__ == "__main__":
    main()
