#!/usr/bin/env python3
"""Autocast golden values for portagrad's mixed-precision GPT tests (tests/gpt.rs).

Runs PyTorch autocast on the CPU over the tiny GPT-2 golden model and batch that
scripts/make_gpt2_golden.py made (tests/golden/tiny_gpt2: model.safetensors, and the ids in
golden.safetensors), once with bfloat16 and once with float16, and writes
tests/golden/tiny_gpt2/autocast.safetensors:
  {bf16,f16}.loss          ()          the loss (float32, as autocast computes cross-entropy)
  {bf16,f16}.grad.<name>   (shape)     the float32 gradient of every parameter (HF names; wte gets
                                       both uses, the lm_head being tied to it)

What autocast does here (torch's CPU autocast op lists): every nn.Linear / Conv1D matmul and the
attention matmuls take 16-bit operands and give a 16-bit output; layer_norm, softmax and
cross-entropy run in float32; what is not listed (GELU, adds) runs in its inputs' type. The weights
stay float32 (master copy) and their gradients come back through the casts in float32.
float16 autocast on the CPU exists in this torch; if an older torch lacks it the script stops
rather than emulate it (emulating would be casting the matmul operands to float16 and accumulating
in float32, which is what portagrad itself does, so it would not be an independent reference).

Run: python scripts/make_autocast_golden.py (needs torch, transformers, safetensors).
"""
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

DIR = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "tiny_gpt2")

ids = load_file(os.path.join(DIR, "golden.safetensors"))["ids"]
out = {}
for name, dtype in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
    # Eager attention: plain matmuls and softmax, which autocast handles op by op.
    model = GPT2LMHeadModel.from_pretrained(DIR, attn_implementation="eager").float().eval()
    with torch.autocast("cpu", dtype=dtype):
        logits = model(ids).logits
        assert logits.dtype == dtype, f"autocast {name} did not reach the lm_head: {logits.dtype}"
        # HF's labels=ids convention: logits[:, :-1] against ids[:, 1:].
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert loss.dtype == torch.float32
    loss.backward()
    out[f"{name}.loss"] = loss.detach().reshape(()).contiguous()
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.dtype == torch.float32
            out[f"{name}.grad.{pname}"] = p.grad.detach().contiguous()
    print(name, "loss", loss.item())

save_file(out, os.path.join(DIR, "autocast.safetensors"),
          metadata={"made_by": "scripts/make_autocast_golden.py", "torch": torch.__version__})
os.chmod(os.path.join(DIR, "autocast.safetensors"), 0o644)
# make_gpt2_golden.py rewrites the README; keep one line for this file in it.
readme = os.path.join(DIR, "README.md")
line = "autocast.safetensors: made by scripts/make_autocast_golden.py with torch %s; do not edit by hand.\n" % torch.__version__
text = open(readme).read() if os.path.exists(readme) else ""
if "autocast.safetensors" not in text:
    with open(readme, "a") as f:
        f.write(line)
print("wrote", len(out), "tensors")
