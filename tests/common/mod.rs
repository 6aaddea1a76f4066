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
/// Row-major broadcasting helpers for CPU references.
pub fn bcast_index(shape: &[usize], out: &[usize], i: usize) -> usize {
    let off = out.len() - shape.len();
    let mut rem = i;
    let mut idx = 0;
    let mut mult = 1;
    for d in (0..out.len()).rev() {
        let c = rem % out[d];
        rem /= out[d];
        if d >= off {
            let sd = shape[d - off];
            if sd != 1 {
                idx += c * mult;
            }
            mult *= sd;
        }
    }
    idx
}

pub fn bcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i < r - a.len() {
                1
            } else {
                a[i - (r - a.len())]
            };
            let db = if i < r - b.len() {
                1
            } else {
                b[i - (r - b.len())]
            };
            da.max(db)
        })
        .collect()
}
