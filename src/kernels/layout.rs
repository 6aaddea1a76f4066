//! Launcher for `shaders/layout.wgsl`: transpose of the last two axes, row gather.

use super::{elems_grid, shader};
use crate::error::{Error, Result};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("layout", include_str!("../../shaders/layout.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TransposeParams {
    batch: u32,
    rows: u32,
    cols: u32,
    n: u32,
}
const _: () = assert!(std::mem::size_of::<TransposeParams>() == 16);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GatherParams {
    n: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<GatherParams>() == 16);

/// (..., M, N) -> (..., N, M), materialised.
pub(crate) fn transpose(x: &Tensor) -> Result<Tensor> {
    x.expect_dtype("transpose", DType::F32)?;
    let r = x.shape.len();
    if r < 2 {
        return Err(Error::Shape {
            op: "transpose",
            message: format!("needs rank >= 2, got shape {:?}", x.shape),
        });
    }
    let (m, n) = (x.shape[r - 2], x.shape[r - 1]);
    let mut shape = x.shape.clone();
    shape.swap(r - 2, r - 1);
    let out = Tensor::empty(&x.dev, "transpose", &shape, DType::F32)?;
    let total = x.numel();
    let p = TransposeParams {
        batch: (total / (m * n).max(1)) as u32,
        rows: m as u32,
        cols: n as u32,
        n: total as u32,
    };
    // x: (batch, M, N) -> out: (batch, N, M)
    x.dev.dispatch(
        &SHADER,
        "transpose",
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(total)?,
    )?;
    Ok(out)
}

/// table (V, D) gathered by ids (...) -> (..., D).
pub(crate) fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    table.expect_dtype("gather_rows", DType::F32)?;
    ids.expect_dtype("gather_rows", DType::U32)?;
    table.same_device("gather_rows", ids)?;
    if table.shape.len() != 2 {
        return Err(Error::Shape {
            op: "gather_rows",
            message: format!("table must be (rows, dim), got shape {:?}", table.shape),
        });
    }
    let (vocab, dim) = (table.shape[0], table.shape[1]);
    if let Some(bound) = ids.id_bound
        && bound as usize > vocab
    {
        return Err(Error::InvalidArgument {
            op: "gather_rows",
            message: format!(
                "id {} is out of range for a table of {vocab} rows",
                bound - 1
            ),
        });
    }
    let mut shape = ids.shape.clone();
    shape.push(dim);
    let out = Tensor::empty(&table.dev, "gather_rows", &shape, DType::F32)?;
    let total = out.numel();
    let p = GatherParams {
        n: total as u32,
        dim: dim as u32,
        vocab: vocab as u32,
        _pad: 0,
    };
    // table: (V, D), ids: (n), out: (n, D)
    table.dev.dispatch(
        &SHADER,
        "gather_rows",
        &[],
        &p,
        &[
            (&table.storage, Access::Read),
            (&ids.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(total)?,
    )?;
    Ok(out)
}
