//! Softmax and log-softmax over the last axis; launcher in `launch.rs`, WGSL in
//! `shaders/softmax*.wgsl`.

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::softmax`.
pub mod reference;

use self::launch as softmax;
use crate::error::Result;
use crate::tensor::Tensor;

fn softmax_op(x: &Tensor, log: bool) -> Result<Tensor> {
    let out = softmax::softmax(x, log)?;
    if !Tensor::should_record(&[x]) {
        return Ok(out);
    }
    let y = out.detach();
    let back: crate::autograd::BackwardFn =
        Box::new(move |g| Ok(vec![Some(softmax::backward(&y, g, log)?)]));
    Ok(out.record(if log { "log_softmax" } else { "softmax" }, &[x], back))
}

impl Tensor {
    /// Softmax over the last axis (max-subtracted).
    pub fn softmax(&self) -> Result<Tensor> {
        softmax_op(self, false)
    }
    /// Log-softmax over the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        softmax_op(self, true)
    }
}
