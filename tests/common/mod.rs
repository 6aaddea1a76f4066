//! Shared by the gradient tests: a thin wrapper over [`portagrad::testing::GradCheck`], which
//! checks an op's GPU backward against an analytic CPU backward in f64, and that CPU backward
//! against central finite differences in f64.
#![allow(dead_code)]

use portagrad::testing::{GradCheck, GradInput, shared_device};
use portagrad::{Result, Tensor};

/// One input of a gradient case: shape, value range, whether it gets a gradient.
pub type Input = GradInput;

pub fn inp(shape: &[usize], lo: f32, hi: f32) -> Input {
    Input {
        shape: shape.to_vec(),
        lo,
        hi,
        grad: true,
    }
}

/// Same, but a constant (no gradient asked).
pub fn constant(shape: &[usize], lo: f32, hi: f32) -> Input {
    Input {
        shape: shape.to_vec(),
        lo,
        hi,
        grad: false,
    }
}

/// CPU forward in f64: inputs -> output (flat).
pub type CpuFwd<'a> = portagrad::testing::CpuForward<'a>;
/// CPU backward in f64: (inputs, output gradient) -> input gradients.
pub type CpuBwd<'a> = portagrad::testing::CpuBackward<'a>;

/// Tolerances: GPU forward vs CPU `fwd_tol` relative (plus 1e-5 absolute); GPU gradients vs
/// CPU gradients `grad_tol` relative plus `grad_tol / 10` absolute; CPU gradients vs finite
/// differences (h = 1e-5, f64) 1e-5 relative plus 1e-7 absolute.
pub fn check_grad(
    name: &str,
    inputs: &[Input],
    gpu: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    fwd: CpuFwd,
    bwd: CpuBwd,
    fwd_tol: f64,
    grad_tol: f64,
) {
    GradCheck::new(name, &shared_device())
        .inputs(inputs)
        .tolerances(fwd_tol, grad_tol)
        .cpu_backward(bwd)
        .assert(gpu, fwd);
}
/// Row-major broadcasting helpers for CPU references: the one copy lives in
/// `testing::reference::elementwise`.
pub fn bcast_index(shape: &[usize], out: &[usize], i: usize) -> usize {
    reference::elementwise::broadcast_index(shape, out, i)
}

pub fn bcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    reference::elementwise::broadcast_shape(a, b)
}

use portagrad::testing::reference;

/// f32 values as f64, for the references.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Bit patterns, for bitwise comparisons (determinism).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Deterministic ids in [0, n).
pub fn ids(count: usize, n: usize, seed: u64) -> Vec<u32> {
    portagrad::testing::random_vec(count, 0.0, n as f32, seed)
        .iter()
        .map(|&v| (v as u32).min(n as u32 - 1))
        .collect()
}

/// Upload `v` as a tensor of `shape` on `dev`.
pub fn up(dev: &portagrad::Device, v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(dev, v, shape).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The row-wise kernels' forms (one workgroup, one subgroup or one invocation per row; see
// `src/ops/rows.rs`), forced one at a time whatever the adapter's rule picks.

pub const FORMS: [&str; 3] = ["workgroup", "subgroup", "invocation"];

/// (rows, cols): 1 and 7 columns (fewer than a subgroup), 65 (a vocabulary), 128 (n_embd),
/// 257 (one past a workgroup), 1000, 5000 (several strides of every form).
pub const ROW_SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 7),
    (70, 65),
    (129, 128),
    (9, 257),
    (2, 1000),
    (65, 33),
    (3, 5000),
    (1, 3),
];

/// Force `form` on this thread and check it is what runs (subgroups may be missing: then the
/// rule's choice, which must not be the subgroup form).
pub fn force(
    dev: &portagrad::Device,
    form: &str,
    cols: usize,
) -> portagrad::testing::RowKernelGuard {
    use portagrad::testing::{force_row_kernel, row_kernel_for};
    let g = force_row_kernel(form).unwrap();
    let ran = row_kernel_for(dev, cols);
    if form == "subgroup" && !dev.has_subgroups() {
        assert_ne!(ran, "subgroup");
    } else {
        assert_eq!(ran, form, "forced {form} for {cols} columns");
    }
    g
}
