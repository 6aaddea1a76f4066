//! Launcher for `shaders/norm.wgsl` and `shaders/norm_subgroup.wgsl`: fused LayerNorm (forward
//! saving mean and rstd; backward for x and for gamma/beta) and dropout with a counter-based
//! mask. The LayerNorm row kernels (forward, backward for x) come in three forms (a workgroup,
//! a subgroup or one invocation per row), chosen per adapter and row length by
//! `rows::choose`, whose rule is documented in `src/ops/rows.rs`. The gamma/beta backward
//! is barrier-free column sums in every case.

use crate::error::{Error, Result};
use crate::ops::reduce::launch as reduce;
use crate::ops::rows;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader, Storage};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("norm", include_str!("../../../shaders/norm.wgsl"));
/// Compiled only when the device has subgroups.
pub(crate) const SUBGROUP_SHADER: Shader = shader(
    "norm_subgroup",
    include_str!("../../../shaders/norm_subgroup.wgsl"),
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LnParams {
    rows: u32,
    cols: u32,
    eps: f32,
    chunk: u32,
    n: u32,
    _pad: [u32; 3],
}
const _: () = assert!(std::mem::size_of::<LnParams>() == 32);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DropoutParams {
    n: u32,
    threshold: u32,
    k0: u32,
    k1: u32,
    k2: u32,
    scale: f32,
    _pad: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<DropoutParams>() == 32);

/// Rows of the gradient summed by one invocation of the gamma/beta partial pass. The partials
/// (ceil(rows / chunk), C) are then summed over their first axis in a fixed order.
const LN_PARAM_CHUNK: usize = 64;

fn ln_params(rows: usize, cols: usize, eps: f32) -> LnParams {
    LnParams {
        rows: rows as u32,
        cols: cols as u32,
        eps,
        chunk: LN_PARAM_CHUNK as u32,
        n: 0,
        _pad: [0; 3],
    }
}

/// LayerNorm over the last axis of `x` (..., C) with `gamma`, `beta` (C):
/// returns (y (..., C), mean (rows), rstd (rows)).
pub(crate) fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    check_ln("layer_norm", x, gamma, beta, eps)?;
    let (y, mean, rstd, _) = ln_forward(x, None, gamma, beta, eps)?;
    Ok((y, mean, rstd))
}

/// `sum = x + res` and LayerNorm of it over the last axis, in one kernel, for `x`, `res`
/// (..., C) and `gamma`, `beta` (C): returns (sum (..., C), y (..., C), mean (rows),
/// rstd (rows)); mean and rstd are the sum's.
pub(crate) fn add_layer_norm(
    x: &Tensor,
    res: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    const OP: &str = "add_layer_norm";
    check_ln(OP, x, gamma, beta, eps)?;
    res.expect_dtype(OP, DType::F32)?;
    x.same_device(OP, res)?;
    if res.shape != x.shape {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "x {:?} and the residual branch {:?} must have the same shape",
                x.shape, res.shape
            ),
        });
    }
    let (y, mean, rstd, sum) = ln_forward(x, Some(res), gamma, beta, eps)?;
    Ok((sum.expect("made with a residual"), y, mean, rstd))
}

fn check_ln(op: &'static str, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<()> {
    x.expect_dtype(op, DType::F32)?;
    gamma.expect_dtype(op, DType::F32)?;
    beta.expect_dtype(op, DType::F32)?;
    x.same_device(op, gamma)?;
    x.same_device(op, beta)?;
    let cols = match x.shape.last() {
        Some(&c) if c > 0 => c,
        _ => {
            return Err(Error::Shape {
                op,
                message: format!("needs a non-empty last axis, got shape {:?}", x.shape),
            });
        }
    };
    if gamma.shape != [cols] || beta.shape != [cols] {
        return Err(Error::Shape {
            op,
            message: format!(
                "gamma {:?} and beta {:?} must both be ({cols},) for input {:?}",
                gamma.shape, beta.shape, x.shape
            ),
        });
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument {
            op,
            message: format!("eps {eps} must be finite and >= 0"),
        });
    }
    Ok(())
}

