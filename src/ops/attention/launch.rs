//! Launcher for `shaders/attention.wgsl`: fused attention forward, its two backward kernels,
//! KV-cache append and decode. Which kernels run is [`super::plan`]'s choice; the modules
//! generated per head size are in [`super::generate`]; the head split / merge permutations in
//! [`super::heads`].

use super::generate::fixed_d_shader;
use super::plan::{DKV, DQ, DWG, FWD, consts, plan, row_params};
use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Shader, grid_1d};
use crate::tensor::{DType, Tensor};

/// The portable kernels, decode, append and layout: every adapter.
pub(crate) const SHADER: Shader =
    shader("attention", include_str!("../../../shaders/attention.wgsl"));

/// The portable module plus the tiled kernels (which use its struct, bindings and constants).
pub(crate) const TILED_SHADER: Shader = shader(
    "attention_tiled",
    concat!(
        include_str!("../../../shaders/attention.wgsl"),
        include_str!("../../../shaders/attention_tiled.wgsl")
    ),
);

/// Matches `struct Attn` in `attention.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub(crate) bh: u32,
    pub(crate) t: u32,
    pub(crate) tk: u32,
    pub(crate) kstride: u32,
    pub(crate) causal: u32,
    pub(crate) qoff: u32,
    pub(crate) blocks: u32,
    pub(crate) scale: f32,
    pub(crate) n: u32,
    pub(crate) heads: u32,
    pub(crate) slot: u32,
    pub(crate) slots: u32,
    pub(crate) du: u32,
    pub(crate) pos: u32,
    pub(crate) rows: u32,
    pub(crate) group: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

pub(crate) fn dims(x: &Tensor) -> (usize, usize, usize, usize) {
    (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
}

/// Forward: q (B, H, T, D), k, v (B, Hkv, T, D) with H a multiple of Hkv (query head h reads
/// K/V head h / (H / Hkv)) -> (o (B, H, T, D), lse (B, H, T)). Shapes checked by the caller.
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let dev = &q.dev;
    let (b, h, t, d) = dims(q);
    let group = h / k.shape[1];
    let o = Tensor::empty(dev, "attention", &q.shape, DType::F32)?;
    let lse = Tensor::empty(dev, "attention", &[b, h, t], DType::F32)?;
    let pl = plan(dev, d);
    let (p, grid) = row_params(&pl, FWD, b * h, group, t, d, causal)?;
    // q: (B, H, T, D), k, v: (B, Hkv, T, D) -> o: (B, H, T, D), lse: (B, H, T)
    dev.dispatch(
        pl.shader,
        pl.entry(FWD),
        &consts(d, &pl),
        &p,
        &[
            (&q.storage, Access::Read),
            (&k.storage, Access::Read),
            (&v.storage, Access::Read),
            (&o.storage, Access::ReadWrite),
            (&lse.storage, Access::ReadWrite),
        ],
        grid,
    )?;
    Ok((o, lse))
}

