//! Launcher for `shaders/matmul.wgsl` and `shaders/matmul_subgroup.wgsl`:
//! `C = act(op(A) · op(B) + bias)`, batched, with op = identity or transpose read in place.
//!
//! # Which kernel runs (the rule)
//!
//! No single kernel is fast everywhere (see docs/ARCHITECTURE.md and the figures below), so [`choose`]
//! picks one per adapter and shape (on GPUs `autotune.rs` measures these candidates instead):
//!
//! 0. Both operands f16, M > 4, and the adapter lists cooperative matrices
//!    ([`coop_default`]) → [`Kernel::Coop`], tensor cores (`coop.rs`); not measured on a GPU
//!    yet, so the autotune compares it with the portable kernels per shape class.
//! 1. `M <= 4` on a GPU → [`Kernel::Gemv`]: K split over each workgroup's invocations so that
//!    many loads are in flight, partial sums added in workgroup memory.
//!    `M <= 4`, or `M <= 16` on a software adapter → [`Kernel::Rows`] with one register row
//!    per output row (up to 4): a GEMV. Decode shapes such as `1 x 768 · 768 x 50257` are
//!    bound by reading B once; a tiled kernel wastes most of its rows there (lavapipe,
//!    `8 x 768 · 768 x 2304`: 7.5 GFLOP/s here against 3.3 for the subgroup kernel; from
//!    M = 32 the subgroup kernel wins).
//! 2. Software adapter (`info().is_cpu`) whose subgroup size is fixed at 8 or 16 (lavapipe with
//!    256- or 512-bit lanes) → [`Kernel::Subgroup`]: subgroup-broadcast register tiles without
//!    workgroup memory. 1024³ on a quiet 2-core lavapipe: ≈50 GFLOP/s (≈25 per CPU-second),
//!    against ≈10 for the rows kernel and ≈4 for the tiled one.
//! 3. Other software adapters (no subgroups, or a variable subgroup size) → [`Kernel::Rows`]
//!    with 4 rows per invocation: no workgroup memory and no barriers, which only cost there.
//! 4. Everything else (discrete and integrated GPUs) → [`Kernel::Tiled`]: workgroup-memory
//!    tiles: 128 x 128 with 8x8 register blocks (`mm_wide_v4`) once there are enough tiles to
//!    fill a large GPU, else 64 x 64 with 4x4 blocks (`mm_tiled_v4`, or `mm_tiled` when the
//!    operands are not vec4-aligned).
//!
//! Each kernel has a vec4 entry point and a scalar one; the vec4 one is used when the operands
//! are aligned for it ([`vec4_ok`]), the scalar one (element strides) for everything else.
//! A K longer than [`MAX_K_PER_DISPATCH`] is split by the caller (`ops::matmul`).

use bytemuck::Zeroable;

use super::Activation;
use crate::error::{Error, Result};
use crate::ops::shader;
use crate::runtime::{Access, Device, Shader, grid_1d};
use crate::tensor::{DType, Tensor};

pub(crate) const SHADER: Shader = shader("matmul", include_str!("../../../shaders/matmul.wgsl"));
/// Compiled only when the device has subgroups.
pub(crate) const SUBGROUP_SHADER: Shader = shader(
    "matmul_subgroup",
    include_str!("../../../shaders/matmul_subgroup.wgsl"),
);

/// Batch dimensions the kernels index (after merging; so C may have up to 4 + 2 dims).
pub(crate) const MAX_BATCH_DIMS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    /// K of the operands' layout.
    k: u32,
    /// Bit 0: add bias; bits 1-2: activation.
    flags: u32,
    tiles_m: u32,
    tiles: u32,
    total: u32,
    /// K of this dispatch (`k0 .. k0 + kc`).
    kc: u32,
    sam: u32,
    sak: u32,
    sbk: u32,
    sbn: u32,
    a0: u32,
    b0: u32,
    /// Split-K: slices of K in this dispatch, and K per slice.
    slices: u32,
    ks: u32,
    bdims: [u32; 4],
    bsa: [u32; 4],
    bsb: [u32; 4],
}
const _: () = assert!(std::mem::size_of::<Params>() == 112);

