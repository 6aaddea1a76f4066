//! Helpers for testing GPU code against CPU references, used by this crate's own tests and
//! offered to applications that test what they build on portagrad (see `docs/CI.md` for a CI
//! job that runs such tests on Mesa's software Vulkan driver):
//!
//! - [`device`] / [`shared_device`]: an adapter, or a failure that says what to install (a GPU
//!   test must never pass vacuously).
//! - [`compare`] / [`assert_close`]: element-wise comparison with a stated tolerance against an
//!   f64 reference; a failure reports how many elements are off, the first and the worst.
//! - [`GradCheck`]: a gradient check for any op, built-in or [custom](crate::custom): the GPU
//!   backward against central finite differences (in f64) of a CPU forward, and optionally
//!   against an analytic CPU backward.
//! - [`compare_tensor`] / [`assert_tensor_close`]: the same for a tensor, read back.
//! - [`random_vec`]: deterministic test inputs.
//! - [`reference`](mod@reference): the plain f64 CPU forward and derivative of the built-in ops, one module
//!   per op family: the one copy every test and the fuzzer compare against.

use crate::{Device, Error, Result, Tensor};

/// Plain f64 CPU references of the built-in ops, one module per op family (each lives beside
/// its family in `src/ops/<family>/reference.rs`): forwards and their derivatives, row-major.
pub mod reference {
    pub use crate::ops::attention::reference as attention;
    pub use crate::ops::convert::reference as convert;
    pub use crate::ops::elementwise::reference as elementwise;
    pub use crate::ops::layout::reference as layout;
    pub use crate::ops::loss::reference as loss;
    pub use crate::ops::matmul::reference as matmul;
    pub use crate::ops::norm::reference as norm;
    pub use crate::ops::optim::reference as optim;
    pub use crate::ops::reduce::reference as reduce;
    pub use crate::ops::rope::reference as rope;
    pub use crate::ops::softmax::reference as softmax;
    pub use crate::ops::swiglu::reference as swiglu;
    pub use crate::ops::unary::reference as unary;
}

/// Open the default device or return an error whose message says what to install.
/// Tests should `expect` it: with no adapter a GPU test must fail, never pass vacuously.
pub fn device() -> Result<Device> {
    Device::new().map_err(|e| match e {
        Error::NoAdapter { .. } => e,
        other => Error::NoAdapter {
            detail: format!(" (opening the default adapter failed: {other})"),
        },
    })
}

/// The shared device of a test binary: opened once, reused by every test in it.
/// Panics with the install message when there is no adapter.
pub fn shared_device() -> Device {
    static DEV: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    match DEV.get_or_init(|| device().map_err(|e| e.to_string())) {
        Ok(d) => d.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

/// The worst element of a comparison.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Index of the first element outside tolerance.
    pub first_bad: Option<usize>,
    /// Index of the largest error relative to the tolerance.
    pub worst: usize,
    /// Got / expected at `worst`.
    pub got: f64,
    /// Expected value at `worst`.
    pub want: f64,
    /// Elements outside tolerance.
    pub bad: usize,
}

/// Compare element by element: `|got - want| <= atol + rtol * |want|`. NaN matches only NaN,
/// infinities only the same infinity. Returns a report of the worst element.
pub fn compare(got: &[f32], want: &[f64], rtol: f64, atol: f64) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "length mismatch: got {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut m = Mismatch {
        first_bad: None,
        worst: 0,
        got: 0.0,
        want: 0.0,
        bad: 0,
    };
    let mut worst_ratio = -1.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = f64::from(g);
        let ok_special = (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w);
        let tol = atol + rtol * w.abs();
        let err = (g - w).abs();
        let ratio = if ok_special {
            0.0
        } else if err.is_nan() {
            f64::INFINITY
        } else {
            err / tol.max(f64::MIN_POSITIVE)
        };
        if ratio > worst_ratio {
            worst_ratio = ratio;
            m.worst = i;
            m.got = g;
            m.want = w;
        }
        if ratio > 1.0 {
            m.bad += 1;
            m.first_bad.get_or_insert(i);
        }
    }
    match m.first_bad {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {} elements outside tolerance (rtol {rtol:e}, atol {atol:e}); first mismatch at index {first}: got {} expected {}; worst at {}: got {} expected {}",
            m.bad,
            got.len(),
            got[first],
            want[first],
            m.worst,
            m.got,
            m.want
        )),
    }
}

/// [`compare`], panicking with the report (for use in `#[test]` functions).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    if let Err(msg) = compare(got, want, rtol, atol) {
        panic!("{what}: {msg}");
    }
}

