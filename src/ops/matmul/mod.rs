//! Matrix products: [`Tensor::matmul`], [`Tensor::matmul_t`] and the fused dense layer
//! [`Tensor::linear`]. Each is one dispatch; transposed operands are read in place, never
//! copied. Which kernel runs is decided per adapter and shape in `launch.rs`.

use crate::error::{Error, Result};
pub(crate) mod autotune;
pub(crate) mod coop;
pub(crate) mod generate;
pub(crate) mod grad;
pub(crate) mod half;
pub(crate) mod launch;
pub mod reference;

use self::launch::{self as mm, Batch, Gemm, Kernel};
use crate::tensor::{DType, Tensor};

/// How a weight matrix is stored, for [`Tensor::linear`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `w` is (K, N) = (in, out): `y = x·W + b` (Hugging Face `Conv1D`, as in GPT-2).
    InOut,
    /// `w` is (N, K) = (out, in): `y = x·Wᵀ + b` (PyTorch `nn.Linear`).
    OutIn,
}

/// Activation applied in the matmul epilogue, for [`Tensor::linear`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// GELU, tanh approximation (as GPT-2 and [`Tensor::gelu`]).
    Gelu,
}

/// Shape and layout of one batched product, worked out from the operands.
struct Plan {
    out_shape: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
    batch: Batch,
}

fn describe(shape: &[usize], trans: bool) -> String {
    if trans {
        format!("{shape:?} (transposed)")
    } else {
        format!("{shape:?}")
    }
}

/// Row-major element strides of the batch dims of a (batch.., r, c) operand, seen from the
/// broadcast batch shape `out` (0 on broadcast dims).
fn batch_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let nb = shape.len() - 2;
    let mut s = vec![0; out.len()];
    let mut stride = shape[nb] * shape[nb + 1];
    for d in (0..nb).rev() {
        let od = d + out.len() - nb;
        if shape[d] != 1 {
            s[od] = stride;
        }
        stride *= shape[d];
    }
    s
}

/// A matmul operand is f32, f16 or bf16 (16-bit values are unpacked on load; products
/// accumulate in f32 and the result is f32).
fn expect_operand(op: &'static str, t: &Tensor) -> Result<()> {
    if !t.dtype.is_float() {
        return Err(Error::DType {
            op,
            expected: "f32, f16 or bf16",
            got: t.dtype.name(),
        });
    }
    Ok(())
}

/// Check operands and work out the product's shape, NumPy matmul style: the last two dims are
/// the matrices, the leading dims broadcast against each other (a missing dim counts as 1).
fn plan(op: &'static str, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Plan> {
    a.same_device(op, b)?;
    expect_operand(op, a)?;
    expect_operand(op, b)?;
    let (sa, sb) = (&a.shape, &b.shape);
    let both = || {
        format!(
            "lhs {} and rhs {}",
            describe(sa, trans_a),
            describe(sb, trans_b)
        )
    };
    if sa.len() < 2 || sb.len() < 2 {
        return Err(Error::Shape {
            op,
            message: format!("{}: both operands need at least 2 dimensions", both()),
        });
    }
    let (ra, rb) = (sa.len(), sb.len());
    let (m, ka) = if trans_a {
        (sa[ra - 1], sa[ra - 2])
    } else {
        (sa[ra - 2], sa[ra - 1])
    };
    let (kb, n) = if trans_b {
        (sb[rb - 1], sb[rb - 2])
    } else {
        (sb[rb - 2], sb[rb - 1])
    };
    if ka != kb {
        return Err(Error::Shape {
            op,
            message: format!(
                "{} do not agree on the inner dimension ({ka} vs {kb})",
                both()
            ),
        });
    }
    let (ba, bb) = (&sa[..ra - 2], &sb[..rb - 2]);
    let nb = ba.len().max(bb.len());
    let mut dims = vec![0; nb];
    for (i, d) in dims.iter_mut().enumerate() {
        let da = if i < nb - ba.len() {
            1
        } else {
            ba[i - (nb - ba.len())]
        };
        let db = if i < nb - bb.len() {
            1
        } else {
            bb[i - (nb - bb.len())]
        };
        *d = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(Error::Shape {
                    op,
                    message: format!(
                        "{}: batch dimensions {ba:?} and {bb:?} do not broadcast",
                        both()
                    ),
                });
            }
        };
    }
    let mut out_shape = dims.clone();
    out_shape.extend([m, n]);
    let batch = merge_batch(Batch {
        sa: batch_strides(sa, &dims),
        sb: batch_strides(sb, &dims),
        dims,
    });
    if batch.dims.len() > mm::MAX_BATCH_DIMS {
        return Err(Error::Shape {
            op,
            message: format!(
                "{}: the broadcast batch shape needs {} index dimensions; at most {} are supported",
                both(),
                batch.dims.len(),
                mm::MAX_BATCH_DIMS
            ),
        });
    }
    Ok(Plan {
        out_shape,
        m,
        n,
        k: ka,
        batch,
    })
}

