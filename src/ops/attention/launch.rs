//! Launcher for `shaders/attention.wgsl`: fused attention forward, its two backward kernels,
//! KV-cache append and decode, and the head split / merge permutations.
//!
//! The row kernels (forward, dQ, dK/dV) and decode come in two forms, chosen per adapter by
//! [`plan`]:
//! - `portable` (`attention.wgsl`): one row per invocation, tiles of the other side read
//!   straight from storage; on a GPU all invocations of a workgroup read the same tile rows, a
//!   cache-served broadcast. Every adapter.
//! - `tiled` (`attention_tiled.wgsl`): GPUs. Blocks of the other side staged in workgroup
//!   memory (FlashAttention-2 style), one row per invocation; decode as `portable`.
//! - `subgroup-cpu`: CPU adapters with subgroups of at least 8 lanes (lavapipe). Straight-line
//!   kernels generated here for the head size at hand ([`mod@cpu`]): tiles exchanged with
//!   subgroup broadcasts, several rows per lane.
//!
//! `PORTAGRAD_ATTENTION=portable` or `=tiled` forces a kind for the process;
//! [`with_kernels`] forces one for a closure on the calling thread (tests, benchmarks).

use crate::error::Result;
use crate::ops::{elems_grid, shader};
use crate::runtime::{Access, Device, Shader, grid_1d};
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
/// vec4s per staged block of the tiled kernels (`TILE`): two blocks, 16 KiB of workgroup memory.
const TILE: u32 = 512;
// WebGPU's default maxComputeWorkgroupStorageSize: every adapter runs them.
const _: () = assert!(2 * TILE * 16 <= 16384);

/// Rows per tile (`TW` in the WGSL); the CPU kernels broadcast from this many lanes.
const TW: u32 = 8;
/// Invocations (rows) per workgroup of the row kernels (`WG`).
const WG: u32 = 64;
/// Invocations per workgroup of the decode kernel (`DWG`, at most 64).
const DWG: u32 = 64;

/// Matches `struct Attn` in `attention.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    bh: u32,
    t: u32,
    tk: u32,
    kstride: u32,
    causal: u32,
    qoff: u32,
    blocks: u32,
    scale: f32,
    n: u32,
    heads: u32,
    slot: u32,
    slots: u32,
    du: u32,
    pos: u32,
    rows: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<Params>() == 64);

/// The three row kernels (indices into [`Plan::rows`]).
const FWD: usize = 0;
const DQ: usize = 1;
const DKV: usize = 2;
const ENTRIES: [&str; 3] = ["attn_fwd", "attn_bwd_dq", "attn_bwd_dkv"];

/// How the row kernels (forward, dQ, dK/dV) run for one head size on one device.
struct Plan {
    shader: &'static Shader,
    /// Invocations per workgroup.
    wg: u32,
    /// Rows each invocation owns, per kernel.
    rows: [u32; 3],
    /// Whether the straight-line CPU kernels run.
    cpu: bool,
    /// Rows per staged block (`BC`) of the tiled kernels; 0 for the others.
    bc: u32,
    /// Reported by [`plan_name`].
    name: &'static str,
}

impl Plan {
    fn entry(&self, kernel: usize) -> String {
        if self.cpu {
            format!("{}_cpu", ENTRIES[kernel])
        } else if self.bc > 0 {
            format!("{}_tiled", ENTRIES[kernel])
        } else {
            ENTRIES[kernel].to_string()
        }
    }
}

thread_local! {
    /// Kernel kind forced on this thread by [`with_kernels`].
    static FORCED: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Run `f` with the row kernels forced to `kind` (`"portable"`, `"tiled"`, or `"default"` for
/// the adapter's choice) on this thread. A thread-local, not the environment, so tests running
/// in parallel threads can each pick their own.
pub(crate) fn with_kernels<R>(kind: &'static str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.set(self.0);
        }
    }
    let _restore = Restore(FORCED.replace(Some(kind)));
    f()
}

fn portable(d: usize) -> Plan {
    Plan {
        shader: fixed_d_shader(d, false),
        wg: WG,
        rows: [1; 3],
        cpu: false,
        bc: 0,
        name: "portable",
    }
}

