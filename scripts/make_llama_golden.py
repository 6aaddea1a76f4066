#!/usr/bin/env python3
"""Golden files for portagrad's Llama-family tests, made with PyTorch + Hugging Face transformers.

Writes two tiny random models, each under tests/golden/<name>/:
  tiny_llama  LlamaForCausalLM: grouped-query attention (4 heads, 2 K/V heads), untied lm_head,
              rope_theta 500000 with llama3 rope_scaling, no biases.
  tiny_qwen2  Qwen2ForCausalLM: multi-query attention (4 heads, 1 K/V head), q/k/v biases,
              lm_head tied to the embedding.
Each directory holds:
  config.json, model.safetensors   the model in Hugging Face format (float32 weights)
  golden.safetensors               ids (B, T) int64; logits (B, T, V); loss (); grad.<name> for every
                                   parameter (HF names; a tied embedding gets both uses);
                                   adamw_losses (8,): the loss before each of 8 AdamW steps on the
                                   same batch; prompt (P,) int64 and greedy (N,) int64: the new tokens
                                   of generate(do_sample=False) from that prompt.
Reference values are computed in float64 from the float32 weights (eager attention), so they are the
exact answer the f32 GPU code approximates; the loss is HF's labels=input_ids convention (logits[:, :-1]
against ids[:, 1:]). Run: python3 scripts/make_llama_golden.py (needs torch, transformers).
"""
import os

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden")


def make(name, cls, cfg, seed):
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    # Non-trivial RMSNorm gains and biases (HF initialises them to one and zero), so tests see them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias") or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out, safe_serialization=True)

    def fresh():
        m = cls(cfg)
        m.load_state_dict(model.state_dict())
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
        return m.double()

    B, T = 2, 13
    V = cfg.vocab_size
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed + 1))

    def lm_loss(m):
        logits = m(ids).logits
        return logits, torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))

    ref = fresh().eval()
    logits, loss = lm_loss(ref)
    loss.backward()
    tensors = {
        "ids": ids.to(torch.int64).contiguous(),
        "logits": logits.detach().contiguous(),
        "loss": loss.detach().reshape(()).contiguous(),
    }
    for n, p in ref.named_parameters():
        assert p.grad is not None, n
        tensors["grad." + n] = p.grad.detach().contiguous()

    # Greedy generation with the KV cache, and the smallest top-1 / top-2 logit gap on the way
    # (a gap far above f32 error means the f32 code must pick the same tokens).
    prompt = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        # An explicit mask: without one, generate masks prompt tokens equal to pad_token_id.
        gen = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                           do_sample=False, output_scores=True,
                           return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    gaps = [s[0].topk(2).values for s in gen.scores]
    min_gap = min((g[0] - g[1]).item() for g in gaps)
    tensors["prompt"] = prompt[0].to(torch.int64).contiguous()
    tensors["greedy"] = gen.sequences[0, prompt.shape[1]:].to(torch.int64).contiguous()

    # 8 AdamW steps on the same batch (decay on every parameter, as torch's default groups do).
    opt_model = fresh().train()
    opt = torch.optim.AdamW(opt_model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.1)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        _, step_loss = lm_loss(opt_model)
        losses.append(step_loss.item())
        step_loss.backward()
        opt.step()
    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)
    save_file(tensors, os.path.join(out, "golden.safetensors"))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("Made by scripts/make_llama_golden.py with torch %s, transformers %s; "
                "do not edit by hand.\n" % (torch.__version__, __import__("transformers").__version__))
    print(name, "loss", loss.item(), "greedy", tensors["greedy"].tolist(), "min gap", min_gap,
          "adamw", losses)


make("tiny_llama", LlamaForCausalLM, LlamaConfig(
    vocab_size=131, hidden_size=64, intermediate_size=88, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu", tie_word_embeddings=False,
    attention_bias=False, mlp_bias=False, attention_dropout=0.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    initializer_range=0.1, bos_token_id=1, eos_token_id=2, attn_implementation="eager",
), seed=2024)

make("tiny_qwen2", Qwen2ForCausalLM, Qwen2Config(
    vocab_size=97, hidden_size=64, intermediate_size=72, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
    use_sliding_window=False, attention_dropout=0.0,
    initializer_range=0.1, bos_token_id=1, eos_token_id=2, attn_implementation="eager",
), seed=4048)
