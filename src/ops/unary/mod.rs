//! Unary elementwise ops of [`Tensor`] and their gradients; the op table in `table.rs`,
//! launcher in `launch.rs`, WGSL in `shaders/unary.wgsl`.

pub(crate) mod launch;
pub(crate) mod table;
// The f64 CPU reference, public as `testing::reference::unary`.
pub mod reference;

use self::launch as unary;
use crate::error::Result;
use crate::tensor::Tensor;

fn unary_op(x: &Tensor, op: unary::Op, s: f32) -> Result<Tensor> {
    use table::{Op, Saved};
    let out = unary::unary(x, op, s)?;
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    // Which forward value the derivative is written in terms of.
    let saved = match op.saved() {
        Saved::Output => Some(out.detach()),
        Saved::Input => Some(x.detach()),
        Saved::Nothing => None,
    };
    let back: crate::autograd::BackwardFn = Box::new(move |g| {
        let gx = match (op, &saved) {
            (Op::AddScalar, _) => g.clone(),
            (Op::MulScalar, _) => g.mul_scalar(s)?,
            (Op::Neg, _) => g.neg()?,
            (_, Some(v)) => unary::backward(op, v, g, s)?,
            (_, None) => unreachable!("table.rs: every other op saves a value"),
        };
        Ok(vec![Some(gx)])
    });
    Ok(out.record(op.entry(), &[x], back))
}

impl Tensor {
    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        unary_op(self, unary::Op::AddScalar, s)
    }
    /// `self * s`.
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        unary_op(self, unary::Op::MulScalar, s)
    }
    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Neg, 0.0)
    }
    /// `e^self`.
    pub fn exp(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Exp, 0.0)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Log, 0.0)
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Sqrt, 0.0)
    }
    /// `self^e` elementwise (integer exponents accept negative bases).
    pub fn powf(&self, e: f32) -> Result<Tensor> {
        unary_op(self, unary::Op::PowScalar, e)
    }
    /// `max(self, 0)`.
    pub fn relu(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Relu, 0.0)
    }
    /// GELU, tanh approximation (as GPT-2).
    pub fn gelu(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Gelu, 0.0)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Sigmoid, 0.0)
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Tanh, 0.0)
    }
    /// `|self|`; its gradient is `sign(self)` (0 at 0, as PyTorch).
    pub fn abs(&self) -> Result<Tensor> {
        unary_op(self, unary::Op::Abs, 0.0)
    }
}
