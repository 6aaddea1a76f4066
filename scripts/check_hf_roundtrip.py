#!/usr/bin/env python3
"""Check that what portagrad writes loads in Hugging Face transformers and computes the same thing.

Not run in CI (needs torch + transformers); run by hand after `cargo build --release --example gpt2`:

    python3 scripts/check_hf_roundtrip.py

1. Fine-tune the tiny golden GPT-2 (tests/golden/tiny_gpt2) for 3 AdamW steps with
   `gpt2 finetune --out DIR` (that is `save_pretrained`); the same steps in PyTorch (float64)
   give the losses and weights to compare.
2. Load DIR with `GPT2LMHeadModel.from_pretrained` (no missing or unexpected tensors allowed) and
   compare its logits and loss with `gpt2 score --logits-out` on the same directory.
3. Greedy generation: `gpt2 generate --greedy` (KV-cached) against transformers' `generate`.
4. A GPT-2-small-shaped random model (12 layers, 768 wide, vocabulary 50257) and the same body with
   a 32768-token vocabulary: portagrad loads and scores them, or says why not (on an adapter whose
   storage bindings are limited to 128 MiB, as lavapipe's, the 154 MB embedding does not fit).
Prints one line per check and exits non-zero when a check fails.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

logging.set_verbosity_error()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TINY = os.path.join(ROOT, "tests", "golden", "tiny_gpt2")
EXE = os.path.join(ROOT, "target", "release", "examples", "gpt2")
failed = []


def gpt2(*args, check=True):
    r = subprocess.run([EXE, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"gpt2 {' '.join(args)} failed:\n{r.stderr}")
    return r


def report(name, ok, detail):
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")
    if not ok:
        failed.append(name)


def hf_load(d):
    model, info = GPT2LMHeadModel.from_pretrained(d, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    return model.eval(), bad


def lm_loss(model, ids):
    logits = model(ids).logits
    v = logits.shape[-1]
    return logits, torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))


tmp = tempfile.mkdtemp(prefix="portagrad-hf-")
ids = load_file(os.path.join(TINY, "golden.safetensors"))["ids"]
ids_path = os.path.join(tmp, "ids.json")
with open(ids_path, "w") as f:
    json.dump(ids.tolist(), f)

# 1. Fine-tune and save.
ft = os.path.join(tmp, "finetuned")
out = gpt2("finetune", "--model", TINY, "--ids", ids_path, "--steps", "3", "--lr", "1e-3", "--weight-decay", "0.1", "--out", ft)
losses = json.loads(out.stdout)["losses"]
ref, _ = hf_load(TINY)
ref = ref.double().train()
opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
want = []
for _ in range(3):
    opt.zero_grad()
    _, loss = lm_loss(ref, ids)
    want.append(loss.item())
    loss.backward()
    opt.step()
dl = max(abs(a - b) for a, b in zip(losses, want))
report("finetune losses", dl < 1e-4, f"portagrad {losses} vs torch {want} (max diff {dl:.2e})")

# 2. Load the saved directory in transformers; logits and loss.
model, bad = hf_load(ft)
report("transformers loads the saved directory", not bad, bad or "no missing, unexpected or mismatched tensors")
saved = load_file(os.path.join(ft, "model.safetensors"))
dw = max((saved[n].double() - p.detach()).abs().max().item() for n, p in ref.named_parameters())
report("fine-tuned weights vs torch's", dw < 1e-4, f"max abs diff {dw:.2e}")
logits_path = os.path.join(tmp, "logits.safetensors")
out = gpt2("score", "--model", ft, "--ids", ids_path, "--logits-out", logits_path)
ours = load_file(logits_path)["logits"].double()
with torch.no_grad():
    hf_logits, hf_loss = lm_loss(model.double(), ids)
d = (ours - hf_logits).abs().max().item()
report("logits of the saved directory", d < 1e-4, f"max abs diff {d:.2e} over {tuple(ours.shape)}")
ls = json.loads(out.stdout)["loss"]
report("loss of the saved directory", abs(ls - hf_loss.item()) < 1e-5, f"portagrad {ls:.7f} vs transformers {hf_loss.item():.7f}")

# 3. Greedy generation, KV-cached, against transformers' generate.
prompt = ids[0, :4].tolist()
out = gpt2("generate", "--model", ft, "--prompt-ids", json.dumps([prompt]), "--greedy", "--no-stop", "--max-new-tokens", "12", "--json")
ours = json.loads(out.stdout)["tokens"][0]
with torch.no_grad():
    g = model.float().generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, pad_token_id=66)
theirs = g[0, len(prompt):].tolist()
report("greedy generation", ours == theirs, f"portagrad {ours} vs transformers {theirs}")

# 4. GPT-2-small shapes, random weights (no download).
torch.manual_seed(0)
for vocab in (50257, 32768):
    d = os.path.join(tmp, f"small_{vocab}")
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=vocab)
    GPT2LMHeadModel(cfg).eval().save_pretrained(d)
    small_ids = torch.randint(0, vocab, (1, 64), generator=torch.Generator().manual_seed(1))
    p = os.path.join(tmp, f"ids_{vocab}.json")
    with open(p, "w") as f:
        json.dump(small_ids.tolist(), f)
    lp = os.path.join(tmp, f"logits_{vocab}.safetensors")
    r = gpt2("score", "--model", d, "--ids", p, "--logits-out", lp, check=False)
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()[-1]
        print(f"[info] gpt2-small shape, vocabulary {vocab}: portagrad refuses it here: {err}")
        continue
    m, _ = hf_load(d)
    with torch.no_grad():
        _, l = lm_loss(m.double(), small_ids)
        hf_logits = m.double()(small_ids).logits
    ls = json.loads(r.stdout)["loss"]
    report(f"gpt2-small shape, vocabulary {vocab}: loss", abs(ls - l.item()) < 1e-4, f"portagrad {ls:.6f} vs transformers {l.item():.6f}")
    d = (load_file(lp)["logits"].double() - hf_logits).abs().max().item()
    report(f"gpt2-small shape, vocabulary {vocab}: logits", d < 1e-3, f"max abs diff {d:.2e} (logits std {hf_logits.std().item():.2f})")
    prompt = small_ids[0, :16].tolist()
    out = gpt2("generate", "--model", os.path.join(tmp, f"small_{vocab}"), "--prompt-ids", json.dumps([prompt]), "--greedy", "--no-stop", "--max-new-tokens", "16", "--json")
    ours = json.loads(out.stdout)["tokens"][0]
    with torch.no_grad():
        theirs = m.float().generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16, pad_token_id=0)[0, 16:].tolist()
    report(f"gpt2-small shape, vocabulary {vocab}: greedy generation", ours == theirs, f"portagrad {ours} vs transformers {theirs}")

print("all checks passed" if not failed else f"FAILED: {failed}")
sys.exit(1 if failed else 0)
