//! The seed model's training step: 30 -> 64 relu -> 64 relu -> 1, batch 32, Adam, binary
//! cross-entropy on logits. Anchors on the two-core lavapipe machine: burn 0.22 (wgpu) about
//! 6 ms/step, PyTorch on the CPU 0.35 ms/step; goal <= 1.5 ms/step.

use std::time::Instant;

use portagrad::nn::{self, Module};
use portagrad::optim::Optimizer;
use portagrad::testing::random_vec;
use portagrad::train::{Batch, DataLoader, Dataset, Targets, loss_and_metric, train_step};
use portagrad::{Activation, Device, Result};

pub fn run(dev: &Device) -> Result<()> {
    println!("\n## train (30 -> 64 -> 64 -> 1, batch 32, Adam, BCE)");
    println!(
        "| case | ms/step | CPU ms/step (all threads) | dispatches/step | submits/step | readbacks/step |"
    );
    println!("|---|---|---|---|---|---|");
    let rows = 32 * 16;
    let x = random_vec(rows * 30, -2.0, 2.0, 1);
    let y = x
        .chunks(30)
        .map(|r| f32::from(u8::from(r[0] + r[1] > 0.0)))
        .collect();
    let data = Dataset::new(x, 30, Targets::Binary(y))?;
    let model = nn::mlp(dev, &[30, 64, 64, 1], Activation::Relu, 0)?;
    let mut opt = Optimizer::adam(model.parameters(), 1e-3)?;
    let batches: Vec<Batch> = DataLoader::new(dev, &data, 32, Some(0))?.collect::<Result<_>>()?;
    let targets = data.targets();

    // Warm-up: pipelines, pool.
    for b in batches.iter().take(4) {
        train_step(&model, &mut opt, targets, b)?;
    }
    dev.sync()?;

    let steps = 200;
    // As `fit` runs: every step submitted at once, the loss stays on the GPU.
    dev.reset_stats();
    let t = Clock::start();
    for i in 0..steps {
        let batch = &batches[i % batches.len()];
        train_step(&model, &mut opt, targets, batch)?;
        dev.flush()?;
    }
    dev.sync()?;
    row("step, loss kept on the GPU (as fit)", &t, steps, dev);

    // Submitting every 8th step instead (fewer, larger submits).
    dev.reset_stats();
    let t = Clock::start();
    for i in 0..steps {
        let batch = &batches[i % batches.len()];
        train_step(&model, &mut opt, targets, batch)?;
        if i % 8 == 7 {
            dev.flush()?;
        }
    }
    dev.sync()?;
    row("step, submit every 8 steps", &t, steps, dev);

    // Fresh batches uploaded every step (the DataLoader's work included).
    dev.reset_stats();
    let t = Clock::start();
    let mut done = 0;
    while done < steps {
        for batch in DataLoader::new(dev, &data, 32, Some(done as u64))? {
            train_step(&model, &mut opt, targets, &batch?)?;
            dev.flush()?;
            done += 1;
        }
    }
    dev.sync()?;
    row("step incl. batch upload", &t, done, dev);

    // The loss read back after every step (the GPU is waited on each time).
    dev.reset_stats();
    let t = Clock::start();
    for i in 0..steps {
        let (loss, _) = train_step(&model, &mut opt, targets, &batches[i % batches.len()])?;
        let v = loss.item()?;
        assert!(v.is_finite(), "loss {v} at step {i}");
    }
    row("step + loss readback every step", &t, steps, dev);

    // Where the time goes: the same step in parts.
    let model2 = nn::mlp(dev, &[30, 64, 64, 1], Activation::Relu, 0)?;
    let mut keep = Vec::new();
    dev.reset_stats();
    let t = Clock::start();
    for i in 0..steps {
        let b = &batches[i % batches.len()];
        let out = portagrad::inference(|| model2.forward(&b.x))?;
        keep.push(loss_and_metric(targets, &out, &b.y)?);
        dev.flush()?;
    }
    dev.sync()?;
    row("part: forward + loss + accuracy", &t, steps, dev);
    keep.clear();
    dev.reset_stats();
    let t = Clock::start();
    let mut grads = None;
    for i in 0..steps {
        let b = &batches[i % batches.len()];
        let out = model2.forward(&b.x)?;
        let (loss, _) = loss_and_metric(targets, &out, &b.y)?;
        grads = Some(loss.backward()?);
        dev.flush()?;
    }
    dev.sync()?;
    row("part: forward + loss + accuracy + backward", &t, steps, dev);
    let grads = grads.expect("ran at least one step");
    let mut opt2 = Optimizer::adam(model2.parameters(), 1e-3)?;
    opt2.step(&grads)?;
    dev.sync()?;
    dev.reset_stats();
    let t = Clock::start();
    for _ in 0..steps {
        opt2.step(&grads)?;
        dev.flush()?;
    }
    dev.sync()?;
    row(
        "part: Adam update alone (one fused dispatch)",
        &t,
        steps,
        dev,
    );
    Ok(())
}

/// Wall-clock time and the CPU time of the whole process (on lavapipe the "GPU" is this
/// process's threads, so CPU time per step is the work done, whatever else loads the machine).
struct Clock {
    wall: Instant,
    cpu: Option<f64>,
}

impl Clock {
    fn start() -> Self {
        Clock {
            wall: Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }
}

/// User + system CPU seconds of this process (Linux: /proc/self/stat; None elsewhere).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn row(name: &str, t: &Clock, steps: usize, dev: &Device) {
    let wall = t.wall.elapsed().as_secs_f64();
    let cpu = match (t.cpu, process_cpu_seconds()) {
        (Some(a), Some(b)) => format!("{:.2}", (b - a) * 1e3 / steps as f64),
        _ => "n/a".into(),
    };
    let st = dev.stats();
    let per = |v: u64| v as f64 / steps as f64;
    println!(
        "| {name} | {:.3} | {cpu} | {:.1} | {:.2} | {:.2} |",
        wall * 1e3 / steps as f64,
        per(st.dispatches),
        per(st.submits),
        per(st.readbacks)
    );
}