/// Drop size-1 batch dims and merge neighbours that index both operands contiguously, so the
/// kernels see as few batch dims as possible.
fn merge_batch(b: Batch) -> Batch {
    let mut out = Batch {
        dims: Vec::new(),
        sa: Vec::new(),
        sb: Vec::new(),
    };
    for i in 0..b.dims.len() {
        let (d, sa, sb) = (b.dims[i], b.sa[i], b.sb[i]);
        if d == 1 {
            continue;
        }
        if let (Some(&pd), Some(&psa), Some(&psb)) = (out.dims.last(), out.sa.last(), out.sb.last())
            && psa == sa * d
            && psb == sb * d
        {
            let j = out.dims.len() - 1;
            out.dims[j] = pd * d;
            out.sa[j] = sa;
            out.sb[j] = sb;
            continue;
        }
        out.dims.push(d);
        out.sa.push(sa);
        out.sb.push(sb);
    }
    out
}

impl Tensor {
    /// Matrix product `self · b`, NumPy `matmul` style.
    ///
    /// `self` is (..., M, K) and `b` is (..., K, N); the result is (..., M, N). Both need at
    /// least 2 dimensions. Leading (batch) dimensions broadcast against each other, so a 2-D
    /// operand is shared by every matrix of the other: (B, T, C) · (C, N) -> (B, T, N), and
    /// (B, 1, T, D) · (1, H, D, T) -> (B, H, T, T). Accumulates in f32. One dispatch.
    ///
    /// Errors name the op and both shapes: fewer than 2 dims, inner dimensions that differ,
    /// batch dims that do not broadcast, a u32 operand, or operands on different devices.
    /// A zero-sized M or N gives an empty result; K = 0 gives zeros.
    pub fn matmul(&self, b: &Tensor) -> Result<Tensor> {
        let out = self.matmul_impl("matmul", b, false, false)?.0;
        Ok(grad::record_matmul(out, self, b, false, false))
    }

    /// `op(self) · op(b)` where `op` transposes the last two dims when its flag is set:
    /// `trans_a` computes Aᵀ·B with `self` stored (..., K, M), `trans_b` computes A·Bᵀ with `b`
    /// stored (..., N, K). The kernels read the operands transposed in place; no transpose is
    /// materialised. These are the products of the backward pass:
    /// for `Y = X·W`, `dX = dY·Wᵀ = dY.matmul_t(W, false, true)` and
    /// `dW = Xᵀ·dY = X.matmul_t(dY, true, false)`.
    ///
    /// Batching, broadcasting and errors as for [`matmul`](Self::matmul).
    pub fn matmul_t(&self, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        let out = self.matmul_impl("matmul_t", b, trans_a, trans_b)?.0;
        Ok(grad::record_matmul(out, self, b, trans_a, trans_b))
    }

