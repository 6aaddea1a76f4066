//! `cargo run --release --example bench` — throughput and overhead figures on this adapter.
//! Each section prints a table; shader compilation is excluded (warm-up), the final sync included.

mod attention;
mod autograd;
mod gpt;
mod llama;
mod matmul;
mod train;

use std::time::Instant;

use portagrad::{Device, Result, Tensor};

fn main() -> Result<()> {
    let dev = Device::new()?;
    println!("{}", dev.info());
    let only: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    if want("core") {
        core(&dev)?;
    }
    if want("attention") {
        attention::run(&dev)?;
    }
    if want("gqa") {
        attention::run_gqa(&dev)?;
    }
    if want("matmul") {
        matmul::run(&dev)?;
    }
    if want("autograd") {
        autograd::run(&dev)?;
    }
    if want("train") {
        train::run(&dev)?;
    }
    if want("gpt") {
        gpt::run(&dev)?;
    }
    if want("fusions") {
        gpt::fusions(&dev)?;
    }
    if want("llama") {
        llama::run(&dev)?;
    }
    Ok(())
}

/// Elementwise bandwidth, per-dispatch host cost and batching.
fn core(dev: &Device) -> Result<()> {
    println!("\n## core");
    println!("| case | value |");
    println!("|---|---|");
    for n in [1usize << 20, 1 << 24] {
        let a = Tensor::rand_uniform(dev, &[n], -1.0, 1.0, 1)?;
        let b = Tensor::rand_uniform(dev, &[n], -1.0, 1.0, 2)?;
        drop(a.add(&b)?); // warm-up: pipeline compile, pool fill
        dev.sync()?;
        let reps = if n <= 1 << 20 { 50 } else { 10 };
        let t = Instant::now();
        for _ in 0..reps {
            drop(a.add(&b)?);
        }
        dev.sync()?;
        let s = t.elapsed().as_secs_f64() / reps as f64;
        // Two reads and one write of 4 bytes per element.
        let gbs = 12.0 * n as f64 / s / 1e9;
        println!("| add, {n} elements | {gbs:.2} GB/s ({:.3} ms) |", s * 1e3);
    }
    let x = Tensor::zeros(dev, &[16])?;
    drop(x.add_scalar(1.0)?);
    dev.sync()?;
    dev.reset_stats();
    let ops = 10_000;
    let t = Instant::now();
    let mut y = x.clone();
    for _ in 0..ops {
        y = y.add_scalar(1.0)?;
    }
    let record = t.elapsed().as_secs_f64();
    let v = y.to_vec()?;
    let total = t.elapsed().as_secs_f64();
    assert_eq!(v[0], ops as f32, "chain of {ops} adds computed {}", v[0]);
    let st = dev.stats();
    println!(
        "| host time per recorded dispatch ({ops} tiny ops) | {:.2} µs |",
        record / ops as f64 * 1e6
    );
    println!(
        "| {ops} tiny ops end to end, incl. GPU | {:.1} ms |",
        total * 1e3
    );
    println!(
        "| dispatches / submits / readbacks for that run | {} / {} / {} |",
        st.dispatches, st.submits, st.readbacks
    );
    Ok(())
}
