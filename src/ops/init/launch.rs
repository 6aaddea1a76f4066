//! Launcher for `shaders/init.wgsl`: fill and seeded random.

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::Tensor;

pub(crate) const SHADER: Shader = shader("init", include_str!("../../../shaders/init.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad: u32,
    a: f32,
    b: f32,
    _pad2: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 32);

pub(crate) enum Dist {
    Uniform,
    Normal,
}

fn run(out: &Tensor, entry: &str, a: f32, b: f32, seed: u64) -> Result<()> {
    let n = out.numel();
    let p = Params {
        n: n as u32,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        _pad: 0,
        a,
        b,
        _pad2: [0; 2],
    };
    // out: (n)
    out.dev.dispatch(
        &SHADER,
        entry,
        &[],
        &p,
        &[(&out.storage, Access::ReadWrite)],
        elems_grid(n)?,
    )
}

pub(crate) fn fill(out: &Tensor, value: f32) -> Result<()> {
    run(out, "fill", value, 0.0, 0)
}

pub(crate) fn random(out: &Tensor, dist: Dist, a: f32, b: f32, seed: u64) -> Result<()> {
    let entry = match dist {
        Dist::Uniform => "rand_uniform",
        Dist::Normal => "rand_normal",
    };
    run(out, entry, a, b, seed)
}
