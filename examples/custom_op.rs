//! A custom op: a fused SwiGLU, `out = silu(a) * b` with `silu(a) = a * sigmoid(a)`, written in
//! WGSL with its gradient, registered with `CustomOp`, recorded on the same batch as the
//! built-in ops, trained through autograd, and checked with `portagrad::testing`.
//!
//! Run: `cargo run --release --example custom_op`

use portagrad::custom::{CustomOp, groups_1d};
use portagrad::testing::{GradCheck, assert_close, random_vec, shared_device};
use portagrad::{Result, Tensor};

/// Mirrors `struct Params` in the WGSL (binding 0).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

/// Bindings by the custom-op convention: 0 params, 1-2 inputs, 3 output, then for the
/// backward 4 the output gradient and 5-6 the input gradients.
const SWIGLU_WGSL: &str = r#"
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> ga: array<f32>;
@group(0) @binding(6) var<storage, read_write> gb: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if (i >= p.n) { return; }
    let x = a[i];
    out[i] = x / (1.0 + exp(-x)) * b[i];
}

@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * WG + gid.x;
    if (i >= p.n) { return; }
    let x = a[i];
    let s = 1.0 / (1.0 + exp(-x));
    ga[i] = g[i] * b[i] * (s + x * s * (1.0 - s));
    gb[i] = g[i] * x * s;
}
"#;

/// The op: two inputs of one shape, one output of that shape.
fn swiglu_op() -> Result<CustomOp<Params>> {
    let grid = |shapes: &[&[usize]], _: &Params| groups_1d(shapes[0].iter().product(), 64);
    CustomOp::builder("swiglu", SWIGLU_WGSL)
        .inputs(2)
        .outputs(|s| {
            if s[0] == s[1] {
                Ok(vec![s[0].to_vec()])
            } else {
                Err(format!("a {:?} and b {:?} must have one shape", s[0], s[1]))
            }
        })
        .forward("forward", grid)
        .backward("backward", grid)
        .build()
}

fn swiglu(op: &CustomOp<Params>, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    op.apply(
        &[a, b],
        &Params {
            n: a.numel() as u32,
        },
    )
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn main() -> Result<()> {
    let dev = shared_device();
    println!("{}", dev.info());
    let op = swiglu_op()?;

    // 1. Forward against an f64 CPU reference (the worst element is reported on failure).
    let (av, bv) = (
        random_vec(1000, -4.0, 4.0, 1),
        random_vec(1000, -2.0, 2.0, 2),
    );
    let a = Tensor::from_slice(&dev, &av, &[10, 100])?;
    let b = Tensor::from_slice(&dev, &bv, &[10, 100])?;
    let want: Vec<f64> = av
        .iter()
        .zip(&bv)
        .map(|(&x, &y)| silu(f64::from(x)) * f64::from(y))
        .collect();
    assert_close(
        "swiglu forward",
        &swiglu(&op, &a, &b)?.to_vec()?,
        &want,
        1e-5,
        1e-6,
    );
    println!("forward matches the f64 reference");

    // 2. The gradient against finite differences of the CPU forward.
    GradCheck::new("swiglu", &dev)
        .input(&[7, 13], -3.0, 3.0)
        .input(&[7, 13], -2.0, 2.0)
        .tolerances(1e-5, 1e-4)
        .assert(&|t| swiglu(&op, &t[0], &t[1]), &|x| {
            x[0].iter().zip(&x[1]).map(|(&a, &b)| silu(a) * b).collect()
        });
    println!("gradient matches finite differences");

    // 3. Trained through autograd next to built-in ops, all on one command batch:
    //    fit w so that swiglu(x * w, x) approximates a target.
    let x = Tensor::from_slice(&dev, &random_vec(64, 0.5, 2.0, 3), &[64])?;
    let target = Tensor::from_slice(&dev, &random_vec(64, 0.0, 1.0, 4), &[64])?;
    let mut w = Tensor::from_slice(&dev, &[0.1; 64], &[64])?;
    let mut first = None;
    let mut loss_v = 0.0;
    for _ in 0..50 {
        let wp = w.with_grad();
        let y = swiglu(&op, &x.mul(&wp)?, &x)?;
        let d = y.sub(&target)?;
        let loss = d.mul(&d)?.mean()?;
        let grads = loss.backward()?;
        let gw = grads.get(&wp).expect("w gets a gradient");
        w = wp.detach().sub(&gw.mul_scalar(0.5)?)?;
        loss_v = loss.to_vec()?[0];
        first.get_or_insert(loss_v);
    }
    let first = first.unwrap_or(loss_v);
    println!("loss {first:.5} -> {loss_v:.5} after 50 steps");
    assert!(
        loss_v < first * 0.5,
        "training with the custom op did not reduce the loss"
    );
    println!("{:?}", dev.stats());
    Ok(())
}
