//! SwiGLU, the gated activation of Llama-family MLPs: `silu(gate) * up`. [`swiglu`] takes the
//! fused (..., 2F) output of one matmul whose weight stacks `gate_proj` over `up_proj` (one
//! matmul instead of two, one kernel here); [`swiglu2`] takes gate and up as two tensors (for
//! weights kept as Hugging Face stores them). One kernel forward, one backward, each.

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::swiglu`.
pub mod reference;

use crate::autograd::BackwardFn;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// `silu(x[..., :F]) * x[..., F:]` for `gate_up` (..., 2F): (..., F). The gradient flows to
/// `gate_up` (both halves written by one kernel).
///
/// Errors (naming `swiglu`): a non-f32 input, a rank-0 input or an odd last axis.
pub fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu";
    gate_up.expect_dtype(OP, DType::F32)?;
    let s = gate_up.shape();
    let two_f = match s.last() {
        Some(&w) if w.is_multiple_of(2) => w,
        _ => {
            return Err(Error::Shape {
                op: OP,
                message: format!(
                    "needs a fused (..., 2F) [gate, up] input with an even last axis, got shape {s:?}"
                ),
            });
        }
    };
    let mut out_shape = s.to_vec();
    *out_shape.last_mut().unwrap() = two_f / 2;
    let y = launch::fused(gate_up, &out_shape)?;
    if !Tensor::should_record(&[gate_up]) {
        return Ok(y);
    }
    let xd = gate_up.detach();
    let back: BackwardFn = Box::new(move |g| Ok(vec![Some(launch::fused_backward(&xd, g)?)]));
    Ok(y.record(OP, &[gate_up], back))
}

/// `silu(gate) * up` for two tensors of one shape; gradients to both.
///
/// Errors (naming `swiglu2`): non-f32 inputs, shapes that differ, another device.
pub fn swiglu2(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu2";
    gate.expect_dtype(OP, DType::F32)?;
    up.expect_dtype(OP, DType::F32)?;
    gate.same_device(OP, up)?;
    if gate.shape() != up.shape() {
        return Err(Error::Shape {
            op: OP,
            message: format!(
                "gate {:?} and up {:?} must have the same shape",
                gate.shape(),
                up.shape()
            ),
        });
    }
    let y = launch::two(gate, up)?;
    if !Tensor::should_record(&[gate, up]) {
        return Ok(y);
    }
    let (gd, ud) = (gate.detach(), up.detach());
    let back: BackwardFn = Box::new(move |g| {
        let (dg, du) = launch::two_backward(&gd, &ud, g)?;
        Ok(vec![Some(dg), Some(du)])
    });
    Ok(y.record(OP, &[gate, up], back))
}
