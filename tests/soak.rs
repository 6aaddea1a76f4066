//! Long runs, short version for CI: a tiny GPT trained for 200 steps. After warm-up the
//! device's live and peak bytes and compiled-pipeline count stay exactly flat, pooled bytes
//! within 256 KiB, and the process's resident memory grows by less than 8 MiB. Its own test binary
//! (and its own device), so no other test moves these figures. The long version is
//! `cargo run --release --example soak -- 10000`.

use portagrad::models::{Gpt, GptConfig};
use portagrad::optim::Optimizer;
use portagrad::{Device, Tensor};

/// Resident set size of this process in bytes (Linux; `None` elsewhere).
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn tiny_gpt_training_memory_is_flat() {
    let dev = Device::new().expect("a device");
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        block_size: 16,
        vocab_size: 32,
        dropout: 0.1,
        ln_eps: 1e-5,
    };
    let model = Gpt::new(&dev, cfg, 0).unwrap();
    let mut opt = Optimizer::adamw(model.parameters(), 1e-3, 0.01).unwrap();
    let (b, t) = (4, 16);
    let data: Vec<u32> = (0..b * (t + 1))
        .map(|i| ((i * 7 + i / 5) % 32) as u32)
        .collect();
    let mut ids = Vec::new();
    let mut targets = Vec::new();
    for r in 0..b {
        let row = &data[r * (t + 1)..(r + 1) * (t + 1)];
        ids.extend_from_slice(&row[..t]);
        targets.extend_from_slice(&row[1..]);
    }
    let ids = Tensor::from_u32(&dev, &ids, &[b, t]).unwrap();
    let targets = Tensor::from_u32(&dev, &targets, &[b, t]).unwrap();
    let (warmup, steps, every) = (50, 200, 25);
    let mut first_loss = None;
    let mut base = None;
    for step in 1..=steps {
        let loss = model.loss(&ids, &targets, true).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads).unwrap();
        if step % 10 == 0 {
            let l = loss.item().unwrap();
            assert!(l.is_finite(), "step {step}: loss {l}");
            first_loss.get_or_insert(l);
        }
        if step >= warmup && step % every == 0 {
            dev.sync().unwrap();
            let s = dev.stats();
            let rss = rss_bytes().unwrap_or(0);
            let now = (
                s.live_bytes,
                s.peak_bytes,
                s.pooled_bytes,
                s.pipelines_compiled,
            );
            println!(
                "step {step}: live {} peak {} pooled {} pipelines {} rss {:.1} MiB",
                now.0,
                now.1,
                now.2,
                now.3,
                rss as f64 / 1048576.0
            );
            match base {
                None => base = Some((now, rss)),
                Some((b0, rss0)) => {
                    let (flat, b0_flat) = ((now.0, now.1, now.3), (b0.0, b0.1, b0.3));
                    assert_eq!(flat, b0_flat, "step {step}: (live, peak, pipelines) moved");
                    // The pool may settle a little later (which buffers are free when an
                    // upload asks depends on GPU timing), but stays bounded.
                    assert!(
                        now.2 <= b0.2 + (256 << 10),
                        "step {step}: pooled bytes grew from {} to {}",
                        b0.2,
                        now.2
                    );
                    let grew = rss.saturating_sub(rss0);
                    assert!(grew < 8 << 20, "step {step}: RSS grew by {grew} bytes");
                }
            }
        }
    }
    let last = model.loss(&ids, &targets, false).unwrap().item().unwrap();
    assert!(
        last < first_loss.unwrap(),
        "{last} vs {first_loss:?}: it should learn"
    );
}
