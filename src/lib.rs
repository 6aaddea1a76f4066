//! portagrad: train and run neural networks on any GPU that wgpu reaches — Vulkan, Metal,
//! DX12, and Mesa's lavapipe on a machine with no GPU at all.
//!
//! # The model
//!
//! - **Device.** A [`Device`] owns one GPU (the best adapter, or one chosen with
//!   [`DeviceOptions`] / `PORTAGRAD_ADAPTER`), a pipeline cache, a buffer pool and a pending
//!   command batch. It is a cheap, shareable handle (`Clone + Send + Sync`).
//! - **Recorded ops.** Every [`Tensor`] op checks its shapes on the host, *records* a compute
//!   dispatch into the device's batch and returns at once. Work is submitted when data is read
//!   back ([`Tensor::to_vec`], [`Tensor::item`]), on [`Device::sync`], or when the batch fills;
//!   [`Device::stats`] counts dispatches, submits, readbacks and memory. Errors (shapes, limits,
//!   wgpu validation, a lost device) are [`Error`] values, never panics.
//! - **Tensors.** A tensor is a shape, an element type ([`DType`]: f32, or u32 for ids) and a
//!   shared handle on device memory; clones share the buffer, which returns to the pool when the
//!   last handle drops.
//! - **Autograd.** A tensor made with [`Tensor::with_grad`] is a parameter. Ops on parameters
//!   record a tape; [`Tensor::backward`] on a one-element loss records the backward pass on the
//!   same batch (no host round trip) and returns [`Gradients`] keyed by parameter.
//!   [`no_grad`] / [`inference`] turn recording off.
//! - **Modules.** [`nn`] has layers ([`nn::Linear`], [`nn::LayerNorm`], [`nn::Embedding`], ...)
//!   and containers implementing [`nn::Module`]: `forward` plus named parameters (PyTorch's
//!   `state_dict` names, used by [`io::checkpoint`]). [`models`] has a GPT.
//! - **Optimizers.** [`optim::Optimizer`] (SGD, Adam, AdamW, schedules, clipping) updates the
//!   parameters' buffers in place with fused kernels, so a module sees the new values.
//!   [`train`] adds data loaders, `fit` and `evaluate`.
//! - **Extending and testing.** [`custom`] registers your own WGSL kernels as ops with
//!   autograd; [`testing`] has CPU-reference comparisons and a gradient checker for your CI.
//!
//! # Example: a tiny model, trained
//!
//! ```
//! use portagrad::nn::{self, Module};
//! use portagrad::optim::Optimizer;
//! use portagrad::{Activation, Device, Tensor};
//!
//! fn main() -> portagrad::Result<()> {
//!     let dev = Device::new()?; // best adapter: discrete > integrated > software
//!     // Learn y = 2·x0 - x1 from 16 samples.
//!     let xs: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
//!     let ys: Vec<f32> = xs.chunks(2).map(|r| 2.0 * r[0] - r[1]).collect();
//!     let x = Tensor::from_slice(&dev, &xs, &[16, 2])?;
//!     let y = Tensor::from_slice(&dev, &ys, &[16, 1])?;
//!
//!     let model = nn::mlp(&dev, &[2, 16, 1], Activation::Relu, 0)?;
//!     let mut opt = Optimizer::adam(model.parameters(), 0.02)?;
//!     let mut losses = Vec::new();
//!     for _ in 0..30 {
//!         let loss = model.forward(&x)?.mse_loss(&y)?; // recorded, not yet run
//!         let grads = loss.backward()?;                // backward recorded on the same batch
//!         opt.step(&grads)?;                           // fused update, in place
//!         losses.push(loss.item()?);                   // one submit + readback per step
//!     }
//!     println!("loss {:.4} -> {:.4}", losses[0], losses[29]);
//!     assert!(losses[29] < losses[0] / 2.0);
//!
//!     // Inference: no tape kept.
//!     let pred = portagrad::inference(|| model.forward(&x))?;
//!     assert_eq!(pred.shape(), &[16, 1]);
//!     println!("{:?}", dev.stats()); // dispatches, submits, readbacks, bytes
//!     Ok(())
//! }
//! ```
//!
//! Without any adapter (no GPU and no Mesa lavapipe) [`Device::new`] returns
//! [`Error::NoAdapter`], whose message says what to install.

#![warn(missing_docs)]

