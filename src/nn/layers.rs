//! The layers: Linear, Embedding, LayerNorm, Dropout and parameter-free activations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Module;
use crate::error::{Error, Result};
use crate::ops::matmul::{Activation, WeightLayout};
use crate::runtime::Device;
use crate::tensor::{DType, Precision, Tensor};

/// How a dense layer's weights are drawn (biases start at zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Glorot/Xavier uniform: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))` (Keras default).
    GlorotUniform,
    /// Kaiming/He uniform for ReLU: `U(-a, a)`, `a = sqrt(6 / fan_in)`.
    KaimingUniform,
    /// `N(0, std)` (GPT-2 uses 0.02).
    Normal {
        /// Standard deviation.
        std: f32,
    },
}

fn init_weight(
    dev: &Device,
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    init: Init,
    seed: u64,
) -> Result<Tensor> {
    let t = match init {
        Init::GlorotUniform => {
            let a = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt() as f32;
            Tensor::rand_uniform(dev, shape, -a, a, seed)?
        }
        Init::KaimingUniform => {
            let a = (6.0 / fan_in.max(1) as f64).sqrt() as f32;
            Tensor::rand_uniform(dev, shape, -a, a, seed)?
        }
        Init::Normal { std } => Tensor::rand_normal(dev, shape, 0.0, std, seed)?,
    };
    Ok(t.with_grad())
}

/// A dense layer `act(x·W + b)`: `weight` is (in, out) (Keras `Dense`, Hugging Face `Conv1D`
/// layout, read without a transpose), `bias` is (out). The bias add and the activation run in
/// the matmul's epilogue: one dispatch forward.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    act: Activation,
    precision: Precision,
}

impl Linear {
    /// `in_features -> out_features` with Glorot-uniform weights seeded by `seed`, zero bias,
    /// no activation.
    pub fn new(dev: &Device, in_features: usize, out_features: usize, seed: u64) -> Result<Self> {
        Self::with_init(
            dev,
            in_features,
            out_features,
            true,
            Init::GlorotUniform,
            seed,
        )
    }

    /// Full control: with or without a bias, and the weight initialisation.
    pub fn with_init(
        dev: &Device,
        in_features: usize,
        out_features: usize,
        bias: bool,
        init: Init,
        seed: u64,
    ) -> Result<Self> {
        let weight = init_weight(
            dev,
            &[in_features, out_features],
            in_features,
            out_features,
            init,
            seed,
        )?;
        let bias = if bias {
            Some(Tensor::zeros(dev, &[out_features])?.with_grad())
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            act: Activation::None,
            precision: Precision::F32,
        })
    }

    /// From existing parameters: `weight` (in, out), `bias` (out). They are used as given
    /// (make them with [`Tensor::with_grad`] to train them).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight.rank() != 2
            || bias
                .as_ref()
                .is_some_and(|b| b.shape() != [weight.shape()[1]])
        {
            return Err(Error::Shape {
                op: "Linear::from_parts",
                message: format!(
                    "weight must be (in, out) and bias (out); got {:?} and {:?}",
                    weight.shape(),
                    bias.as_ref().map(|b| b.shape().to_vec())
                ),
            });
        }
        Ok(Linear {
            weight,
            bias,
            act: Activation::None,
            precision: Precision::F32,
        })
    }

    /// Apply `act` after the affine map (fused).
    pub fn activation(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }

    /// Compute in `precision` (as `Gpt::set_precision` does): with [`Precision::Mixed`] the
    /// input and the weight are cast to 16 bits on the way into the matmul, which accumulates
    /// in f32; the bias add, the activation and the output stay f32, and the f32 weight stays
    /// the master copy the optimizer updates (its gradient comes back through the cast in f32).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        if let Precision::Mixed(d) = precision {
            if !d.is_half() {
                return Err(Error::DType {
                    op: "Linear::with_precision",
                    expected: "f16 or bf16 operands",
                    got: d.name(),
                });
            }
            if self.weight.dtype() != DType::F32 {
                return Err(Error::InvalidArgument {
                    op: "Linear::with_precision",
                    message: format!(
                        "mixed precision keeps f32 master weights; this layer holds {} weights",
                        self.weight.dtype().name()
                    ),
                });
            }
        }
        self.precision = precision;
        Ok(self)
    }

    /// The precision of the matmul.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The weight, (in, out).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, (out).
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // `Tensor::linear` records its own backward (ops/matmul/grad.rs).
        let b = self.bias.as_ref();
        match self.precision {
            Precision::Mixed(d) => {
                x.to_dtype(d)?
                    .linear(&self.weight.to_dtype(d)?, b, WeightLayout::InOut, self.act)
            }
            Precision::F32 => x.linear(&self.weight, b, WeightLayout::InOut, self.act),
        }
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}