/// Choose the kernels: straight-line subgroup kernels generated for the head size on CPU
/// adapters with subgroups of at least TW lanes, the portable ones on other CPU adapters, the
/// tiled ones on GPUs. [`with_kernels`], else `PORTAGRAD_ATTENTION=portable|tiled`, overrides.
fn plan(dev: &Device, d: usize) -> Plan {
    let info = dev.info();
    let forced = FORCED
        .get()
        .map(str::to_string)
        .or_else(|| std::env::var("PORTAGRAD_ATTENTION").ok());
    let tiled = || Plan {
        shader: fixed_d_shader(d, true),
        wg: WG,
        rows: [1; 3],
        cpu: false,
        // As many rows as fit TILE vec4s, whole TW steps, at most 64 (D = 64: 32, D = 128: 16).
        bc: (TILE / (d as u32 / 4)).min(64) / TW * TW,
        name: "tiled",
    };
    match forced.as_deref() {
        Some("portable") => return portable(d),
        Some("tiled") => return tiled(),
        _ => {}
    }
    match info.subgroup_sizes {
        Some((lo, hi)) if info.is_cpu && dev.has_subgroups() && lo >= TW => Plan {
            shader: cpu_shader(d),
            // One subgroup per workgroup: small T leaves no idle subgroups.
            wg: hi,
            rows: cpu::rows(d),
            cpu: true,
            bc: 0,
            name: "subgroup-cpu",
        },
        _ if info.is_cpu => portable(d),
        _ => tiled(),
    }
}

/// Which kernels [`forward`], [`backward`] and [`decode`] use on `dev` for head size `d`:
/// `"subgroup-cpu"`, `"portable"` or `"tiled"`.
pub(crate) fn plan_name(dev: &Device, d: usize) -> &'static str {
    plan(dev, d).name
}

