//! Backward passes of matmul and the fused linear layer, built from the transposed matmul forms
//! (no transpose is ever materialised) and `sum_to` for broadcast batch dims and biases.

use super::{Activation, WeightLayout};
use crate::autograd::BackwardFn;
use crate::error::Result;
use crate::ops::{reduce::launch as reduce, unary::launch as unary};
use crate::tensor::Tensor;

/// Attach the gradient of `out = op(a) · op(b)` (op transposes when its flag is set).
pub(crate) fn record_matmul(out: Tensor, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Tensor {
    if !Tensor::should_record(&[a, b]) {
        return out;
    }
    let (ad, bd) = (a.detach(), b.detach());
    let (sa, sb) = (a.shape.clone(), b.shape.clone());
    let (ta_dtype, tb_dtype) = (a.dtype, b.dtype);
    let (need_a, need_b) = (a.requires_grad, b.requires_grad);
    let back: BackwardFn = Box::new(move |g| {
        // With A' = op(A), B' = op(B): dA' = dC·B'ᵀ and dB' = A'ᵀ·dC, then undo op.
        let ga = if need_a {
            let d = match (ta, tb) {
                (false, false) => g.matmul_t(&bd, false, true)?,
                (false, true) => g.matmul_t(&bd, false, false)?,
                (true, false) => bd.matmul_t(g, false, true)?,
                (true, true) => bd.matmul_t(g, true, true)?,
            };
            // Gradients are f32 products; a 16-bit operand gets its gradient in its own dtype.
            Some(reduce::sum_to(&d, &sa)?.to_dtype(ta_dtype)?)
        } else {
            None
        };
        let gb = if need_b {
            let d = match (ta, tb) {
                (false, false) => ad.matmul_t(g, true, false)?,
                (true, false) => ad.matmul_t(g, false, false)?,
                (false, true) => g.matmul_t(&ad, true, false)?,
                (true, true) => g.matmul_t(&ad, true, true)?,
            };
            Some(reduce::sum_to(&d, &sb)?.to_dtype(tb_dtype)?)
        } else {
            None
        };
        Ok(vec![ga, gb])
    });
    out.record("matmul", &[a, b], back)
}

/// `act(x · W + bias)` with its backward. Without recording this is the caller's fused
/// kernel (`fused`); when recording, GELU runs as a separate recorded op so its input is kept.
pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    layout: WeightLayout,
    act: Activation,
    fused: &dyn Fn(Activation) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    if !Tensor::should_record(&inputs) {
        return fused(act);
    }
    if act == Activation::Gelu {
        return linear(x, w, bias, layout, Activation::None, fused)?.gelu();
    }
    let out = fused(act)?;
    let (xd, wd) = (x.detach(), w.detach());
    let yd = (act == Activation::Relu).then(|| out.detach());
    let (need_x, need_w) = (x.requires_grad, w.requires_grad);
    let need_b = bias.is_some_and(|b| b.requires_grad);
    let has_bias = bias.is_some();
    let xshape = x.shape.clone();
    let (x_dtype, w_dtype) = (x.dtype, w.dtype);
    let back: BackwardFn = Box::new(move |g| {
        let k = *xshape.last().expect("linear input has a last dim");
        let n = *g.shape.last().expect("linear output has a last dim");
        let m = g.numel() / n.max(1);
        let mut dz = g.view_raw(vec![m, n]);
        if let Some(y) = &yd {
            dz = unary::backward(unary::Op::Relu, &y.view_raw(vec![m, n]), &dz, 0.0)?;
        }
        let x2 = xd.view_raw(vec![m, k]);
        let gx = if need_x {
            let d = match layout {
                WeightLayout::InOut => dz.matmul_t(&wd, false, true)?,
                WeightLayout::OutIn => dz.matmul(&wd)?,
            };
            Some(d.view_raw(xshape.clone()).to_dtype(x_dtype)?)
        } else {
            None
        };
        let gw = if need_w {
            let d = match layout {
                WeightLayout::InOut => x2.matmul_t(&dz, true, false)?,
                WeightLayout::OutIn => dz.matmul_t(&x2, true, false)?,
            };
            Some(d.to_dtype(w_dtype)?)
        } else {
            None
        };
        let mut grads = vec![gx, gw];
        if has_bias {
            grads.push(if need_b {
                Some(reduce::sum_to(&dz, &[n])?)
            } else {
                None
            });
        }
        Ok(grads)
    });
    Ok(out.record("linear", &inputs, back))
}
