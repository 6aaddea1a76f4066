//! GPT training steps at the shakespeare example's two presets: tokens/s, ms/step and the
//! runtime's counts per step (AdamW with clipping, as the example trains).

use std::time::Instant;

use portagrad::models::{Gpt, GptConfig};
use portagrad::optim::{OptimConfig, Optimizer, decay_groups};
use portagrad::{Device, Result, Tensor};

fn preset(name: &str) -> (GptConfig, usize, usize) {
    let (l, h, c, t, b, steps) = if name == "gpu" {
        (6, 6, 384, 256, 64, 2)
    } else {
        (4, 4, 128, 128, 16, 5)
    };
    let cfg = GptConfig {
        n_layer: l,
        n_head: h,
        n_embd: c,
        block_size: t,
        vocab_size: 65,
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    (cfg, b, steps)
}

pub fn run(dev: &Device) -> Result<()> {
    println!("\n## gpt training step (char-level, vocab 65)");
    println!(
        "| preset | params | batch x block | steps timed | ms/step | tokens/s | dispatches/step | submits/step | readbacks/step | peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for name in ["cpu", "gpu"] {
        let (cfg, b, steps) = preset(name);
        let t = cfg.block_size;
        let model = Gpt::new(dev, cfg.clone(), 1)?;
        let mut opt = Optimizer::with_groups(
            OptimConfig::adamw(1e-3).clip_grad_norm(1.0),
            decay_groups(model.parameters(), 0.1),
        )?;
        let ids: Vec<u32> = (0..b * (t + 1)).map(|i| ((i * 7919) % 65) as u32).collect();
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
            "| {name} | {:.2}M | {b} x {t} | {steps} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} |",
            cfg.num_params() as f64 / 1e6,
            s * 1e3,
            (b * t) as f64 / s,
            st.dispatches as f64 / steps as f64,
            st.submits as f64 / steps as f64,
            st.readbacks as f64 / steps as f64,
            st.peak_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
