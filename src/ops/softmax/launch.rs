//! Launcher for `shaders/softmax.wgsl` and `shaders/softmax_subgroup.wgsl`: softmax and
//! log-softmax over the last axis, and their backward. The form (a workgroup, a subgroup or
//! one invocation per row) is chosen per adapter and row length by `rows::choose`, whose rule
//! is documented in `src/ops/rows.rs`.

use crate::error::{Error, Result};
use crate::ops::rows;
use crate::ops::shader;
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("softmax", include_str!("../../../shaders/softmax.wgsl"));
/// Compiled only when the device has subgroups.
pub(crate) const SUBGROUP_SHADER: Shader = shader(
    "softmax_subgroup",
    include_str!("../../../shaders/softmax_subgroup.wgsl"),
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

pub(crate) fn softmax(x: &Tensor, log: bool) -> Result<Tensor> {
    let name = if log { "log_softmax" } else { "softmax" };
    x.expect_dtype(name, DType::F32)?;
    let cols = match x.shape.last() {
        Some(&c) if c > 0 => c,
        _ => {
            return Err(Error::Shape {
                op: name,
                message: format!("needs a non-empty last axis, got shape {:?}", x.shape),
            });
        }
    };
    let out = Tensor::empty(&x.dev, name, &x.shape, DType::F32)?;
    let rows = x.numel() / cols;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad: [0; 2],
    };
    let entries = if log {
        &rows::row_entries!("log_softmax")
    } else {
        &rows::row_entries!("softmax")
    };
    let pl = rows::plan(&x.dev, &SHADER, &SUBGROUP_SHADER, entries, rows, cols)?;
    // x: (rows, cols) -> out: (rows, cols)
    x.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        pl.grid,
    )?;
    Ok(out)
}

/// Gradient of softmax / log-softmax from the forward output `y` and the output gradient `g`.
pub(crate) fn backward(y: &Tensor, g: &Tensor, log: bool) -> Result<Tensor> {
    let cols = *y.shape.last().expect("softmax output has a last axis");
    let rows = y.numel() / cols;
    let out = Tensor::empty(&y.dev, "softmax_backward", &y.shape, DType::F32)?;
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad: [0; 2],
    };
    let entries = if log {
        &rows::row_entries!("log_softmax_backward")
    } else {
        &rows::row_entries!("softmax_backward")
    };
    let pl = rows::plan(&y.dev, &SHADER, &SUBGROUP_SHADER, entries, rows, cols)?;
    // y, g: (rows, cols) -> out: (rows, cols)
    y.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &p,
        &[
            (&y.storage, Access::Read),
            (&g.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        pl.grid,
    )?;
    Ok(out)
}
