//! Plain f64 CPU references for the optimizer updates (public as
//! `portagrad::testing::reference::optim`): the textbook SGD (momentum, dampening, Nesterov),
//! Adam and AdamW steps of one tensor, and global-norm gradient clipping, as PyTorch defines
//! them.

use crate::optim::Algorithm;

/// One update of one tensor in place: parameters `p`, gradient `g` (already clipped),
/// first-moment / momentum state `m` and second-moment state `v` (zeros before the first step;
/// SGD leaves `v` alone), learning rate `lr`, weight decay `wd`, and the 0-based `step`
/// (SGD's momentum buffer starts as the gradient; Adam's bias corrections use `step + 1`).
#[allow(clippy::too_many_arguments)]
pub fn step(
    algorithm: &Algorithm,
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    wd: f64,
    step: usize,
) {
    let t = (step + 1) as i32;
    for j in 0..p.len() {
        let mut gj = g[j];
        match *algorithm {
            Algorithm::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                gj += wd * p[j];
                if momentum != 0.0 {
                    m[j] = if step == 0 {
                        gj
                    } else {
                        momentum * m[j] + (1.0 - dampening) * gj
                    };
                    gj = if nesterov { gj + momentum * m[j] } else { m[j] };
                }
                p[j] -= lr * gj;
            }
            Algorithm::Adam { beta1, beta2, eps } | Algorithm::AdamW { beta1, beta2, eps } => {
                if matches!(algorithm, Algorithm::AdamW { .. }) {
                    p[j] *= 1.0 - lr * wd;
                } else {
                    gj += wd * p[j];
                }
                m[j] = beta1 * m[j] + (1.0 - beta1) * gj;
                v[j] = beta2 * v[j] + (1.0 - beta2) * gj * gj;
                let mhat = m[j] / (1.0 - beta1.powi(t));
                let vhat = v[j] / (1.0 - beta2.powi(t));
                p[j] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
    }
}

/// Global-norm clipping of all tensors' gradients together, in place: scaled by
/// `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f64>], max_norm: f64) -> f64 {
    let norm = grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    grads.iter_mut().flatten().for_each(|x| *x *= coef);
    norm
}