/// [`compare`] for a tensor: reads `t` back (submitting pending work) and compares it with
/// `want`, which must have `t`'s element count. Read-back errors are reported too.
pub fn compare_tensor(
    t: &Tensor,
    want: &[f64],
    rtol: f64,
    atol: f64,
) -> std::result::Result<(), String> {
    let got = t
        .to_vec()
        .map_err(|e| format!("reading back a tensor of shape {:?}: {e}", t.shape()))?;
    compare(&got, want, rtol, atol).map_err(|m| format!("tensor of shape {:?}: {m}", t.shape()))
}

/// [`compare_tensor`], panicking with the report (for use in `#[test]` functions).
#[track_caller]
pub fn assert_tensor_close(what: &str, t: &Tensor, want: &[f64], rtol: f64, atol: f64) {
    if let Err(msg) = compare_tensor(t, want, rtol, atol) {
        panic!("{what}: {msg}");
    }
}

/// Deterministic pseudo-random f32 values in `[lo, hi)` for test inputs (SplitMix64).
pub fn random_vec(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut r = crate::rng::SplitMix64::new(seed);
    (0..n).map(|_| lo + (hi - lo) * r.next_f32()).collect()
}

pub use crate::ops::overrides::Family;

/// Restores the previous forced kernel of its family when dropped (see [`force_kernel`]).
#[doc(hidden)]
#[must_use = "the kernel stays forced only while the guard lives"]
pub struct KernelGuard {
    prev: crate::ops::overrides::Previous,
}

impl Drop for KernelGuard {
    fn drop(&mut self) {
        crate::ops::overrides::restore(self.prev);
    }
}

/// Forget the matmul autotune choices this process made or loaded and read
/// `PORTAGRAD_AUTOTUNE` / the cache directory from the environment again.
#[doc(hidden)]
pub fn reset_matmul_autotune() {
    crate::ops::matmul::autotune::reset();
}

/// Turn matmul autotuning on or off and set its cache directory (`None`: no file) for the
/// process, as `PORTAGRAD_AUTOTUNE` and `PORTAGRAD_CACHE_DIR` would, with the choices
/// forgotten; [`reset_matmul_autotune`] goes back to the environment.
#[doc(hidden)]
pub fn configure_matmul_autotune(on: bool, cache_dir: Option<std::path::PathBuf>) {
    crate::ops::matmul::autotune::configure(on, cache_dir);
}

/// The file matmul autotuning keeps its choices in, inside the cache directory.
#[doc(hidden)]
pub const MATMUL_AUTOTUNE_FILE: &str = crate::ops::matmul::autotune::FILE;

/// Force the kernel `family` runs on the calling thread until the guard drops: `"auto"` (or
/// `"default"`) for the adapter's rule, else a kernel name of that family (see [`Family`]).
/// A kernel the device cannot run falls back to the rule, except the matmul's `coop`
/// (tensor cores), which is an error naming the adapter where it has no cooperative matrices. Wins over `PORTAGRAD_KERNELS`
/// (`family=name,...`, for a whole process). For tests and benchmarks.
#[doc(hidden)]
pub fn force_kernel(family: Family, name: &str) -> Result<KernelGuard> {
    Ok(KernelGuard {
        prev: crate::ops::overrides::force("force_kernel", family, name)?,
    })
}

/// Run `f` with `family`'s kernel forced to `name` on the calling thread ([`force_kernel`]);
/// an unknown name is an error, not the adapter's choice.
#[doc(hidden)]
pub fn with_kernel<R>(family: Family, name: &str, f: impl FnOnce() -> R) -> Result<R> {
    let _guard = force_kernel(family, name)?;
    Ok(f())
}

/// The guard of [`force_row_kernel`] (its callers name the type).
#[doc(hidden)]
pub type RowKernelGuard = KernelGuard;

/// [`force_kernel`] for [`Family::Rows`]: how the row-wise kernels (softmax, sums and maxima
/// over the last axis, LayerNorm, cross-entropy, accuracy) map rows to invocations,
/// `"workgroup"`, `"subgroup"`, `"invocation"` or `"auto"`.
#[doc(hidden)]
pub fn force_row_kernel(name: &str) -> Result<KernelGuard> {
    Ok(KernelGuard {
        prev: crate::ops::overrides::force("force_row_kernel", Family::Rows, name)?,
    })
}

/// The row-kernel form that rows of `cols` columns get on `dev` from the calling thread now
/// (the adapter's rule, or the forced form where the device can run it).
#[doc(hidden)]
pub fn row_kernel_for(dev: &Device, cols: usize) -> &'static str {
    crate::ops::rows::choose(dev, cols).name()
}