fn dims(x: &Tensor) -> (usize, usize, usize, usize) {
    (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
}

/// Parameters of row kernel `kernel` and its grid.
fn row_params(
    pl: &Plan,
    kernel: usize,
    bh: usize,
    t: usize,
    d: usize,
    causal: bool,
) -> Result<(Params, [u32; 3])> {
    let blocks = t.div_ceil((pl.wg * pl.rows[kernel]) as usize);
    let p = Params {
        bh: bh as u32,
        t: t as u32,
        tk: t as u32,
        kstride: t as u32,
        causal: u32::from(causal),
        blocks: blocks as u32,
        scale: 1.0 / (d as f32).sqrt(),
        ..Params::default()
    };
    Ok((p, grid_1d((blocks * bh) as u64)?))
}

fn consts(d: usize, pl: &Plan) -> Vec<(&'static str, f64)> {
    let mut c = vec![("WG", f64::from(pl.wg))];
    // The portable and tiled modules have D4 built in (`fixed_d_shader`).
    if pl.cpu {
        c.push(("D4", (d / 4) as f64));
    }
    if pl.bc > 0 {
        c.push(("BC", f64::from(pl.bc)));
    }
    c
}

/// Forward: q, k, v (B, H, T, D) -> (o (B, H, T, D), lse (B, H, T)). Shapes checked by the caller.
pub(crate) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let dev = &q.dev;
    let (b, h, t, d) = dims(q);
    let o = Tensor::empty(dev, "attention", &q.shape, DType::F32)?;
    let lse = Tensor::empty(dev, "attention", &[b, h, t], DType::F32)?;
    let pl = plan(dev, d);
    let (p, grid) = row_params(&pl, FWD, b * h, t, d, causal)?;
    // q, k, v: (B, H, T, D) -> o: (B, H, T, D), lse: (B, H, T)
    dev.dispatch(
        pl.shader,
        &pl.entry(FWD),
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
/// `d_o`: -> (dq, dk, dv), each (B, H, T, D). Two kernels, no atomics.
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
    let dq = Tensor::empty(dev, "attention_backward", &q.shape, DType::F32)?;
    let dk = Tensor::empty(dev, "attention_backward", &q.shape, DType::F32)?;
    let dv = Tensor::empty(dev, "attention_backward", &q.shape, DType::F32)?;
    let delta = Tensor::empty(dev, "attention_backward", &[b, h, t], DType::F32)?;
    let pl = plan(dev, d);
    let (p, grid) = row_params(&pl, DQ, b * h, t, d, causal)?;
    // q, k, v, dO, o: (B, H, T, D), lse: (B, H, T) -> dq: (B, H, T, D), delta: (B, H, T)
    dev.dispatch(
        pl.shader,
        &pl.entry(DQ),
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
    let (p, grid) = row_params(&pl, DKV, b * h, t, d, causal)?;
    // q, k, v, dO: (B, H, T, D), lse, delta: (B, H, T) -> dk, dv: (B, H, T, D)
    dev.dispatch(
        pl.shader,
        &pl.entry(DKV),
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

/// Copy `k`, `v` (B, H, n, D) into rows `pos .. pos + n` of the caches (B, H, max, D), in place.
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
    // k, v: (B, H, n, D) -> cache_k, cache_v: (B, H, max, D)
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
/// (B, H, max, D); query row r sits at position len - n + r and sees keys up to it.
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
        ..Params::default()
    };
    // CPU adapters: one subgroup per row, straight-line; else DWG invocations per row.
    let pl = plan(dev, d);
    let (shader, entry, consts) = if pl.cpu {
        (
            pl.shader,
            "attn_decode_cpu",
            vec![("D4", (d / 4) as f64), ("WG", f64::from(pl.wg))],
        )
    } else {
        (
            fixed_d_shader(d, false),
            "attn_decode",
            vec![("DWG", f64::from(DWG))],
        )
    };
    // q: (B, H, n, D), cache_k, cache_v: (B, H, max, D) -> o: (B, H, n, D)
    dev.dispatch(
        shader,
        entry,
        &consts,
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

/// Straight-line kernels for CPU adapters with subgroups (lavapipe), generated per head size.
///
/// Row kernels: the lanes of a subgroup own consecutive rows; per tile of TW = 8 rows of the
/// other side, lane i loads tile row i and every lane reads the tile out of lanes 0..8 with
/// `subgroupBroadcast`. On lavapipe a storage load is a bounds-checked loop over lanes and a
/// broadcast a register extract, so each K/V element is loaded once per subgroup, not once per
/// lane. A private array indexed by a loop counter stays in memory there (every access a
/// per-lane gather); written out with constant indices, every row, accumulator and broadcast is
/// an SSA value. Each lane also owns R rows, so one broadcast feeds R dot products. Measured
/// (B=4, H=12, T=1024, D=64, causal; CPU-seconds forward / forward+backward): looped code with
/// tiles in storage 2.35 / 12.7 (the portable kernels); looped with broadcasts 1.06 / 4.1;
/// straight-line R=1 0.48 / 3.3, R=2 0.34, R=4 0.24 / 1.05 (backward kernels with R=2: 1.27,
/// R=1: 1.59). Register demand grows with R·D and with it LLVM's compile time (first use per
/// machine; Mesa caches the result on disk): for D=64 and R=4 about 2 s for the forward and
/// 10 s for the backward kernels, so larger heads take fewer rows per lane (`rows`).
///
/// Decode: one subgroup per (b, h, query row); lane l takes cached keys l, l + sg, ... with its
/// own online-softmax state; the states merge with subgroupMax / subgroupAdd.
///
/// WGSL has no macros and `subgroupBroadcast` needs a constant lane, hence generated code.
/// Entry points `attn_fwd_cpu`, `attn_bwd_dq_cpu`, `attn_bwd_dkv_cpu` (R rows per lane: a
/// subgroup's rows start at r0 = (block * WG + sid * sg) * R, lane l owns rows r0 + l + k * sg
/// for k < R) and `attn_decode_cpu`. Names in the generated code: x* a lane's own loads, b*
/// broadcasts, q/k/v/d rows, a/g/e/f accumulators; suffixes _r row, _c vec4 column chunk,
/// _i tile row.
mod cpu {
    use std::fmt::Write;

    /// Rows per exchanged tile (lanes broadcast from).
    const TW: usize = 8;

    /// Rows per lane of the forward, dQ and dK/dV kernels for head size `d`: fewer for larger
    /// heads, whose kernels hold more registers and compile slower.
    pub(super) fn rows(d: usize) -> [u32; 3] {
        match d {
            0..=64 => [4, 4, 4],
            65..=96 => [4, 2, 2],
            _ => [2, 1, 1],
        }
    }

    /// Appends formatted lines.
    macro_rules! w {
        ($o:expr, $($t:tt)*) => {{ let _ = writeln!($o, $($t)*); }};
    }

    /// `f(i)` for every tile row, space-separated.
    fn each(n: usize, f: impl Fn(usize) -> String) -> String {
        (0..n).map(f).collect::<Vec<_>>().join(" ")
    }

    fn entry(o: &mut String, name: &str, r: usize) {
        w!(o, "@compute @workgroup_size(WG)");
        w!(
            o,
            "fn {name}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_id) sid: u32, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {{"
        );
        w!(o, "    let wg = wid.y * nwg.x + wid.x;");
        w!(o, "    let bh = wg / p.blocks;");
        w!(o, "    let r0 = ((wg % p.blocks) * WG + sid * sg) * {r}u;");
    }

    /// `row{r}` (this lane's rows) and `at{r}` (their first vec4, clamped to `nrows` rows).
    fn rows_prologue(o: &mut String, r: usize, d4: usize, nrows: &str) {
        for r in 0..r {
            w!(o, "    let row{r} = r0 + lane + {r}u * sg;");
            w!(
                o,
                "    let at{r} = (base + min(row{r}, {nrows} - 1u)) * {d4}u;"
            );
        }
    }

    fn fwd(o: &mut String, d4: usize, rr: usize) {
        entry(o, "attn_fwd_cpu", rr);
        w!(
            o,
            "    if bh >= p.bh || r0 >= p.t {{ return; }} // uniform across the subgroup"
        );
        w!(o, "    let base = bh * p.t;");
        w!(o, "    let kb = bh * p.kstride;");
        w!(o, "    var kend = p.tk;");
        w!(
            o,
            "    if p.causal != 0u {{ kend = min(p.tk, r0 + sg * {rr}u + p.qoff); }}"
        );
        w!(o, "    let qs = p.scale * LOG2E;");
        rows_prologue(o, rr, d4, "p.t");
        for r in 0..rr {
            for c in 0..d4 {
                w!(o, "    let q{r}_{c} = q4[at{r} + {c}u] * qs;");
                w!(o, "    var a{r}_{c} = vec4<f32>(0.0);");
            }
            w!(o, "    var m{r} = NEG;");
            w!(o, "    var l{r} = 0.0;");
        }
        w!(o, "    for (var j0 = 0u; j0 < kend; j0 += 8u) {{");
        w!(
            o,
            "        let ka = (kb + min(j0 + lane % 8u, kend - 1u)) * {d4}u;"
        );
        for r in 0..rr {
            w!(
                o,
                "        {}",
                each(TW, |i| format!("var s{r}_{i} = 0.0;"))
            );
        }
        for c in 0..d4 {
            w!(o, "        let xk{c} = k4[ka + {c}u];");
            for i in 0..TW {
                w!(o, "        let bk{c}_{i} = subgroupBroadcast(xk{c}, {i}u);");
                w!(
                    o,
                    "        {}",
                    each(rr, |r| format!("s{r}_{i} += dot(q{r}_{c}, bk{c}_{i});"))
                );
            }
        }
        for r in 0..rr {
            w!(o, "        var mt{r} = m{r};");
            for i in 0..TW {
                w!(
                    o,
                    "        let ok{r}_{i} = j0 + {i}u < kend && (p.causal == 0u || j0 + {i}u <= row{r} + p.qoff);"
                );
                w!(
                    o,
                    "        if ok{r}_{i} {{ mt{r} = max(mt{r}, s{r}_{i}); }}"
                );
            }
            w!(o, "        let corr{r} = exp2(m{r} - mt{r});");
            for i in 0..TW {
                w!(
                    o,
                    "        let p{r}_{i} = select(0.0, exp2(s{r}_{i} - mt{r}), ok{r}_{i});"
                );
            }
            let sum = (0..TW)
                .map(|i| format!("p{r}_{i}"))
                .collect::<Vec<_>>()
                .join(" + ");
            w!(o, "        l{r} = l{r} * corr{r} + {sum};");
            w!(o, "        m{r} = mt{r};");
        }
        for c in 0..d4 {
            w!(o, "        let xv{c} = v4[ka + {c}u];");
            w!(
                o,
                "        {}",
                each(rr, |r| format!("a{r}_{c} *= corr{r};"))
            );
            for i in 0..TW {
                w!(o, "        let bv{c}_{i} = subgroupBroadcast(xv{c}, {i}u);");
                w!(
                    o,
                    "        {}",
                    each(rr, |r| format!("a{r}_{c} += p{r}_{i} * bv{c}_{i};"))
                );
            }
        }
        w!(o, "    }}");
        for r in 0..rr {
            w!(o, "    if row{r} < p.t {{");
            w!(o, "        let inv = 1.0 / l{r};");
            w!(o, "        let oa = (base + row{r}) * {d4}u;");
            for c in 0..d4 {
                w!(o, "        o_out[oa + {c}u] = a{r}_{c} * inv;");
            }
            w!(
                o,
                "        lse_out[base + row{r}] = (m{r} + log2(l{r})) * LN2;"
            );
            w!(o, "    }}");
        }
        w!(o, "}}\n");
    }

    fn dq(o: &mut String, d4: usize, rr: usize) {
        entry(o, "attn_bwd_dq_cpu", rr);
        w!(o, "    if bh >= p.bh || r0 >= p.t {{ return; }}");
        w!(o, "    let base = bh * p.t;");
        w!(o, "    let kb = bh * p.kstride;");
        w!(o, "    var kend = p.tk;");
        w!(
            o,
            "    if p.causal != 0u {{ kend = min(p.tk, r0 + sg * {rr}u + p.qoff); }}"
        );
        w!(o, "    let qs = p.scale * LOG2E;");
        rows_prologue(o, rr, d4, "p.t");
        for r in 0..rr {
            w!(o, "    var dl{r} = vec4<f32>(0.0);");
            for c in 0..d4 {
                w!(o, "    let q{r}_{c} = q4[at{r} + {c}u] * qs;");
                w!(o, "    let d{r}_{c} = do4[at{r} + {c}u];");
                w!(o, "    dl{r} = fma(d{r}_{c}, o_in[at{r} + {c}u], dl{r});");
                w!(o, "    var g{r}_{c} = vec4<f32>(0.0);");
            }
            w!(
                o,
                "    let delta{r} = dl{r}.x + dl{r}.y + dl{r}.z + dl{r}.w;"
            );
            w!(o, "    let lse{r} = lse_in[at{r} / {d4}u] * LOG2E;");
        }
        w!(o, "    for (var j0 = 0u; j0 < kend; j0 += 8u) {{");
        w!(
            o,
            "        let ka = (kb + min(j0 + lane % 8u, kend - 1u)) * {d4}u;"
        );
        for r in 0..rr {
            w!(
                o,
                "        {}",
                each(TW, |i| format!("var s{r}_{i} = 0.0; var dp{r}_{i} = 0.0;"))
            );
        }
        for c in 0..d4 {
            w!(o, "        let xk{c} = k4[ka + {c}u];");
            w!(o, "        let xv{c} = v4[ka + {c}u];");
            for i in 0..TW {
                w!(o, "        let bk{c}_{i} = subgroupBroadcast(xk{c}, {i}u);");
                w!(o, "        let bv{c}_{i} = subgroupBroadcast(xv{c}, {i}u);");
                w!(
                    o,
                    "        {}",
                    each(rr, |r| format!(
                        "s{r}_{i} += dot(q{r}_{c}, bk{c}_{i}); dp{r}_{i} += dot(d{r}_{c}, bv{c}_{i});"
                    ))
                );
            }
        }
        for r in 0..rr {
            for i in 0..TW {
                w!(
                    o,
                    "        let ds{r}_{i} = select(0.0, exp2(s{r}_{i} - lse{r}) * (dp{r}_{i} - delta{r}), j0 + {i}u < kend && (p.causal == 0u || j0 + {i}u <= row{r} + p.qoff));"
                );
            }
        }
        // The K tile's broadcasts are reused (LLVM keeps or reloads them; no storage access).
        for c in 0..d4 {
            for i in 0..TW {
                w!(
                    o,
                    "        {}",
                    each(rr, |r| format!("g{r}_{c} += ds{r}_{i} * bk{c}_{i};"))
                );
            }
        }
        w!(o, "    }}");
        for r in 0..rr {
            w!(o, "    if row{r} < p.t {{");
            w!(o, "        let oa = (base + row{r}) * {d4}u;");
            for c in 0..d4 {
                w!(o, "        grad_a[oa + {c}u] = g{r}_{c} * p.scale;");
            }
            w!(o, "        delta_out[base + row{r}] = delta{r};");
            w!(o, "    }}");
        }
        w!(o, "}}\n");
    }

    fn dkv(o: &mut String, d4: usize, rr: usize) {
        entry(o, "attn_bwd_dkv_cpu", rr);
        w!(o, "    if bh >= p.bh || r0 >= p.tk {{ return; }}");
        w!(o, "    let base = bh * p.kstride;");
        w!(o, "    let qb = bh * p.t;");
        w!(o, "    var i_start = 0u;");
        w!(
            o,
            "    if p.causal != 0u && r0 > p.qoff {{ i_start = r0 - p.qoff; }}"
        );
        w!(o, "    let qs = p.scale * LOG2E;");
        rows_prologue(o, rr, d4, "p.tk");
        for r in 0..rr {
            for c in 0..d4 {
                w!(o, "    let k{r}_{c} = k4[at{r} + {c}u] * qs;");
                w!(o, "    let v{r}_{c} = v4[at{r} + {c}u];");
                w!(o, "    var e{r}_{c} = vec4<f32>(0.0);");
                w!(o, "    var f{r}_{c} = vec4<f32>(0.0);");
            }
        }
        w!(o, "    for (var i0 = i_start; i0 < p.t; i0 += 8u) {{");
        w!(o, "        let qi = qb + min(i0 + lane % 8u, p.t - 1u);");
        w!(o, "        let qa = qi * {d4}u;");
        w!(o, "        let xl = lse_in[qi] * LOG2E;");
        w!(o, "        let xd = delta_in[qi];");
        for r in 0..rr {
            w!(
                o,
                "        {}",
                each(TW, |i| format!("var s{r}_{i} = 0.0; var dp{r}_{i} = 0.0;"))
            );
        }
        for c in 0..d4 {
            w!(o, "        let xq{c} = q4[qa + {c}u];");
            w!(o, "        let xo{c} = do4[qa + {c}u];");
            for i in 0..TW {
                w!(o, "        let bq{c}_{i} = subgroupBroadcast(xq{c}, {i}u);");
                w!(o, "        let bo{c}_{i} = subgroupBroadcast(xo{c}, {i}u);");
                w!(
                    o,
                    "        {}",
                    each(rr, |r| format!(
                        "s{r}_{i} += dot(k{r}_{c}, bq{c}_{i}); dp{r}_{i} += dot(v{r}_{c}, bo{c}_{i});"
                    ))
                );
            }
        }
        for i in 0..TW {
            w!(o, "        let bl{i} = subgroupBroadcast(xl, {i}u);");
            w!(o, "        let bd{i} = subgroupBroadcast(xd, {i}u);");
        }
        for r in 0..rr {
            for i in 0..TW {
                w!(
                    o,
                    "        let pr{r}_{i} = select(0.0, exp2(s{r}_{i} - bl{i}), i0 + {i}u < p.t && (p.causal == 0u || row{r} <= i0 + {i}u + p.qoff));"
                );
                w!(
                    o,
                    "        let ds{r}_{i} = pr{r}_{i} * (dp{r}_{i} - bd{i});"
                );
            }
        }
        for c in 0..d4 {
            for i in 0..TW {
                w!(
                    o,
                    "        {}",
                    each(rr, |r| format!(
                        "e{r}_{c} += ds{r}_{i} * bq{c}_{i}; f{r}_{c} += pr{r}_{i} * bo{c}_{i};"
                    ))
                );
            }
        }
        w!(o, "    }}");
        for r in 0..rr {
            w!(o, "    if row{r} < p.tk {{");
            w!(o, "        let oa = (base + row{r}) * {d4}u;");
            for c in 0..d4 {
                w!(o, "        grad_a[oa + {c}u] = e{r}_{c} * p.scale;");
                w!(o, "        grad_v[oa + {c}u] = f{r}_{c};");
            }
            w!(o, "    }}");
        }
        w!(o, "}}\n");
    }

    /// Decode: one subgroup per (b, h, query row); lane l takes cached keys l, l + sg, ...
    /// with its own online-softmax state, merged at the end with subgroupMax / subgroupAdd.
    fn decode(o: &mut String, d4: usize) {
        w!(o, "@compute @workgroup_size(WG)");
        w!(
            o,
            "fn attn_decode_cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_size) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {{"
        );
        w!(o, "    let flat = wid.y * nwg.x + wid.x;");
        w!(
            o,
            "    if flat >= p.bh * p.t {{ return; }} // uniform across the workgroup"
        );
        w!(o, "    let kend = min(p.tk, p.qoff + flat % p.t + 1u);");
        w!(o, "    let kb = (flat / p.t) * p.kstride;");
        w!(o, "    let qs = p.scale * LOG2E;");
        for c in 0..d4 {
            w!(o, "    let qd{c} = q4[flat * {d4}u + {c}u] * qs;");
            w!(o, "    var a{c} = vec4<f32>(0.0);");
        }
        w!(o, "    var m = NEG;");
        w!(o, "    var l = 0.0;");
        w!(o, "    for (var j = lane; j < kend; j += sg) {{");
        w!(o, "        let ka = (kb + j) * {d4}u;");
        w!(o, "        var s4 = vec4<f32>(0.0);");
        for c in 0..d4 {
            w!(o, "        s4 = fma(qd{c}, k4[ka + {c}u], s4);");
        }
        w!(o, "        let s = s4.x + s4.y + s4.z + s4.w;");
        w!(o, "        let mn = max(m, s);");
        w!(o, "        let corr = exp2(m - mn);");
        w!(o, "        let pj = exp2(s - mn);");
        w!(o, "        l = l * corr + pj;");
        w!(o, "        m = mn;");
        for c in 0..d4 {
            w!(
                o,
                "        a{c} = fma(vec4<f32>(pj), v4[ka + {c}u], a{c} * corr);"
            );
        }
        w!(o, "    }}");
        w!(
            o,
            "    let f = exp2(m - subgroupMax(m)); // 0 for a lane that saw no key"
        );
        w!(o, "    let inv = 1.0 / subgroupAdd(l * f);");
        for c in 0..d4 {
            w!(o, "    let od{c} = subgroupAdd(a{c} * f) * inv;");
        }
        w!(o, "    if lane == 0u {{");
        for c in 0..d4 {
            w!(o, "        o_out[flat * {d4}u + {c}u] = od{c};");
        }
        w!(o, "    }}");
        w!(o, "}}\n");
    }

    /// The entry points for head size `d` (a multiple of 4), to append to `attention.wgsl`.
    pub(super) fn entries(d: usize) -> String {
        let [rf, rq, rk] = rows(d).map(|r| r as usize);
        let mut o = String::new();
        w!(
            o,
            "// ---- generated: straight-line CPU kernels, D = {d} ----\n"
        );
        fwd(&mut o, d / 4, rf);
        dq(&mut o, d / 4, rq);
        dkv(&mut o, d / 4, rk);
        decode(&mut o, d / 4);
        o
    }
}

/// The portable module (plus the tiled kernels when `tiled`) with the head size built in:
/// `D4` a `const` instead of an override, and the private row arrays sized to it, so every loop
/// over a row has a constant trip count and the driver can keep rows in registers. (On an H100,
/// loops bounded by an override that index private arrays were left rolled, the arrays in local
/// memory: the matmul's 8x4 register blocks ran 5x slower that way.) Built once per process.
fn fixed_d_shader(d: usize, tiled: bool) -> &'static Shader {
    let family = if tiled {
        "attention_tiled_d"
    } else {
        "attention_portable_d"
    };
    crate::ops::generated_shader(family, d, || fixed_d_source(d, tiled))
}

/// Full WGSL of [`fixed_d_shader`] (also for the shader validation test).
pub(crate) fn fixed_d_source(d: usize, tiled: bool) -> String {
    let base = if tiled {
        TILED_SHADER.source
    } else {
        SHADER.source
    };
    let d4 = d / 4;
    let out = base
        .replacen(
            "override D4: u32 = 16u;",
            &format!("const D4: u32 = {d4}u;"),
            1,
        )
        .replacen(
            "const MAXC: u32 = 32u;",
            &format!("const MAXC: u32 = {d4}u;"),
            1,
        );
    debug_assert!(out.contains(&format!("const D4: u32 = {d4}u;")));
    out
}

/// The portable module plus the CPU kernels for head size `d`, built once per process.
fn cpu_shader(d: usize) -> &'static Shader {
    crate::ops::generated_shader("attention_cpu_d", d, || cpu_source(d))
}

/// Full WGSL of the CPU-adapter module for head size `d` (for the shader validation test).
pub(crate) fn cpu_source(d: usize) -> String {
    format!("{}\n{}", SHADER.source, cpu::entries(d))
}