/// Backward from the forward's inputs, output `o`, log-sum-exp `lse` and the output gradient
/// `d_o`: -> (dq (B, H, T, D), dk, dv (B, Hkv, T, D)). Two kernels, no atomics: dK and dV of a
/// K/V head are summed over its query heads inside the dK/dV kernel.
pub(crate) fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    d_o: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = &q.dev;
    let (b, h, t, d) = dims(q);
    let hkv = k.shape[1];
    let group = h / hkv;
    let dq = Tensor::empty(dev, "attention_backward", &q.shape, DType::F32)?;
    let dk = Tensor::empty(dev, "attention_backward", &k.shape, DType::F32)?;
    let dv = Tensor::empty(dev, "attention_backward", &k.shape, DType::F32)?;
    let delta = Tensor::empty(dev, "attention_backward", &[b, h, t], DType::F32)?;
    let pl = plan(dev, d);
    let (p, grid) = row_params(&pl, DQ, b * h, group, t, d, causal)?;
    // q, dO, o: (B, H, T, D), k, v: (B, Hkv, T, D), lse: (B, H, T)
    //   -> dq: (B, H, T, D), delta: (B, H, T)
    dev.dispatch(
        pl.shader,
        pl.entry(DQ),
        &consts(d, &pl),
        &p,
        &[
            (&q.storage, Access::Read),
            (&k.storage, Access::Read),
            (&v.storage, Access::Read),
            (&d_o.storage, Access::Read),
            (&lse.storage, Access::Read),
            (&o.storage, Access::Read),
            (&dq.storage, Access::ReadWrite),
            (&delta.storage, Access::ReadWrite),
        ],
        grid,
    )?;
    let (p, grid) = row_params(&pl, DKV, b * hkv, group, t, d, causal)?;
    // q, dO: (B, H, T, D), k, v: (B, Hkv, T, D), lse, delta: (B, H, T) -> dk, dv: (B, Hkv, T, D)
    dev.dispatch(
        pl.shader,
        pl.entry(DKV),
        &consts(d, &pl),
        &p,
        &[
            (&q.storage, Access::Read),
            (&k.storage, Access::Read),
            (&v.storage, Access::Read),
            (&d_o.storage, Access::Read),
            (&lse.storage, Access::Read),
            (&delta.storage, Access::Read),
            (&dk.storage, Access::ReadWrite),
            (&dv.storage, Access::ReadWrite),
        ],
        grid,
    )?;
    Ok((dq, dk, dv))
}

/// Copy `k`, `v` (B, Hkv, n, D) into rows `pos .. pos + n` of the caches (B, Hkv, max, D), in place.
pub(crate) fn kv_append(
    cache_k: &Tensor,
    cache_v: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pos: usize,
) -> Result<()> {
    let (_, _, n, d) = dims(k);
    let units = k.numel() / 4;
    let p = Params {
        n: units as u32,
        kstride: cache_k.shape[2] as u32,
        pos: pos as u32,
        rows: n as u32,
        ..Params::default()
    };
    // k, v: (B, Hkv, n, D) -> cache_k, cache_v: (B, Hkv, max, D)
    k.dev.dispatch(
        &SHADER,
        "kv_append",
        &[("D4", (d / 4) as f64)],
        &p,
        &[
            (&k.storage, Access::Read),
            (&v.storage, Access::Read),
            (&cache_k.storage, Access::ReadWrite),
            (&cache_v.storage, Access::ReadWrite),
        ],
        elems_grid(units)?,
    )
}

/// Attention of the `n` newest positions, q (B, H, n, D), to the first `len` rows of the caches
/// (B, Hkv, max, D), query head h reading K/V head h / (H / Hkv); query row r sits at position
/// len - n + r and sees keys up to it.
pub(crate) fn decode(q: &Tensor, cache_k: &Tensor, cache_v: &Tensor, len: usize) -> Result<Tensor> {
    let dev = &q.dev;
    let (b, h, n, d) = dims(q);
    let o = Tensor::empty(dev, "attend_cached", &q.shape, DType::F32)?;
    let p = Params {
        bh: (b * h) as u32,
        t: n as u32,
        tk: len as u32,
        kstride: cache_k.shape[2] as u32,
        causal: 1,
        qoff: (len - n) as u32,
        scale: 1.0 / (d as f32).sqrt(),
        group: (h / cache_k.shape[1]) as u32,
        ..Params::default()
    };
    // CPU adapters: one subgroup per row, straight-line; else DWG invocations per row.
    let pl = plan(dev, d);
    let (shader, entry, consts) = if pl.cpu {
        (
            pl.shader,
            "attn_decode_cpu",
            &[("D4", (d / 4) as f64), ("WG", f64::from(pl.wg))][..],
        )
    } else {
        (
            fixed_d_shader(d, false),
            "attn_decode",
            &[("DWG", f64::from(DWG))][..],
        )
    };
    // q: (B, H, n, D), cache_k, cache_v: (B, Hkv, max, D) -> o: (B, H, n, D)
    dev.dispatch(
        shader,
        entry,
        consts,
        &p,
        &[
            (&q.storage, Access::Read),
            (&cache_k.storage, Access::Read),
            (&cache_v.storage, Access::Read),
            (&o.storage, Access::ReadWrite),
        ],
        grid_1d((b * h * n) as u64)?,
    )?;
    Ok(o)
}