/// One input of a [`GradCheck`]: its shape, the range its random values are drawn from, and
/// whether the check asks for its gradient.
#[derive(Clone, Debug)]
pub struct GradInput {
    /// Shape of the input tensor.
    pub shape: Vec<usize>,
    /// Lower bound of the random values.
    pub lo: f32,
    /// Upper bound (exclusive) of the random values.
    pub hi: f32,
    /// Whether the input is a parameter whose gradient is checked (`false`: a constant, which
    /// must get no gradient).
    pub grad: bool,
}

/// A CPU forward in f64: input values (flat, row-major) -> output values (flat).
pub type CpuForward<'a> = &'a dyn Fn(&[Vec<f64>]) -> Vec<f64>;
/// An analytic CPU backward in f64: (input values, output gradient) -> one gradient per input.
pub type CpuBackward<'a> = &'a dyn Fn(&[Vec<f64>], &[f64]) -> Vec<Vec<f64>>;

/// A gradient check for any op, built-in or custom: random inputs, the GPU forward compared
/// with a CPU forward in f64, and the GPU backward compared with central finite differences of
/// that CPU forward (in f64, so the differences themselves are accurate to ~1e-10).
///
/// The loss is `sum(out * w)` for a fixed random `w`, so the output gradient is `w` and every
/// output element takes part. With an analytic CPU backward ([`cpu_backward`](Self::cpu_backward))
/// the GPU gradient is compared with it at every element, and the analytic backward with finite
/// differences at up to 64 elements per input; without one, the GPU gradient is compared with
/// finite differences directly at those elements. Every failure names the worst element.
///
/// ```
/// use portagrad::testing::{GradCheck, shared_device};
///
/// let dev = shared_device();
/// GradCheck::new("tanh", &dev)
///     .input(&[3, 5], -2.0, 2.0)
///     .tolerances(1e-5, 1e-4)
///     .assert(
///         &|x| x[0].tanh(),
///         &|x| x[0].iter().map(|v| v.tanh()).collect(),
///     );
/// ```
pub struct GradCheck<'a> {
    name: String,
    dev: Device,
    inputs: Vec<GradInput>,
    fwd_tol: f64,
    grad_tol: f64,
    bwd: Option<CpuBackward<'a>>,
}

impl<'a> GradCheck<'a> {
    /// A check called `name` (in messages; it also seeds the inputs) on `dev`. Default
    /// tolerances: 1e-5 relative for the forward, 1e-3 relative for the gradients.
    pub fn new(name: &str, dev: &Device) -> Self {
        Self {
            name: name.to_string(),
            dev: dev.clone(),
            inputs: Vec::new(),
            fwd_tol: 1e-5,
            grad_tol: 1e-3,
            bwd: None,
        }
    }

    /// Add an input whose gradient is checked, with values uniform in `[lo, hi)`.
    pub fn input(mut self, shape: &[usize], lo: f32, hi: f32) -> Self {
        self.inputs.push(GradInput {
            shape: shape.to_vec(),
            lo,
            hi,
            grad: true,
        });
        self
    }

    /// Add a constant input (no gradient asked; getting one is a failure).
    pub fn constant(mut self, shape: &[usize], lo: f32, hi: f32) -> Self {
        self.inputs.push(GradInput {
            shape: shape.to_vec(),
            lo,
            hi,
            grad: false,
        });
        self
    }

    /// Add inputs described by [`GradInput`]s.
    pub fn inputs(mut self, inputs: &[GradInput]) -> Self {
        self.inputs.extend_from_slice(inputs);
        self
    }

    /// Tolerances: GPU forward vs CPU forward `fwd` relative (plus 1e-5 absolute); GPU
    /// gradients vs the reference `grad` relative plus `grad / 10` absolute.
    pub fn tolerances(mut self, fwd: f64, grad: f64) -> Self {
        self.fwd_tol = fwd;
        self.grad_tol = grad;
        self
    }

    /// Also check against an analytic CPU backward (itself checked against finite differences
    /// at 1e-5 relative plus 1e-7 absolute).
    pub fn cpu_backward(mut self, bwd: CpuBackward<'a>) -> Self {
        self.bwd = Some(bwd);
        self
    }