/// Longest K one dispatch covers. lavapipe silently ends an invocation after 65,535 loop
/// iterations in total, counted over all its loops. At this K every kernel stays below that:
/// the subgroup and GEMV kernels iterate K / 4 times, the subgroup fallback 2 K, the tiled
/// kernel under 3 K. A longer K is split into dispatches whose partial products are summed.
pub(crate) const MAX_K_PER_DISPATCH: usize = 16_384;

/// The kernel families (see the module docs for when each is chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Workgroup-memory tiles, register blocks of 4x4 or 8x4 (GPUs).
    Tiled,
    /// Subgroup-broadcast register tiles, no workgroup memory (CPU-like adapters).
    Subgroup,
    /// Register blocks of up to 4 rows x 4 columns per column group, without workgroup memory
    /// (GEMV; fallback for software adapters without subgroups).
    Rows,
    /// Tests: the tiled kernel with TM rows per invocation (4 or 8) whatever the shape.
    TiledTm(u32),
    /// Tests and benchmarks: the 128 x 128 tiled kernel (8x8 blocks) whatever the shape (vec4
    /// operands only; others take the scalar tiled entry).
    Wide,
    /// Tests: the tiled kernel with K split into this many slices in one dispatch.
    Split(usize),
    /// GPUs, M <= 4: K split over a workgroup, partial sums added in workgroup memory (vec4
    /// operands, A not transposed; others take the rows kernel).
    Gemv,
    /// Tests: the subgroup kernel's entry point for subgroup size 8 or 16 whatever the adapter
    /// runs (on a mismatch the kernel must take its slow but correct fallback).
    SubgroupEntry(u32),
    /// Tests: the rows kernel with the GPU workgroup shape (true) or the CPU one (false)
    /// whatever the adapter.
    RowsShape(bool),
    /// Tensor cores (`coop.rs`): f16 operands on cooperative matrices, f32 accumulation;
    /// 128 x 128 tiles (`Some(true)`), 64 x 64 (`Some(false)`) or as [`wide_pays`] says.
    /// An error on an adapter without cooperative matrices or for other dtypes.
    Coop(Option<bool>),
    /// Tests: the cooperative kernel of matrix size S (16 or 8) and 128 x 128 tiles (true) or
    /// 64 x 64, with scalar code in place of the matrix operations (`coop::source_for`), on any
    /// adapter with subgroups: checks its staging, layouts, bounds and epilogue on lavapipe.
    CoopEmulated(u32, bool),
    /// The rule without the tensor-core kernel or autotuning: what an adapter without
    /// cooperative matrices runs (benchmarks compare the two).
    Portable,
}

impl Kernel {
    /// Parse a kernel name: `tiled`, `subgroup`, `rows` (or `gemv`), `coop` (tensor cores), and
    /// `portable` (the rule without tensor cores or autotuning), and for tests `tiled4`,
    /// `tiled8`, `wide`, `split3`, `gemv_gpu`, `subgroup8`, `subgroup16`, `rows_gpu`,
    /// `rows_cpu`, `coop64`, `coop128`, `coop_emu16`, `coop_emu16_wide`, `coop_emu8`,
    /// `coop_emu8_wide`.
    pub(crate) fn parse(name: &str) -> Option<Kernel> {
        match name {
            "tiled" => Some(Kernel::Tiled),
            "subgroup" => Some(Kernel::Subgroup),
            "rows" | "gemv" => Some(Kernel::Rows),
            "tiled4" => Some(Kernel::TiledTm(4)),
            "tiled8" => Some(Kernel::TiledTm(8)),
            "wide" => Some(Kernel::Wide),
            "split3" => Some(Kernel::Split(3)),
            "gemv_gpu" => Some(Kernel::Gemv),
            "subgroup8" => Some(Kernel::SubgroupEntry(8)),
            "subgroup16" => Some(Kernel::SubgroupEntry(16)),
            "rows_gpu" => Some(Kernel::RowsShape(true)),
            "rows_cpu" => Some(Kernel::RowsShape(false)),
            "coop" => Some(Kernel::Coop(None)),
            "coop64" => Some(Kernel::Coop(Some(false))),
            "coop128" => Some(Kernel::Coop(Some(true))),
            "portable" => Some(Kernel::Portable),
            "coop_emu16" => Some(Kernel::CoopEmulated(16, false)),
            "coop_emu16_wide" => Some(Kernel::CoopEmulated(16, true)),
            "coop_emu8" => Some(Kernel::CoopEmulated(8, false)),
            "coop_emu8_wide" => Some(Kernel::CoopEmulated(8, true)),
            _ => None,
        }
    }
}