/// The LayerNorm forward of checked operands, of `x + res` when `res` is given (then also
/// returning the sum): (y, mean, rstd, sum).
fn ln_forward(
    x: &Tensor,
    res: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    const OP: &str = "layer_norm";
    let cols = gamma.numel();
    let rows = x.numel() / cols;
    let y = Tensor::empty(&x.dev, OP, &x.shape, DType::F32)?;
    let mean = Tensor::empty(&x.dev, OP, &[rows], DType::F32)?;
    let rstd = Tensor::empty(&x.dev, OP, &[rows], DType::F32)?;
    let entries = if res.is_some() {
        rows::row_entries!("add_layernorm_forward", vec4)
    } else {
        rows::row_entries!("layernorm_forward", vec4)
    };
    let pl = rows::plan(&x.dev, &SHADER, &SUBGROUP_SHADER, &entries, rows, cols)?;
    // x: (rows, C), gamma, beta: (C) -> y: (rows, C), mean, rstd: (rows)
    let b: [(&Storage, Access); 6] = [
        (&x.storage, Access::Read),
        (&gamma.storage, Access::Read),
        (&beta.storage, Access::Read),
        (&y.storage, Access::ReadWrite),
        (&mean.storage, Access::ReadWrite),
        (&rstd.storage, Access::ReadWrite),
    ];
    let sum = match res {
        Some(_) => Some(Tensor::empty(&x.dev, OP, &x.shape, DType::F32)?),
        None => None,
    };
    let b8;
    let bufs: &[(&Storage, Access)] = match (res, &sum) {
        // res: (rows, C) -> sum: (rows, C) = x + res, the rows LayerNorm normalises
        (Some(res), Some(sum)) => {
            b8 = [
                b[0],
                b[1],
                b[2],
                b[3],
                b[4],
                b[5],
                (&*res.storage, Access::Read),
                (&*sum.storage, Access::ReadWrite),
            ];
            &b8
        }
        _ => &b,
    };
    x.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &ln_params(rows, cols, eps),
        bufs,
        pl.grid,
    )?;
    Ok((y, mean, rstd, sum))
}

/// Gradient of LayerNorm for `x` from the saved `mean`, `rstd` and the output gradient `g`,
/// plus `other` (same shape as x) when given: the gradient that reached x from its other
/// uses, added in the same kernel.
pub(crate) fn layer_norm_dx(
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    other: Option<&Tensor>,
) -> Result<Tensor> {
    let cols = gamma.numel();
    let rows = x.numel() / cols;
    let dx = Tensor::empty(&x.dev, "layer_norm backward", &x.shape, DType::F32)?;
    let entries = if other.is_some() {
        rows::row_entries!("layernorm_backward_dx_add", vec4)
    } else {
        rows::row_entries!("layernorm_backward_dx", vec4)
    };
    let pl = rows::plan(&x.dev, &SHADER, &SUBGROUP_SHADER, &entries, rows, cols)?;
    // x: (rows, C), gamma: (C), mean, rstd: (rows), g: (rows, C) -> dx: (rows, C)
    let b: [(&Storage, Access); 6] = [
        (&x.storage, Access::Read),
        (&gamma.storage, Access::Read),
        (&mean.storage, Access::Read),
        (&rstd.storage, Access::Read),
        (&g.storage, Access::Read),
        (&dx.storage, Access::ReadWrite),
    ];
    let b7;
    let bufs: &[(&Storage, Access)] = match other {
        // other: (rows, C), added to dx
        Some(o) => {
            b7 = [
                b[0],
                b[1],
                b[2],
                b[3],
                b[4],
                b[5],
                (&*o.storage, Access::Read),
            ];
            &b7
        }
        None => &b,
    };
    x.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &ln_params(rows, cols, 0.0),
        bufs,
        pl.grid,
    )?;
    Ok(dx)
}

