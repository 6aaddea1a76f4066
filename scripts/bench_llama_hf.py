#!/usr/bin/env python3
"""transformers beside `cargo run --release --example bench -- llama`: a SmolLM2-135M-shaped Llama
(random weights, float32, batch 1), KV-cached prefill of 128 tokens and 32 greedy decode steps,
tokens/s and peak resident memory of the process. Run on the same machine, right after the bench:

    python3 scripts/bench_llama_hf.py [--device cpu|cuda]
"""
import argparse
import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
dev = torch.device(args.device)

cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5,
                  rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
torch.manual_seed(1)
model = LlamaForCausalLM(cfg).float().eval().to(dev)
P, N = 128, 32
prompt = torch.tensor([[(i * 7919) % 49152 for i in range(P)]], device=dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run():
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(N):
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t2 = time.perf_counter()
    return P / (t1 - t0), N / (t2 - t1)


run()  # warm-up
pre, dec = run()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if dev.type == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {dev}, "
      f"{torch.get_num_threads()} threads, {model.num_parameters()} parameters")
print(f"| {P} | {N} | {pre:.1f} | {dec:.2f} | {peak:.0f} ({'device' if dev.type == 'cuda' else 'process RSS'}) |")
