//! Launcher for `shaders/loss.wgsl`: mean squared error, binary cross-entropy on logits,
//! sparse categorical cross-entropy (optional ignore index), and binary / multi-class accuracy.
//! Every result is a shape-`[]` mean computed on the GPU by deterministic reductions.
//!
//! The per-row kernels of cross-entropy and accuracy come in three forms (a workgroup, a
//! subgroup or one invocation per row, `shaders/loss_subgroup.wgsl` for the subgroup one),
//! chosen per adapter and class count by `rows::choose`, whose rule is documented in
//! `src/ops/rows.rs`.
//! The final sums over rows stay one workgroup each (one barrier tree per loss).

use crate::error::{Error, Result};
use crate::ops::rows::{self, RowKernel};
use crate::ops::{WG, elems_grid, shader};
use crate::runtime::{Access, Shader, grid_1d};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("loss", include_str!("../../../shaders/loss.wgsl"));
/// Compiled only when the device has subgroups.
pub(crate) const SUBGROUP_SHADER: Shader = shader(
    "loss_subgroup",
    include_str!("../../../shaders/loss_subgroup.wgsl"),
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElemParams {
    n: u32,
    chunk: u32,
    kind: u32,
    parts: u32,
    scale: f32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<ElemParams>() == 32);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FinishParams {
    n: u32,
    scale: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<FinishParams>() == 16);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowsParams {
    rows: u32,
    cols: u32,
    ignore: u32,
    has_ignore: u32,
    n: u32,
    nan_bits: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<RowsParams>() == 32);

/// Which elementwise mean (`KIND_*` in the WGSL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    Mse = 0,
    Bce = 1,
    BinaryAccuracy = 2,
}

impl Elem {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Elem::Mse => "mse_loss",
            Elem::Bce => "bce_with_logits",
            Elem::BinaryAccuracy => "binary_accuracy",
        }
    }
}

/// Most partial sums of the first pass (the final pass is one workgroup).
const MAX_PARTS: usize = 1024;
/// Elements one invocation of the invocation form of the elementwise means sums (at least).
const ELEM_INV_CHUNK: usize = 1024;

fn check_pair(op: &'static str, x: &Tensor, t: &Tensor) -> Result<()> {
    x.expect_dtype(op, DType::F32)?;
    t.expect_dtype(op, DType::F32)?;
    x.same_device(op, t)?;
    if x.shape != t.shape {
        return Err(Error::Shape {
            op,
            message: format!(
                "input {:?} and target {:?} must have the same shape",
                x.shape, t.shape
            ),
        });
    }
    if x.numel() == 0 {
        return Err(Error::Shape {
            op,
            message: format!("the mean of an empty input {:?} is undefined", x.shape),
        });
    }
    Ok(())
}

