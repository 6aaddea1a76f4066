//! How the row-wise kernels (softmax, log-softmax, sum/max over the last axis, LayerNorm, RMSNorm,
//! cross-entropy, accuracy) map the rows of a `(rows, cols)` view onto invocations.
//!
//! # The three forms
//! - [`RowKernel::Workgroup`]: one workgroup of 256 invocations per row, strided loads and a
//!   tree reduction in workgroup memory. Fills a GPU even with few, long rows (a vocabulary-
//!   sized softmax while sampling).
//! - [`RowKernel::Subgroup`]: one subgroup per row (`subgroupAdd` / `subgroupMax`), 8 rows per
//!   workgroup of 64 invocations; no workgroup memory and no barriers. The `*_subgroup.wgsl`
//!   files, compiled only when the device has subgroups; the subgroup size is read from the
//!   `subgroup_size` builtin, never assumed.
//! - [`RowKernel::Invocation`]: one invocation per row looping over its columns, 64 rows per
//!   workgroup; no workgroup memory, no barriers, no subgroup operations.
//!
//! On lavapipe a workgroup is 32 eight-lane coroutines on 2 CPU threads and every
//! `workgroupBarrier()` switches all of them, so the workgroup form costs ~20-50 µs per row
//! whatever its length. Measured on a loaded two-core machine (ms per dispatch, wall):
//!
//! | (rows, cols)              | workgroup | subgroup | invocation      |
//! |---------------------------|-----------|----------|-----------------|
//! | softmax (2048, 128)       | 80-135    | 2.0      | 1.8             |
//! | sum_last (2048, 128)      | 45-85     | 0.5      | 0.4             |
//! | LayerNorm (2048, 128)     | 70-150    | 2.3      | 2.1 (1.0 vec4)  |
//! | cross-entropy (2048, 65)  | 45-190    | 0.9      | 0.6             |
//! | softmax (64, 4096)        | 4.5       | 1.6      | 2.5             |
//! | LayerNorm (64, 4096)      | 5.4       | 2.0      | 1.1 (vec4)      |
//! | softmax (8, 50257)        | 4.0       | 2.5      | (loop cap)      |
//!
//! # The rule ([`choose`])
//! 1. CPU adapter (`info().is_cpu`):
//!    - `cols <= CPU_MAX_COLS` → [`RowKernel::Invocation`] (every storage access is a per-lane
//!      scalar loop there, so what counts is no barriers; a little faster than the subgroup
//!      form at these lengths and needs no feature). Rows whose length is a multiple of 4 use
//!      vec4 loads where the kernel has them (LayerNorm).
//!    - longer rows → [`RowKernel::Subgroup`] where subgroups exist (faster than the
//!      workgroup form even for a vocabulary-sized softmax), else [`RowKernel::Workgroup`].
//! 2. Other adapters: subgroups and `cols <= SUBGROUP_MAX_COLS` → [`RowKernel::Subgroup`]
//!    (coalesced loads, a row's reduction in registers; PyTorch's warp-per-row softmax bound;
//!    not measured on a GPU here), else [`RowKernel::Workgroup`] (fills a GPU with few long
//!    rows).
//!
//! llvmpipe ends any invocation after 65,535 loop iterations in all. The invocation form runs
//! up to 3 passes of `cols` iterations and the subgroup form 3 passes of `cols / 8` (8-lane
//! subgroups or wider); [`valid`] keeps both under the cap.
//! Loop bounds are built from the row's first element index (an invocation-dependent value),
//! not from uniforms alone: lavapipe specialises a shader on uniform values that decide loop
//! conditions.
//!
//! [`crate::testing::force_kernel`] with `Family::Rows` on the calling thread, or
//! `PORTAGRAD_KERNELS=rows=workgroup|subgroup|invocation` for the process, forces a form
//! wherever it is valid (the tests run all three).

use crate::error::Result;
use crate::runtime::{Device, Shader};

/// The row-to-invocation mappings (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKernel {
    /// One workgroup per row, tree reduction in workgroup memory.
    Workgroup,
    /// One subgroup per row, subgroup reductions.
    Subgroup,
    /// One invocation per row, a plain loop over the columns.
    Invocation,
}

impl RowKernel {
    /// Parse `workgroup`, `subgroup` or `invocation`.
    pub fn parse(name: &str) -> Option<RowKernel> {
        match name {
            "workgroup" | "wg" => Some(RowKernel::Workgroup),
            "subgroup" | "sg" => Some(RowKernel::Subgroup),
            "invocation" | "inv" => Some(RowKernel::Invocation),
            _ => None,
        }
    }

    /// The name `parse` accepts.
    pub fn name(self) -> &'static str {
        match self {
            RowKernel::Workgroup => "workgroup",
            RowKernel::Subgroup => "subgroup",
            RowKernel::Invocation => "invocation",
        }
    }
}