    /// A dense layer in one dispatch: `act(x·W + bias)` with the bias add and the activation
    /// fused into the matmul's epilogue.
    ///
    /// `self` (x) is (..., K): its leading dims are flattened into the rows M. `w` is (K, N)
    /// for [`WeightLayout::InOut`] or (N, K) for [`WeightLayout::OutIn`] (read transposed in
    /// place); `bias`, when given, is (N). The result is (..., N).
    ///
    /// Errors name the op and the shapes: `w` not 2-D, `x` with no dims or a last dim other
    /// than K, a bias that is not (N), u32 tensors, tensors on different devices.
    pub fn linear(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        layout: WeightLayout,
        act: Activation,
    ) -> Result<Tensor> {
        grad::linear(self, w, bias, layout, act, &|a| {
            self.linear_impl(w, bias, layout, a)
        })
    }

    /// [`matmul_t`](Self::matmul_t) with the result in `dtype`: f32, or f16 for a
    /// mixed-precision forward. On tensor cores (f16 operands where the adapter has
    /// cooperative matrices) with an even N, the kernel writes the f16 result itself (rounded
    /// to nearest even, as [`to_dtype`](Self::to_dtype)), so no conversion runs; elsewhere the
    /// f32 result is converted. The gradient flows back through the f16 output to each
    /// operand in its dtype.
    ///
    /// Errors as [`matmul_t`](Self::matmul_t), and for a `dtype` other than f32 or f16.
    pub fn matmul_t_as(
        &self,
        b: &Tensor,
        trans_a: bool,
        trans_b: bool,
        dtype: DType,
    ) -> Result<Tensor> {
        Ok(self.matmul_t_as_with_entry(b, trans_a, trans_b, dtype)?.0)
    }

    /// [`matmul_t_as`](Self::matmul_t_as), also returning the entry point that ran. For tests.
    #[doc(hidden)]
    pub fn matmul_t_as_with_entry(
        &self,
        b: &Tensor,
        trans_a: bool,
        trans_b: bool,
        dtype: DType,
    ) -> Result<(Tensor, Option<&'static str>)> {
        const OP: &str = "matmul_t_as";
        if dtype != DType::F32 && dtype != DType::F16 {
            return Err(Error::DType {
                op: OP,
                expected: "f32 or f16",
                got: dtype.name(),
            });
        }
        let p = plan(OP, self, b, trans_a, trans_b)?;
        let (out, ran) = execute(
            OP,
            Job {
                a: self,
                b,
                bias: None,
                out_shape: p.out_shape,
                m: p.m,
                n: p.n,
                k: p.k,
                trans_a,
                trans_b,
                batch: p.batch,
                act: Activation::None,
                out: dtype,
            },
        )?;
        Ok((grad::record_matmul(out, self, b, trans_a, trans_b), ran))
    }

