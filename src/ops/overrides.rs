//! The one kernel-override mechanism, for tests and benchmarks: which kernel a family runs,
//! forced on the calling thread by [`crate::testing::force_kernel`] (a guard restores the
//! previous choice), or for the whole process by `PORTAGRAD_KERNELS`, e.g.
//! `PORTAGRAD_KERNELS=rows=invocation,attention=tiled,matmul=rows`. The thread's choice wins
//! over the environment; `auto` (or `default`) is the adapter's rule. A forced kernel the
//! device cannot run falls back to the rule, as each family documents.
//!
//! Read on every dispatch of a family: a `Cell` of `Copy` values, no allocation.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::ops::attention::plan::Kind as AttentionKind;
use crate::ops::matmul::launch::Kernel as MatmulKernel;
use crate::ops::rows::RowKernel;

/// The op families whose kernel a test can force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `matmul`, `matmul_t`, `linear` and their backward: `tiled`, `subgroup`, `rows`, `coop`
    /// (tensor cores: an error where the adapter has no cooperative matrices), `portable` (the
    /// rule without tensor cores or autotuning), and the test
    /// shapes `tiled4`, `tiled8`, `wide`, `split3`, `gemv_gpu`, `subgroup8`, `subgroup16`,
    /// `rows_gpu`, `rows_cpu`, `coop64`, `coop128`.
    Matmul,
    /// Fused attention and decode: `portable` or `tiled`.
    Attention,
    /// The row-wise kernels (softmax, sums over the last axis, LayerNorm, cross-entropy, ...):
    /// `workgroup`, `subgroup` or `invocation`.
    Rows,
}

impl Family {
    /// The name used in `PORTAGRAD_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Matmul => "matmul",
            Family::Attention => "attention",
            Family::Rows => "rows",
        }
    }

    fn parse(name: &str) -> Option<Family> {
        [Family::Matmul, Family::Attention, Family::Rows]
            .into_iter()
            .find(|f| f.name() == name)
    }
}

/// One family's setting: `None` not set here (the next level decides), `Some(None)` the
/// adapter's rule, `Some(Some(k))` kernel `k`.
type Setting<K> = Option<Option<K>>;

#[derive(Clone, Copy, Default)]
struct Settings {
    matmul: Setting<MatmulKernel>,
    attention: Setting<AttentionKind>,
    rows: Setting<RowKernel>,
}

thread_local! {
    static FORCED: Cell<Settings> = const {
        Cell::new(Settings { matmul: None, attention: None, rows: None })
    };
}

/// `PORTAGRAD_KERNELS`, parsed once; entries that do not parse are ignored.
fn env() -> Settings {
    static ENV: OnceLock<Settings> = OnceLock::new();
    *ENV.get_or_init(|| {
        let mut s = Settings::default();
        if let Ok(v) = std::env::var("PORTAGRAD_KERNELS") {
            for item in v.split(',') {
                if let Some((f, k)) = item.split_once('=')
                    && let Some(f) = Family::parse(f.trim())
                {
                    let _ = apply(&mut s, f, k.trim());
                }
            }
        }
        s
    })
}

fn auto(name: &str) -> bool {
    name == "auto" || name == "default"
}

/// Set family `f` to kernel `name` in `s`; `false` for an unknown name.
fn apply(s: &mut Settings, f: Family, name: &str) -> bool {
    match f {
        Family::Matmul => match (auto(name), MatmulKernel::parse(name)) {
            (true, _) => s.matmul = Some(None),
            (_, Some(k)) => s.matmul = Some(Some(k)),
            _ => return false,
        },
        Family::Attention => match (auto(name), AttentionKind::parse(name)) {
            (true, _) => s.attention = Some(None),
            (_, Some(k)) => s.attention = Some(Some(k)),
            _ => return false,
        },
        Family::Rows => match (auto(name), RowKernel::parse(name)) {
            (true, _) => s.rows = Some(None),
            (_, Some(k)) => s.rows = Some(Some(k)),
            _ => return false,
        },
    }
    true
}

fn pick<K: Copy>(f: impl Fn(&Settings) -> Setting<K>) -> Option<K> {
    FORCED.with(|c| f(&c.get())).or_else(|| f(&env())).flatten()
}

/// The matmul kernel forced for this thread (or process), if any.
pub(crate) fn matmul() -> Option<MatmulKernel> {
    pick(|s| s.matmul)
}

/// The attention kernels forced for this thread (or process), if any.
pub(crate) fn attention() -> Option<AttentionKind> {
    pick(|s| s.attention)
}

/// The row-kernel form forced for this thread (or process), if any.
pub(crate) fn rows() -> Option<RowKernel> {
    pick(|s| s.rows)
}

/// What [`force`] replaced (one family's setting), for [`restore`].
#[derive(Clone, Copy)]
pub(crate) struct Previous(Family, Settings);

/// Force family `f` to kernel `name` (or `auto`) on the calling thread.
pub(crate) fn force(op: &'static str, f: Family, name: &str) -> Result<Previous> {
    let prev = FORCED.with(Cell::get);
    let mut next = prev;
    if !apply(&mut next, f, name) {
        let expected = match f {
            Family::Matmul => "auto, tiled, subgroup, rows or coop",
            Family::Attention => "auto (or default), portable or tiled",
            Family::Rows => "auto, workgroup, subgroup or invocation",
        };
        return Err(Error::InvalidArgument {
            op,
            message: format!("unknown {} kernel {name:?}; expected {expected}", f.name()),
        });
    }
    FORCED.with(|c| c.set(next));
    Ok(Previous(f, prev))
}

/// Put back the family's setting that [`force`] replaced (guards of other families, dropped in
/// any order, keep theirs).
pub(crate) fn restore(Previous(f, old): Previous) {
    let mut s = FORCED.with(Cell::get);
    match f {
        Family::Matmul => s.matmul = old.matmul,
        Family::Attention => s.attention = old.attention,
        Family::Rows => s.rows = old.rows,
    }
    FORCED.with(|c| c.set(s));
}