/// The epilogue's activation as the WGSL reads it: bits 1-2 of `flags` (0 none, 1 relu,
/// 2 gelu).
fn act_flags(act: Activation) -> u32 {
    let code = match act {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::Gelu => 2,
    };
    code << 1
}

/// How the batch dimensions of C map onto A and B.
#[derive(Clone, Debug)]
pub(crate) struct Batch {
    /// Batch shape of C (at most [`MAX_BATCH_DIMS`] dims after merging).
    pub dims: Vec<usize>,
    /// Element offset of A per unit step of each batch dim (0 where A broadcasts).
    pub sa: Vec<usize>,
    /// Element offset of B per unit step of each batch dim (0 where B broadcasts).
    pub sb: Vec<usize>,
}

/// One matmul to record: `out (batch.., M, N) = act(op(a) · op(b) + bias)`.
pub(crate) struct Gemm<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub out: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub m: usize,
    pub n: usize,
    /// K of the operands.
    pub k: usize,
    /// The part of K this dispatch sums over: `k0 .. k0 + kc` (at most
    /// [`MAX_K_PER_DISPATCH`]).
    pub k0: usize,
    pub kc: usize,
    /// Split-K in one dispatch: slices of `ks` (`slices` = 1: none). `out` is then
    /// (slices, batch.., M, N), the partial products.
    pub slices: usize,
    pub ks: usize,
    /// `a` holds each matrix as (K, M).
    pub trans_a: bool,
    /// `b` holds each matrix as (N, K).
    pub trans_b: bool,
    pub batch: Batch,
    pub act: Activation,
    /// `out` is f16 (packed pairs; N even): only the cooperative kernels write it.
    pub out_f16: bool,
}

/// The adapter's subgroup size when it is fixed at one the subgroup kernel has an entry for.
fn fixed_subgroup_size(dev: &Device) -> Option<u32> {
    match dev.info().subgroup_sizes {
        Some((lo, hi)) if lo == hi && (lo == 8 || lo == 16) && dev.has_subgroups() => Some(lo),
        _ => None,
    }
}

/// The kernel the rule in the module docs picks for this adapter and shape.
pub(crate) fn choose(dev: &Device, m: usize, _n: usize, _k: usize) -> Kernel {
    let cpu = dev.info().is_cpu;
    if m <= 4 && !cpu {
        Kernel::Gemv
    } else if m <= 4 || (cpu && m <= 16) {
        Kernel::Rows
    } else if cpu {
        if fixed_subgroup_size(dev).is_some() {
            Kernel::Subgroup
        } else {
            Kernel::Rows
        }
    } else {
        Kernel::Tiled
    }
}

/// Whether the rule takes the tensor-core kernel: the device has cooperative matrices, both
/// operands are f16, and M is past the GEMV shapes (one or a few rows waste a 16-row matrix).
pub(crate) fn coop_default(dev: &Device, a: DType, b: DType, m: usize) -> bool {
    dev.info().coop_f16_size().is_some() && a == DType::F16 && b == DType::F16 && m > 4
}

/// The error for the cooperative kernel where it cannot run.
fn coop_unavailable(dev: &Device, a: DType, b: DType) -> Option<Error> {
    let info = dev.info();
    if info.coop_f16_size().is_none() {
        let listed = if info.cooperative_matrices.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", info.cooperative_matrices)
        };
        return Some(Error::InvalidArgument {
            op: "matmul",
            message: format!(
                "the cooperative-matrix (tensor-core) kernel needs an adapter with cooperative \
                 matrices (f16 16x16x16 or 8x8x8 with f32 accumulators, plus subgroups and \
                 shader-f16); adapter {} ({}) has no cooperative matrices (usable configurations: {listed})",
                info.name, info.backend
            ),
        });
    }
    if a != DType::F16 || b != DType::F16 {
        return Some(coop_dtype_error(a, b));
    }
    None
}

