//! Reductions of [`Tensor`] over the last axis or all elements; launcher in `launch.rs`, WGSL
//! in `shaders/reduce*.wgsl`.

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::reduce`.
pub mod reference;

use self::launch as reduce;
use crate::error::{Error, Result};
use crate::ops::elementwise::launch as elementwise;
use crate::tensor::Tensor;

fn reduce_op(x: &Tensor, op: reduce::Op, last_axis: bool) -> Result<Tensor> {
    let out = if last_axis {
        reduce::last_axis(x, op)?
    } else {
        reduce::all(x, op)?
    };
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    let shape = x.shape.clone();
    let back: crate::autograd::BackwardFn = Box::new(move |g| {
        let n = if last_axis {
            *shape.last().unwrap_or(&1)
        } else {
            shape.iter().product()
        };
        let scale = match op {
            reduce::Op::Sum => 1.0,
            reduce::Op::Mean => 1.0 / n as f32,
            reduce::Op::Max => {
                return Err(Error::InvalidArgument {
                    op: "max",
                    message: "max has no gradient in this version; compute it outside autograd (portagrad::no_grad)".into(),
                });
            }
        };
        // Keep the reduced axis as 1 so the gradient broadcasts back over it.
        let gshape: Vec<usize> = if last_axis {
            shape[..shape.len() - 1]
                .iter()
                .copied()
                .chain([1])
                .collect()
        } else {
            vec![]
        };
        Ok(vec![Some(elementwise::expand(
            &g.view_raw(gshape),
            &shape,
            scale,
        )?)])
    });
    Ok(out.record("reduce", &[x], back))
}

impl Tensor {
    /// Sum over the last axis: (..., C) -> (...).
    pub fn sum_last(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Sum, true)
    }
    /// Mean over the last axis.
    pub fn mean_last(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Mean, true)
    }
    /// Max over the last axis.
    pub fn max_last(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Max, true)
    }
    /// Sum of all elements, as a shape-`[]` tensor.
    pub fn sum(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Sum, false)
    }
    /// Mean of all elements.
    pub fn mean(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Mean, false)
    }
    /// Max of all elements.
    pub fn max(&self) -> Result<Tensor> {
        reduce_op(self, reduce::Op::Max, false)
    }
}
