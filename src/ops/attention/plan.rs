//! Which attention kernels run for one head size on one device, and the parameters every row
//! kernel shares. The row kernels (forward, dQ, dK/dV) and decode come in three forms:
//!
//! - `portable` (`attention.wgsl`): one row per invocation, tiles of the other side read
//!   straight from storage; on a GPU all invocations of a workgroup read the same tile rows, a
//!   cache-served broadcast. Every adapter.
//! - `tiled` (`attention_tiled.wgsl`): GPUs. Blocks of the other side staged in workgroup
//!   memory (FlashAttention-2 style), one row per invocation; decode as `portable`.
//! - `subgroup-cpu`: CPU adapters with subgroups of at least 8 lanes (lavapipe). Straight-line
//!   kernels generated for the head size at hand ([`super::generate`]): tiles exchanged with
//!   subgroup broadcasts, several rows per lane.
//!
//! [`crate::testing::force_kernel`] with `Family::Attention` forces `portable` or `tiled` on
//! the calling thread, `PORTAGRAD_KERNELS=attention=portable|tiled` for the process.

use super::generate::{cpu_rows, cpu_shader, fixed_d_shader};
use super::launch::Params;
use crate::error::Result;
use crate::ops::Constants;
use crate::runtime::{Device, Shader, grid_1d};

/// The kernel kinds a test can force ([`crate::ops::overrides`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Portable,
    Tiled,
}

impl Kind {
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        match name {
            "portable" => Some(Kind::Portable),
            "tiled" => Some(Kind::Tiled),
            _ => None,
        }
    }
}

/// vec4s per staged block of the tiled kernels (`TILE`): two blocks, 16 KiB of workgroup memory.
pub(crate) const TILE: u32 = 512;
// WebGPU's default maxComputeWorkgroupStorageSize: every adapter runs them.
const _: () = assert!(2 * TILE * 16 <= 16384);

/// Rows per tile (`TW` in the WGSL); the CPU kernels broadcast from this many lanes.
pub(crate) const TW: u32 = 8;
/// Invocations (rows) per workgroup of the row kernels (`WG`).
pub(crate) const WG: u32 = 64;
/// Invocations per workgroup of the decode kernel (`DWG`, at most 64).
pub(crate) const DWG: u32 = 64;

/// The three row kernels (indices into [`Plan::rows`]).
pub(crate) const FWD: usize = 0;
pub(crate) const DQ: usize = 1;
pub(crate) const DKV: usize = 2;
/// Entry points of the three row kernels per form: portable, CPU, tiled (literals, so no name
/// is built at dispatch time).
const ENTRIES: [[&str; 3]; 3] = [
    ["attn_fwd", "attn_bwd_dq", "attn_bwd_dkv"],
    ["attn_fwd_cpu", "attn_bwd_dq_cpu", "attn_bwd_dkv_cpu"],
    ["attn_fwd_tiled", "attn_bwd_dq_tiled", "attn_bwd_dkv_tiled"],
];

/// How the row kernels (forward, dQ, dK/dV) run for one head size on one device.
pub(crate) struct Plan {
    pub(crate) shader: &'static Shader,
    /// Invocations per workgroup.
    pub(crate) wg: u32,
    /// Rows each invocation owns, per kernel.
    pub(crate) rows: [u32; 3],
    /// Whether the straight-line CPU kernels run.
    pub(crate) cpu: bool,
    /// Rows per staged block (`BC`) of the tiled kernels; 0 for the others.
    pub(crate) bc: u32,
    /// Reported by [`plan_name`].
    pub(crate) name: &'static str,
}

impl Plan {
    pub(crate) fn entry(&self, kernel: usize) -> &'static str {
        let form = if self.cpu {
            1
        } else if self.bc > 0 {
            2
        } else {
            0
        };
        ENTRIES[form][kernel]
    }
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
/// tiled ones on GPUs, unless a kind is forced ([`crate::ops::overrides`]).
pub(crate) fn plan(dev: &Device, d: usize) -> Plan {
    let info = dev.info();
    let tiled = || Plan {
        shader: fixed_d_shader(d, true),
        wg: WG,
        rows: [1; 3],
        cpu: false,
        // As many rows as fit TILE vec4s, whole TW steps, at most 64 (D = 64: 32, D = 128: 16).
        bc: (TILE / (d as u32 / 4)).min(64) / TW * TW,
        name: "tiled",
    };
    match crate::ops::overrides::attention() {
        Some(Kind::Portable) => return portable(d),
        Some(Kind::Tiled) => return tiled(),
        None => {}
    }
    match info.subgroup_sizes {
        Some((lo, hi)) if info.is_cpu && dev.has_subgroups() && lo >= TW => Plan {
            shader: cpu_shader(d),
            // One subgroup per workgroup: small T leaves no idle subgroups.
            wg: hi,
            rows: cpu_rows(d),
            cpu: true,
            bc: 0,
            name: "subgroup-cpu",
        },
        _ if info.is_cpu => portable(d),
        _ => tiled(),
    }
}

/// Which kernels [`super::launch::forward`], [`super::launch::backward`] and
/// [`super::launch::decode`] use on `dev` for head size `d`:
/// `"subgroup-cpu"`, `"portable"` or `"tiled"`.
pub(crate) fn plan_name(dev: &Device, d: usize) -> &'static str {
    plan(dev, d).name
}

/// Parameters of row kernel `kernel` and its grid. `bh` counts the heads the kernel's rows
/// belong to (query heads for the forward and dQ, K/V heads for dK/dV); `group` query heads
/// share one K/V head.
pub(crate) fn row_params(
    pl: &Plan,
    kernel: usize,
    bh: usize,
    group: usize,
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
        group: group as u32,
        ..Params::default()
    };
    Ok((p, grid_1d((blocks * bh) as u64)?))
}

/// The override constants of a plan's kernels: `WG`, and `D4` (CPU form) or `BC` (tiled form).
pub(crate) fn consts(d: usize, pl: &Plan) -> Constants<2> {
    let mut c = Constants::new();
    c.push("WG", f64::from(pl.wg));
    // The portable and tiled modules have D4 built in (`fixed_d_shader`).
    if pl.cpu {
        c.push("D4", (d / 4) as f64);
    } else if pl.bc > 0 {
        c.push("BC", f64::from(pl.bc));
    }
    c
}