fn coop_dtype_error(a: DType, b: DType) -> Error {
    Error::InvalidArgument {
        op: "matmul",
        message: format!(
            "the cooperative-matrix kernel takes f16 operands; got {} x {}",
            a.name(),
            b.name()
        ),
    }
}

/// Whether the 128 x 128 tiles of `mm_wide_v4` beat the 64 x 64 ones of `mm_tiled_v4`: only
/// when there are enough of them to keep every multiprocessor of a large GPU busy (H100:
/// 4096³ 29.6 TFLOP/s against 22.6; 1024³, 64 tiles, 11.0 against 12.3; 1024 x 768 x 3072,
/// 192 tiles, 20.7 against 20.0).
fn wide_pays(batch: usize, m: usize, n: usize) -> bool {
    batch * m.div_ceil(128) * n.div_ceil(128) >= 128
}

/// Workgroups a GPU product should have in flight; fewer leave multiprocessors idle.
const GPU_TARGET_TILES: usize = 512;

/// Split-K for the automatic choice on GPUs: `Some((slices, depth))` when a product has few
/// output tiles and a long K — a weight gradient such as `Xᵀ · dY`, 384 x 16384 x 1152, has
/// 108 tiles of 64 x 64 that each walk all of K (H100: 7 TFLOP/s, against 22 for the same
/// work as `X · W`). The slices run in the same dispatch (separate dispatches would run one
/// after another) and write partial products that `mm_sum_slices` adds. Each slice is at least
/// 512 deep and a multiple of 16, so vec4 loads stay aligned; at most `MAX_K_PER_DISPATCH`.
pub(crate) fn split_k(
    gpu: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    vec4: bool,
) -> Option<(usize, usize)> {
    let tiles = batch * m.div_ceil(64) * n.div_ceil(64);
    if !gpu || !vec4 || m <= 4 || k < 1024 || tiles * 2 >= GPU_TARGET_TILES {
        return None;
    }
    let want = GPU_TARGET_TILES.div_ceil(tiles).min(k / 512);
    let depth = k
        .div_ceil(want.max(1))
        .next_multiple_of(16)
        .min(MAX_K_PER_DISPATCH);
    let slices = k.div_ceil(depth);
    (slices > 1).then_some((slices, depth))
}

/// Record `out = act(sum over slices of partials + bias)`; `partials` (slices, batch.., M, N),
/// `out` (batch.., M, N), `n` = N.
pub(crate) fn sum_slices(
    partials: &Tensor,
    out: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    slices: usize,
    n: usize,
) -> Result<()> {
    let dev = &out.dev;
    let total = out.numel();
    let p = Params {
        n: u32_of("N", n)?,
        flags: u32::from(bias.is_some()) | act_flags(act),
        total: u32_of("tensor size", total)?,
        slices: u32_of("slices", slices)?,
        ..Zeroable::zeroed()
    };
    u32_of("tensor size", partials.numel())?;
    let bias = bias.unwrap_or(partials);
    // partials: (slices, batch.., M, N); bias: (N); out: (batch.., M, N)
    dev.dispatch(
        &SHADER,
        "mm_sum_slices",
        &[],
        &p,
        &[
            (&partials.storage, Access::Read),
            (&partials.storage, Access::Read),
            (&bias.storage, Access::Read),
            (&out.storage, Access::ReadWrite),
        ],
        grid_1d(total.div_ceil(256) as u64)?,
    )
}

