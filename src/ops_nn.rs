//! Neural-net ops of [`Tensor`]: LayerNorm, dropout, the losses and the accuracy metrics.
//! Each is a fused kernel forward and backward (see `kernels::nn` and `kernels::loss`); the
//! backward closures call the launchers directly, never these methods (the backward runs with
//! recording off, which would turn dropout into the identity).

use crate::autograd::{BackwardFn, is_grad_enabled};
use crate::error::{Error, Result};
use crate::kernels::{loss, nn};
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
                Some(nn::layer_norm_dx(&xd, &gd, &mean, &rstd, g)?)
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

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::testing::{random_vec, shared_device};

    /// Ids as if computed on the GPU: no host copy, no known bound.
    fn gpu_only(ids: &Tensor) -> Tensor {
        Tensor {
            host_ids: None,
            id_bound: None,
            ..ids.clone()
        }
    }

    fn table_grad(table: &Tensor, ids: &Tensor, w: &Tensor) -> Vec<u32> {
        let g = table
            .gather_rows(ids)
            .unwrap()
            .mul(w)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        let v = g.get(table).unwrap().to_vec().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn embedding_backward_gpu_path_matches_host_path_bitwise_and_the_f64_sum() {
        let dev = shared_device();
        // (vocab, dim, positions, distinct ids used, share of positions on id 0)
        for (v, d, n, used, skew) in [
            (1usize, 3usize, 7usize, 1usize, 0.0f32),
            (11, 7, 15, 6, 0.0),
            (1000, 5, 3000, 700, 0.0),
            (300, 33, 4000, 50, 0.9),
            // One id more than 65,535 times: lavapipe ends longer loops early.
            (3, 2, 70_001, 2, 0.97),
        ] {
            let r = random_vec(n, 0.0, 1.0, n as u64);
            let id: Vec<u32> = random_vec(n, 0.0, used as f32, v as u64)
                .iter()
                .zip(&r)
                .map(|(&x, &s)| {
                    if s < skew {
                        0
                    } else {
                        (x as u32).min(used as u32 - 1)
                    }
                })
                .collect();
            let ids = Tensor::from_u32(&dev, &id, &[n]).unwrap();
            let table = Tensor::rand_normal(&dev, &[v, d], 0.0, 1.0, 1)
                .unwrap()
                .with_grad();
            let w = Tensor::rand_normal(&dev, &[n, d], 0.0, 1.0, 2).unwrap();
            let host = table_grad(&table, &ids, &w);
            let gpu = table_grad(&table, &gpu_only(&ids), &w);
            let differ = host.iter().zip(&gpu).filter(|(a, b)| a != b).count();
            let first = host.iter().zip(&gpu).position(|(a, b)| a != b);
            assert_eq!(
                differ, 0,
                "vocab {v}, dim {d}, {n} positions: {differ} elements differ, first at {first:?}"
            );
            assert!(
                gpu == table_grad(&table, &gpu_only(&ids), &w),
                "GPU path repeats"
            );
            if used < v {
                assert!(
                    host[used * d..].iter().all(|&b| b == 0),
                    "unused rows are zero"
                );
            }
            let wv = w.to_vec().unwrap();
            let mut want = vec![0.0f64; v * d];
            for (k, &i) in id.iter().enumerate() {
                for c in 0..d {
                    want[i as usize * d + c] += f64::from(wv[k * d + c]);
                }
            }
            let got: Vec<f32> = gpu.iter().map(|&b| f32::from_bits(b)).collect();
            crate::testing::assert_close("embedding backward", &got, &want, 1e-4, 1e-3);
        }
    }

    #[test]
    fn masked_gather_backward_gpu_path_matches_host_path_and_the_whole_table() {
        let dev = shared_device();
        // A chunk of rows 5..14 of a (20, 4) table; ids cover the whole table, repeated.
        let (v, d, n, off, rows) = (20usize, 4usize, 300usize, 5usize, 9usize);
        let id: Vec<u32> = random_vec(n, 0.0, v as f32, 7)
            .iter()
            .map(|&x| (x as u32).min(v as u32 - 1))
            .collect();
        let ids = Tensor::from_u32(&dev, &id, &[n]).unwrap();
        let full = Tensor::rand_normal(&dev, &[v, d], 0.0, 1.0, 3).unwrap();
        let sel: Vec<u32> = (off as u32..(off + rows) as u32).collect();
        let sel = Tensor::from_u32(&dev, &sel, &[rows]).unwrap();
        let chunk = full.gather_rows(&sel).unwrap().with_grad(); // (rows, D)
        let full = full.with_grad();
        let w = Tensor::rand_normal(&dev, &[n, d], 0.0, 1.0, 4).unwrap();
        let masked = |ids: &Tensor| -> Vec<u32> {
            let g = chunk
                .gather_rows_masked(ids, off)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum()
                .unwrap()
                .backward()
                .unwrap();
            let v = g.get(&chunk).unwrap().to_vec().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let host = masked(&ids);
        assert_eq!(host, masked(&gpu_only(&ids)), "GPU sort path, same bits");
        // The chunk's rows of the whole table's gradient, bit for bit.
        let whole = table_grad(&full, &ids, &w);
        assert_eq!(host, whole[off * d..(off + rows) * d]);
        // Forward: the chunk's rows where the id falls in it, zeros elsewhere.
        let got = chunk
            .gather_rows_masked(&ids, off)
            .unwrap()
            .to_vec()
            .unwrap();
        let fv = full.to_vec().unwrap();
        for (k, &i) in id.iter().enumerate() {
            let i = i as usize;
            let want = if (off..off + rows).contains(&i) {
                &fv[i * d..(i + 1) * d]
            } else {
                &[0.0; 4][..]
            };
            assert_eq!(&got[k * d..(k + 1) * d], want, "position {k}, id {i}");
        }
    }
}
