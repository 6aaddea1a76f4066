//! Launcher for `shaders/unary.wgsl`: elementwise maps and scalar ops.

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("unary", include_str!("../../../shaders/unary.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: u32,
    s: f32,
    _pad2: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

pub(crate) use super::table::Op;

pub(crate) fn unary(x: &Tensor, op: Op, s: f32) -> Result<Tensor> {
    x.expect_dtype(op.entry(), DType::F32)?;
    let out = Tensor::empty(&x.dev, op.entry(), &x.shape, DType::F32)?;
    let n = x.numel();
    let p = Params {
        n: n as u32,
        _pad: 0,
        s,
        _pad2: 0,
    };
    let bindings = [
        (&*x.storage, Access::Read),
        (&*out.storage, Access::ReadWrite),
    ];
    if n.is_multiple_of(4) {
        // x, out: (n / 4) vec4
        x.dev
            .dispatch(&SHADER, op.entry4(), &[], &p, &bindings, elems_grid(n / 4)?)?;
    } else {
        // x: (n) -> out: (n)
        x.dev
            .dispatch(&SHADER, op.entry(), &[], &p, &bindings, elems_grid(n)?)?;
    }
    Ok(out)
}

/// Gradient of a unary op: `g * f'(saved)`, where `saved` is the forward input or output
/// (as the op's row in `table.rs` says).
pub(crate) fn backward(op: Op, saved: &Tensor, g: &Tensor, s: f32) -> Result<Tensor> {
    let out = Tensor::empty(&g.dev, "backward", &g.shape, DType::F32)?;
    let n = g.numel();
    let p = Params {
        n: n as u32,
        _pad: 0,
        s,
        _pad2: 0,
    };
    let bindings = [
        (&*saved.storage, Access::Read),
        (&*g.storage, Access::Read),
        (&*out.storage, Access::ReadWrite),
    ];
    if n.is_multiple_of(4) {
        // saved, g, out: (n / 4) vec4 (on lavapipe a quarter of the storage accesses)
        g.dev.dispatch(
            &SHADER,
            op.backward_entry4(),
            &[],
            &p,
            &bindings,
            elems_grid(n / 4)?,
        )?;
    } else {
        // saved, g: (n) -> out: (n)
        g.dev.dispatch(
            &SHADER,
            op.backward_entry(),
            &[],
            &p,
            &bindings,
            elems_grid(n)?,
        )?;
    }
    Ok(out)
}
