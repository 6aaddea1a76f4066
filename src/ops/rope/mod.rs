//! Rotary position embeddings (RoPE) in Hugging Face's `rotate_half` convention, for the
//! (B, H, T, D) heads the attention kernels take: [`RopeConfig`] (head size, `rope_theta`,
//! optional `rope_scaling` of type `llama3`) gives the inverse frequencies, computed on the
//! host in f64; [`Rope`] holds the cos / sin tables for positions `0 .. max_positions` on the
//! device; [`Tensor::rope`] rotates q or k from a position offset (the KV cache's length when
//! decoding). One kernel forward; the backward is the inverse rotation, the same kernel.
//!
//! ```no_run
//! use portagrad::{Device, Rope, RopeConfig, RopeScaling, Tensor};
//! # fn main() -> portagrad::Result<()> {
//! let dev = Device::new()?;
//! // Llama 3.2's rope: theta 500000, llama3 scaling.
//! let scaling = RopeScaling::llama3(32.0, 1.0, 4.0, 8192.0)?;
//! let rope = Rope::new(&dev, &RopeConfig::new(64, 500_000.0, Some(scaling))?, 2048)?;
//! let q = Tensor::rand_normal(&dev, &[1, 32, 7, 64], 0.0, 1.0, 1)?; // (B, H, T, D)
//! let q = q.rope(&rope, 0)?; // positions 0..7
//! # Ok(()) }
//! ```

pub(crate) mod launch;
// The f64 CPU reference, public as `testing::reference::rope`.
pub mod reference;

use crate::autograd::BackwardFn;
use crate::error::{Error, Result};
use crate::runtime::Device;
use crate::tensor::{DType, Tensor};

/// A `rope_scaling` of a Hugging Face config. Only `llama3` is supported; [`RopeScaling::from_hf`]
/// refuses the other types with an error that names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1 / 3.2's scaling (`_compute_llama3_parameters` in `transformers`): wavelengths
    /// below `original_max_position_embeddings / high_freq_factor` are kept, those above
    /// `original_max_position_embeddings / low_freq_factor` divided by `factor`, and those in
    /// between interpolated smoothly.
    Llama3 {
        /// `factor` (8 for Llama 3.1, 32 for Llama 3.2).
        factor: f64,
        /// `low_freq_factor` (1).
        low_freq_factor: f64,
        /// `high_freq_factor` (4).
        high_freq_factor: f64,
        /// `original_max_position_embeddings` (8192).
        original_max_position_embeddings: f64,
    },
}

fn bad(message: String) -> Error {
    Error::InvalidArgument {
        op: "rope_scaling",
        message,
    }
}

impl RopeScaling {
    /// A validated `llama3` scaling: `factor` at least 1, `0 < low_freq_factor <
    /// high_freq_factor`, `original_max_position_embeddings` positive, all finite.
    pub fn llama3(
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    ) -> Result<RopeScaling> {
        let all = [
            ("factor", factor),
            ("low_freq_factor", low_freq_factor),
            ("high_freq_factor", high_freq_factor),
            (
                "original_max_position_embeddings",
                original_max_position_embeddings,
            ),
        ];
        for (name, v) in all {
            if !v.is_finite() || v <= 0.0 {
                return Err(bad(format!(
                    "llama3: {name} = {v} must be finite and positive"
                )));
            }
        }
        if factor < 1.0 {
            return Err(bad(format!("llama3: factor = {factor} must be at least 1")));
        }
        if low_freq_factor >= high_freq_factor {
            return Err(bad(format!(
                "llama3: high_freq_factor = {high_freq_factor} must be greater than \
                 low_freq_factor = {low_freq_factor}"
            )));
        }
        Ok(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        })
    }

    /// From a config's `rope_scaling` fields: `rope_type` (or the older `type`) and the numbers
    /// it carries. `"default"` is no scaling (`None`); `"llama3"` needs all four numbers; any
    /// other type (`linear`, `dynamic`, `yarn`, `longrope`, ...) is an error naming it.
    pub fn from_hf(
        rope_type: &str,
        factor: Option<f64>,
        low_freq_factor: Option<f64>,
        high_freq_factor: Option<f64>,
        original_max_position_embeddings: Option<f64>,
    ) -> Result<Option<RopeScaling>> {
        match rope_type {
            "default" => Ok(None),
            "llama3" => {
                let need = |name: &str, v: Option<f64>| {
                    v.ok_or_else(|| bad(format!("llama3 scaling needs `{name}`")))
                };
                Ok(Some(RopeScaling::llama3(
                    need("factor", factor)?,
                    need("low_freq_factor", low_freq_factor)?,
                    need("high_freq_factor", high_freq_factor)?,
                    need(
                        "original_max_position_embeddings",
                        original_max_position_embeddings,
                    )?,
                )?))
            }
            other => Err(bad(format!(
                "rope_type {other:?} is not supported (supported: \"default\", \"llama3\")"
            ))),
        }
    }
}

/// The rotary embedding of one model: head size, `rope_theta` and an optional scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    head_dim: usize,
    theta: f64,
    scaling: Option<RopeScaling>,
}

