//! Launcher for `shaders/unary.wgsl`: elementwise maps and scalar ops.

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader, Storage};
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
    // x: (n) -> out: (n)
    map(&out, [op.entry(), op.entry4()], s, &[&*x.storage])?;
    Ok(out)
}

/// Gradient of a unary op: `g * f'(saved)`, where `saved` is the forward input or output
/// (as the op's row in `table.rs` says).
pub(crate) fn backward(op: Op, saved: &Tensor, g: &Tensor, s: f32) -> Result<Tensor> {
    let out = Tensor::empty(&g.dev, "backward", &g.shape, DType::F32)?;
    // saved, g: (n) -> out: (n)
    map(
        &out,
        [op.backward_entry(), op.backward_entry4()],
        s,
        &[&*saved.storage, &*g.storage],
    )?;
    Ok(out)
}

/// One invocation per element of `out`, reading `inputs` of the same length: the vec4 entry
/// (`entries[1]`) when the count is a multiple of 4 (on lavapipe a quarter of the storage
/// accesses), else the scalar one.
fn map(out: &Tensor, entries: [&str; 2], s: f32, inputs: &[&Storage]) -> Result<()> {
    let n = out.numel();
    let p = Params {
        n: n as u32,
        _pad: 0,
        s,
        _pad2: 0,
    };
    // inputs..., out (at most two inputs: the backward's saved value and gradient)
    let mut bindings = [(&*out.storage, Access::ReadWrite); 3];
    for (b, &i) in bindings.iter_mut().zip(inputs) {
        *b = (i, Access::Read);
    }
    bindings[inputs.len()] = (&*out.storage, Access::ReadWrite);
    let bindings = &bindings[..=inputs.len()];
    let (entry, grid) = if n.is_multiple_of(4) {
        (entries[1], elems_grid(n / 4)?)
    } else {
        (entries[0], elems_grid(n)?)
    };
    out.dev.dispatch(&SHADER, entry, &[], &p, bindings, grid)
}