/// Sum `partial` (n) times `scale` into the one-element `out`.
fn finish_sum(partial: &Tensor, n: usize, scale: f32, out: &Tensor) -> Result<()> {
    let p = FinishParams {
        n: n as u32,
        scale,
        _pad: [0; 2],
    };
    // partial: (n) -> out: ()
    partial.dev.dispatch(
        &SHADER,
        "finish_sum",
        &[],
        &p,
        &[
            (&partial.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        [1, 1, 1],
    )
}

/// mean(term(x, t)) over all elements, as a shape-`[]` tensor.
pub(crate) fn elem_mean(x: &Tensor, t: &Tensor, kind: Elem) -> Result<Tensor> {
    let op = kind.name();
    check_pair(op, x, t)?;
    let n = x.numel();
    // The per-row form rule with the chunk as the row: one invocation per chunk looping over
    // it on CPU adapters (no barriers; parts capped at 65,536, so a chunk stays far under
    // llvmpipe's loop cap), one workgroup per chunk with a tree elsewhere.
    let inv = rows::choose(&x.dev, ELEM_INV_CHUNK) == RowKernel::Invocation;
    let chunk = if inv {
        n.div_ceil(1 << 16).max(ELEM_INV_CHUNK)
    } else {
        n.div_ceil(MAX_PARTS).max(4 * WG as usize)
    };
    let parts = n.div_ceil(chunk);
    let scale = (1.0 / n as f64) as f32;
    let out = Tensor::empty(&x.dev, op, &[], DType::F32)?;
    let partial = if parts == 1 {
        out.clone()
    } else {
        Tensor::empty(&x.dev, op, &[parts], DType::F32)?
    };
    let p = ElemParams {
        n: n as u32,
        chunk: chunk as u32,
        kind: kind as u32,
        parts: parts as u32,
        scale,
        _pad: [0; 3],
    };
    let (entry, grid) = if inv {
        (
            "elem_partial_inv",
            rows::grid(RowKernel::Invocation, parts)?,
        )
    } else {
        ("elem_partial", grid_1d(parts as u64)?)
    };
    // x, t: (n) -> partial: (parts), or out: () when parts == 1
    x.dev.dispatch(
        &SHADER,
        entry,
        &[("KIND", f64::from(kind as u32))],
        &p,
        &[
            (&x.storage, Access::Read),
            (&t.storage, Access::Read),
            (&partial.storage, Access::ReadWrite),
        ],
        grid,
    )?;
    if parts > 1 {
        finish_sum(&partial, parts, scale, &out)?;
    }
    Ok(out)
}

/// Gradient of `elem_mean(x, t, kind)` for x, scaled by the upstream scalar gradient `g` ().
pub(crate) fn elem_backward(x: &Tensor, t: &Tensor, g: &Tensor, kind: Elem) -> Result<Tensor> {
    let n = x.numel();
    let dx = Tensor::empty(&x.dev, kind.name(), &x.shape, DType::F32)?;
    let p = ElemParams {
        n: n as u32,
        chunk: 0,
        kind: kind as u32,
        parts: 0,
        scale: (1.0 / n as f64) as f32,
        _pad: [0; 3],
    };
    // x, t: (n), g: () -> dx: (n)
    x.dev.dispatch(
        &SHADER,
        "elem_backward",
        &[("KIND", f64::from(kind as u32))],
        &p,
        &[
            (&x.storage, Access::Read),
            (&t.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dx.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    Ok(dx)
}

/// Checks logits (..., C) against u32 targets (...): returns (rows, C).
fn check_rows(op: &'static str, z: &Tensor, t: &Tensor) -> Result<(usize, usize)> {
    z.expect_dtype(op, DType::F32)?;
    t.expect_dtype(op, DType::U32)?;
    z.same_device(op, t)?;
    let cols = match z.shape.last() {
        Some(&c) if c > 0 => c,
        _ => {
            return Err(Error::Shape {
                op,
                message: format!(
                    "logits need a non-empty class axis, got shape {:?}",
                    z.shape
                ),
            });
        }
    };
    let lead = &z.shape[..z.shape.len() - 1];
    if t.shape != lead {
        return Err(Error::Shape {
            op,
            message: format!(
                "logits {:?} need targets of shape {lead:?}, got {:?}",
                z.shape, t.shape
            ),
        });
    }
    let rows = t.numel();
    if rows == 0 {
        return Err(Error::Shape {
            op,
            message: format!("the mean over no rows (logits {:?}) is undefined", z.shape),
        });
    }
    Ok((rows, cols))
}

fn rows_params(rows: usize, cols: usize, ignore: Option<u32>) -> RowsParams {
    RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        ignore: ignore.unwrap_or(0),
        has_ignore: u32::from(ignore.is_some()),
        n: (rows * cols) as u32,
        nan_bits: f32::NAN.to_bits(),
        _pad: [0; 2],
    }
}

/// What the cross-entropy forward keeps for its backward.
pub(crate) struct CeSaved {
    /// (rows) log-sum-exp of each row of logits.
    pub lse: Tensor,
    /// () number of counted (non-ignored) rows, as f32.
    pub count: Tensor,
}

/// Mean over counted rows of `-log_softmax(z)[t]`; 0 when every row is ignored.
pub(crate) fn cross_entropy(
    z: &Tensor,
    t: &Tensor,
    ignore: Option<u32>,
) -> Result<(Tensor, CeSaved)> {
    const OP: &str = "cross_entropy";
    let (rows, cols) = check_rows(OP, z, t)?;
    if let Some(ids) = &t.host_ids
        && let Some((pos, &bad)) = ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= cols && Some(id) != ignore)
    {
        return Err(Error::InvalidArgument {
            op: OP,
            message: format!(
                "target {bad} at position {pos} is out of range for {cols} classes (logits {:?})",
                z.shape
            ),
        });
    }
    let stats = Tensor::empty(&z.dev, OP, &[rows, 2], DType::F32)?;
    let lse = Tensor::empty(&z.dev, OP, &[rows], DType::F32)?;
    let loss = Tensor::empty(&z.dev, OP, &[], DType::F32)?;
    let count = Tensor::empty(&z.dev, OP, &[], DType::F32)?;
    let p = rows_params(rows, cols, ignore);
    let pl = rows::plan(
        &z.dev,
        &SHADER,
        &SUBGROUP_SHADER,
        &rows::row_entries!("ce_rows"),
        rows,
        cols,
    )?;
    // z: (rows, C), t: (rows) -> stats: (rows, 2) (loss, counted), lse: (rows)
    z.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &p,
        &[
            (&z.storage, Access::Read),
            (&t.storage, Access::Read),
            (&stats.storage, Access::ReadWrite),
            (&lse.storage, Access::ReadWrite),
        ],
        pl.grid,
    )?;
    // stats: (rows, 2) -> loss: (), count: ()
    z.dev.dispatch(
        &SHADER,
        "ce_finish",
        &[],
        &p,
        &[
            (&stats.storage, Access::Read),
            (&loss.storage, Access::ReadWrite),
            (&count.storage, Access::ReadWrite),
        ],
        [1, 1, 1],
    )?;
    Ok((loss, CeSaved { lse, count }))
}

/// Gradient of the cross-entropy for the logits, scaled by the upstream scalar gradient `g` ().
pub(crate) fn cross_entropy_backward(
    z: &Tensor,
    t: &Tensor,
    saved: &CeSaved,
    g: &Tensor,
    ignore: Option<u32>,
) -> Result<Tensor> {
    let cols = *z.shape.last().expect("checked in the forward");
    let rows = t.numel();
    let dz = Tensor::empty(&z.dev, "cross_entropy backward", &z.shape, DType::F32)?;
    // z: (rows, C), t: (rows), lse: (rows), count: (), g: () -> dz: (rows, C)
    z.dev.dispatch(
        &SHADER,
        "ce_backward",
        &[],
        &rows_params(rows, cols, ignore),
        &[
            (&z.storage, Access::Read),
            (&t.storage, Access::Read),
            (&saved.lse.storage, Access::Read),
            (&saved.count.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dz.storage, Access::ReadWrite),
        ],
        elems_grid(rows * cols)?,
    )?;
    Ok(dz)
}

/// Fraction of rows whose argmax (first index on ties) equals the target id.
pub(crate) fn accuracy(z: &Tensor, t: &Tensor) -> Result<Tensor> {
    const OP: &str = "accuracy";
    let (rows, cols) = check_rows(OP, z, t)?;
    let correct = Tensor::empty(&z.dev, OP, &[rows], DType::F32)?;
    let out = Tensor::empty(&z.dev, OP, &[], DType::F32)?;
    let pl = rows::plan(
        &z.dev,
        &SHADER,
        &SUBGROUP_SHADER,
        &rows::row_entries!("accuracy_rows"),
        rows,
        cols,
    )?;
    // z: (rows, C), t: (rows) -> correct: (rows)
    z.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &rows_params(rows, cols, None),
        &[
            (&z.storage, Access::Read),
            (&t.storage, Access::Read),
            (&correct.storage, Access::ReadWrite),
        ],
        pl.grid,
    )?;
    finish_sum(&correct, rows, (1.0 / rows as f64) as f32, &out)?;
    Ok(out)
}
