//! Shared by the gradient tests: a runner that checks an op's GPU backward against an analytic
//! CPU backward in f64, and that CPU backward against central finite differences in f64.
#![allow(dead_code)]

use portagrad::testing::{assert_close, random_vec, shared_device};
use portagrad::{Result, Tensor};

/// One input of a gradient case: shape, value range, whether it gets a gradient.
#[derive(Clone)]
pub struct Input {
    pub shape: Vec<usize>,
    pub lo: f32,
    pub hi: f32,
    pub grad: bool,
}

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
pub type CpuFwd<'a> = &'a dyn Fn(&[Vec<f64>]) -> Vec<f64>;
/// CPU backward in f64: (inputs, output gradient) -> input gradients.
pub type CpuBwd<'a> = &'a dyn Fn(&[Vec<f64>], &[f64]) -> Vec<Vec<f64>>;

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
    let dev = shared_device();
    let data: Vec<Vec<f32>> = inputs
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
    let ts: Vec<Tensor> = inputs
        .iter()
        .zip(&data)
        .map(|(s, d)| {
            let t = Tensor::from_slice(&dev, d, &s.shape).unwrap();
            if s.grad { t.with_grad() } else { t }
        })
        .collect();
    let out = gpu(&ts).unwrap_or_else(|e| panic!("{name} forward: {e}"));
    let want_out = fwd(&data64);
    assert_close(
        &format!("{name} forward"),
        &out.to_vec().unwrap(),
        &want_out,
        fwd_tol,
        1e-5,
    );

    // Loss = sum(out * w) with fixed random w, so the output gradient is w.
    let w = random_vec(out.numel(), -1.0, 1.0, 77);
    let w64: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    let wt = Tensor::from_slice(&dev, &w, out.shape()).unwrap();
    let loss = out.mul(&wt).unwrap().sum().unwrap();
    let grads = loss
        .backward()
        .unwrap_or_else(|e| panic!("{name} backward: {e}"));
    let cpu_grads = bwd(&data64, &w64);
    assert_eq!(
        cpu_grads.len(),
        inputs.len(),
        "{name}: CPU backward returns one gradient per input"
    );

    for (i, s) in inputs.iter().enumerate() {
        if !s.grad {
            assert!(
                grads.get(&ts[i]).is_none(),
                "{name}: constant input {i} got a gradient"
            );
            continue;
        }
        let g = grads
            .get(&ts[i])
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(
            g.shape(),
            &s.shape[..],
            "{name}: gradient shape of input {i}"
        );
        assert_close(
            &format!("{name} d/dinput{i} GPU vs CPU"),
            &g.to_vec().unwrap(),
            &cpu_grads[i],
            grad_tol,
            grad_tol / 10.0,
        );

        // CPU backward vs central differences of the CPU forward, in f64.
        let n = data64[i].len();
        let idx: Vec<usize> = if n <= 64 {
            (0..n).collect()
        } else {
            (0..64).map(|k| (k * 7919) % n).collect()
        };
        let h = 1e-5;
        let loss_at = |x: &[Vec<f64>]| -> f64 { fwd(x).iter().zip(&w64).map(|(a, b)| a * b).sum() };
        let mut fd = Vec::new();
        let mut an = Vec::new();
        for &j in &idx {
            let mut xp = data64.clone();
            xp[i][j] += h;
            let mut xm = data64.clone();
            xm[i][j] -= h;
            fd.push(((loss_at(&xp) - loss_at(&xm)) / (2.0 * h)) as f32);
            an.push(cpu_grads[i][j]);
        }
        assert_close(
            &format!("{name} d/dinput{i} CPU vs finite differences"),
            &fd,
            &an,
            1e-5,
            1e-7,
        );
    }
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
