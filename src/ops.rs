//! The public op methods of [`Tensor`]. Each checks shapes and types, then records one or
//! two dispatches through its launcher in `kernels`.

use crate::error::{Error, Result};
use crate::kernels::{elementwise, layout, reduce, softmax, unary};
use crate::tensor::Tensor;

impl Tensor {
    /// `self + other` with NumPy broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        elementwise::binary(self, other, elementwise::Op::Add)
    }
    /// `self - other` with NumPy broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        elementwise::binary(self, other, elementwise::Op::Sub)
    }
    /// `self * other` (elementwise) with NumPy broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        elementwise::binary(self, other, elementwise::Op::Mul)
    }
    /// `self / other` (elementwise) with NumPy broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        elementwise::binary(self, other, elementwise::Op::Div)
    }
    /// `self + s`.
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        unary::unary(self, unary::Op::AddScalar, s)
    }
    /// `self * s`.
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        unary::unary(self, unary::Op::MulScalar, s)
    }
    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Neg, 0.0)
    }
    /// `e^self`.
    pub fn exp(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Exp, 0.0)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Log, 0.0)
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Sqrt, 0.0)
    }
    /// `self^e` elementwise (integer exponents accept negative bases).
    pub fn powf(&self, e: f32) -> Result<Tensor> {
        unary::unary(self, unary::Op::PowScalar, e)
    }
    /// `max(self, 0)`.
    pub fn relu(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Relu, 0.0)
    }
    /// GELU, tanh approximation (as GPT-2).
    pub fn gelu(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Gelu, 0.0)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Sigmoid, 0.0)
    }
    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        unary::unary(self, unary::Op::Tanh, 0.0)
    }
    /// Sum over the last axis: (..., C) -> (...).
    pub fn sum_last(&self) -> Result<Tensor> {
        reduce::last_axis(self, reduce::Op::Sum)
    }
    /// Mean over the last axis.
    pub fn mean_last(&self) -> Result<Tensor> {
        reduce::last_axis(self, reduce::Op::Mean)
    }
    /// Max over the last axis.
    pub fn max_last(&self) -> Result<Tensor> {
        reduce::last_axis(self, reduce::Op::Max)
    }
    /// Sum of all elements, as a shape-`[]` tensor.
    pub fn sum(&self) -> Result<Tensor> {
        reduce::all(self, reduce::Op::Sum)
    }
    /// Mean of all elements.
    pub fn mean(&self) -> Result<Tensor> {
        reduce::all(self, reduce::Op::Mean)
    }
    /// Max of all elements.
    pub fn max(&self) -> Result<Tensor> {
        reduce::all(self, reduce::Op::Max)
    }
    /// Softmax over the last axis (max-subtracted).
    pub fn softmax(&self) -> Result<Tensor> {
        softmax::softmax(self, false)
    }
    /// Log-softmax over the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        softmax::softmax(self, true)
    }
    /// Materialised transpose of the last two axes: (..., M, N) -> (..., N, M).
    pub fn transpose(&self) -> Result<Tensor> {
        layout::transpose(self)
    }
    /// Rows of `self` (a (V, D) table) picked by u32 `ids` of any shape: -> (ids..., D).
    pub fn gather_rows(&self, ids: &Tensor) -> Result<Tensor> {
        layout::gather_rows(self, ids)
    }
    /// Flatten to one dimension (no copy).
    pub fn flatten(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }
    /// Error unless the shape is exactly `want`.
    pub fn expect_shape(&self, op: &'static str, want: &[usize]) -> Result<()> {
        if self.shape() != want {
            return Err(Error::Shape {
                op,
                message: format!("expected shape {want:?}, got {:?}", self.shape()),
            });
        }
        Ok(())
    }
}
