//! Launcher for `shaders/swiglu.wgsl`: `silu(gate) * up`, fused (one (rows, 2F) input) or from
//! two inputs, and their backward.

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("swiglu", include_str!("../../../shaders/swiglu.wgsl"));

/// Matches `struct Swiglu` in `swiglu.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    f: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

/// Units of `n` elements in rows of `f`: vec4 when both allow.
fn units(n: usize, f: usize) -> (bool, Params) {
    let vec4 = f.is_multiple_of(4);
    let k = if vec4 { 4 } else { 1 };
    (
        vec4,
        Params {
            n: (n / k) as u32,
            f: (f / k) as u32,
            _pad: [0; 2],
        },
    )
}

/// `x` (..., 2F) -> (..., F). Shapes checked by the caller.
pub(crate) fn fused(x: &Tensor, out_shape: &[usize]) -> Result<Tensor> {
    let f = out_shape[out_shape.len() - 1];
    let y = Tensor::empty(&x.dev, "swiglu", out_shape, DType::F32)?;
    let (vec4, p) = units(y.numel(), f);
    if p.n == 0 {
        return Ok(y);
    }
    // x: (rows, 2F) -> y: (rows, F)
    x.dev.dispatch(
        &SHADER,
        if vec4 { "swiglu4" } else { "swiglu" },
        &[],
        &p,
        &[(&x.storage, Access::Read), (&y.storage, Access::ReadWrite)],
        elems_grid(p.n as usize)?,
    )?;
    Ok(y)
}

/// Gradient of [`fused`]: `x` (..., 2F), `g` (..., F) -> dx (..., 2F).
pub(crate) fn fused_backward(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let f = g.shape[g.shape.len() - 1];
    let dx = Tensor::empty(&x.dev, "swiglu backward", &x.shape, DType::F32)?;
    let (vec4, p) = units(g.numel(), f);
    if p.n == 0 {
        return Ok(dx);
    }
    // x: (rows, 2F), g: (rows, F) -> dx: (rows, 2F)
    x.dev.dispatch(
        &SHADER,
        if vec4 {
            "swiglu_backward4"
        } else {
            "swiglu_backward"
        },
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dx.storage, Access::ReadWrite),
        ],
        elems_grid(p.n as usize)?,
    )?;
    Ok(dx)
}

/// `gate`, `up` (n) -> (n). Shapes checked by the caller.
pub(crate) fn two(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let y = Tensor::empty(&gate.dev, "swiglu2", &gate.shape, DType::F32)?;
    let (vec4, p) = units(y.numel(), y.numel());
    if p.n == 0 {
        return Ok(y);
    }
    // gate, up: (n) -> y: (n)
    gate.dev.dispatch(
        &SHADER,
        if vec4 { "swiglu2_4" } else { "swiglu2" },
        &[],
        &p,
        &[
            (&gate.storage, Access::Read),
            (&up.storage, Access::Read),
            (&y.storage, Access::ReadWrite),
        ],
        elems_grid(p.n as usize)?,
    )?;
    Ok(y)
}

/// Gradient of [`two`]: (d gate, d up), each (n).
pub(crate) fn two_backward(gate: &Tensor, up: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    let dg = Tensor::empty(&gate.dev, "swiglu2 backward", &gate.shape, DType::F32)?;
    let du = Tensor::empty(&gate.dev, "swiglu2 backward", &gate.shape, DType::F32)?;
    let (vec4, p) = units(g.numel(), g.numel());
    if p.n == 0 {
        return Ok((dg, du));
    }
    // gate, up, g: (n) -> d gate, d up: (n)
    gate.dev.dispatch(
        &SHADER,
        if vec4 {
            "swiglu2_backward4"
        } else {
            "swiglu2_backward"
        },
        &[],
        &p,
        &[
            (&gate.storage, Access::Read),
            (&up.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dg.storage, Access::ReadWrite),
            (&du.storage, Access::ReadWrite),
        ],
        elems_grid(p.n as usize)?,
    )?;
    Ok((dg, du))
}