/// Longest row the invocation form takes by the rule on a CPU adapter (past it the subgroup
/// form, whose lanes share the row, is faster on lavapipe).
pub(crate) const CPU_MAX_COLS: usize = 4096;
/// Longest row the subgroup form takes by the rule (on a GPU a longer row is better split
/// over a whole workgroup).
pub(crate) const SUBGROUP_MAX_COLS: usize = 1024;
/// Longest row the invocation form may take (loop-cap safety: 3 passes of `cols` trips).
const INVOCATION_LIMIT: usize = 16_384;
/// Longest row the subgroup form may take, per lane of the smallest subgroup counted up to 8
/// (loop-cap safety: a subgroup of S lanes takes S / 8 of its workgroup's 8 rows in turn, so
/// one invocation runs 3 passes of `cols / min(S, 8)` trips in all).
const SUBGROUP_LIMIT_PER_LANE: usize = 16_384;

/// Invocations per workgroup of the subgroup and invocation forms (`WG_ROWS` in the WGSL).
pub(crate) const WG_ROWS: u64 = 64;
/// Rows per workgroup of the subgroup form (`SG_ROWS` in the WGSL).
pub(crate) const SG_ROWS: u64 = 8;

/// Whether form `k` can run rows of `cols` on `dev`.
fn valid(dev: &Device, k: RowKernel, cols: usize) -> bool {
    match k {
        RowKernel::Workgroup => true,
        RowKernel::Subgroup => {
            dev.has_subgroups()
                && dev.info().subgroup_sizes.is_some_and(|(lo, _)| {
                    cols <= SUBGROUP_LIMIT_PER_LANE * (lo.clamp(1, 8) as usize)
                })
        }
        RowKernel::Invocation => cols <= INVOCATION_LIMIT,
    }
}

/// The form for rows of `cols` on `dev` (the rule of the module docs, unless forced).
pub(crate) fn choose(dev: &Device, cols: usize) -> RowKernel {
    if let Some(k) = crate::ops::overrides::rows()
        && valid(dev, k, cols)
    {
        return k;
    }
    let subgroup_ok = valid(dev, RowKernel::Subgroup, cols);
    if dev.info().is_cpu {
        if cols <= CPU_MAX_COLS {
            RowKernel::Invocation
        } else if subgroup_ok {
            RowKernel::Subgroup
        } else {
            RowKernel::Workgroup
        }
    } else if subgroup_ok && cols <= SUBGROUP_MAX_COLS {
        RowKernel::Subgroup
    } else {
        RowKernel::Workgroup
    }
}

/// Workgroups for `rows` rows in form `k` (folded into 2-D past the per-dimension cap).
pub(crate) fn grid(k: RowKernel, rows: usize) -> Result<[u32; 3]> {
    let rows = rows as u64;
    crate::runtime::grid_1d(match k {
        RowKernel::Workgroup => rows,
        RowKernel::Subgroup => rows.div_ceil(SG_ROWS),
        RowKernel::Invocation => rows.div_ceil(WG_ROWS),
    })
}

/// One row kernel's dispatch: shader, entry point and grid.
pub(crate) struct Plan {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub grid: [u32; 3],
}

/// A row kernel's entry points in its forms; [`row_entries!`] spells them from the base name,
/// once at compile time, so no dispatch builds a name.
pub(crate) struct Entries {
    /// `{base}`: the workgroup form.
    pub workgroup: &'static str,
    /// `{base}_inv`: the invocation form.
    pub invocation: &'static str,
    /// `{base}_inv4`: the invocation form with vec4 loads, where the kernel has one.
    pub invocation4: Option<&'static str>,
    /// `{base}_sg`, in the subgroup shader.
    pub subgroup: &'static str,
}

/// [`Entries`] of the row kernel `base`; `row_entries!(base, vec4)` when it has `{base}_inv4`.
macro_rules! row_entries {
    ($base:literal) => {
        $crate::ops::rows::Entries {
            workgroup: $base,
            invocation: concat!($base, "_inv"),
            invocation4: None,
            subgroup: concat!($base, "_sg"),
        }
    };
    ($base:literal, vec4) => {
        $crate::ops::rows::Entries {
            workgroup: $base,
            invocation: concat!($base, "_inv"),
            invocation4: Some(concat!($base, "_inv4")),
            subgroup: concat!($base, "_sg"),
        }
    };
}
pub(crate) use row_entries;

/// Plan a row kernel whose workgroup and invocation forms are in `shader` and whose subgroup
/// form is in `subgroup_shader`. Rows whose length is a multiple of 4 take the vec4
/// invocation form where `entries` has one.
pub(crate) fn plan(
    dev: &Device,
    shader: &'static Shader,
    subgroup_shader: &'static Shader,
    entries: &Entries,
    rows: usize,
    cols: usize,
) -> Result<Plan> {
    let k = choose(dev, cols);
    let (shader, entry) = match k {
        RowKernel::Workgroup => (shader, entries.workgroup),
        RowKernel::Subgroup => (subgroup_shader, entries.subgroup),
        RowKernel::Invocation => match entries.invocation4 {
            Some(e4) if cols.is_multiple_of(4) => (shader, e4),
            _ => (shader, entries.invocation),
        },
    };
    Ok(Plan {
        shader,
        entry,
        grid: grid(k, rows)?,
    })
}