/// Column groups per invocation (CB) and invocations per workgroup (RW) of the rows kernel.
/// GPUs: 64 invocations of one column group, so a warp reads whole rows of B in vec4s. CPU
/// adapters: 8 invocations per workgroup, each with several column groups, so more rows of B
/// are in flight per step (1 x 768 · 768 x 2304 on lavapipe: 0.7 GFLOP/s at CB 1 / RW 64,
/// 2.5 at CB 4 / RW 8; RW 8 also beat 16 with 16-lane subgroups); with 2-4 rows, CB 2
/// measured best there.
fn rows_shape(gpu: bool, rb: usize) -> (usize, usize) {
    if gpu {
        (1, 64)
    } else {
        (if rb == 1 { 4 } else { 2 }, 8)
    }
}

/// Whether the vec4 entry points can read these operands: every vec4 they load lies inside
/// one matrix row (or column, for a transposed operand) and starts 16-byte aligned.
pub(crate) fn vec4_ok(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> bool {
    k.is_multiple_of(4)
        && k > 0
        && (!trans_a || m.is_multiple_of(4))
        && (trans_b || n.is_multiple_of(4))
}

fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape {
        op: "matmul",
        message: format!("{what} {v} exceeds the 32-bit indexing of the matmul kernels"),
    })
}

