//! The head split / merge permutations of `shaders/attention.wgsl`: (B, T, slots * C) rows to
//! (B, H, T, D) heads and back, vec4 entries where D allows.

use super::launch::{Params, SHADER, dims};
use crate::error::Result;
use crate::ops::elems_grid;
use crate::runtime::Access;
use crate::tensor::{DType, Tensor};

fn layout_params(units: usize, t: usize, heads: usize, du: usize) -> Params {
    Params {
        n: units as u32,
        t: t as u32,
        heads: heads as u32,
        du: du as u32,
        ..Params::default()
    }
}

/// Column block `slot` of `rows` (B, T, slots * C) -> (B, H, T, D) with D = C / heads.
pub(crate) fn rows_to_heads(
    rows: &Tensor,
    slot: usize,
    slots: usize,
    heads: usize,
) -> Result<Tensor> {
    let (b, t, w) = (rows.shape[0], rows.shape[1], rows.shape[2]);
    let d = w / slots / heads;
    let out = Tensor::empty(&rows.dev, "split_heads", &[b, heads, t, d], DType::F32)?;
    let vec4 = d.is_multiple_of(4);
    let du = if vec4 { d / 4 } else { d };
    let units = b * heads * t * du;
    let p = Params {
        slot: slot as u32,
        slots: slots as u32,
        ..layout_params(units, t, heads, du)
    };
    // rows: (B, T, slots * C) -> out: (B, H, T, D)
    rows.dev.dispatch(
        &SHADER,
        if vec4 {
            "rows_to_heads4"
        } else {
            "rows_to_heads"
        },
        &[],
        &p,
        &[
            (&rows.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(units)?,
    )?;
    Ok(out)
}

/// `heads` (B, H, T, D) -> (B, T, slots * C) holding it in column block `slot`, zeros elsewhere.
pub(crate) fn heads_to_rows(heads: &Tensor, slot: usize, slots: usize) -> Result<Tensor> {
    let (b, h, t, d) = dims(heads);
    let out = Tensor::empty(
        &heads.dev,
        "merge_heads",
        &[b, t, slots * h * d],
        DType::F32,
    )?;
    let vec4 = d.is_multiple_of(4);
    let du = if vec4 { d / 4 } else { d };
    let units = b * t * slots * h * du;
    let p = Params {
        slot: slot as u32,
        slots: slots as u32,
        ..layout_params(units, t, h, du)
    };
    // heads: (B, H, T, D) -> out: (B, T, slots * H * D)
    heads.dev.dispatch(
        &SHADER,
        if vec4 {
            "heads_to_rows4"
        } else {
            "heads_to_rows"
        },
        &[],
        &p,
        &[
            (&heads.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(units)?,
    )?;
    Ok(out)
}

/// `q`, `k`, `v` (B, H, T, D) -> (B, T, 3 * H * D), tensor s in column block s (the inverse of
/// three [`rows_to_heads`] with 3 slots).
pub(crate) fn heads3_to_rows(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = dims(q);
    let out = Tensor::empty(&q.dev, "split_heads", &[b, t, 3 * h * d], DType::F32)?;
    let vec4 = d.is_multiple_of(4);
    let du = if vec4 { d / 4 } else { d };
    let units = b * t * 3 * h * du;
    let p = layout_params(units, t, h, du);
    // q, k, v: (B, H, T, D) -> out: (B, T, 3 * H * D)
    q.dev.dispatch(
        &SHADER,
        if vec4 {
            "heads3_to_rows4"
        } else {
            "heads3_to_rows"
        },
        &[],
        &p,
        &[
            (&q.storage, Access::Read),
            (&k.storage, Access::Read),
            (&v.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(units)?,
    )?;
    Ok(out)
}

/// Columns `col0 .. col0 + heads * D` of `rows` (B, T, W) -> (B, H, T, D) with H = `heads`.
pub(crate) fn cols_to_heads(rows: &Tensor, col0: usize, heads: usize, d: usize) -> Result<Tensor> {
    let (b, t, w) = (rows.shape[0], rows.shape[1], rows.shape[2]);
    let out = Tensor::empty(&rows.dev, "split_qkv", &[b, heads, t, d], DType::F32)?;
    // vec4 units when the head size, the range's start and the row width all allow.
    let vec4 = d.is_multiple_of(4) && col0.is_multiple_of(4) && w.is_multiple_of(4);
    let k = if vec4 { 4 } else { 1 };
    let units = b * heads * t * d / k;
    if units == 0 {
        return Ok(out);
    }
    let p = Params {
        slot: (col0 / k) as u32,
        slots: (w / k) as u32,
        ..layout_params(units, t, heads, d / k)
    };
    // rows: (B, T, W) -> out: (B, H, T, D)
    rows.dev.dispatch(
        &SHADER,
        if vec4 {
            "cols_to_heads4"
        } else {
            "cols_to_heads"
        },
        &[],
        &p,
        &[
            (&rows.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(units)?,
    )?;
    Ok(out)
}

/// `heads` (B, H, T, D) -> (B, T, W) holding it in columns `col0 .. col0 + H * D`, zeros
/// elsewhere (the gradient of [`cols_to_heads`]).
pub(crate) fn heads_to_cols(heads: &Tensor, col0: usize, w: usize) -> Result<Tensor> {
    let (b, h, t, d) = dims(heads);
    let out = Tensor::empty(&heads.dev, "split_qkv backward", &[b, t, w], DType::F32)?;
    let vec4 = d.is_multiple_of(4) && col0.is_multiple_of(4) && w.is_multiple_of(4);
    let k = if vec4 { 4 } else { 1 };
    let units = b * t * w / k;
    if units == 0 {
        return Ok(out);
    }
    let p = Params {
        slot: (col0 / k) as u32,
        slots: (w / k) as u32,
        ..layout_params(units, t, h, d / k)
    };
    // heads: (B, H, T, D) -> out: (B, T, W)
    heads.dev.dispatch(
        &SHADER,
        if vec4 {
            "heads_to_cols4"
        } else {
            "heads_to_cols"
        },
        &[],
        &p,
        &[
            (&heads.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(units)?,
    )?;
    Ok(out)
}