impl RopeConfig {
    /// A validated config: `head_dim` even and positive, `theta` finite and greater than 1.
    pub fn new(head_dim: usize, theta: f64, scaling: Option<RopeScaling>) -> Result<RopeConfig> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::InvalidArgument {
                op: "RopeConfig::new",
                message: format!("head_dim {head_dim} must be even and positive"),
            });
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::InvalidArgument {
                op: "RopeConfig::new",
                message: format!("rope_theta {theta} must be finite and greater than 1"),
            });
        }
        Ok(RopeConfig {
            head_dim,
            theta,
            scaling,
        })
    }

    /// The head size D.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// `rope_theta`.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// The scaling, if any.
    pub fn scaling(&self) -> Option<RopeScaling> {
        self.scaling
    }

    /// The D/2 inverse frequencies in f64: `1 / theta^(2i / D)`, then the scaling as
    /// `transformers` computes it.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| self.theta.powf(-((2 * i) as f64) / d))
            .collect();
        let Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) = self.scaling
        else {
            return base;
        };
        let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
        base.iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                let scaled = if wavelen > low_wavelen { f / factor } else { f };
                let smooth =
                    (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                // (wavelengths are finite: the config is validated)
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                if medium {
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                }
            })
            .collect()
    }
}

/// The cos / sin tables of a [`RopeConfig`] on a device, for positions `0 .. max_positions`:
/// (max_positions, D/2) each, `cos(p · inv_freq[i])` computed in f64 and rounded to f32 once
/// (no large-argument `cos` on the GPU, whose accuracy WGSL leaves to the driver).
pub struct Rope {
    config: RopeConfig,
    cos: Tensor,
    sin: Tensor,
}

impl std::fmt::Debug for Rope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rope({:?}, {} positions)",
            self.config,
            self.max_positions()
        )
    }
}

impl Rope {
    /// Build the tables for positions `0 .. max_positions` (at least 1). They take
    /// `max_positions · D · 4` bytes: size them to the longest context actually run (a KV
    /// cache's `max_len`), not to a config's `max_position_embeddings` (131,072 for Llama 3.2).
    pub fn new(dev: &Device, config: &RopeConfig, max_positions: usize) -> Result<Rope> {
        if max_positions == 0 {
            return Err(Error::InvalidArgument {
                op: "Rope::new",
                message: "max_positions must be at least 1".into(),
            });
        }
        let inv = config.inv_freq();
        let half = inv.len();
        let (mut cos, mut sin) = (
            Vec::with_capacity(max_positions * half),
            Vec::with_capacity(max_positions * half),
        );
        for p in 0..max_positions {
            for &f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Rope {
            config: *config,
            cos: Tensor::from_slice(dev, &cos, &[max_positions, half])?,
            sin: Tensor::from_slice(dev, &sin, &[max_positions, half])?,
        })
    }

    /// The config the tables were built from.
    pub fn config(&self) -> &RopeConfig {
        &self.config
    }

    /// Positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.shape()[0]
    }
}

impl Tensor {
    /// Rotary position embedding of `self` (B, H, T, D), Hugging Face's `rotate_half`
    /// convention: row `t` of every head is at position `offset + t` (0 for a prompt; the KV
    /// cache's length before the new rows when decoding), and element `i < D/2` pairs with
    /// `i + D/2`: `y = x · cos + rotate_half(x) · sin`, `rotate_half(x) = cat(-x₂, x₁)`.
    /// Apply it to q (H heads) and k (n_kv_heads heads) after the head split.
    ///
    /// The gradient is the inverse rotation of the output gradient (one kernel each way).
    ///
    /// Errors (naming `rope`): `self` not a rank-4 f32 tensor, D not the config's head size,
    /// `offset + T` past the tables' `max_positions`, another device.
    pub fn rope(&self, rope: &Rope, offset: usize) -> Result<Tensor> {
        const OP: &str = "rope";
        self.expect_dtype(OP, DType::F32)?;
        self.same_device(OP, &rope.cos)?;
        let s = self.shape();
        if s.len() != 4 || s[3] != rope.config.head_dim {
            return Err(Error::Shape {
                op: OP,
                message: format!(
                    "input must be (B, H, T, D) with D = {} (the rope's head size), got shape {s:?}",
                    rope.config.head_dim
                ),
            });
        }
        let t = s[2];
        if offset + t > rope.max_positions() {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!(
                    "positions {offset}..{} of input {s:?} are past the {} positions the rope \
                     tables hold",
                    offset + t,
                    rope.max_positions()
                ),
            });
        }
        let y = launch::rope(self, &rope.cos, &rope.sin, offset, 1.0)?;
        if !Tensor::should_record(&[self]) {
            return Ok(y);
        }
        let (cos, sin) = (rope.cos.clone(), rope.sin.clone());
        let back: BackwardFn =
            Box::new(move |g| Ok(vec![Some(launch::rope(g, &cos, &sin, offset, -1.0)?)]));
        Ok(y.record(OP, &[self], back))
    }
}
