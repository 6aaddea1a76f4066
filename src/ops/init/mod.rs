//! Tensor initialisation kernels (fill, random); WGSL in `shaders/init.wgsl`. Used by the
//! constructors in `tensor.rs` and by the weight initialisers of the modules in `crate::nn`.

pub(crate) mod launch;