/// A lookup table: u32 ids (...) -> rows (..., dim), weights `N(0, 0.02)` (GPT-2).
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// `vocab` rows of `dim`, drawn from `N(0, 0.02)` with `seed`.
    pub fn new(dev: &Device, vocab: usize, dim: usize, seed: u64) -> Result<Self> {
        Ok(Embedding {
            weight: init_weight(
                dev,
                &[vocab, dim],
                vocab,
                dim,
                Init::Normal { std: 0.02 },
                seed,
            )?,
        })
    }

    /// From an existing (vocab, dim) table.
    pub fn from_weight(weight: Tensor) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(Error::Shape {
                op: "Embedding::from_weight",
                message: format!("table must be (vocab, dim), got {:?}", weight.shape()),
            });
        }
        Ok(Embedding { weight })
    }

    /// The (vocab, dim) table.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.gather_rows(ids)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}

/// Layer normalisation over the last axis with a gain (`weight`, ones) and shift (`bias`,
/// zeros), PyTorch's `nn.LayerNorm` (eps 1e-5 by default).
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Normalise rows of `dim` elements.
    pub fn new(dev: &Device, dim: usize) -> Result<Self> {
        Self::with_eps(dev, dim, 1e-5)
    }

    /// Same with another epsilon.
    pub fn with_eps(dev: &Device, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            weight: Tensor::ones(dev, &[dim])?.with_grad(),
            bias: Tensor::zeros(dev, &[dim])?.with_grad(),
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".to_string(), self.weight.clone()),
            ("bias".to_string(), self.bias.clone()),
        ]
    }
}

/// Dropout with probability `p` while training; the identity when training is off or in
/// inference mode ([`crate::no_grad`]). Each call draws a new mask: seeds are `seed`,
/// `seed + 1`, ... in call order, so a run is reproducible.
pub struct Dropout {
    p: f32,
    seed: u64,
    calls: AtomicU64,
    training: AtomicBool,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)`.
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "Dropout::new",
                message: format!("p = {p} must be in [0, 1)"),
            });
        }
        Ok(Dropout {
            p,
            seed,
            calls: AtomicU64::new(0),
            training: AtomicBool::new(true),
        })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training.load(Ordering::Relaxed) {
            return Ok(x.clone());
        }
        let k = self.calls.fetch_add(1, Ordering::Relaxed);
        x.dropout(self.p, self.seed.wrapping_add(k))
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}

macro_rules! activation_module {
    ($name:ident, $method:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                x.$method()
            }
            fn parameters(&self) -> Vec<(String, Tensor)> {
                Vec::new()
            }
        }
    };
}

activation_module!(
    Relu,
    relu,
    "`max(x, 0)` as a module (prefer [`Linear::activation`], which fuses it)."
);
activation_module!(Gelu, gelu, "GELU (tanh approximation) as a module.");
activation_module!(Sigmoid, sigmoid, "Logistic sigmoid as a module.");
activation_module!(Tanh, tanh, "Hyperbolic tangent as a module.");
