#!/usr/bin/env python3
"""Golden numbers for portagrad's Adam and AdamW, produced by PyTorch.

Run from the repository root:  python3 scripts/make_optim_golden.py
Writes tests/golden/optim_adam.safetensors (committed, so CI needs no Python); tests/optim.rs
reads it. Needs torch (CPU is enough); the safetensors file is written by hand below, so the
`safetensors` Python package is not needed.

Every case optimises the same three parameters (w1 (4, 6), b1 (6,), w2 (6, 3)) on the
quadratic loss  L = sum over tensors of sum(0.5 * c * p^2 + d * p)  with fixed positive c and
signed d, for STEPS steps, using torch's default single-tensor implementations. For each case
the file holds the loss before every step and every parameter after every step.

Cases (the Rust test builds the same configurations):
  adam         Adam  lr 1e-2, betas (0.9, 0.999), eps 1e-8, no weight decay
  adam_l2      Adam  lr 1e-2, weight_decay 0.1 (L2 added to the gradient)
  adamw        AdamW lr 1e-2, betas (0.8, 0.99), eps 1e-6, weight_decay 0.1 on w1, w2; 0 on b1
  adamw_clip   AdamW lr 3e-2, weight_decay 0.05, clip_grad_norm_(max_norm=0.5) before every
               step, LambdaLR with portagrad's warm-up/cosine schedule (warm-up 2, total 5,
               min_lr 1e-3)
"""
import json
import math
import struct

import torch

STEPS = 6
SHAPES = {"w1": (4, 6), "b1": (6,), "w2": (6, 3)}
OUT = "tests/golden/optim_adam.safetensors"


def warmup_cosine(base, step, warmup, total, min_lr):
    # Same as LrSchedule::WarmupCosine::lr_at in src/optim.rs.
    if step < warmup:
        return base * (step + 1) / warmup
    if step >= total:
        return min_lr
    span = max(total - warmup, 1)
    progress = (step - warmup) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base - min_lr)


def inputs():
    g = torch.Generator().manual_seed(1234)
    init = {n: torch.empty(s).uniform_(-1.0, 1.0, generator=g) for n, s in SHAPES.items()}
    c = {n: torch.empty(s).uniform_(0.5, 2.0, generator=g) for n, s in SHAPES.items()}
    d = {n: torch.empty(s).uniform_(-1.0, 1.0, generator=g) for n, s in SHAPES.items()}
    return init, c, d


def run(case, init, c, d):
    params = {n: init[n].clone().requires_grad_(True) for n in SHAPES}
    sched = None
    clip = None
    if case == "adam":
        opt = torch.optim.Adam(params.values(), lr=1e-2)
    elif case == "adam_l2":
        opt = torch.optim.Adam(params.values(), lr=1e-2, weight_decay=0.1)
    elif case == "adamw":
        opt = torch.optim.AdamW(
            [
                {"params": [params["w1"], params["w2"]], "weight_decay": 0.1},
                {"params": [params["b1"]], "weight_decay": 0.0},
            ],
            lr=1e-2,
            betas=(0.8, 0.99),
            eps=1e-6,
        )
    elif case == "adamw_clip":
        base = 3e-2
        opt = torch.optim.AdamW(params.values(), lr=base, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(base, s, 2, 5, 1e-3) / base
        )
        clip = 0.5
    else:
        raise ValueError(case)
    losses, after = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = sum((0.5 * c[n] * params[n] ** 2 + d[n] * params[n]).sum() for n in SHAPES)
        loss.backward()
        losses.append(loss.item())
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=clip)
        opt.step()
        if sched is not None:
            sched.step()
        after.append({n: params[n].detach().clone() for n in SHAPES})
    return torch.tensor(losses, dtype=torch.float32), after


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous().to(torch.float32)
        data = struct.pack(f"<{t.numel()}f", *t.flatten().tolist())
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    torch.set_num_threads(1)
    init, c, d = inputs()
    tensors = {}
    for n in SHAPES:
        tensors[f"init.{n}"] = init[n]
        tensors[f"c.{n}"] = c[n]
        tensors[f"d.{n}"] = d[n]
    cases = ["adam", "adam_l2", "adamw", "adamw_clip"]
    for case in cases:
        losses, after = run(case, init, c, d)
        tensors[f"{case}.loss"] = losses
        for s, ps in enumerate(after):
            for n, t in ps.items():
                tensors[f"{case}.after.{s + 1}.{n}"] = t
    meta = {
        "producer": "scripts/make_optim_golden.py",
        "torch": torch.__version__,
        "steps": str(STEPS),
        "cases": ",".join(cases),
    }
    write_safetensors(OUT, tensors, meta)
    print(f"wrote {OUT}: {len(tensors)} tensors, torch {torch.__version__}")


if __name__ == "__main__":
    main()
