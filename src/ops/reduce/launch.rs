//! Launcher for `shaders/reduce.wgsl` and `shaders/reduce_subgroup.wgsl`: sum / mean / max
//! over the last axis or all elements, and `sum_to` (a broadcast gradient summed back to its
//! operand's shape). The row reductions come in three forms (a workgroup, a subgroup or one
//! invocation per row), chosen per adapter and row length by `rows::choose`, whose rule is
//! documented in `src/ops/rows.rs`.

use crate::error::{Error, Result};
use crate::ops::rows::{self, RowKernel};
use crate::ops::shader;
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("reduce", include_str!("../../../shaders/reduce.wgsl"));
/// Compiled only when the device has subgroups.
pub(crate) const SUBGROUP_SHADER: Shader = shader(
    "reduce_subgroup",
    include_str!("../../../shaders/reduce_subgroup.wgsl"),
);

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
    fn entry(self, k: RowKernel) -> &'static str {
        match (self, k) {
            (Op::Max, RowKernel::Workgroup) => "max_rows",
            (Op::Max, RowKernel::Subgroup) => "max_rows_sg",
            (Op::Max, RowKernel::Invocation) => "max_rows_inv",
            (_, RowKernel::Workgroup) => "sum_rows",
            (_, RowKernel::Subgroup) => "sum_rows_sg",
            (_, RowKernel::Invocation) => "sum_rows_inv",
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
    let k = rows::choose(&x.dev, cols);
    let shader = if k == RowKernel::Subgroup {
        &SUBGROUP_SHADER
    } else {
        &SHADER
    };
    // x: (rows, cols) -> out: (rows)
    x.dev.dispatch(
        shader,
        op.entry(k),
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        rows::grid(k, rows)?,
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SumColsParams {
    rows: u32,
    cols: u32,
    chunk: u32,
    n: u32,
}
const _: () = assert!(std::mem::size_of::<SumColsParams>() == 16);

/// Rows one invocation of `sum_cols` adds (loop trips, far under llvmpipe's 65,535 cap). Short
/// enough that a bias gradient over a few thousand rows spreads over chunks x columns
/// invocations; the (chunks, cols) partials are summed the same way until one row is left.
const SUM_COLS_CHUNK: usize = 256;

/// Column sums of `g` viewed as (rows, cols) -> (cols), in a fixed order. Columns go four
/// to an invocation (vec4 loads) when `cols % 4 == 0`.
fn sum_cols(g: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let chunks = rows.div_ceil(SUM_COLS_CHUNK);
    let out = Tensor::empty(&g.dev, "sum_to", &[chunks, cols], DType::F32)?;
    let vec4 = cols.is_multiple_of(4);
    let n = if vec4 {
        chunks * cols / 4
    } else {
        chunks * cols
    };
    let p = SumColsParams {
        rows: rows as u32,
        cols: cols as u32,
        chunk: SUM_COLS_CHUNK as u32,
        n: n as u32,
    };
    // g: (rows, cols) -> out: (chunks, cols) partial sums
    g.dev.dispatch(
        &SHADER,
        if vec4 { "sum_cols4" } else { "sum_cols" },
        &[],
        &p,
        &[
            (&g.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        crate::ops::elems_grid(n)?,
    )?;
    if chunks == 1 {
        return Ok(out.view_raw(vec![cols]));
    }
    sum_cols(&out, chunks, cols)
}

/// Sum a gradient of broadcast shape `g.shape` down to `shape` (which broadcasts to it).
///
/// When only leading dims are reduced (a bias gradient: (B, T, N) -> (N)) the sum is column
/// sums of a (rows, N) view ([`sum_cols`]); other patterns take the general strided kernel,
/// which decomposes every term's index (an integer division per dim and term: ~14 ms for
/// (2048, 384) -> (384) on lavapipe against ~1 ms for the column sums).
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
    // Leading dims reduced (size 1 in `shape`), the trailing ones kept whole.
    let lead = padded.iter().position(|&s| s != 1).unwrap_or(rank);
    if lead > 0 && padded[lead..] == g.shape[lead..] {
        let rows: usize = g.shape[..lead].iter().product();
        let cols: usize = g.shape[lead..].iter().product();
        if rows > 0 && cols > 0 {
            return Ok(sum_cols(g, rows, cols)?.view_raw(shape.to_vec()));
        }
    }
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
        crate::ops::elems_grid(n_out * chunks)?,
    )?;
    if chunks == 1 {
        return Ok(out);
    }
    // Sum the partials over the chunk axis, in order.
    let total = sum_to(&out, &[1, n_out])?;
    Ok(total.view_raw(shape.to_vec()))
}
