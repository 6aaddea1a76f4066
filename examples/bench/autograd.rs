//! One forward + backward of a 4-layer MLP (batch 256, width 1024): ms per step and the
//! runtime's counts per step. The gradients come back fresh each step (nothing to zero).

use std::time::Instant;

use portagrad::nn::{self, Module};
use portagrad::{Activation, Device, Result, Tensor};

pub fn run(dev: &Device) -> Result<()> {
    println!("\n## autograd: 4-layer MLP, batch 256, width 1024, forward + backward");
    let model = nn::mlp(dev, &[1024, 1024, 1024, 1024, 1024], Activation::Relu, 1)?;
    let x = Tensor::rand_normal(dev, &[256, 1024], 0.0, 1.0, 2)?;
    let y = Tensor::rand_normal(dev, &[256, 1024], 0.0, 1.0, 3)?;
    let step = || -> Result<Tensor> {
        let loss = model.forward(&x)?.mse_loss(&y)?;
        let grads = loss.backward()?;
        debug_assert_eq!(grads.len(), model.parameters().len());
        Ok(loss)
    };
    step()?.item()?; // warm-up: compile pipelines, fill the pool
    let steps = 5;
    dev.reset_stats();
    let t = Instant::now();
    let mut last = None;
    for _ in 0..steps {
        last = Some(step()?);
        dev.flush()?;
    }
    let loss = last.expect("ran").item()?;
    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let s = dev.stats();
    // 4 layers: forward 2·M·K·N, backward twice that.
    let flops = 6.0 * 256.0 * 1024.0 * 1024.0 * 4.0;
    println!(
        "| ms/step | GFLOP/s | dispatches/step | submits/step | readbacks/step | peak MiB | loss |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {ms:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {loss:.3} |",
        flops / (ms / 1e3) / 1e9,
        s.dispatches as f64 / steps as f64,
        s.submits as f64 / steps as f64,
        s.readbacks as f64 / steps as f64,
        s.peak_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
