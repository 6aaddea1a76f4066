//! LayerNorm and dropout of [`Tensor`]: fused kernels forward and backward (`launch.rs`,
//! `shaders/norm*.wgsl`). The backward closures call the launchers directly, never these
//! methods (the backward runs with recording off, which would turn dropout into the identity).

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::norm`.
pub mod reference;

use self::launch as nn;
use crate::autograd::{AbsorbingBackwardFn, BackwardFn, is_grad_enabled};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

impl Tensor {
    /// Layer normalisation over the last axis: `(x - mean) / sqrt(var + eps) * gamma + beta`
    /// for `self` (..., C) with `gamma`, `beta` (C); biased variance, as PyTorch.
    ///
    /// One fused kernel (a workgroup per row) that saves each row's mean and reciprocal standard
    /// deviation for the backward. The gradients of gamma and beta are column sums in a fixed
    /// order (no atomics), so they are bitwise reproducible.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (y, mean, rstd) = nn::layer_norm(self, gamma, beta, eps)?;
        if !Tensor::should_record(&[self, gamma, beta]) {
            return Ok(y);
        }
        let need_dx = self.requires_grad;
        let need_params = gamma.requires_grad || beta.requires_grad;
        let cols = gamma.numel();
        let (xd, gd) = (self.detach(), gamma.detach());
        let back: BackwardFn = Box::new(move |g| {
            let dx = if need_dx {
                Some(nn::layer_norm_dx(&xd, &gd, &mean, &rstd, g, None)?)
            } else {
                None
            };
            let (dgamma, dbeta) = if need_params {
                let (a, b) = nn::layer_norm_dparams(&xd, &mean, &rstd, g, cols)?;
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            Ok(vec![dx, dgamma, dbeta])
        });
        Ok(y.record("layer_norm", &[self, gamma, beta], back))
    }

    /// The pre-LayerNorm residual step of a Transformer in one kernel: `sum = self + res` and
    /// `sum.layer_norm(gamma, beta, eps)`, returned as `(sum, y)` (`self`, `res` (..., C) of
    /// the same shape; `gamma`, `beta` (C)). The values are those of [`Tensor::add`] then
    /// [`Tensor::layer_norm`]; the forward writes both in one pass, and the backward adds the
    /// gradient that reached `sum` from its other uses (the next residual add) inside the
    /// LayerNorm backward kernel instead of in a separate accumulation.
    pub fn add_layer_norm(
        &self,
        res: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (sum, y, mean, rstd) = nn::add_layer_norm(self, res, gamma, beta, eps)?;
        if !Tensor::should_record(&[self, res, gamma, beta]) {
            return Ok((sum, y));
        }
        // sum's own node passes its (accumulated) gradient to both addends: no dispatch.
        let sum = sum.record(
            "add_layer_norm (sum)",
            &[self, res],
            Box::new(|g| Ok(vec![Some(g.clone()), Some(g.clone())])),
        );
        let need_dx = sum.requires_grad;
        let need_params = gamma.requires_grad || beta.requires_grad;
        let cols = gamma.numel();
        let (sd, gd) = (sum.detach(), gamma.detach());
        let back: AbsorbingBackwardFn = Box::new(move |g, other| {
            let dsum = if need_dx {
                Some(nn::layer_norm_dx(&sd, &gd, &mean, &rstd, g, other)?)
            } else {
                None
            };
            let (dgamma, dbeta) = if need_params {
                let (a, b) = nn::layer_norm_dparams(&sd, &mean, &rstd, g, cols)?;
                (Some(a), Some(b))
            } else {
                (None, None)
            };
            Ok(vec![dsum, dgamma, dbeta])
        });
        let y = y.record_absorbing("add_layer_norm", &[&sum, gamma, beta], 0, back);
        Ok((sum, y))
    }

    /// Dropout: zeroes each element with probability `p` and scales the kept ones by
    /// `1 / (1 - p)`. The mask is a counter-based hash of `(seed, element index)`: the same seed
    /// gives the same mask, and the backward regenerates it instead of storing it (no mask
    /// buffer; the gradient is `mask / (1 - p) * g`). Use a fresh seed each step.
    ///
    /// The identity (the same tensor) when `p == 0` or in inference mode
    /// (`!portagrad::is_grad_enabled()`). `p` outside `[0, 1)` is an error.
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "dropout",
                message: format!("p = {p} must be in [0, 1)"),
            });
        }
        self.expect_dtype("dropout", DType::F32)?;
        if p == 0.0 || !is_grad_enabled() {
            return Ok(self.clone());
        }
        let y = nn::dropout(self, p, seed)?;
        let back: BackwardFn = Box::new(move |g| Ok(vec![Some(nn::dropout(g, p, seed)?)]));
        Ok(y.record("dropout", &[self], back))
    }
}

impl Tensor {
    /// Root-mean-square normalisation over the last axis, as Hugging Face's `LlamaRMSNorm`:
    /// `x / sqrt(mean(x²) + eps) * weight` for `self` (..., C) with `weight` (C), normalised
    /// in f32 first and multiplied by the weight after.
    ///
    /// One fused kernel that saves each row's reciprocal RMS for the backward (dx per row in
    /// one kernel; the weight's gradient as column sums in a fixed order, no atomics, so it is
    /// bitwise reproducible, as LayerNorm's gamma).
    ///
    /// Errors (naming `rms_norm` and the shapes): an empty last axis, `weight` not (C), a
    /// non-f32 operand, `eps` negative or not finite, tensors on different devices.
    pub fn rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        self.expect_dtype(OP, DType::F32)?;
        weight.expect_dtype(OP, DType::F32)?;
        self.same_device(OP, weight)?;
        let cols = match self.shape.last() {
            Some(&c) if c > 0 => c,
            _ => {
                return Err(Error::Shape {
                    op: OP,
                    message: format!("needs a non-empty last axis, got shape {:?}", self.shape),
                });
            }
        };
        if weight.shape != [cols] {
            return Err(Error::Shape {
                op: OP,
                message: format!(
                    "weight {:?} must be ({cols},) for input {:?}",
                    weight.shape, self.shape
                ),
            });
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!("eps {eps} must be finite and >= 0"),
            });
        }
        let (y, rstd) = nn::rms_norm(self, weight, eps)?;
        if !Tensor::should_record(&[self, weight]) {
            return Ok(y);
        }
        let (need_dx, need_dw) = (self.requires_grad, weight.requires_grad);
        let (xd, wd) = (self.detach(), weight.detach());
        let back: BackwardFn = Box::new(move |g| {
            let dx = if need_dx {
                Some(nn::rms_norm_dx(&xd, &wd, &rstd, g)?)
            } else {
                None
            };
            let dw = if need_dw {
                Some(nn::rms_norm_dweight(&xd, &rstd, g, cols)?)
            } else {
                None
            };
            Ok(vec![dx, dw])
        });
        Ok(y.record(OP, &[self, weight], back))
    }
}
