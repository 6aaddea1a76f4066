//! Soak benchmark: trains a small GPT for many steps on fresh batches (a new upload per step)
//! and prints, every 1,000 steps, the figures that show a leak: the device's live, peak and
//! pooled bytes, compiled pipelines, and the process's resident memory.
//!
//! `cargo run --release --example soak -- [steps (10000)] [n_embd (32)] [n_layer (1)] [fresh (1)]`
//!
//! `fresh` 0 reuses one uploaded batch for every step (to tell upload-path memory from the rest).

use std::time::Instant;

use portagrad::models::{Gpt, GptConfig};
use portagrad::optim::Optimizer;
use portagrad::{Device, Result, Tensor};

/// Resident set size of this process in MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |pages| (pages * 4096) as f64 / 1048576.0)
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| a.parse().expect("arguments are numbers"))
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let (steps, n_embd, n_layer) = (arg(1, 10_000), arg(2, 32), arg(3, 1));
    let fresh = arg(4, 1) != 0;
    let dev = Device::new()?;
    println!("{}", dev.info());
    let cfg = GptConfig {
        n_layer,
        n_head: (n_embd / 16).max(1),
        n_embd,
        block_size: 32,
        vocab_size: 64,
        dropout: 0.1,
        ln_eps: 1e-5,
    };
    let (b, t) = (8, 32);
    println!(
        "GPT {n_layer} layer(s), C {n_embd}, {} parameters; batch {b} x {t}; {steps} steps; {}",
        cfg.num_params(),
        if fresh {
            "a fresh batch uploaded every step"
        } else {
            "one batch reused"
        }
    );
    let model = Gpt::new(&dev, cfg.clone(), 0)?;
    let mut opt = Optimizer::adamw(model.parameters(), 1e-3, 0.01)?;
    // A fixed token stream with structure to learn; each step takes a different window.
    let stream: Vec<u32> = (0..65_536u64)
        .map(|i| ((i * i / 7 + i / 3) % cfg.vocab_size as u64) as u32)
        .collect();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut window = Instant::now();
    let mut last_report = 0;
    let start = Instant::now();
    let mut first: Option<(u64, u64, u64, u64, f64)> = None;
    let mut last = first;
    println!(
        "{:>7} {:>8} {:>9} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "step", "loss", "ms/step", "live B", "peak B", "pooled B", "pipelines", "RSS MiB"
    );
    let mut fixed: Option<(Tensor, Tensor)> = None;
    for step in 1..=steps {
        let mut ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = (rng % (stream.len() - t - 1) as u64) as usize;
            ids.extend_from_slice(&stream[at..at + t]);
            targets.extend_from_slice(&stream[at + 1..at + t + 1]);
        }
        let (ids, targets) = match &fixed {
            Some(f) if !fresh => f.clone(),
            _ => {
                let pair = (
                    Tensor::from_u32(&dev, &ids, &[b, t])?,
                    Tensor::from_u32(&dev, &targets, &[b, t])?,
                );
                fixed = Some(pair.clone());
                pair
            }
        };
        let loss = model.loss(&ids, &targets, true)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        if step % 1000 == 0 || step == steps {
            let l = loss.item()?;
            let ms = window.elapsed().as_secs_f64() * 1e3 / (step - last_report) as f64;
            last_report = step;
            window = Instant::now();
            dev.sync()?;
            let s = dev.stats();
            let rss = rss_mib();
            println!(
                "{step:>7} {l:>8.4} {ms:>9.2} {:>11} {:>11} {:>11} {:>9} {rss:>9.1}",
                s.live_bytes, s.peak_bytes, s.pooled_bytes, s.pipelines_compiled
            );
            if !l.is_finite() {
                eprintln!("the loss became {l} at step {step}");
                std::process::exit(1);
            }
            let now = (
                s.live_bytes,
                s.peak_bytes,
                s.pooled_bytes,
                s.pipelines_compiled,
                rss,
            );
            first.get_or_insert(now);
            last = Some(now);
        }
    }
    if let (Some(f), Some(l)) = (first, last) {
        println!(
            "first report to last ({:.0} s in all): live {:+} B, peak {:+} B, pooled {:+} B, pipelines {:+}, RSS {:+.1} MiB",
            start.elapsed().as_secs_f64(),
            l.0 as i64 - f.0 as i64,
            l.1 as i64 - f.1 as i64,
            l.2 as i64 - f.2 as i64,
            l.3 as i64 - f.3 as i64,
            l.4 - f.4
        );
    }
    Ok(())
}
