#!/usr/bin/env python3
"""Golden files for portagrad's GPT tests, made with PyTorch + Hugging Face transformers.

Writes tests/golden/tiny_gpt2/:
  config.json, model.safetensors   a tiny random GPT-2 in Hugging Face format (float32 weights)
  golden.safetensors               ids (B, T) int64; logits (B, T, V); loss (); grad.<name> for every
                                   parameter (HF names, wte gets both uses); adamw_losses (8,): the loss
                                   before each of 8 AdamW steps on the same batch.
Reference values are computed in float64 from the float32 weights, so they are the exact answer the
f32 GPU code approximates. Run: python3 scripts/make_gpt2_golden.py (needs torch, transformers).
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "tiny_gpt2")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1234)

cfg = GPT2Config(
    vocab_size=67, n_positions=16, n_embd=32, n_layer=2, n_head=2,
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
    activation_function="gelu_new", tie_word_embeddings=True,
    bos_token_id=66, eos_token_id=66,
)
model = GPT2LMHeadModel(cfg).float().eval()
# Non-trivial LayerNorm parameters and biases, so the test sees them.
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith(".bias") or ".ln_" in name:
            p.add_(0.1 * torch.randn_like(p))
model.save_pretrained(OUT, safe_serialization=True)

B, T = 2, 11
ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(7))

ref = GPT2LMHeadModel(cfg)
ref.load_state_dict(model.state_dict())
ref = ref.double().eval()

def lm_loss(m):
    # transformers' own loss upcasts to float32; compute it in float64 here (labels=ids convention:
    # logits[:, :-1] against ids[:, 1:]).
    logits = m(ids).logits
    return logits, torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))


logits, loss = lm_loss(ref)
loss.backward()

tensors = {
    "ids": ids.to(torch.int64).contiguous(),
    "logits": logits.detach().contiguous(),
    "loss": loss.detach().reshape(()).contiguous(),
}
for name, p in ref.named_parameters():
    if p.grad is not None:
        tensors["grad." + name] = p.grad.detach().contiguous()

# 8 AdamW steps on the same batch (decay on every parameter, as torch's default groups do).
opt_model = GPT2LMHeadModel(cfg)
opt_model.load_state_dict(model.state_dict())
opt_model = opt_model.double().train()
opt = torch.optim.AdamW(opt_model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
losses = []
for _ in range(8):
    opt.zero_grad()
    _, step_loss = lm_loss(opt_model)
    losses.append(step_loss.item())
    step_loss.backward()
    opt.step()
tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float64)
save_file(tensors, os.path.join(OUT, "golden.safetensors"))
with open(os.path.join(OUT, "README.md"), "w") as f:
    f.write("Made by scripts/make_gpt2_golden.py with torch %s; do not edit by hand.\n" % torch.__version__)
print("loss", loss.item(), "adamw", losses)
print(json.dumps({k: list(v.shape) for k, v in tensors.items() if not k.startswith("grad.")}))
