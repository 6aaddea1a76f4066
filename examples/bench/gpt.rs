//! GPT training steps at the shakespeare example's two presets and one with GPT-2's vocabulary:
//! tokens/s, ms/step and the runtime's counts per step (AdamW with clipping, as the example
//! trains).

use std::time::Instant;

use portagrad::models::{Gpt, GptConfig};
use portagrad::optim::{OptimConfig, Optimizer, decay_groups};
use portagrad::{Device, Result, Tensor};

/// The presets: `cpu` and `gpu` (the shakespeare example's), and `cpu-v50257`, the cpu preset
/// with GPT-2's vocabulary, where the lm_head and the loss dominate the step.
const PRESETS: [&str; 3] = ["cpu", "cpu-v50257", "gpu"];

fn preset(name: &str, is_cpu: bool) -> (GptConfig, usize, usize) {
    let (l, h, c, t, b, steps) = match name {
        "gpu" => (6, 6, 384, 256, 64, if is_cpu { 2 } else { 10 }),
        "cpu-v50257" => (4, 4, 128, 128, 16, 2),
        _ => (4, 4, 128, 128, 16, 5),
    };
    let vocab = if name == "cpu-v50257" { 50257 } else { 65 };
    // BENCH_GPT_BATCH=n overrides the batch (counts per step at a preset's widths, quickly).
    let b = std::env::var("BENCH_GPT_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(b);
    let cfg = GptConfig {
        n_layer: l,
        n_head: h,
        n_embd: c,
        block_size: t,
        vocab_size: vocab,
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    (cfg, b, steps)
}

pub fn run(dev: &Device) -> Result<()> {
    // BENCH_GPT_PRESETS=cpu,gpu picks presets (all by default; gpu takes minutes on lavapipe).
    let only = std::env::var("BENCH_GPT_PRESETS").unwrap_or_default();
    let presets: Vec<&str> = PRESETS
        .into_iter()
        .filter(|p| only.is_empty() || only.split(',').any(|o| o == *p))
        .collect();
    println!("\n## gpt training step");
    println!(
        "| preset | vocab | params | batch x block | steps timed | ms/step | tokens/s | dispatches/step | submits/step | readbacks/step | peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for name in presets {
        let (cfg, b, steps) = preset(name, dev.info().is_cpu);
        let t = cfg.block_size;
        let model = Gpt::new(dev, cfg.clone(), 1)?;
        let mut opt = Optimizer::with_groups(
            OptimConfig::adamw(1e-3).clip_grad_norm(1.0),
            decay_groups(model.parameters(), 0.1),
        )?;
        let v = cfg.vocab_size;
        let ids: Vec<u32> = (0..b * (t + 1)).map(|i| ((i * 7919) % v) as u32).collect();
        let x: Vec<u32> = (0..b)
            .flat_map(|r| ids[r * (t + 1)..r * (t + 1) + t].to_vec())
            .collect();
        let y: Vec<u32> = (0..b)
            .flat_map(|r| ids[r * (t + 1) + 1..(r + 1) * (t + 1)].to_vec())
            .collect();
        let (x, y) = (
            Tensor::from_u32(dev, &x, &[b, t])?,
            Tensor::from_u32(dev, &y, &[b, t])?,
        );
        let mut step = || -> Result<Tensor> {
            let loss = model.loss(&x, &y, true)?;
            let g = loss.backward()?;
            opt.step(&g)?;
            Ok(loss)
        };
        step()?.item()?; // warm-up: compile pipelines, fill the pool
        dev.reset_stats();
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..steps {
            last = Some(step()?);
            dev.flush()?;
        }
        last.expect("ran").item()?;
        let s = t0.elapsed().as_secs_f64() / steps as f64;
        let st = dev.stats();
        println!(
            "| {name} | {} | {:.2}M | {b} x {t} | {steps} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
            cfg.vocab_size,
            cfg.num_params() as f64 / 1e6,
            s * 1e3,
            (b * t) as f64 / s,
            st.dispatches as f64 / steps as f64,
            st.submits as f64 / steps as f64,
            st.readbacks as f64 / steps as f64,
            st.peak_bytes as f64 / (1 << 20) as f64
        );
    }
    if !dev.info().is_cpu {
        parts(dev)?;
    }
    Ok(())
}

/// Seconds per call of `f` (after a warm-up), up to the final sync.
fn timed(dev: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.sync()?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    dev.sync()?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

/// GPUs: the matrix products of one gpu-preset step (6 layers, B·T = 16384, C = 384), timed
/// alone, so the step's time splits into matmul, attention (see the attention table) and the
/// rest.
fn parts(dev: &Device) -> Result<()> {
    let (cfg, b, _) = preset("gpu", false);
    let (bt, c, l) = (b * cfg.block_size, cfg.n_embd, cfg.n_layer);
    // (K, N) of each dense layer: qkv, attention projection, MLP up, MLP down.
    let layers = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
    let mut rows = Vec::new();
    for (what, ta, tb) in [
        ("forward X·W", false, false),
        ("backward dY·Wᵀ", false, true),
        ("backward Xᵀ·dY", true, false),
    ] {
        let mut ops = Vec::new();
        let mut flop = 0.0;
        for &(k, n) in &layers {
            // Operands as the product reads them: forward (M,K)·(K,N); dX (M,N)·(K,N)ᵀ;
            // dW (M,K)ᵀ·(M,N).
            let (sa, sb) = match (ta, tb) {
                (false, false) => ([bt, k], [k, n]),
                (false, true) => ([bt, n], [k, n]),
                _ => ([bt, k], [bt, n]),
            };
            let a = Tensor::rand_uniform(dev, &sa, -1.0, 1.0, 1)?;
            let w = Tensor::rand_uniform(dev, &sb, -1.0, 1.0, 2)?;
            ops.push((a, w));
            flop += 2.0 * (bt * k * n) as f64 * l as f64;
        }
        let s = timed(dev, || {
            for _ in 0..l {
                for (a, w) in &ops {
                    drop(a.matmul_t(w, ta, tb)?);
                }
            }
            Ok(())
        })?;
        rows.push((what, s, flop));
    }
    println!("\n| gpu-preset step part ({l} layers) | ms | GFLOP/s |");
    println!("|---|---|---|");
    let mut total = 0.0;
    for (what, s, flop) in rows {
        total += s;
        println!("| {what} | {:.2} | {:.0} |", s * 1e3, flop / s / 1e9);
    }
    println!("| all dense-layer products | {:.2} | |", total * 1e3);
    Ok(())
}

/// `bench -- fusions`: the residual add + LayerNorm of a GPT block, fused against the add then
/// the LayerNorm, forward and backward (with the stream's gradient from its other use), at the
/// cpu and gpu presets' (B·T, C); the two alternate and each keeps its best of 7.
pub fn fusions(dev: &Device) -> Result<()> {
    println!("\n## fused residual add + LayerNorm (forward + backward, best of 7)");
    println!("| (rows, C) | fused ms | add, then layer_norm ms | dispatches fused / unfused |");
    println!("|---|---|---|---|");
    for (rows, c) in [(2048, 128), (16384, 384)] {
        let x = Tensor::rand_normal(dev, &[rows, c], 0.0, 1.0, 1)?.with_grad();
        let r = Tensor::rand_normal(dev, &[rows, c], 0.0, 1.0, 2)?.with_grad();
        let gamma = Tensor::ones(dev, &[c])?.with_grad();
        let beta = Tensor::zeros(dev, &[c])?.with_grad();
        let gs = Tensor::rand_normal(dev, &[rows, c], 0.0, 1.0, 3)?;
        let gy = Tensor::rand_normal(dev, &[rows, c], 0.0, 1.0, 4)?;
        // One step: the forward, then the backward of sum·gs + y·gy (sum has a second use).
        let step = |fused: bool| -> Result<(f64, u64)> {
            dev.sync()?;
            dev.reset_stats();
            let t0 = Instant::now();
            let (s, y) = if fused {
                x.add_layer_norm(&r, &gamma, &beta, 1e-5)?
            } else {
                let s = x.add(&r)?;
                let y = s.layer_norm(&gamma, &beta, 1e-5)?;
                (s, y)
            };
            let out = s.mul(&gs)?.add(&y.mul(&gy)?)?;
            let seed = Tensor::ones(dev, &[rows, c])?;
            let g = out.backward_with(&seed)?;
            drop(g);
            dev.sync()?;
            Ok((t0.elapsed().as_secs_f64(), dev.stats().dispatches))
        };
        step(true)?;
        step(false)?;
        let (mut best, mut dispatches) = ([f64::MAX; 2], [0u64; 2]);
        for _ in 0..7 {
            for (i, fused) in [true, false].into_iter().enumerate() {
                let (s, d) = step(fused)?;
                best[i] = best[i].min(s);
                dispatches[i] = d;
            }
        }
        println!(
            "| ({rows}, {c}) | {:.2} | {:.2} | {} / {} |",
            best[0] * 1e3,
            best[1] * 1e3,
            dispatches[0],
            dispatches[1]
        );
    }
    Ok(())
}
