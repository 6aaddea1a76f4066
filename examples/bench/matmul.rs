//! `cargo run --release --example bench -- matmul`: GFLOP/s of `matmul` on this adapter, for
//! square sizes, GPT-2 layer shapes, the decode GEMV and the transposed forms; then f32, f16
//! (portable kernels) and f16 (tensor cores, where the adapter has cooperative matrices) side
//! by side.
//!
//! Each case is compiled and run once first (warm-up); then batches of back-to-back runs are
//! timed up to and including the final `dev.sync()`, and the best batch is reported (other
//! processes on the machine only ever make a batch slower). "GFLOP per CPU-s" divides by the
//! CPU time of this process instead: on a software adapter that is the work done, whatever
//! else loads the machine.

use std::time::Instant;

use portagrad::testing::{Family, force_kernel};
use portagrad::{Activation, DType, Device, Result, Tensor, WeightLayout};

/// Wall and process-CPU seconds per run of `f`, from the fastest of 3 timed batches of at
/// least ~0.3 s each.
fn time(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<(f64, Option<f64>)> {
    f()?; // warm-up: pipeline compilation, buffer pool
    dev.sync()?;
    let t = Instant::now();
    f()?;
    dev.sync()?;
    let once = t.elapsed().as_secs_f64();
    let reps = ((0.3 / once.max(1e-6)).ceil() as usize).clamp(1, 200);
    let mut best = (f64::INFINITY, None);
    for _ in 0..3 {
        let (t, c) = (Instant::now(), process_cpu_seconds());
        for _ in 0..reps {
            f()?;
        }
        dev.sync()?;
        let wall = t.elapsed().as_secs_f64() / reps as f64;
        if wall < best.0 {
            let cpu = c
                .zip(process_cpu_seconds())
                .map(|(a, b)| (b - a) / reps as f64);
            best = (wall, cpu);
        }
    }
    Ok(best)
}

/// User + system CPU seconds of this process (Linux: /proc/self/stat; None elsewhere). On a
/// software adapter the "GPU" is this process's threads, so this is the work done, whatever
/// else loads the machine.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn row(case: &str, m: usize, k: usize, n: usize, kernel: &str, (wall, cpu): (f64, Option<f64>)) {
    let flop = 2.0 * (m * k * n) as f64;
    let per_cpu = cpu.map_or("n/a".to_string(), |c| format!("{:.1}", flop / c / 1e9));
    println!(
        "| {case} | {m} x {k} x {n} | {kernel} | {:.1} | {per_cpu} | {:.2} |",
        flop / wall / 1e9,
        wall * 1e3
    );
}