/// Gradients of LayerNorm for gamma and beta (both (C)): column sums of `g * xhat` and `g`,
/// in a fixed order (deterministic, no atomics).
pub(crate) fn layer_norm_dparams(
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    cols: usize,
) -> Result<(Tensor, Tensor)> {
    let op = "layer_norm backward";
    let rows = x.numel() / cols;
    let chunks = rows.div_ceil(LN_PARAM_CHUNK).max(1);
    let dgamma = Tensor::empty(&x.dev, op, &[chunks, cols], DType::F32)?;
    let dbeta = Tensor::empty(&x.dev, op, &[chunks, cols], DType::F32)?;
    // Four columns to an invocation (vec4 loads) when C % 4 == 0.
    let vec4 = cols.is_multiple_of(4);
    let n = if vec4 {
        chunks * cols / 4
    } else {
        chunks * cols
    };
    let mut p = ln_params(rows, cols, 0.0);
    p.n = n as u32;
    // x: (rows, C), mean, rstd: (rows), g: (rows, C) -> dgamma, dbeta partials: (chunks, C)
    x.dev.dispatch(
        &SHADER,
        if vec4 {
            "layernorm_backward_params4"
        } else {
            "layernorm_backward_params"
        },
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&mean.storage, Access::Read),
            (&rstd.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dgamma.storage, Access::ReadWrite),
            (&dbeta.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    if chunks == 1 {
        return Ok((dgamma.view_raw(vec![cols]), dbeta.view_raw(vec![cols])));
    }
    // (chunks, C) -> (C), each column summed over the chunks in order.
    Ok((
        reduce::sum_to(&dgamma, &[cols])?,
        reduce::sum_to(&dbeta, &[cols])?,
    ))
}

/// `x * mask / (1 - p)` where element i is kept iff a hash of (seed, i) is at least `p * 2^32`.
/// Applied to the output gradient with the same `p` and `seed`, it is the input gradient.
/// `p` must be in (0, 1) (the caller handles 0 and inference mode as the identity).
pub(crate) fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    x.expect_dtype("dropout", DType::F32)?;
    let n = x.numel();
    let out = Tensor::empty(&x.dev, "dropout", &x.shape, DType::F32)?;
    // Domain-separate from rand_uniform/rand_normal, which hash the raw seed.
    let state = seed ^ 0xD50F_0E7A_11AD_5EED;
    // SplitMix64 turns the user's seed into well-mixed mask keys.
    let mut keys = crate::rng::SplitMix64::new(state);
    let (a, b) = (keys.next_u64(), keys.next_u64());
    let threshold = ((f64::from(p) * 4_294_967_296.0).round() as u64).min(u64::from(u32::MAX));
    let params = DropoutParams {
        n: n as u32,
        threshold: threshold as u32,
        k0: a as u32,
        k1: (a >> 32) as u32,
        k2: b as u32,
        scale: (1.0 / (1.0 - f64::from(p))) as f32,
        _pad: [0; 2],
    };
    // x: (n) -> out: (n)
    x.dev.dispatch(
        &SHADER,
        "dropout",
        &[],
        &params,
        &[
            (&x.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    Ok(out)
}

// ---- RMSNorm (`shaders/norm_rms.wgsl`, `shaders/norm_rms_subgroup.wgsl`) ----

pub(crate) const RMS_SHADER: Shader =
    shader("norm_rms", include_str!("../../../shaders/norm_rms.wgsl"));
/// Compiled only when the device has subgroups.
pub(crate) const RMS_SUBGROUP_SHADER: Shader = shader(
    "norm_rms_subgroup",
    include_str!("../../../shaders/norm_rms_subgroup.wgsl"),
);

/// RMSNorm over the last axis of `x` (..., C) with `weight` (C): returns (y (..., C),
/// rstd (rows)). Shapes and dtypes checked by the caller.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm";
    let cols = weight.numel();
    let rows = x.numel() / cols;
    let y = Tensor::empty(&x.dev, OP, &x.shape, DType::F32)?;
    let rstd = Tensor::empty(&x.dev, OP, &[rows], DType::F32)?;
    let pl = rows::plan(
        &x.dev,
        &RMS_SHADER,
        &RMS_SUBGROUP_SHADER,
        &rows::row_entries!("rmsnorm_forward", vec4),
        rows,
        cols,
    )?;
    // x: (rows, C), weight: (C) -> y: (rows, C), rstd: (rows)
    x.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &ln_params(rows, cols, eps),
        &[
            (&x.storage, Access::Read),
            (&weight.storage, Access::Read),
            (&y.storage, Access::ReadWrite),
            (&rstd.storage, Access::ReadWrite),
        ],
        pl.grid,
    )?;
    Ok((y, rstd))
}

/// Gradient of RMSNorm for `x` from the saved `rstd` and the output gradient `g`.
pub(crate) fn rms_norm_dx(
    x: &Tensor,
    weight: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
) -> Result<Tensor> {
    let cols = weight.numel();
    let rows = x.numel() / cols;
    let dx = Tensor::empty(&x.dev, "rms_norm backward", &x.shape, DType::F32)?;
    let pl = rows::plan(
        &x.dev,
        &RMS_SHADER,
        &RMS_SUBGROUP_SHADER,
        &rows::row_entries!("rmsnorm_backward_dx", vec4),
        rows,
        cols,
    )?;
    // x: (rows, C), weight: (C), rstd: (rows), g: (rows, C) -> dx: (rows, C)
    x.dev.dispatch(
        pl.shader,
        pl.entry,
        &[],
        &ln_params(rows, cols, 0.0),
        &[
            (&x.storage, Access::Read),
            (&weight.storage, Access::Read),
            (&rstd.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dx.storage, Access::ReadWrite),
        ],
        pl.grid,
    )?;
    Ok(dx)
}

/// Gradient of RMSNorm for the weight (C): the column sums of `g * x * rstd`, in a fixed order
/// (partials over chunks of rows, then a column sum: deterministic, no atomics), as LayerNorm's
/// gamma.
pub(crate) fn rms_norm_dweight(
    x: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    cols: usize,
) -> Result<Tensor> {
    let op = "rms_norm backward";
    let rows = x.numel() / cols;
    let chunks = rows.div_ceil(LN_PARAM_CHUNK).max(1);
    let dw = Tensor::empty(&x.dev, op, &[chunks, cols], DType::F32)?;
    let vec4 = cols.is_multiple_of(4);
    let n = if vec4 {
        chunks * cols / 4
    } else {
        chunks * cols
    };
    let mut p = ln_params(rows, cols, 0.0);
    p.n = n as u32;
    // x: (rows, C), rstd: (rows), g: (rows, C) -> dw partials: (chunks, C)
    x.dev.dispatch(
        &RMS_SHADER,
        if vec4 {
            "rmsnorm_backward_weight4"
        } else {
            "rmsnorm_backward_weight"
        },
        &[],
        &p,
        &[
            (&x.storage, Access::Read),
            (&rstd.storage, Access::Read),
            (&g.storage, Access::Read),
            (&dw.storage, Access::ReadWrite),
        ],
        elems_grid(n)?,
    )?;
    if chunks == 1 {
        return Ok(dw.view_raw(vec![cols]));
    }
    // (chunks, C) -> (C), each column summed over the chunks in order.
    reduce::sum_to(&dw, &[cols])
}