mod autograd;
pub mod custom;
mod error;
pub mod generate;
pub mod io;
pub mod models;
pub mod nn;
mod ops;
pub mod optim;
pub mod plot;
pub mod rng;
mod runtime;
mod tensor;
pub mod testing;
/// `Instant` and `SystemTime` that also work in a browser (std's panic on wasm32-unknown-unknown).
pub(crate) mod time {
    #[cfg(not(target_arch = "wasm32"))]
    pub use std::time::{Instant, SystemTime, UNIX_EPOCH};
    #[cfg(target_arch = "wasm32")]
    pub use web_time::{Instant, SystemTime, UNIX_EPOCH};
}
pub mod train;

pub use autograd::{Gradients, NoGradGuard, inference, is_grad_enabled, no_grad};
pub use error::{Error, Result};
pub use ops::attention::{
    KvCache, MAX_HEAD_DIM, attend_cached, attention, attention_qkv,
    attention_shader_source_for_cpu_adapters, attention_shader_source_for_gpus, attention_variant,
    merge_heads, split_heads, split_qkv,
};
pub use ops::matmul::{Activation, WeightLayout};
pub use ops::rope::{Rope, RopeConfig, RopeScaling};
pub use ops::swiglu::{swiglu, swiglu2};
pub use runtime::{CooperativeMatrix, Device, DeviceInfo, DeviceOptions, Stats};
pub use tensor::{DType, Precision, Tensor};

/// WGSL sources of every kernel, by family name (used by the shader validation test).
pub fn shader_sources() -> &'static [(&'static str, &'static str)] {
    ops::SHADERS
}

/// The files in `shaders/` written by generators, as (path from the repository root, contents
/// the generator writes now). For the test that they are up to date.
#[doc(hidden)]
pub fn generated_files() -> Vec<(&'static str, String)> {
    ops::codegen::FILES
        .iter()
        .map(|f| (f.path, (f.source)()))
        .collect()
}

/// A module generated at run time, for the shader validation test: its name, source, and the
/// override constants a launcher sets on it.
#[doc(hidden)]
pub struct GeneratedModule {
    pub name: String,
    pub source: String,
    pub constants: Vec<(String, f64)>,
    /// Whether it needs subgroup operations (compiled only on devices that have them).
    pub subgroups: bool,
}

/// The modules generated at run time: the optimizer for each slot count below the file's
/// (WebGPU's default limits take 2) and some above (up to 128); the straight-line attention kernels for CPU adapters for
/// head sizes with each row-per-lane setting; the GPU attention modules (D built in) with the
/// staged-block rows `BC` the launcher picks for each head size.
#[doc(hidden)]
pub fn generated_shader_sources() -> Vec<GeneratedModule> {
    let module = |name: String, source: String, constants: Vec<(String, f64)>| GeneratedModule {
        subgroups: source.contains("subgroup"),
        name,
        source,
        constants,
    };
    let mut out: Vec<GeneratedModule> = (1..ops::optim::launch::SLOTS)
        .chain([9, 14, 33, 77, ops::optim::launch::MAX_SLOTS])
        .map(|n| {
            let src = ops::optim::launch::source_for(n);
            module(format!("optim_{n}slots"), src, vec![])
        })
        .collect();
    for d in [4, 16, 36, 64, 80, 128] {
        let src = attention_shader_source_for_cpu_adapters(d);
        out.push(module(format!("attention_cpu_d{d}"), src, vec![]));
    }
    // (D, BC) as the launcher picks them: 512 vec4s per block, whole steps of 8, at most 64.
    for (d, bc) in [(4, 64), (32, 64), (64, 32), (80, 24), (96, 16), (128, 16)] {
        let tiled = attention_shader_source_for_gpus(d, true);
        out.push(module(
            format!("attention_tiled_d{d}_bc{bc}"),
            tiled,
            vec![("BC".into(), bc as f64)],
        ));
        let portable = attention_shader_source_for_gpus(d, false);
        out.push(module(format!("attention_d{d}"), portable, vec![]));
    }
    for (name, src) in ops::matmul::half::all_sources() {
        out.push(module(name, src, vec![]));
    }
    // The tensor-core kernels, with the workgroup an NVIDIA adapter gets (4 x 32 lanes).
    for (name, src) in ops::matmul::coop::all_sources() {
        out.push(module(name, src, vec![("WG".into(), 128.0)]));
    }
    out
}
