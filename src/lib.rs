//! portagrad: train and run neural networks on any GPU that wgpu reaches — Vulkan, Metal,
//! DX12, and Mesa's lavapipe on a machine with no GPU at all.
//!
//! The model: a [`Device`] owns the GPU, a pipeline cache, a buffer pool and a pending
//! command batch. Every [`Tensor`] op *records* a compute dispatch into that batch and returns
//! at once; work is submitted when data is read back ([`Tensor::to_vec`]), on
//! [`Device::sync`], or when the batch fills. [`Device::stats`] counts dispatches, submits,
//! readbacks and memory.
//!
//! ```no_run
//! use portagrad::{Device, Tensor};
//! # fn main() -> portagrad::Result<()> {
//! let dev = Device::new()?;
//! println!("{}", dev.info());
//! let x = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
//! let b = Tensor::from_slice(&dev, &[0.5, -1.0, 2.0], &[3])?;
//! let y = x.add(&b)?.gelu()?.softmax()?; // three dispatches, nothing submitted yet
//! println!("{:?}", y.to_vec()?);         // one submit, one readback
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod autograd;
pub mod custom;
mod error;
pub mod generate;
pub mod io;
mod kernels;
pub mod models;
pub mod nn;
mod ops;
mod ops_attention;
mod ops_matmul;
mod ops_matmul_grad;
mod ops_nn;
pub mod optim;
pub mod plot;
mod runtime;
mod tensor;
pub mod testing;
pub mod train;

pub use autograd::{Gradients, NoGradGuard, inference, is_grad_enabled, no_grad};
pub use error::{Error, Result};
pub use ops_attention::{
    KvCache, MAX_HEAD_DIM, attend_cached, attention, attention_cpu_shader_source, attention_qkv,
    attention_variant, merge_heads, split_heads,
};
pub use ops_matmul::{Activation, WeightLayout};
pub use runtime::{Device, DeviceInfo, DeviceOptions, Stats};
pub use tensor::{DType, Tensor};

/// WGSL sources of every kernel, by family name (used by the shader validation test).
pub fn shader_sources() -> &'static [(&'static str, &'static str)] {
    kernels::SHADERS
}
