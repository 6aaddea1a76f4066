//! Binary elementwise ops of [`Tensor`] (NumPy broadcasting) and `broadcast_to`; launcher in
//! `launch.rs`, WGSL in `shaders/elementwise.wgsl`.

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::elementwise`.
pub mod reference;

use self::launch as elementwise;
use crate::error::Result;
use crate::ops::reduce::launch as reduce;
use crate::tensor::Tensor;

fn binary(a: &Tensor, b: &Tensor, op: elementwise::Op) -> Result<Tensor> {
    use elementwise::Op;
    let out = elementwise::binary(a, b, op)?;
    if !Tensor::should_record(&[a, b]) {
        return Ok(out);
    }
    let (sa, sb) = (a.shape.clone(), b.shape.clone());
    let (ad, bd, od) = (a.detach(), b.detach(), out.detach());
    let back: crate::autograd::BackwardFn = Box::new(move |g| {
        let (ga, gb) = match op {
            Op::Add => (g.clone(), g.clone()),
            Op::Sub => (g.clone(), g.neg()?),
            Op::Mul => (g.mul(&bd)?, g.mul(&ad)?),
            Op::Div => {
                let ga = g.div(&bd)?;
                let gb = ga.mul(&od)?.neg()?;
                (ga, gb)
            }
        };
        Ok(vec![
            Some(reduce::sum_to(&ga, &sa)?),
            Some(reduce::sum_to(&gb, &sb)?),
        ])
    });
    Ok(out.record(op.entry(), &[a, b], back))
}

impl Tensor {
    /// `self + other` with NumPy broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Add)
    }
    /// `self - other` with NumPy broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Sub)
    }
    /// `self * other` (elementwise) with NumPy broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Mul)
    }
    /// `self / other` (elementwise) with NumPy broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        binary(self, other, elementwise::Op::Div)
    }
    /// Broadcast to `shape` (NumPy rules), materialised.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        self.expect_dtype("broadcast_to", crate::DType::F32)?;
        let out = elementwise::expand(self, shape, 1.0)?;
        let orig = self.shape.clone();
        let back: crate::autograd::BackwardFn =
            Box::new(move |g| Ok(vec![Some(reduce::sum_to(g, &orig)?)]));
        Ok(out.record("broadcast_to", &[self], back))
    }
}
