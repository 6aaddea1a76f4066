"""cuBLAS (through PyTorch) on the shapes of `cargo run --release --example bench -- matmul`,
for comparison on the same GPU in the same call. f32 with TF32 off is the like-for-like
figure for portagrad's f32 kernels (plain f32 FMA); TF32 on is shown for what the tensor cores
add, and f16 inputs (f32 accumulation) for portagrad's cooperative-matrix (tensor-core) kernels
in the f16 columns of `bench -- matmul`.

Run: python scripts/torch_matmul_ref.py (needs a CUDA GPU; scripts/gpu_check.sh matmul runs it).
"""
import torch

CASES = [("square", s, s, s) for s in (256, 512, 1024, 2048, 4096)] + [
    ("GPT-2 layer", 1024, 768, 2304),
    ("GPT-2 layer", 1024, 768, 3072),
    ("GPT-2 layer", 1024, 3072, 768),
    ("decode GEMV", 1, 768, 50257),
    ("awkward", 1000, 1000, 1000),
]


def bench(m, k, n, dtype=torch.float32):
    a = (torch.rand(m, k, device="cuda") * 2 - 1).to(dtype)
    b = (torch.rand(k, n, device="cuda") * 2 - 1).to(dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps = 50
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / reps / 1e3)
    t = sorted(times)[len(times) // 2]
    return 2 * m * k * n / t / 1e9, t * 1e3


print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
print("| case | M x K x N | cuBLAS f32 GFLOP/s | ms | cuBLAS TF32 GFLOP/s | ms | cuBLAS f16 GFLOP/s | ms |")
print("|---|---|---|---|---|---|---|---|")
for case, m, k, n in CASES:
    torch.backends.cuda.matmul.allow_tf32 = False
    f, t = bench(m, k, n)
    torch.backends.cuda.matmul.allow_tf32 = True
    f2, t2 = bench(m, k, n)
    f3, t3 = bench(m, k, n, torch.float16)
    print(f"| {case} | {m} x {k} x {n} | {f:.0f} | {t:.3f} | {f2:.0f} | {t2:.3f} | {f3:.0f} | {t3:.3f} |")
