"""PyTorch reference for the shakespeare `gpu` preset's training step, timed the way
`shakespeare` and `bench -- gpt` time ours: the same model (6 layers, 6 heads, 384 wide, block
256, vocab 65, dropout 0.2, GPT-2 blocks with a tied head), batch 64, AdamW (lr 1e-3, weight
decay 0.1 on matrices, fused where available) with gradient clipping at 1.0.

Modes, each on the same card in the same call: eager f32, eager f32 with TF32 matmuls, bf16
autocast, and torch.compile with bf16 autocast (skipped with a message where it does not work).

Usage: python scripts/torch_gpt_step.py [--steps 30] [--warmup 5] [--device cuda|cpu]
       [--batch 64] [--modes f32,tf32,bf16,compile]
Prints one line per mode: ms/step and tokens/s (median of the timed steps).
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h, p):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)
        self.h, self.p = h, p
        self.drop = nn.Dropout(p)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.drop(self.c_proj(y))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))


class Gpt(nn.Module):
    def __init__(self, vocab, block, layers, heads, width, p):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        self.drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(Block(width, heads, p) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(t, device=idx.device)))
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def run(mode, args):
    dev = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    model = Gpt(65, 256, 6, 6, 384, 0.2).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
        fused=fused,
    )
    step_model = torch.compile(model) if mode == "compile" else model
    autocast = mode in ("bf16", "compile")
    x = torch.randint(0, 65, (args.batch, 256), device=dev)
    y = torch.randint(0, 65, (args.batch, 256), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    tok = args.batch * 256 / (ms / 1e3)
    assert math.isfinite(loss.item())
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    print(f"torch {mode:8s} {ms:9.2f} ms/step {tok:12.0f} tokens/s  peak {peak:.0f} MiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", default="f32,tf32,bf16,compile")
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; batch {args.batch} x 256, 10.8M parameters")
    for mode in args.modes.split(","):
        try:
            run(mode, args)
        except Exception as e:  # torch.compile needs a compiler toolchain; report, go on
            print(f"torch {mode:8s} did not run: {type(e).__name__}: {str(e)[:200]}")


if __name__ == "__main__":
    main()
