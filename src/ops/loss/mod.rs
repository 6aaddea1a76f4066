//! Losses and accuracy metrics of [`Tensor`]: fused kernels forward and backward (`launch.rs`,
//! `shaders/loss*.wgsl`).

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::loss`.
pub mod reference;

use self::launch as loss;
use crate::autograd::BackwardFn;
use crate::error::Result;
use crate::tensor::Tensor;

fn elem_loss(x: &Tensor, t: &Tensor, kind: loss::Elem) -> Result<Tensor> {
    let out = loss::elem_mean(x, t, kind)?;
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    let (xd, td) = (x.detach(), t.detach());
    let back: BackwardFn =
        Box::new(move |g| Ok(vec![Some(loss::elem_backward(&xd, &td, g, kind)?), None]));
    Ok(out.record(kind.name(), &[x, t], back))
}

impl Tensor {
    /// Mean squared error `mean((self - target)^2)` over all elements, as a shape-`[]` tensor.
    /// `target` (f32, same shape) gets no gradient.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        elem_loss(self, target, loss::Elem::Mse)
    }

    /// Binary cross-entropy on logits, averaged over all elements: per element
    /// `max(z, 0) - z * t + log1p(exp(-|z|))` (never `log(sigmoid)`), finite for any logit.
    /// `targets` (f32, same shape) are probabilities in [0, 1] and get no gradient.
    /// The gradient is `(sigmoid(z) - t) / n`.
    pub fn bce_with_logits(&self, targets: &Tensor) -> Result<Tensor> {
        elem_loss(self, targets, loss::Elem::Bce)
    }

    /// Sparse categorical cross-entropy from logits `self` (..., C) and u32 class ids
    /// `targets` (...): fused log-softmax + negative log-likelihood, averaged over the rows
    /// whose target is not `ignore_index`, as a shape-`[]` tensor. The count of those rows is
    /// computed on the GPU (no readback).
    ///
    /// When every row is ignored the loss is 0 and the gradient is zero (not NaN as in
    /// PyTorch), so a batch of padding does not poison training. A target `>= C` that is not
    /// the ignore index is an error when the ids are known on the host (made by
    /// [`Tensor::from_u32`]); ids made on the GPU that are out of range give a NaN loss.
    /// Targets get no gradient.
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<u32>) -> Result<Tensor> {
        let (out, saved) = loss::cross_entropy(self, targets, ignore_index)?;
        if !Tensor::should_record(&[self]) {
            return Ok(out);
        }
        let (zd, td) = (self.detach(), targets.detach());
        let back: BackwardFn = Box::new(move |g| {
            Ok(vec![Some(loss::cross_entropy_backward(
                &zd,
                &td,
                &saved,
                g,
                ignore_index,
            )?)])
        });
        Ok(out.record("cross_entropy", &[self], back))
    }

    /// Fraction of elements where the logit's sign agrees with the 0/1 target
    /// (`self > 0` predicts 1; a target above 0.5 counts as 1), as a shape-`[]` tensor
    /// computed on the GPU. Not differentiable (records nothing).
    pub fn binary_accuracy(&self, targets: &Tensor) -> Result<Tensor> {
        loss::elem_mean(self, targets, loss::Elem::BinaryAccuracy)
    }

    /// Fraction of rows of logits `self` (..., C) whose argmax over the last axis (the first
    /// index on ties) equals the u32 class id in `targets` (...), as a shape-`[]` tensor
    /// computed on the GPU. Not differentiable (records nothing).
    pub fn accuracy(&self, targets: &Tensor) -> Result<Tensor> {
        loss::accuracy(self, targets)
    }
}
