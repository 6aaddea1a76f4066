//! Launcher for `shaders/layout.wgsl`: transpose of the last two axes, row gather (of a whole
//! table or of one row chunk of a larger one), and column-block copies (concat / split).

use crate::error::{Error, Result};
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("layout", include_str!("../../../shaders/layout.wgsl"));

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
    offset: u32,
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
    gather_rows_at(table, ids, None)
}

/// With `offset`, `table` holds rows `offset .. offset + V` of a larger table: id `i` picks
/// row `i - offset`, and ids outside that range give zero rows (no range error). Without it,
/// every id must be a row of `table`.
pub(crate) fn gather_rows_at(table: &Tensor, ids: &Tensor, offset: Option<u32>) -> Result<Tensor> {
    // f16 / bf16 tables give f32 rows (the embedding of a model held in half precision).
    let (entry, bf16) = match table.dtype {
        DType::F16 => ("gather_rows_half", 0.0),
        DType::BF16 => ("gather_rows_half", 1.0),
        _ => ("gather_rows", 0.0),
    };
    let constants = [("BF16", bf16)];
    let constants = if table.dtype.is_half() {
        &constants[..]
    } else {
        &[]
    };
    if !table.dtype.is_float() {
        table.expect_dtype("gather_rows", DType::F32)?;
    }
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
        && offset.is_none()
        && bound as usize > vocab
    {
        // The bound saturates at u32::MAX: name the id itself (and where it is) from the host
        // copy when there is one.
        let first_bad = ids.host_ids.as_deref().and_then(|h| {
            h.iter()
                .enumerate()
                .find(|&(_, &i)| i as usize >= vocab)
                .map(|(p, &i)| (p, i))
        });
        let what = match first_bad {
            Some((pos, id)) => format!("id {id} (at position {pos})"),
            None => format!("id {}", bound - 1),
        };
        return Err(Error::InvalidArgument {
            op: "gather_rows",
            message: format!("{what} is out of range for a table of {vocab} rows"),
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
        offset: offset.unwrap_or(0),
    };
    // table: (V, D) (f32, or half pairs), ids: (n), out: (n, D)
    table.dev.dispatch(
        &SHADER,
        entry,
        constants,
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmbedParams {
    n: u32,
    dim: u32,
    vocab: u32,
    pad_n: u32,
    j: u32,
    k: u32,
    offset: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<EmbedParams>() == 32);

/// Gradient of `gather_rows` for the table: `g` (ids..., D) scattered back to (V, D).
/// Deterministic, without float atomics: positions are sorted by (id, position), cut into
/// segments (at id changes and every `SEG` sorted positions), each segment summed in order,
/// then each row sums its segments in order. With `host_ids` (ids made by `from_u32`) the sort
/// and the per-id offsets are computed on the host and uploaded (two small u32 buffers); ids
/// that exist only on the GPU are sorted there (a bitonic network, about log2(n)^2 / 2
/// dispatches). Both paths add the same numbers in the same order, so they give the same bits.
/// With `offset` (a row chunk, see [`gather_rows_at`]) row `r` collects the ids `offset + r`.
pub(crate) fn gather_rows_backward(
    g: &Tensor,
    ids: &Tensor,
    host_ids: Option<&[u32]>,
    vocab: usize,
    offset: u32,
) -> Result<Tensor> {
    const OP: &str = "gather_rows backward";
    ids.expect_dtype(OP, DType::U32)?;
    let dim = *g.shape.last().unwrap_or(&1);
    let n = ids.numel();
    if g.numel() != n * dim {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "gradient of shape {:?} does not match ids of shape {:?} and rows of {dim}",
                g.shape, ids.shape
            ),
        });
    }
    let dev = &g.dev;
    let pad_n = n.next_power_of_two();
    let mut p = EmbedParams {
        n: n as u32,
        dim: dim as u32,
        vocab: vocab as u32,
        pad_n: pad_n as u32,
        j: 0,
        k: 0,
        offset,
        _pad: 0,
    };
    let (sorted, offsets) = match host_ids {
        Some(h) => {
            // The row of each position, ids outside the table past the last (as the GPU keys).
            let row = |id: u32| (id.wrapping_sub(offset) as usize).min(vocab);
            // Stable sort by row: each row's positions stay ascending, i.e. by (row, position).
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by_key(|&i| row(h[i as usize]));
            let mut offsets = vec![0u32; vocab + 1];
            for &id in h {
                let r = row(id);
                if r < vocab {
                    offsets[r + 1] += 1;
                }
            }
            for v in 0..vocab {
                offsets[v + 1] += offsets[v];
            }
            (
                dev.upload(bytemuck::cast_slice(&order))?,
                dev.upload(bytemuck::cast_slice(&offsets))?,
            )
        }
        None => {
            let sorted = Tensor::empty(dev, OP, &[pad_n], DType::U32)?;
            let offsets = Tensor::empty(dev, OP, &[vocab + 1], DType::U32)?;
            let sort_bindings = [
                (&*ids.storage, Access::Read),
                (&*sorted.storage, Access::ReadWrite),
            ];
            // ids: (n) -> sorted: (pad_n) = 0, 1, ..., n - 1, then padding
            dev.dispatch(
                &SHADER,
                "embed_sort_init",
                &[],
                &p,
                &sort_bindings,
                elems_grid(pad_n)?,
            )?;
            let mut k = 2;
            while k <= pad_n {
                let mut j = k / 2;
                while j > 0 {
                    p.j = j as u32;
                    p.k = k as u32;
                    // ids: (n), sorted: (pad_n) -> one compare-exchange step
                    dev.dispatch(
                        &SHADER,
                        "embed_bitonic",
                        &[],
                        &p,
                        &sort_bindings,
                        elems_grid(pad_n)?,
                    )?;
                    j /= 2;
                }
                k *= 2;
            }
            // ids: (n), sorted: (n) -> offsets: (V + 1)
            dev.dispatch(
                &SHADER,
                "embed_offsets",
                &[],
                &p,
                &[
                    (&ids.storage, Access::Read),
                    (&sorted.storage, Access::Read),
                    (&offsets.storage, Access::ReadWrite),
                ],
                elems_grid(vocab + 1)?,
            )?;
            (sorted.storage, offsets.storage)
        }
    };
    let partial = Tensor::empty(dev, OP, &[n, dim], DType::F32)?;
    let out = Tensor::empty(dev, OP, &[vocab, dim], DType::F32)?;
    // ids: (n), sorted: (n), g: (n, D) -> partial: (n, D) (segment sums at segment heads)
    dev.dispatch(
        &SHADER,
        "embed_segments",
        &[],
        &p,
        &[
            (&ids.storage, Access::Read),
            (&sorted, Access::Read),
            (&g.storage, Access::Read),
            (&partial.storage, Access::ReadWrite),
        ],
        elems_grid(n * dim)?,
    )?;
    // offsets: (V + 1), partial: (n, D) -> out: (V, D) (ids and sorted are bound, unused)
    dev.dispatch(
        &SHADER,
        "embed_rows",
        &[],
        &p,
        &[
            (&ids.storage, Access::Read),
            (&sorted, Access::Read),
            (&offsets, Access::Read),
            (&partial.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(vocab * dim)?,
    )?;
    Ok(out)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyColsParams {
    n: u32,
    width: u32,
    src_cols: u32,
    src_off: u32,
    dst_cols: u32,
    dst_off: u32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<CopyColsParams>() == 32);

/// Copy columns `src_off .. src_off + width` of every row of `src` (rows, src_cols) into
/// columns `dst_off ..` of `dst` (rows, dst_cols); both are row-major views of `rows` rows.
pub(crate) fn copy_cols(
    src: &Tensor,
    src_off: usize,
    dst: &Tensor,
    dst_off: usize,
    rows: usize,
    width: usize,
) -> Result<()> {
    let (src_cols, dst_cols) = (
        *src.shape.last().unwrap_or(&1),
        *dst.shape.last().unwrap_or(&1),
    );
    debug_assert!(src_off + width <= src_cols && dst_off + width <= dst_cols);
    debug_assert!(src.numel() == rows * src_cols && dst.numel() == rows * dst_cols);
    let n = rows * width;
    if n == 0 {
        return Ok(());
    }
    let p = CopyColsParams {
        n: n as u32,
        width: width as u32,
        src_cols: src_cols as u32,
        src_off: src_off as u32,
        dst_cols: dst_cols as u32,
        dst_off: dst_off as u32,
        _pad: [0; 2],
    };
    // src: (rows, src_cols) -> dst: (rows, dst_cols), columns dst_off .. dst_off + width
    src.dev.dispatch(
        &SHADER,
        "copy_cols",
        &[],
        &p,
        &[
            (&src.storage, Access::Read),
            (&dst.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    Ok(())
}
