//! Losses and accuracy metrics of [`Tensor`]: fused kernels forward and backward (`launch.rs`,
//! `shaders/loss*.wgsl`).

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::loss`.
pub mod reference;

use std::ops::Range;

use self::launch as loss;
use crate::autograd::BackwardFn;
use crate::error::{Error, Result};
use crate::ops::layout::launch as layout;
use crate::tensor::{DType, Tensor};

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

    /// Mean cross-entropy of the logits `self · wᵀ` against `targets`, without the logits
    /// as one tensor: `self` (N, C), `w` (V, C) (a tied lm_head: the embedding), u32 `targets`
    /// (N), no ignore index. The same value as `self.matmul_t(w, false, true)?
    /// .cross_entropy(targets, None)`, computed `chunk_rows` positions at a time: each chunk's
    /// logits (chunk_rows, V) are made, scored and, when a gradient is wanted, turned into
    /// `(softmax - onehot) / N` and fed to the two gradient products at once, then dropped.
    /// So the memory for logits is one chunk's, not (N, V) plus their gradient (GPT-2's
    /// vocabulary: 200 KB a position), and the backward only scales the two gradients by the
    /// upstream one (two elementwise passes over (N, C) and (V, C)). Worth it where V > C;
    /// for a small vocabulary the plain composition is cheaper (its logits are smaller than
    /// the gradients this scales).
    pub fn linear_cross_entropy(
        &self,
        w: &Tensor,
        targets: &Tensor,
        chunk_rows: usize,
    ) -> Result<Tensor> {
        const OP: &str = "linear_cross_entropy";
        self.expect_dtype(OP, DType::F32)?;
        w.expect_dtype(OP, DType::F32)?;
        targets.expect_dtype(OP, DType::U32)?;
        self.same_device(OP, w)?;
        self.same_device(OP, targets)?;
        let (n, c) = match self.shape() {
            &[n, c] if n > 0 && c > 0 => (n, c),
            s => {
                return Err(Error::Shape {
                    op: OP,
                    message: format!("x must be a non-empty (N, C), got shape {s:?}"),
                });
            }
        };
        let v = match w.shape() {
            &[v, wc] if wc == c && v > 0 => v,
            s => {
                return Err(Error::Shape {
                    op: OP,
                    message: format!(
                        "w must be (V, {c}) for x {:?}, got shape {s:?}",
                        self.shape()
                    ),
                });
            }
        };
        targets.expect_shape(OP, &[n])?;
        if chunk_rows == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                message: "chunk_rows must be at least 1".into(),
            });
        }
        let chunks: Vec<Range<usize>> = (0..n)
            .step_by(chunk_rows)
            .map(|s| s..(s + chunk_rows).min(n))
            .collect();
        // Several chunks need each chunk's targets and rows: uploaded from the host ids (read
        // back once if the targets were made on the GPU).
        let host: Option<Vec<u32>> = match (&chunks[..], &targets.host_ids) {
            ([_], _) => None,
            (_, Some(h)) => Some(h.to_vec()),
            _ => Some(targets.to_vec_u32()?),
        };
        // Named at their place in all N (a chunk's own check would count from its start).
        if let Some((pos, &bad)) = host
            .iter()
            .flatten()
            .enumerate()
            .find(|&(_, &id)| id as usize >= v)
        {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!("target {bad} at position {pos} is out of range for {v} classes"),
            });
        }
        let grad = Tensor::should_record(&[self, w]);
        let dev = self.dev.clone();
        let (loss, dx, dw) = {
            let _g = crate::no_grad();
            let mut total: Option<Tensor> = None;
            let mut dx: Option<Tensor> = None; // (N, C)
            let mut dw: Option<Tensor> = None; // (V, C)
            for r in &chunks {
                let share = r.len() as f64 / n as f64;
                let (xc, tc, rows) = match &host {
                    None => (self.clone(), targets.clone(), None),
                    Some(h) => {
                        let rows: Vec<u32> = (r.start as u32..r.end as u32).collect();
                        let idx = Tensor::from_u32(&dev, &rows, &[r.len()])?;
                        let tc = Tensor::from_u32(&dev, &h[r.clone()], &[r.len()])?;
                        (layout::gather_rows(self, &idx)?, tc, Some((idx, rows))) // (Nᵢ, C)
                    }
                };
                let z = xc.matmul_t(w, false, true)?; // (Nᵢ, V)
                let (part, saved) = loss::cross_entropy(&z, &tc, None)?;
                let part = match &host {
                    None => part,
                    Some(_) => part.mul_scalar(share as f32)?,
                };
                total = Some(match total {
                    None => part,
                    Some(acc) => acc.add(&part)?,
                });
                if !grad {
                    continue;
                }
                // (softmax - onehot) / Nᵢ · share = (softmax - onehot) / N
                let scale = Tensor::from_slice(&dev, &[share as f32], &[])?;
                let dz = loss::cross_entropy_backward(&z, &tc, &saved, &scale, None)?;
                drop(z);
                let dxc = dz.matmul(w)?; // (Nᵢ, C)
                let dwc = dz.matmul_t(&xc, true, false)?; // (V, C)
                dw = Some(match dw {
                    None => dwc,
                    Some(acc) => acc.add(&dwc)?,
                });
                // A chunk's rows of dX go to their place in a zero (N, C) (the row order is
                // known on the host, so no sort runs on the GPU).
                let dxc = match &rows {
                    Some((idx, rows)) => layout::gather_rows_backward(&dxc, idx, Some(rows), n, 0)?,
                    None => dxc,
                };
                dx = Some(match dx {
                    None => dxc,
                    Some(acc) => acc.add(&dxc)?,
                });
            }
            (total.expect("N >= 1"), dx, dw)
        };
        let (Some(dx), Some(dw)) = (dx, dw) else {
            return Ok(loss);
        };
        debug_assert_eq!((dx.shape(), dw.shape()), (&[n, c][..], &[v, c][..]));
        let back: BackwardFn = Box::new(move |g| Ok(vec![Some(dx.mul(g)?), Some(dw.mul(g)?)]));
        Ok(loss.record(OP, &[self, w], back))
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
