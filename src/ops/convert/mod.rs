//! dtype conversion of [`Tensor`]s between f32, f16 and bf16, with its gradient; launcher in
//! `launch.rs`, WGSL in `shaders/convert.wgsl`.

pub(crate) mod launch;
// The CPU reference, public as `testing::reference::convert`.
pub mod reference;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

impl Tensor {
    /// This tensor as `dtype`, one of f32, f16 and bf16 (the same tensor when it already is).
    /// Narrowing rounds to nearest, ties to even; values past the type's range become
    /// infinities; widening is exact. The gradient flows back converted to this tensor's
    /// dtype (as in mixed precision: f32 master weights, half-precision operands).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        const OP: &str = "to_dtype";
        for d in [self.dtype, dtype] {
            if !d.is_float() {
                return Err(Error::DType {
                    op: OP,
                    expected: "f32, f16 or bf16 (ids do not convert to floats)",
                    got: d.name(),
                });
            }
        }
        if self.dtype == dtype {
            return Ok(self.clone());
        }
        let out = launch::convert(self, dtype)?;
        let from = self.dtype;
        let back: crate::autograd::BackwardFn =
            Box::new(move |g| Ok(vec![Some(g.to_dtype(from)?)]));
        Ok(out.record(OP, &[self], back))
    }
}