    /// [`matmul_t`](Self::matmul_t) without recording a gradient, also returning the entry
    /// point that ran (`None` where the product took no matmul kernel, e.g. K = 0). The kernel
    /// is the adapter's choice or the one `testing::force_kernel(Family::Matmul, ..)` forces.
    /// For tests and benchmarks.
    #[doc(hidden)]
    pub fn matmul_t_with_entry(
        &self,
        b: &Tensor,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<(Tensor, Option<&'static str>)> {
        self.matmul_impl("matmul_t", b, trans_a, trans_b)
    }

    fn matmul_impl(
        &self,
        op: &'static str,
        b: &Tensor,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<(Tensor, Option<&'static str>)> {
        let p = plan(op, self, b, trans_a, trans_b)?;
        execute(
            op,
            Job {
                a: self,
                b,
                bias: None,
                out_shape: p.out_shape,
                m: p.m,
                n: p.n,
                k: p.k,
                trans_a,
                trans_b,
                batch: p.batch,
                act: Activation::None,
                out: DType::F32,
            },
        )
    }

    fn linear_impl(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        layout: WeightLayout,
        act: Activation,
    ) -> Result<Tensor> {
        const OP: &str = "linear";
        self.same_device(OP, w)?;
        expect_operand(OP, self)?;
        expect_operand(OP, w)?;
        let trans_b = layout == WeightLayout::OutIn;
        let (xs, ws) = (&self.shape, &w.shape);
        let lay = match layout {
            WeightLayout::InOut => "(in, out)",
            WeightLayout::OutIn => "(out, in)",
        };
        if ws.len() != 2 || xs.is_empty() {
            return Err(Error::Shape {
                op: OP,
                message: format!(
                    "x {xs:?} and weight {ws:?}: x needs at least 1 dimension and the weight must be 2-D {lay}"
                ),
            });
        }
        let (wk, n) = if trans_b {
            (ws[1], ws[0])
        } else {
            (ws[0], ws[1])
        };
        let k = xs[xs.len() - 1];
        if k != wk {
            return Err(Error::Shape {
                op: OP,
                message: format!(
                    "x {xs:?} and weight {ws:?} {lay} do not agree on the inner dimension ({k} vs {wk})"
                ),
            });
        }
        if let Some(bt) = bias {
            self.same_device(OP, bt)?;
            bt.expect_dtype(OP, DType::F32)?;
            if bt.shape.as_slice() != [n] {
                return Err(Error::Shape {
                    op: OP,
                    message: format!(
                        "bias {:?} must be [{n}] for x {xs:?} and weight {ws:?} {lay}",
                        bt.shape
                    ),
                });
            }
        }
        let m: usize = xs[..xs.len() - 1].iter().product();
        let mut out_shape = xs[..xs.len() - 1].to_vec();
        out_shape.push(n);
        let job = Job {
            a: self,
            b: w,
            bias,
            out_shape,
            m,
            n,
            k,
            trans_a: false,
            trans_b,
            batch: Batch {
                dims: Vec::new(),
                sa: Vec::new(),
                sb: Vec::new(),
            },
            act,
            out: DType::F32,
        };
        Ok(execute(OP, job)?.0)
    }
}

/// A checked product, ready to record.
#[derive(Clone)]
struct Job<'a> {
    a: &'a Tensor,
    b: &'a Tensor,
    bias: Option<&'a Tensor>,
    out_shape: Vec<usize>,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    batch: Batch,
    act: Activation,
    /// The result's dtype: f32, or f16 (written by the cooperative kernels where they run and
    /// N is even; else the f32 result converted).
    out: DType,
}

/// Record the product: one dispatch; on GPUs with split-K ([`mm::split_k`]) two (the slices,
/// then their sum with the bias and activation); for K past [`mm::MAX_K_PER_DISPATCH`] one per
/// slice of K, summed, with the bias and activation applied after the sum.
/// The kernel is the adapter's rule unless a test forces one (`crate::ops::overrides`).
fn execute(op: &'static str, j: Job) -> Result<(Tensor, Option<&'static str>)> {
    // A forced kernel wins; else the measured choice for this shape class where autotuning
    // is on, else the rule (`None`).
    let kernel = match crate::ops::overrides::matmul() {
        Some(Kernel::Portable) => None,
        Some(k) => Some(k),
        None => autotune::choose(&j)?,
    };
    execute_with(op, j, kernel)
}

/// [`execute`] with `kernel` (`None`: the rule in `launch.rs`).
fn execute_with(
    op: &'static str,
    j: Job,
    kernel: Option<Kernel>,
) -> Result<(Tensor, Option<&'static str>)> {
    let dev = &j.a.dev;
    let batch: usize = j.batch.dims.iter().product();
    // Split-K in one dispatch: chosen on GPUs for few tiles and a long K, or forced by tests.
    let vec4 = mm::vec4_ok(j.m, j.n, j.k, j.trans_a, j.trans_b);
    let split = match kernel {
        None => mm::split_k(!dev.info().is_cpu, batch, j.m, j.n, j.k, vec4),
        // The cooperative kernel reads any alignment, so only the tile count and K matter.
        Some(Kernel::Coop(_)) => mm::split_k(!dev.info().is_cpu, batch, j.m, j.n, j.k, true),
        Some(Kernel::Split(s)) if j.k > 1 && j.m > 0 && j.n > 0 && batch > 0 => {
            let depth =
                j.k.div_ceil(s)
                    .next_multiple_of(16)
                    .min(mm::MAX_K_PER_DISPATCH);
            Some((j.k.div_ceil(depth), depth))
        }
        _ => None,
    };
    // One dispatch of the product over K range k0 .. k0 + kc (in `slices` slices of `ks`).
    let record = |out: &Tensor,
                  k0: usize,
                  kc: usize,
                  (slices, ks): (usize, usize),
                  bias: Option<&Tensor>,
                  act: Activation,
                  kernel: Option<Kernel>| {
        mm::gemm(
            &Gemm {
                a: j.a,
                b: j.b,
                out,
                bias,
                m: j.m,
                n: j.n,
                k: j.k,
                k0,
                kc,
                slices,
                ks,
                trans_a: j.trans_a,
                trans_b: j.trans_b,
                batch: j.batch.clone(),
                act,
                out_f16: false,
            },
            kernel,
        )
    };
    // An f16 result straight from the tensor-core epilogue: one dispatch, no conversion.
    let coop = matches!(kernel, Some(Kernel::Coop(_) | Kernel::CoopEmulated(..)));
    if j.out == DType::F16
        && coop
        && split.is_none()
        && j.n.is_multiple_of(2)
        && j.k <= mm::MAX_K_PER_DISPATCH
    {
        let y = Tensor::empty(dev, op, &j.out_shape, DType::F16)?;
        let ran = mm::gemm(
            &Gemm {
                a: j.a,
                b: j.b,
                out: &y,
                bias: j.bias,
                m: j.m,
                n: j.n,
                k: j.k,
                k0: 0,
                kc: j.k,
                slices: 1,
                ks: j.k,
                trans_a: j.trans_a,
                trans_b: j.trans_b,
                batch: j.batch.clone(),
                act: j.act,
                out_f16: true,
            },
            kernel,
        )?;
        return Ok((y, ran));
    }
    if let Some((slices, ks)) = split {
        let mut part_shape = vec![slices];
        part_shape.extend_from_slice(&j.out_shape);
        let parts = Tensor::empty(dev, op, &part_shape, DType::F32)?;
        let slice_kernel = match kernel {
            Some(Kernel::Coop(w)) => Kernel::Coop(w),
            _ => Kernel::Tiled,
        };
        let ran = record(
            &parts,
            0,
            j.k,
            (slices, ks),
            None,
            Activation::None,
            Some(slice_kernel),
        )?;
        let y = Tensor::empty(dev, op, &j.out_shape, DType::F32)?;
        mm::sum_slices(&parts, &y, j.bias, j.act, slices, j.n)?;
        return Ok((to_out(y, j.out)?, ran));
    }
    let slice = mm::MAX_K_PER_DISPATCH;
    let slices = j.k.div_ceil(slice).max(1);
    let mut sum: Option<Tensor> = None;
    let mut ran = None;
    for s in 0..slices {
        let k0 = s * slice;
        let kc = (j.k - k0).min(slice);
        let whole = slices == 1;
        let out = Tensor::empty(dev, op, &j.out_shape, DType::F32)?;
        ran = record(
            &out,
            k0,
            kc,
            (1, kc),
            if whole { j.bias } else { None },
            if whole { j.act } else { Activation::None },
            kernel,
        )?;
        sum = Some(match sum {
            None => out,
            Some(acc) => acc.add(&out)?,
        });
    }
    let mut y = sum.expect("at least one slice");
    if slices > 1 {
        if let Some(b) = j.bias {
            y = y.add(b)?;
        }
        y = match j.act {
            Activation::None => y,
            Activation::Relu => y.relu()?,
            Activation::Gelu => y.gelu()?,
        };
    }
    Ok((to_out(y, j.out)?, ran))
}

/// The f32 result in the dtype asked for (not recorded: the product is recorded as a whole).
fn to_out(y: Tensor, out: DType) -> Result<Tensor> {
    if out == DType::F32 {
        Ok(y)
    } else {
        y.to_dtype(out)
    }
}
