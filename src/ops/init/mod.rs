//! Tensor initialisation kernels (fill, random); WGSL in `shaders/init.wgsl`. Used by the
//! constructors in `tensor.rs` and by `nn` initialisers.

pub(crate) mod launch;
