//! Modules: layers that own named parameters and map a tensor to a tensor.
//!
//! A parameter is an ordinary [`Tensor`] made with [`Tensor::with_grad`]. A module keeps it and
//! hands out clones from [`Module::parameters`] (same buffer, same identity), so gradients from
//! `loss.backward()` are keyed by it and an [`Optimizer`](crate::optim::Optimizer), which
//! updates the buffer in place, changes the values the module computes with. Names follow
//! PyTorch's `state_dict` (`layers.0.weight`, `layers.0.bias`), which is what checkpoints use.
//!
//! ```no_run
//! use portagrad::nn::{self, Module};
//! use portagrad::{Activation, Device, Tensor};
//! # fn main() -> portagrad::Result<()> {
//! let dev = Device::new()?;
//! let model = nn::mlp(&dev, &[30, 64, 64, 1], Activation::Relu, 42)?;
//! let x = Tensor::zeros(&dev, &[8, 30])?;
//! let logits = model.forward(&x)?; // (8, 1)
//! for (name, p) in model.parameters() {
//!     println!("{name}: {:?}", p.shape()); // layers.0.weight: [30, 64] ...
//! }
//! # Ok(()) }
//! ```

mod layers;

pub use layers::{Dropout, Embedding, Gelu, Init, LayerNorm, Linear, Relu, Sigmoid, Tanh};

use crate::error::Result;
use crate::ops::matmul::Activation;
use crate::runtime::Device;
use crate::tensor::Tensor;

/// A layer or a model: a forward function and the parameters it owns.
pub trait Module: Send + Sync {
    /// Apply the module.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Every parameter with its name, in a fixed order. The tensors share buffers with the
    /// module's own, so an optimizer step on them is seen by the module.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// Switch training behaviour (dropout) on or off; on by default. Containers pass it on.
    fn set_training(&self, _training: bool) {}

    /// Total number of parameter elements.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, t)| t.numel()).sum()
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        (**self).parameters()
    }
    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

impl<M: Module + ?Sized> Module for std::sync::Arc<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        (**self).parameters()
    }
    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

/// Prefix every name with `prefix.`.
pub fn prefixed(prefix: &str, params: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    params
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}

/// Modules applied one after the other. Parameters are named `layers.{i}.{name}` with `i` the
/// position in the stack.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty stack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a module (builder style).
    pub fn layer(mut self, m: impl Module + 'static) -> Self {
        self.layers.push(Box::new(m));
        self
    }

    /// Append a module.
    pub fn push(&mut self, m: impl Module + 'static) {
        self.layers.push(Box::new(m));
    }

    /// The modules.
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no modules.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        Ok(h)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&format!("layers.{i}"), l.parameters()))
            .collect()
    }

    fn set_training(&self, training: bool) {
        for l in &self.layers {
            l.set_training(training);
        }
    }
}

/// A multi-layer perceptron: dense layers `sizes[0] -> sizes[1] -> ... -> sizes[n]`, each but
/// the last followed by `hidden` (fused into the matmul), the last one linear (logits).
/// Glorot-uniform weights (Keras's `Dense` default) and zero biases; layer `i` is seeded with
/// `seed + i`.
pub fn mlp(dev: &Device, sizes: &[usize], hidden: Activation, seed: u64) -> Result<Sequential> {
    mlp_in(dev, sizes, hidden, seed, crate::tensor::Precision::F32)
}

/// [`mlp`] whose dense layers compute in `precision` ([`Linear::with_precision`]).
pub fn mlp_in(
    dev: &Device,
    sizes: &[usize],
    hidden: Activation,
    seed: u64,
    precision: crate::tensor::Precision,
) -> Result<Sequential> {
    if sizes.len() < 2 {
        return Err(crate::Error::InvalidArgument {
            op: "mlp",
            message: format!("needs at least an input and an output size, got {sizes:?}"),
        });
    }
    let mut s = Sequential::new();
    for (i, w) in sizes.windows(2).enumerate() {
        let last = i + 2 == sizes.len();
        let layer = Linear::new(dev, w[0], w[1], seed.wrapping_add(i as u64))?
            .activation(if last { Activation::None } else { hidden })
            .with_precision(precision)?;
        s.push(layer);
    }
    Ok(s)
}