/// Record the matmul with `kernel` (or the rule's choice). Returns the entry point that ran
/// (`None` when there was nothing to compute).
pub(crate) fn gemm(g: &Gemm, kernel: Option<Kernel>) -> Result<Option<&'static str>> {
    let dev = &g.a.dev;
    let batch: usize = g.batch.dims.iter().product();
    if g.m == 0 || g.n == 0 || batch == 0 {
        return Ok(None);
    }
    let kernel = match kernel {
        None | Some(Kernel::Portable) => choose(dev, g.m, g.n, g.k),
        Some(k) => k,
    };
    if g.out_f16 && (!matches!(kernel, Kernel::Coop(_) | Kernel::CoopEmulated(..)) || g.n % 2 == 1)
    {
        return Err(Error::InvalidArgument {
            op: "matmul",
            message: "an f16 output is written by the cooperative kernels, for an even N".into(),
        });
    }
    debug_assert!(
        g.k0 + g.kc <= g.k && (if g.slices > 1 { g.ks } else { g.kc }) <= MAX_K_PER_DISPATCH
    );
    // The chunk's start must keep vec4 loads aligned (k0 is a multiple of 4 when K is).
    let v4 = vec4_ok(g.m, g.n, g.k, g.trans_a, g.trans_b) && g.kc.is_multiple_of(4) && g.kc > 0;
    // Element counts must fit the kernels' u32 indices.
    for t in [g.a, g.b, g.out] {
        u32_of("tensor size", t.numel())?;
    }

    let (sam, sak) = if g.trans_a { (1, g.m) } else { (g.k, 1) };
    let (sbk, sbn) = if g.trans_b { (1, g.k) } else { (g.n, 1) };
    let nb = g.batch.dims.len();
    if nb > MAX_BATCH_DIMS {
        return Err(Error::Shape {
            op: "matmul",
            message: format!("{nb} batch dimensions; at most {MAX_BATCH_DIMS} are supported"),
        });
    }
    let mut bdims = [1u32; 4];
    let mut bsa = [0u32; 4];
    let mut bsb = [0u32; 4];
    for i in 0..nb {
        let d = MAX_BATCH_DIMS - nb + i;
        bdims[d] = u32_of("batch dimension", g.batch.dims[i])?;
        bsa[d] = u32_of("batch stride", g.batch.sa[i])?;
        bsb[d] = u32_of("batch stride", g.batch.sb[i])?;
    }

    let mut constants = crate::ops::Constants::<4>::new();
    let (shader, entry, bm, bn, wg_per_tile): (&Shader, &'static str, usize, usize, usize) =
        match kernel {
            Kernel::Coop(_) | Kernel::CoopEmulated(..) => {
                let (s, wide, emulated) = match kernel {
                    Kernel::CoopEmulated(s, wide) => {
                        if !dev.has_subgroups() {
                            return Err(Error::InvalidArgument {
                                op: "matmul",
                                message: "the emulated cooperative kernel needs subgroups".into(),
                            });
                        }
                        if g.a.dtype != DType::F16 || g.b.dtype != DType::F16 {
                            return Err(coop_dtype_error(g.a.dtype, g.b.dtype));
                        }
                        (s, wide, true)
                    }
                    Kernel::Coop(wide) => {
                        if let Some(e) = coop_unavailable(dev, g.a.dtype, g.b.dtype) {
                            return Err(e);
                        }
                        let s = dev.info().coop_f16_size().expect("checked above");
                        (s, wide.unwrap_or_else(|| wide_pays(batch, g.m, g.n)), false)
                    }
                    _ => unreachable!("matched above"),
                };
                let v = super::coop::Variant {
                    s,
                    wide,
                    trans_a: g.trans_a,
                    trans_b: g.trans_b,
                    out_f16: g.out_f16,
                };
                // Four subgroups of the largest size the adapter may run.
                let sg = dev.info().subgroup_sizes.map_or(32, |(_, hi)| hi);
                constants.push("WG", f64::from(4 * sg));
                let tile = v.tile() as usize;
                (super::coop::module(v, emulated), "mm_coop", tile, tile, 1)
            }
            Kernel::Subgroup | Kernel::SubgroupEntry(_) => {
                let s = match kernel {
                    Kernel::SubgroupEntry(s) if dev.has_subgroups() => s,
                    _ => fixed_subgroup_size(dev).ok_or_else(|| Error::InvalidArgument {
                        op: "matmul",
                        message: format!(
                            "the subgroup kernel needs a fixed subgroup size of 8 or 16; adapter {} has {:?}",
                            dev.info().name,
                            dev.info().subgroup_sizes
                        ),
                    })?,
                };
                // Aᵀ·B through vec4 loads collapses when M is a power of two from 512 on
                // (lavapipe, per CPU-second: 4.9 GFLOP at M = 512, 14.6 at 1024, against 19 for
                // the scalar entry; 21 at M = 768, 1536 or 3072 through vec4), presumably cache
                // sets aliasing on the streamed Aᵀ panel. Take the scalar entry there.
                let v4 = v4 && !(g.trans_a && !g.trans_b && g.m.is_power_of_two() && g.m >= 512);
                let entry = match (s, v4) {
                    (8, true) => "mm_sg8_v4",
                    (8, false) => "mm_sg8",
                    (_, true) => "mm_sg16_v4",
                    (_, false) => "mm_sg16",
                };
                if v4 {
                    constants.push("TRANS_A", f64::from(u8::from(g.trans_a)));
                    constants.push("TRANS_B", f64::from(u8::from(g.trans_b)));
                }
                // 64 x (8 * S) tiles, one subgroup per workgroup.
                (&SUBGROUP_SHADER, entry, 64, 8 * s as usize, 1)
            }
            Kernel::Wide | Kernel::Tiled | Kernel::Split(_)
                if v4 && (kernel == Kernel::Wide || wide_pays(batch, g.m, g.n)) =>
            {
                constants.push("TRANS_A", f64::from(u8::from(g.trans_a)));
                constants.push("TRANS_B", f64::from(u8::from(g.trans_b)));
                (&SHADER, "mm_wide_v4", 128, 128, 1)
            }
            Kernel::Tiled | Kernel::TiledTm(_) | Kernel::Wide | Kernel::Split(_) => {
                let tm = match kernel {
                    Kernel::TiledTm(tm) => tm,
                    _ => 4,
                };
                constants.push("TM", f64::from(tm));
                constants.push("BK", 16.0);
                let entry = if v4 {
                    constants.push("TRANS_A", f64::from(u8::from(g.trans_a)));
                    constants.push("TRANS_B", f64::from(u8::from(g.trans_b)));
                    "mm_tiled_v4"
                } else {
                    "mm_tiled"
                };
                (&SHADER, entry, 16 * tm as usize, 64, 1)
            }
            Kernel::Gemv if v4 && !g.trans_a && g.m <= 4 => {
                constants.push("RB", g.m as f64);
                constants.push("TRANS_B", f64::from(u8::from(g.trans_b)));
                // Bᵀ: 8 columns per workgroup; B: 128.
                let bn = if g.trans_b { 8 } else { 128 };
                (&SHADER, "mm_gemv_v4", g.m, bn, 1)
            }
            // (`Portable` was resolved to the rule's kernel above.)
            Kernel::Rows | Kernel::RowsShape(_) | Kernel::Gemv | Kernel::Portable => {
                let rb = g.m.min(4);
                let gpu = match kernel {
                    Kernel::RowsShape(gpu) => gpu,
                    _ => !dev.info().is_cpu,
                };
                let (cb, rw) = rows_shape(gpu, rb);
                constants.push("RB", rb as f64);
                constants.push("CB", cb as f64);
                constants.push("RW", rw as f64);
                // The vec4 entry reads A along k, so it does not take Aᵀ.
                let entry = if v4 && !g.trans_a {
                    constants.push("TRANS_B", f64::from(u8::from(g.trans_b)));
                    "mm_rows_v4"
                } else {
                    "mm_rows"
                };
                (&SHADER, entry, rb, 4 * cb * rw, 1)
            }
        };

    let tiles_m = g.m.div_ceil(bm);
    let tiles = tiles_m * g.n.div_ceil(bn);
    let total = batch * tiles * wg_per_tile * g.slices;
    let p = Params {
        m: u32_of("M", g.m)?,
        n: u32_of("N", g.n)?,
        k: u32_of("K", g.k)?,
        flags: u32::from(g.bias.is_some()) | act_flags(g.act),
        tiles_m: u32_of("tile count", tiles_m)?,
        tiles: u32_of("tile count", tiles)?,
        total: u32_of("tile count", total)?,
        kc: u32_of("K", g.kc)?,
        sam: sam as u32,
        sak: sak as u32,
        sbk: sbk as u32,
        sbn: sbn as u32,
        a0: u32_of("K offset", g.k0 * sak)?,
        b0: u32_of("K offset", g.k0 * sbk)?,
        slices: u32_of("slices", g.slices)?,
        ks: u32_of("K", if g.slices > 1 { g.ks } else { g.kc })?,
        bdims,
        bsa,
        bsb,
    };
    // 16-bit operands: the same kernel, reading packed halves (the cooperative module reads
    // them itself).
    let shader = if matches!(kernel, Kernel::Coop(_) | Kernel::CoopEmulated(..)) {
        shader
    } else {
        super::half::module(shader, g.a.dtype, g.b.dtype)
    };
    // Without a bias the bias binding is unused; A stands in for it.
    let bias = g.bias.unwrap_or(g.a);
    // a: (batch.., M, K) or (batch.., K, M); b: (batch.., K, N) or (batch.., N, K);
    // bias: (N); out: (batch.., M, N)
    dev.dispatch(
        shader,
        entry,
        &constants,
        &p,
        &[
            (&g.a.storage, Access::Read),
            (&g.b.storage, Access::Read),
            (&bias.storage, Access::Read),
            (&g.out.storage, Access::ReadWrite),
        ],
        grid_1d(total as u64)?,
    )?;
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_k_slices_cover_k_and_stay_aligned() {
        // Software adapters, well-filled grids, short K, decode rows: no split.
        assert_eq!(split_k(false, 1, 384, 1152, 16_384, true), None);
        assert_eq!(split_k(true, 1, 4096, 4096, 16_384, true), None);
        assert_eq!(split_k(true, 1, 384, 1152, 1_000, true), None);
        assert_eq!(split_k(true, 1, 384, 1152, 16_384, false), None);
        assert_eq!(split_k(true, 1, 2, 1152, 16_384, true), None);
        // A weight gradient: 108 tiles of 64 x 64, so 5 slices of 3,280.
        assert_eq!(split_k(true, 1, 384, 1152, 16_384, true), Some((5, 3_280)));
        for (b, m, n, k) in [(1, 8, 8, 2_048), (3, 70, 9, 40_004), (1, 384, 384, 16_388)] {
            let (s, d) = split_k(true, b, m, n, k, true).expect("split");
            assert!(
                d.is_multiple_of(16) && (512..=MAX_K_PER_DISPATCH).contains(&d),
                "{d}"
            );
            assert!(s * d >= k && (s - 1) * d < k, "{s} slices of {d} for K {k}");
        }
    }
}
