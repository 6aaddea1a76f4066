//! The size of a Llama-family model, read from a Hugging Face `config.json` (`model_type`
//! `llama`, `qwen2` or `mistral`), and its checks.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::{RopeConfig, RopeScaling};

/// Which Hugging Face architecture a config came from (they differ in defaults and biases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaFamily {
    /// `LlamaForCausalLM` (Llama 2 / 3, SmolLM2, TinyLlama): biases only with `attention_bias`.
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections always carry biases.
    Qwen2,
    /// `MistralForCausalLM` without a sliding window: Llama's layers.
    Mistral,
}

impl LlamaFamily {
    /// The `model_type` string of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "llama",
            LlamaFamily::Qwen2 => "qwen2",
            LlamaFamily::Mistral => "mistral",
        }
    }
}

/// Size and settings of a Llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// The architecture.
    pub family: LlamaFamily,
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Residual width C (`hidden_size`).
    pub hidden_size: usize,
    /// MLP width F (`intermediate_size`).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads H.
    pub num_attention_heads: usize,
    /// Key/value heads Hkv (H a multiple of it; H for plain multi-head attention).
    pub num_key_value_heads: usize,
    /// Head size D (`head_dim`, default C / H).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `rope_scaling` (only `llama3` is supported).
    pub rope_scaling: Option<RopeScaling>,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` is the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o carry biases (`attention_bias`; q/k/v only, always, for Qwen2).
    pub attention_bias: bool,
}

fn bad(message: String) -> Error {
    Error::InvalidArgument {
        op: "LlamaConfig",
        message,
    }
}

impl LlamaConfig {
    /// Check the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        // Far beyond any real model, but small enough that counting parameters cannot overflow
        // and a hostile config.json cannot make the loader list billions of layers.
        const MAX_LAYERS: usize = 4096;
        const MAX_DIM: usize = 1 << 24;
        for (name, v) in sizes {
            if v == 0 {
                return Err(bad(format!("{name} must be positive")));
            }
            let max = if name == "num_hidden_layers" {
                MAX_LAYERS
            } else {
                MAX_DIM
            };
            if v > max {
                return Err(bad(format!("{name} = {v} is out of range (at most {max})")));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(bad(format!(
                "rms_norm_eps {} must be positive and finite",
                self.rms_norm_eps
            )));
        }
        self.rope()?;
        Ok(())
    }

    /// The rotary embedding of the config.
    pub fn rope(&self) -> Result<RopeConfig> {
        RopeConfig::new(self.head_dim, self.rope_theta, self.rope_scaling)
    }

    /// Whether q/k/v projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.family == LlamaFamily::Qwen2 || self.attention_bias
    }

    /// Whether o_proj carries a bias (Llama's `attention_bias`; never for Qwen2).
    pub fn o_bias(&self) -> bool {
        self.family != LlamaFamily::Qwen2 && self.attention_bias
    }

    /// Read a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidArgument { op, message } => Error::InvalidArgument {
                op,
                message: format!("{}: {message}", path.display()),
            },
            e => e,
        })
    }

    /// Parse the text of a Hugging Face `config.json`. Every field the model needs must be
    /// present and valid (defaults only where `transformers` has them: `num_key_value_heads`,
    /// `head_dim`, `tie_word_embeddings`, `attention_bias`, `rope_theta`, `rms_norm_eps`).
    pub fn from_json(text: &str) -> Result<LlamaConfig> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        if !v.is_object() {
            return Err(bad("config.json must be a JSON object".into()));
        }
        let family = match v.get("model_type").and_then(Value::as_str) {
            Some("llama") => LlamaFamily::Llama,
            Some("qwen2") => LlamaFamily::Qwen2,
            Some("mistral") => LlamaFamily::Mistral,
            Some(other) => {
                return Err(bad(format!(
                    "model_type {other:?} is not supported (supported: \"llama\", \"qwen2\", \"mistral\")"
                )));
            }
            None => return Err(bad("missing model_type".into())),
        };
        let uint = |name: &str| -> Result<Option<usize>> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .filter(|&x| x > 0)
                    .map(|x| Some(x as usize))
                    .ok_or_else(|| bad(format!("{name} must be a positive integer, got {x}"))),
            }
        };
        let need = |name: &str| -> Result<usize> {
            uint(name)?.ok_or_else(|| bad(format!("missing {name}")))
        };
        let float = |obj: &Value, name: &str| -> Result<Option<f64>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("{name} must be a number, got {x}"))),
            }
        };
        let boolean = |name: &str, default: bool| -> Result<bool> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| bad(format!("{name} must be true or false, got {x}"))),
            }
        };
        if let Some(act) = v.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(bad(format!(
                    "hidden_act {act} is not supported (the SwiGLU MLP needs \"silu\")"
                )));
            }
        }
        if boolean("mlp_bias", false)? {
            return Err(bad("mlp_bias = true is not supported".into()));
        }
        let max_pos = need("max_position_embeddings")?;
        // Sliding-window attention is not implemented: accept it only where it never applies.
        let window_used = match family {
            LlamaFamily::Qwen2 => boolean("use_sliding_window", false)?,
            _ => true,
        };
        if window_used
            && let Some(w) = uint("sliding_window")?
            && w < max_pos
        {
            return Err(bad(format!(
                "sliding_window {w} is shorter than max_position_embeddings {max_pos}: \
                 sliding-window attention is not supported"
            )));
        }
        let heads = need("num_attention_heads")?;
        let hidden = need("hidden_size")?;
        let head_dim = match uint("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden.is_multiple_of(heads) {
                    return Err(bad(format!(
                        "hidden_size {hidden} is not a multiple of num_attention_heads {heads} \
                         (and no head_dim is given)"
                    )));
                }
                hidden / heads
            }
        };
        // transformers 5 writes `rope_parameters` (theta inside); older files `rope_theta` and
        // `rope_scaling` at the top level.
        let params = match v.get("rope_parameters") {
            Some(p @ Value::Object(_)) => Some(p),
            None | Some(Value::Null) => None,
            Some(p) => return Err(bad(format!("rope_parameters must be an object, got {p}"))),
        };
        let scaling_obj = match v.get("rope_scaling") {
            Some(s @ Value::Object(_)) => Some(s),
            None | Some(Value::Null) => params,
            Some(s) => return Err(bad(format!("rope_scaling must be an object, got {s}"))),
        };
        let rope_theta = match float(&v, "rope_theta")? {
            Some(t) => t,
            None => match params {
                Some(p) => float(p, "rope_theta")?.unwrap_or(10_000.0),
                None => 10_000.0,
            },
        };
        let rope_scaling = match scaling_obj {
            None => None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("rope scaling {s} has no rope_type")))?;
                RopeScaling::from_hf(
                    ty,
                    float(s, "factor")?,
                    float(s, "low_freq_factor")?,
                    float(s, "high_freq_factor")?,
                    float(s, "original_max_position_embeddings")?,
                )?
            }
        };
        let cfg = LlamaConfig {
            family,
            vocab_size: need("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: uint("num_key_value_heads")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: float(&v, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: max_pos,
            tie_word_embeddings: boolean("tie_word_embeddings", false)?,
            attention_bias: match family {
                LlamaFamily::Qwen2 => false,
                _ => boolean("attention_bias", false)?,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of parameters (a tied lm_head counted once).
    pub fn num_params(&self) -> usize {
        let (c, f, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (h, hkv) = (self.num_attention_heads, self.num_key_value_heads);
        let qkv_out = (h + 2 * hkv) * d;
        let mut layer = c * qkv_out + h * d * c + 3 * c * f + 2 * c;
        if self.qkv_bias() {
            layer += qkv_out;
        }
        if self.o_bias() {
            layer += c;
        }
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * c
        };
        self.vocab_size * c + self.num_hidden_layers * layer + c + head
    }
}