    /// Run the check: `gpu` computes the op on the input tensors (those with a gradient are
    /// parameters), `fwd` is the CPU reference. Returns the first failure's report.
    pub fn run(
        &self,
        gpu: &dyn Fn(&[Tensor]) -> Result<Tensor>,
        fwd: CpuForward<'_>,
    ) -> std::result::Result<(), String> {
        let name = &self.name;
        let data: Vec<Vec<f32>> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                random_vec(
                    s.shape.iter().product(),
                    s.lo,
                    s.hi,
                    1000 + i as u64 * 7 + name.len() as u64,
                )
            })
            .collect();
        let data64: Vec<Vec<f64>> = data
            .iter()
            .map(|v| v.iter().map(|&x| f64::from(x)).collect())
            .collect();
        let ts = self
            .inputs
            .iter()
            .zip(&data)
            .map(|(s, d)| {
                let t = Tensor::from_slice(&self.dev, d, &s.shape)?;
                Ok(if s.grad { t.with_grad() } else { t })
            })
            .collect::<Result<Vec<Tensor>>>()
            .map_err(|e| format!("{name} inputs: {e}"))?;
        let out = gpu(&ts).map_err(|e| format!("{name} forward: {e}"))?;
        let got = out.to_vec().map_err(|e| format!("{name} forward: {e}"))?;
        let want_out = fwd(&data64);
        compare(&got, &want_out, self.fwd_tol, 1e-5).map_err(|m| format!("{name} forward: {m}"))?;

        // Loss = sum(out * w) with fixed random w, so the output gradient is w.
        let w = random_vec(out.numel(), -1.0, 1.0, 77);
        let w64: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        let grads = Tensor::from_slice(&self.dev, &w, out.shape())
            .and_then(|wt| out.mul(&wt))
            .and_then(|l| l.sum())
            .and_then(|l| l.backward())
            .map_err(|e| format!("{name} backward: {e}"))?;
        let cpu_grads = match self.bwd {
            Some(bwd) => {
                let g = bwd(&data64, &w64);
                if g.len() != self.inputs.len() {
                    return Err(format!(
                        "{name}: CPU backward returned {} gradients for {} inputs",
                        g.len(),
                        self.inputs.len()
                    ));
                }
                Some(g)
            }
            None => None,
        };
        let loss_at = |x: &[Vec<f64>]| -> f64 { fwd(x).iter().zip(&w64).map(|(a, b)| a * b).sum() };

        for (i, s) in self.inputs.iter().enumerate() {
            if !s.grad {
                if grads.get(&ts[i]).is_some() {
                    return Err(format!("{name}: constant input {i} got a gradient"));
                }
                continue;
            }
            let g = grads
                .get(&ts[i])
                .ok_or_else(|| format!("{name}: no gradient for input {i}"))?;
            if g.shape() != &s.shape[..] {
                return Err(format!(
                    "{name}: gradient of input {i} has shape {:?}, the input {:?}",
                    g.shape(),
                    s.shape
                ));
            }
            let g = g.to_vec().map_err(|e| format!("{name} d/dinput{i}: {e}"))?;

            // Central differences of the CPU forward, in f64, at up to 64 elements.
            let n = data64[i].len();
            let idx: Vec<usize> = if n <= 64 {
                (0..n).collect()
            } else {
                (0..64).map(|k| (k * 7919) % n).collect()
            };
            let h = 1e-5;
            let fd: Vec<f64> = idx
                .iter()
                .map(|&j| {
                    let mut xp = data64.clone();
                    xp[i][j] += h;
                    let mut xm = data64.clone();
                    xm[i][j] -= h;
                    (loss_at(&xp) - loss_at(&xm)) / (2.0 * h)
                })
                .collect();
            match &cpu_grads {
                Some(cg) => {
                    compare(&g, &cg[i], self.grad_tol, self.grad_tol / 10.0)
                        .map_err(|m| format!("{name} d/dinput{i} GPU vs CPU: {m}"))?;
                    let fd32: Vec<f32> = fd.iter().map(|&v| v as f32).collect();
                    let an: Vec<f64> = idx.iter().map(|&j| cg[i][j]).collect();
                    compare(&fd32, &an, 1e-5, 1e-7).map_err(|m| {
                        let which = if idx.len() == n {
                            String::new()
                        } else {
                            format!(" (sample k is element (k * 7919) % {n})")
                        };
                        format!("{name} d/dinput{i} CPU vs finite differences{which}: {m}")
                    })?;
                }
                None => {
                    let got: Vec<f32> = idx.iter().map(|&j| g[j]).collect();
                    compare(&got, &fd, self.grad_tol, self.grad_tol / 10.0).map_err(|m| {
                        let which = if idx.len() == n {
                            String::new()
                        } else {
                            format!(" (sample k is element (k * 7919) % {n})")
                        };
                        format!("{name} d/dinput{i} GPU vs finite differences{which}: {m}")
                    })?;
                }
            }
        }
        Ok(())
    }

    /// [`run`](Self::run), panicking with the report (for `#[test]` functions).
    #[track_caller]
    pub fn assert(&self, gpu: &dyn Fn(&[Tensor]) -> Result<Tensor>, fwd: CpuForward<'_>) {
        if let Err(msg) = self.run(gpu, fwd) {
            panic!("{msg}");
        }
    }
}
