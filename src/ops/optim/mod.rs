//! Fused optimizer updates (SGD, Adam, AdamW) and gradient-norm clipping over many tensors per
//! dispatch; WGSL in `shaders/optim.wgsl`. The optimizers themselves are in `crate::optim`.

pub(crate) mod launch;
pub mod reference;