/// `op(A) · op(B)` with A: (M, K) and B: (K, N) as stored transposed when asked.
fn product(
    dev: &Device,
    case: &str,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Result<()> {
    let sa = if ta { [k, m] } else { [m, k] };
    let sb = if tb { [n, k] } else { [k, n] };
    let a = Tensor::rand_uniform(dev, &sa, -1.0, 1.0, 1)?;
    let b = Tensor::rand_uniform(dev, &sb, -1.0, 1.0, 2)?;
    let (_, ran) = a.matmul_t_with_entry(&b, ta, tb)?;
    let secs = time(dev, || a.matmul_t(&b, ta, tb).map(drop))?;
    row(case, m, k, n, ran.unwrap_or("-"), secs);
    Ok(())
}

/// Print the matmul table.
pub fn run(dev: &Device) -> Result<()> {
    println!("\n## matmul");
    println!("| case | M x K x N | kernel | GFLOP/s | GFLOP per CPU-s | ms |");
    println!("|---|---|---|---|---|---|");
    // 4096³ only where it takes milliseconds, not minutes.
    let squares: &[usize] = if dev.info().is_cpu {
        &[256, 512, 1024, 2048]
    } else {
        &[256, 512, 1024, 2048, 4096]
    };
    for &s in squares {
        product(dev, "square", s, s, s, false, false)?;
    }
    // GPT-2 small, B*T = 1024 tokens: attention qkv, MLP up, MLP down.
    for (k, n) in [(768, 2304), (768, 3072), (3072, 768)] {
        product(dev, "GPT-2 layer", 1024, k, n, false, false)?;
    }
    // The MLP up-projection as a dense layer: bias and GELU fused into the same dispatch.
    {
        let x = Tensor::rand_uniform(dev, &[1024, 768], -1.0, 1.0, 3)?;
        let w = Tensor::rand_uniform(dev, &[768, 3072], -1.0, 1.0, 4)?;
        let b = Tensor::rand_uniform(dev, &[3072], -1.0, 1.0, 5)?;
        let (_, ran) = x.matmul_t_with_entry(&w, false, false)?;
        let secs = time(dev, || {
            x.linear(&w, Some(&b), WeightLayout::InOut, Activation::Gelu)
                .map(drop)
        })?;
        row(
            "linear + bias + gelu",
            1024,
            768,
            3072,
            ran.unwrap_or("-"),
            secs,
        );
    }
    // Decode: one token against the (768, 50257) LM head. Its 154 MB may exceed the adapter's
    // largest storage binding (lavapipe: 128 MiB); then B is two column halves, two dispatches.
    {
        let (m, k, n) = (1, 768, 50257);
        let fits = (k * n * 4) as u64 <= dev.info().max_storage_binding;
        let parts: Vec<usize> = if fits {
            vec![n]
        } else {
            vec![n / 2, n - n / 2]
        };
        let a = Tensor::rand_uniform(dev, &[m, k], -1.0, 1.0, 6)?;
        let bs = parts
            .iter()
            .enumerate()
            .map(|(i, &p)| Tensor::rand_uniform(dev, &[k, p], -1.0, 1.0, 7 + i as u64))
            .collect::<Result<Vec<_>>>()?;
        let (_, ran) = a.matmul_t_with_entry(&bs[0], false, false)?;
        let secs = time(dev, || {
            for b in &bs {
                drop(a.matmul(b)?);
            }
            Ok(())
        })?;
        let case = if fits {
            "decode GEMV".to_string()
        } else {
            format!("decode GEMV (B in {} column parts)", parts.len())
        };
        row(&case, m, k, n, ran.unwrap_or("-"), secs);
    }
    // 16-bit operands (unpacked on load, f32 accumulation): the square product with both
    // operands in f16 / bf16, and the decode GEMV with the LM head's weights in f16, which
    // fit one binding (77 MB) where f32 needs two.
    for dtype in [DType::F16, DType::BF16] {
        let a = Tensor::rand_uniform(dev, &[1024, 1024], -1.0, 1.0, 1)?.to_dtype(dtype)?;
        let b = Tensor::rand_uniform(dev, &[1024, 1024], -1.0, 1.0, 2)?.to_dtype(dtype)?;
        let (_, ran) = a.matmul_t_with_entry(&b, false, false)?;
        let secs = time(dev, || a.matmul(&b).map(drop))?;
        let case = format!("square, {} x {}", dtype.name(), dtype.name());
        row(&case, 1024, 1024, 1024, ran.unwrap_or("-"), secs);
    }
    {
        let a = Tensor::rand_uniform(dev, &[1, 768], -1.0, 1.0, 6)?;
        // Rounded on the host: the f32 table would not fit one binding to convert from.
        let wv = portagrad::testing::random_vec(50257 * 768, -1.0, 1.0, 7);
        let w = Tensor::from_slice_as(dev, &wv, &[50257, 768], DType::F16)?;
        let (_, ran) = a.matmul_t_with_entry(&w, false, true)?;
        let secs = time(dev, || a.matmul_t(&w, false, true).map(drop))?;
        row(
            "decode GEMV, A·Bᵀ, B f16",
            1,
            768,
            50257,
            ran.unwrap_or("-"),
            secs,
        );
    }
    // The GPT LM head as it runs: logits = x · wteᵀ, wte stored (V, C).
    if (768 * 50257 * 4) as u64 <= dev.info().max_storage_binding {
        product(dev, "decode GEMV, A·Bᵀ", 1, 768, 50257, false, true)?;
    }
    for (case, ta, tb) in [
        ("Aᵀ·B", true, false),
        ("A·Bᵀ", false, true),
        ("Aᵀ·Bᵀ", true, true),
    ] {
        product(dev, case, 1024, 1024, 1024, ta, tb)?;
    }
    precisions(dev)?;
    if !dev.info().is_cpu {
        variants(dev)?;
    }
    Ok(())
}

/// f32, f16 through the portable kernels (unpacked to f32 on load) and f16 on tensor cores
/// (cooperative matrices), side by side per shape: GFLOP/s and the entry point that ran.
fn precisions(dev: &Device) -> Result<()> {
    let coop = dev.info().coop_f16_size();
    println!(
        "\n| shape | M x K x N | f32 GFLOP/s (kernel) | f16 portable GFLOP/s (kernel) | f16 cooperative GFLOP/s |"
    );
    println!("|---|---|---|---|---|");
    // 4096³ only where it takes milliseconds: on a CPU adapter one run takes seconds.
    let mut shapes: Vec<(&str, usize, usize, usize)> = [256, 512, 1024, 2048]
        .into_iter()
        .map(|s| ("square", s, s, s))
        .collect();
    if !dev.info().is_cpu {
        shapes.push(("square", 4096, 4096, 4096));
    }
    shapes.extend([
        ("GPT-2 MLP up", 1024, 768, 3072),
        ("awkward", 1000, 1000, 1000),
    ]);
    for (case, m, k, n) in shapes {
        let flop = 2.0 * (m * k * n) as f64;
        let a = Tensor::rand_uniform(dev, &[m, k], -1.0, 1.0, 1)?;
        let b = Tensor::rand_uniform(dev, &[k, n], -1.0, 1.0, 2)?;
        let (a16, b16) = (a.to_dtype(DType::F16)?, b.to_dtype(DType::F16)?);
        let cell = |x: &Tensor, y: &Tensor, kernel: &str| -> Result<String> {
            let _kernel = force_kernel(Family::Matmul, kernel)?;
            let (_, ran) = x.matmul_t_with_entry(y, false, false)?;
            let (wall, _) = time(dev, || x.matmul(y).map(drop))?;
            Ok(format!("{:.1} ({})", flop / wall / 1e9, ran.unwrap_or("-")))
        };
        let f32_cell = cell(&a, &b, "auto")?;
        let f16_cell = cell(&a16, &b16, "portable")?;
        let coop_cell = match coop {
            Some(_) => cell(&a16, &b16, "coop")?,
            None => "n/a: adapter has no cooperative matrices".to_string(),
        };
        println!("| {case} | {m} x {k} x {n} | {f32_cell} | {f16_cell} | {coop_cell} |");
    }
    if coop.is_some() {
        coop_variants(dev)?;
    }
    Ok(())
}

/// Tensor cores: each tile size and the portable f16 kernels, forced, on the model's product
/// forms (plain, Aᵀ·B weight gradient, A·Bᵀ input gradient), for checking the autotune's picks.
fn coop_variants(dev: &Device) -> Result<()> {
    println!("\n| f16 kernel | M x K x N | entry | GFLOP/s | ms |");
    println!("|---|---|---|---|---|");
    let shapes = [
        (4096, 4096, 4096, false, false),
        (1024, 1024, 1024, false, false),
        (16384, 384, 1152, false, false),
        (16384, 1152, 384, false, true),
        (384, 16384, 1152, true, false),
        (1000, 1000, 1000, false, false),
    ];
    for (m, k, n, ta, tb) in shapes {
        let sa = if ta { [k, m] } else { [m, k] };
        let sb = if tb { [n, k] } else { [k, n] };
        let a = Tensor::rand_uniform(dev, &sa, -1.0, 1.0, 1)?.to_dtype(DType::F16)?;
        let b = Tensor::rand_uniform(dev, &sb, -1.0, 1.0, 2)?.to_dtype(DType::F16)?;
        for kernel in ["coop64", "coop128", "portable", "auto"] {
            let _kernel = force_kernel(Family::Matmul, kernel)?;
            let (_, ran) = a.matmul_t_with_entry(&b, ta, tb)?;
            let (wall, _) = time(dev, || a.matmul_t(&b, ta, tb).map(drop))?;
            let t = match (ta, tb) {
                (true, true) => "ᵀ·ᵀ",
                (true, false) => "ᵀ·",
                (false, true) => "·ᵀ",
                _ => "",
            };
            println!(
                "| {kernel} | {m} x {k} x {n} {t} | {} | {:.1} | {:.3} |",
                ran.unwrap_or("-"),
                2.0 * (m * k * n) as f64 / wall / 1e9,
                wall * 1e3
            );
        }
    }
    Ok(())
}

/// GPUs: every tiled configuration on the same shapes, so the rule in `src/ops/matmul/launch.rs` can
/// be checked against measurements on the card at hand.
fn variants(dev: &Device) -> Result<()> {
    println!("\n| forced kernel | M x K x N | entry | GFLOP/s | ms |");
    println!("|---|---|---|---|---|");
    let shapes = [
        (1024, 1024, 1024, false, false),
        (4096, 4096, 4096, false, false),
        (1024, 768, 3072, false, false),
        (1024, 3072, 768, false, false),
        (16384, 384, 1152, false, false),
        (16384, 384, 384, false, true),
        (384, 16384, 1152, true, false),
        (256, 64, 256, false, true),
        (1, 768, 50257, false, false),
        (1, 768, 50257, false, true),
        (4, 768, 3072, false, false),
        (1, 3072, 768, false, false),
    ];
    for (m, k, n, ta, tb) in shapes {
        let sa = if ta { [k, m] } else { [m, k] };
        let sb = if tb { [n, k] } else { [k, n] };
        let a = Tensor::rand_uniform(dev, &sa, -1.0, 1.0, 1)?;
        let b = Tensor::rand_uniform(dev, &sb, -1.0, 1.0, 2)?;
        let kernels: &[&str] = if m <= 4 {
            &["rows_gpu", "gemv_gpu", "auto"]
        } else {
            &["tiled4", "tiled8", "wide", "auto"]
        };
        for &kernel in kernels {
            let _kernel = force_kernel(Family::Matmul, kernel)?;
            let (_, ran) = a.matmul_t_with_entry(&b, ta, tb)?;
            let (wall, _) = time(dev, || a.matmul_t_with_entry(&b, ta, tb).map(drop))?;
            let t = match (ta, tb) {
                (true, true) => "ᵀ·ᵀ",
                (true, false) => "ᵀ·",
                (false, true) => "·ᵀ",
                _ => "",
            };
            println!(
                "| {kernel} | {m} x {k} x {n} {t} | {} | {:.1} | {:.3} |",
                ran.unwrap_or("-"),
                2.0 * (m * k * n) as f64 / wall / 1e9,
                wall * 1e3
            );
        }
    }
    Ok(())
}
