//! Launcher for `shaders/reduce.wgsl`: sum / mean / max over the last axis or all elements.

use super::shader;
use crate::error::{Error, Result};
use crate::runtime::{Access, Shader, grid_1d};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("reduce", include_str!("../../shaders/reduce.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    scale: f32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 16);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Sum,
    Mean,
    Max,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::Max => "max",
        }
    }
    fn entry(self) -> &'static str {
        match self {
            Op::Max => "max_rows",
            _ => "sum_rows",
        }
    }
}

/// Chunk count for the first pass of a full reduction: enough workgroups to fill a GPU.
const ALL_CHUNKS: usize = 1024;

fn rows_pass(x: &Tensor, out: &Tensor, rows: usize, cols: usize, op: Op, scale: f32) -> Result<()> {
    let p = Params {
        rows: rows as u32,
        cols: cols as u32,
        n: x.numel() as u32,
        scale,
    };
    // x: (rows, cols) -> out: (rows)
    x.dev.dispatch(
        &SHADER,
        op.entry(),
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        grid_1d(rows as u64)?,
    )
}

fn check(x: &Tensor, op: Op) -> Result<()> {
    x.expect_dtype(op.name(), DType::F32)?;
    if x.numel() == 0 {
        return Err(Error::Shape {
            op: op.name(),
            message: format!("cannot reduce an empty tensor of shape {:?}", x.shape),
        });
    }
    Ok(())
}

/// Reduce over the last axis: (..., C) -> (...).
pub(crate) fn last_axis(x: &Tensor, op: Op) -> Result<Tensor> {
    check(x, op)?;
    let Some(&cols) = x.shape.last() else {
        return Err(Error::Shape {
            op: op.name(),
            message: "a scalar has no last axis to reduce".into(),
        });
    };
    let rows = x.numel() / cols;
    let out_shape = &x.shape[..x.shape.len() - 1];
    let out = Tensor::empty(&x.dev, op.name(), out_shape, DType::F32)?;
    let scale = if op == Op::Mean {
        1.0 / cols as f32
    } else {
        1.0
    };
    rows_pass(x, &out, rows, cols, op, scale)?;
    Ok(out)
}

/// Reduce over every element: (...) -> () in two deterministic passes.
pub(crate) fn all(x: &Tensor, op: Op) -> Result<Tensor> {
    check(x, op)?;
    let n = x.numel();
    let scale = if op == Op::Mean { 1.0 / n as f32 } else { 1.0 };
    let out = Tensor::empty(&x.dev, op.name(), &[], DType::F32)?;
    if n <= 4096 {
        rows_pass(x, &out, 1, n, op, scale)?;
        return Ok(out);
    }
    let cols = n.div_ceil(ALL_CHUNKS);
    let rows = n.div_ceil(cols);
    let partial = Tensor::empty(&x.dev, op.name(), &[rows], DType::F32)?;
    rows_pass(x, &partial, rows, cols, op, 1.0)?;
    rows_pass(&partial, &out, 1, rows, op, scale)?;
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SumToParams {
    n_out: u32,
    n_red: u32,
    n_keep: u32,
    n_dims_red: u32,
    chunk: u32,
    n_chunks: u32,
    _pad: [u32; 2],
    keep_size: [u32; 8],
    keep_stride: [u32; 8],
    red_size: [u32; 8],
    red_stride: [u32; 8],
}
const _: () = assert!(std::mem::size_of::<SumToParams>() == 160);

/// Terms one invocation of `sum_to` adds (times up to 9 loop trips each, under llvmpipe's
/// 65,535-iteration loop limit).
const SUM_TO_CHUNK: usize = 2048;

/// Sum a gradient of broadcast shape `g.shape` down to `shape` (which broadcasts to it).
pub(crate) fn sum_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape == shape {
        return Ok(g.clone());
    }
    let rank = g.shape.len();
    if shape.len() > rank {
        return Err(Error::Shape {
            op: "sum_to",
            message: format!("cannot reduce {:?} to the larger rank {shape:?}", g.shape),
        });
    }
    let padded: Vec<usize> = std::iter::repeat_n(1, rank - shape.len())
        .chain(shape.iter().copied())
        .collect();
    let mut p = SumToParams {
        n_out: 0,
        n_red: 1,
        n_keep: 0,
        n_dims_red: 0,
        chunk: SUM_TO_CHUNK as u32,
        n_chunks: 1,
        _pad: [0; 2],
        keep_size: [1; 8],
        keep_stride: [0; 8],
        red_size: [1; 8],
        red_stride: [0; 8],
    };
    let mut stride = 1usize;
    let mut strides = vec![0usize; rank];
    for d in (0..rank).rev() {
        strides[d] = stride;
        stride *= g.shape[d];
    }
    for d in 0..rank {
        let (gd, sd) = (g.shape[d], padded[d]);
        if sd == gd {
            if gd != 1 {
                p.keep_size[p.n_keep as usize] = gd as u32;
                p.keep_stride[p.n_keep as usize] = strides[d] as u32;
                p.n_keep += 1;
            }
        } else if sd == 1 {
            p.red_size[p.n_dims_red as usize] = gd as u32;
            p.red_stride[p.n_dims_red as usize] = strides[d] as u32;
            p.n_dims_red += 1;
            p.n_red *= gd as u32;
        } else {
            return Err(Error::Shape {
                op: "sum_to",
                message: format!("{shape:?} does not broadcast to {:?}", g.shape),
            });
        }
    }
    if p.n_keep > 8 || p.n_dims_red > 8 {
        return Err(Error::Shape {
            op: "sum_to",
            message: format!("rank of {:?} exceeds 8", g.shape),
        });
    }
    let n_out: usize = shape.iter().product();
    let chunks = (p.n_red as usize).div_ceil(SUM_TO_CHUNK).max(1);
    p.n_out = n_out as u32;
    p.n_chunks = chunks as u32;
    let partial_shape: Vec<usize> = if chunks == 1 {
        shape.to_vec()
    } else {
        vec![chunks, n_out]
    };
    let out = Tensor::empty(&g.dev, "sum_to", &partial_shape, DType::F32)?;
    // g: broadcast shape -> out: (chunks, n_out) partial sums
    g.dev.dispatch(
        &SHADER,
        "sum_to",
        &[],
        &p,
        &[
            (&g.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        super::elems_grid(n_out * chunks)?,
    )?;
    if chunks == 1 {
        return Ok(out);
    }
    // Sum the partials over the chunk axis, in order.
    let total = sum_to(&out, &[1, n_out])?;
    Ok(total.view_raw(shape.to_vec()))
}
