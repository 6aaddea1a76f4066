//! Llama-family decoder-only Transformers (Hugging Face `llama`, `qwen2`, `mistral` without a
//! sliding window): token embedding → per layer RMSNorm, q/k/v projections (biases for Qwen2),
//! rotary embeddings on q and k, grouped-query causal attention, o_proj, residual; RMSNorm,
//! SwiGLU MLP, residual → final RMSNorm → lm_head (tied to the embedding or not).
//!
//! Parameters are held exactly as Hugging Face stores them (names and (out, in) layouts), so
//! gradients, optimizers and files use Hugging Face names with no conversion. The three q/k/v
//! products are joined into one (B, T, (H + 2·Hkv)·D) tensor that [`split_qkv`](crate::split_qkv)
//! splits into heads (K/V never repeated for GQA); gate and up go through
//! [`swiglu2`](crate::swiglu2).

mod config;
pub(crate) mod io;

pub use config::{LlamaConfig, LlamaFamily};
pub use io::{llama_config_json, load_llama, load_llama_as, load_llama_with_context, save_llama};

use crate::error::{Error, Result};
use crate::generate::{self, CausalLm, Sampler};
use crate::{Activation, DType, Device, KvCache, Rope, Tensor, WeightLayout};

/// The context a loaded model's rotary tables cover when none is asked for (a config's
/// `max_position_embeddings` may be 131,072, whose tables would be large for nothing).
pub const DEFAULT_CONTEXT: usize = 4096;

/// Where a layer's attention gets its keys and values.
enum Attn<'a> {
    /// From this call's positions only (training, scoring).
    Full,
    /// From the cache, after appending this call's positions (prefill into an empty cache, or
    /// decode): rotary offset = the cache's length before the append.
    Cached(&'a mut KvCache),
}

/// One decoder layer's parameters, Hugging Face layouts (Linear weights (out, in)).
struct Layer {
    input_norm: Tensor,  // (C)
    q_w: Tensor,         // (H·D, C)
    q_b: Option<Tensor>, // (H·D)
    k_w: Tensor,         // (Hkv·D, C)
    k_b: Option<Tensor>, // (Hkv·D)
    v_w: Tensor,         // (Hkv·D, C)
    v_b: Option<Tensor>, // (Hkv·D)
    o_w: Tensor,         // (C, H·D)
    o_b: Option<Tensor>, // (C)
    post_norm: Tensor,   // (C)
    gate_w: Tensor,      // (F, C)
    up_w: Tensor,        // (F, C)
    down_w: Tensor,      // (C, F)
}

impl Layer {
    /// The layer's parameters under their names inside `model.layers.{i}.`.
    fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![("input_layernorm.weight", &self.input_norm)];
        v.push(("self_attn.q_proj.weight", &self.q_w));
        v.extend(self.q_b.as_ref().map(|b| ("self_attn.q_proj.bias", b)));
        v.push(("self_attn.k_proj.weight", &self.k_w));
        v.extend(self.k_b.as_ref().map(|b| ("self_attn.k_proj.bias", b)));
        v.push(("self_attn.v_proj.weight", &self.v_w));
        v.extend(self.v_b.as_ref().map(|b| ("self_attn.v_proj.bias", b)));
        v.push(("self_attn.o_proj.weight", &self.o_w));
        v.extend(self.o_b.as_ref().map(|b| ("self_attn.o_proj.bias", b)));
        v.push(("post_attention_layernorm.weight", &self.post_norm));
        v.push(("mlp.gate_proj.weight", &self.gate_w));
        v.push(("mlp.up_proj.weight", &self.up_w));
        v.push(("mlp.down_proj.weight", &self.down_w));
        v
    }
}

/// A Llama-family language model whose parameters live on the GPU (f32; the weight matrices
/// may be f16 / bf16 for inference, see [`load_llama_as`]).
pub struct Llama {
    cfg: LlamaConfig,
    dev: Device,
    embed: Tensor, // (V, C)
    layers: Vec<Layer>,
    norm: Tensor,            // (C)
    lm_head: Option<Tensor>, // (V, C); None when tied to `embed`
    rope: Rope,              // cos / sin for positions 0 .. context
    /// The dtype of the projection matrices, the embedding and the lm_head (f32, or f16 /
    /// bf16 for inference); norm gains and biases stay f32.
    weight_dtype: DType,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Llama({:?}, {} parameters, context {})",
            self.cfg,
            self.cfg.num_params(),
            self.context()
        )
    }
}

impl Llama {
    /// The parameter names and shapes of a config, in [`parameters`](Self::parameters) order
    /// (Hugging Face's names and shapes).
    pub fn parameter_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let (c, f, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (hd, kvd) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, c],
        )];
        for i in 0..cfg.num_hidden_layers {
            let mut layer: Vec<(&str, Vec<usize>)> = vec![("input_layernorm.weight", vec![c])];
            for (w, b, out) in [
                ("self_attn.q_proj.weight", "self_attn.q_proj.bias", hd),
                ("self_attn.k_proj.weight", "self_attn.k_proj.bias", kvd),
                ("self_attn.v_proj.weight", "self_attn.v_proj.bias", kvd),
            ] {
                layer.push((w, vec![out, c]));
                if cfg.qkv_bias() {
                    layer.push((b, vec![out]));
                }
            }
            layer.push(("self_attn.o_proj.weight", vec![c, hd]));
            if cfg.o_bias() {
                layer.push(("self_attn.o_proj.bias", vec![c]));
            }
            layer.push(("post_attention_layernorm.weight", vec![c]));
            layer.push(("mlp.gate_proj.weight", vec![f, c]));
            layer.push(("mlp.up_proj.weight", vec![f, c]));
            layer.push(("mlp.down_proj.weight", vec![c, f]));
            v.extend(
                layer
                    .into_iter()
                    .map(|(n, s)| (format!("model.layers.{i}.{n}"), s)),
            );
        }
        v.push(("model.norm.weight".to_string(), vec![c]));
        if !cfg.tie_word_embeddings {
            v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, c]));
        }
        v
    }

    /// A freshly initialised model (weights normal(0, 0.02), biases zero, norm gains one), with
    /// rotary tables for `context` positions.
    pub fn new(dev: &Device, cfg: LlamaConfig, context: usize, seed: u64) -> Result<Llama> {
        let mut k = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self::build(dev, cfg, context, &mut |name, shape| {
            k = k.wrapping_add(1);
            if name.ends_with("norm.weight") {
                Tensor::ones(dev, shape)
            } else if name.ends_with(".bias") {
                Tensor::zeros(dev, shape)
            } else {
                Tensor::rand_normal(dev, shape, 0.0, 0.02, k)
            }
        })
    }

    /// A model whose parameters come from `make(name, shape)` (Hugging Face names, each in
    /// [`parameter_shapes`](Self::parameter_shapes) order; each must return an f32 tensor of
    /// that shape, made a gradient leaf here), with rotary tables for `context` positions
    /// (1 ..= `max_position_embeddings`).
    pub fn build(
        dev: &Device,
        cfg: LlamaConfig,
        context: usize,
        make: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Llama> {
        Self::build_as(dev, cfg, context, DType::F32, make)
    }

    /// Whether parameter `name` is held in the model's weight dtype: the projection matrices,
    /// the embedding and the lm_head (norm gains and biases stay f32).
    pub fn is_weight_matrix(name: &str) -> bool {
        name.ends_with("_proj.weight")
            || name == "model.embed_tokens.weight"
            || name == "lm_head.weight"
    }

    /// [`build`](Self::build) with the weight matrices (see
    /// [`is_weight_matrix`](Self::is_weight_matrix)) in `weight_dtype` (f32, f16 or bf16):
    /// `make` must return them in that dtype, every other parameter in f32. 16-bit weights
    /// halve the memory for inference (matmuls unpack them and accumulate in f32); the
    /// optimizers take f32 parameters only, so such a model is not trained.
    pub fn build_as(
        dev: &Device,
        cfg: LlamaConfig,
        context: usize,
        weight_dtype: DType,
        make: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Llama> {
        cfg.validate()?;
        if !weight_dtype.is_float() {
            return Err(Error::DType {
                op: "Llama::build",
                expected: "f32, f16 or bf16 weights",
                got: weight_dtype.name(),
            });
        }
        if context == 0 || context > cfg.max_position_embeddings {
            return Err(Error::InvalidArgument {
                op: "Llama::build",
                message: format!(
                    "context {context} must be in 1..={} (max_position_embeddings)",
                    cfg.max_position_embeddings
                ),
            });
        }
        let mut params = std::collections::HashMap::new();
        for (name, shape) in Self::parameter_shapes(&cfg) {
            let want = if Self::is_weight_matrix(&name) {
                weight_dtype
            } else {
                DType::F32
            };
            let bytes = shape.iter().map(|&d| d as u64).product::<u64>() * want.size() as u64;
            dev.check_size("Llama::build", &shape, bytes)?;
            let t = make(&name, &shape)?;
            if t.shape() != shape {
                return Err(Error::Shape {
                    op: "Llama::build",
                    message: format!("{name}: expected {shape:?}, got {:?}", t.shape()),
                });
            }
            if t.dtype() != want {
                return Err(Error::DType {
                    op: "Llama::build",
                    expected: want.name(),
                    got: t.dtype().name(),
                });
            }
            let t = if t.requires_grad() { t } else { t.with_grad() };
            params.insert(name, t);
        }
        let mut take = |n: &str| {
            params
                .remove(n)
                .expect("parameter_shapes lists every parameter")
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = |n: &str| format!("model.layers.{i}.{n}");
                let bias = cfg.qkv_bias();
                let mut opt = |n: &str, on: bool| on.then(|| take(&p(n)));
                Layer {
                    input_norm: opt("input_layernorm.weight", true).unwrap(),
                    q_w: opt("self_attn.q_proj.weight", true).unwrap(),
                    q_b: opt("self_attn.q_proj.bias", bias),
                    k_w: opt("self_attn.k_proj.weight", true).unwrap(),
                    k_b: opt("self_attn.k_proj.bias", bias),
                    v_w: opt("self_attn.v_proj.weight", true).unwrap(),
                    v_b: opt("self_attn.v_proj.bias", bias),
                    o_w: opt("self_attn.o_proj.weight", true).unwrap(),
                    o_b: opt("self_attn.o_proj.bias", cfg.o_bias()),
                    post_norm: opt("post_attention_layernorm.weight", true).unwrap(),
                    gate_w: opt("mlp.gate_proj.weight", true).unwrap(),
                    up_w: opt("mlp.up_proj.weight", true).unwrap(),
                    down_w: opt("mlp.down_proj.weight", true).unwrap(),
                }
            })
            .collect();
        let rope = Rope::new(dev, &cfg.rope()?, context)?;
        Ok(Llama {
            dev: dev.clone(),
            embed: take("model.embed_tokens.weight"),
            layers,
            norm: take("model.norm.weight"),
            lm_head: (!cfg.tie_word_embeddings).then(|| take("lm_head.weight")),
            rope,
            cfg,
            weight_dtype,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The dtype of the weight matrices, the embedding and the lm_head.
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// Bytes the parameters occupy on the device.
    pub fn parameter_bytes(&self) -> u64 {
        self.parameters()
            .iter()
            .map(|(_, t)| (t.numel() * t.dtype().size()) as u64)
            .sum()
    }

    /// Longest sequence (positions) the model runs: its rotary tables' length.
    pub fn context(&self) -> usize {
        self.rope.max_positions()
    }

    /// Every parameter under its Hugging Face name, in [`parameter_shapes`](Self::parameter_shapes)
    /// order (a tied lm_head appears once, as the embedding).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            p.extend(
                l.named()
                    .into_iter()
                    .map(|(n, t)| (format!("model.layers.{i}.{n}"), t.clone())),
            );
        }
        p.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            p.push(("lm_head.weight".to_string(), h.clone()));
        }
        p
    }

    fn check_ids(&self, op: &'static str, ids: &Tensor) -> Result<(usize, usize)> {
        let (b, t) = match ids.shape() {
            [b, t] => (*b, *t),
            s => {
                return Err(Error::Shape {
                    op,
                    message: format!("ids must be (B, T), got shape {s:?}"),
                });
            }
        };
        if t == 0 || t > self.context() {
            return Err(Error::Shape {
                op,
                message: format!("sequence length {t} must be in 1..={}", self.context()),
            });
        }
        Ok((b, t))
    }

    /// Logits (B, T, V) for token ids (B, T).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.check_ids("Llama::forward", ids)?;
        let mut x = self.embed.gather_rows(ids)?; // (B, T, C)
        for l in &self.layers {
            x = self.layer(l, x, 0, Attn::Full)?;
        }
        self.head(&x)
    }

    /// Mean cross-entropy of `targets` (B, T) under the logits of `ids` (B, T). Hugging Face's
    /// `labels=input_ids` loss is `loss(ids[:, :-1], ids[:, 1:])` (causal: the logits of a
    /// prefix are the prefix of the logits).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        self.forward(ids)?.cross_entropy(targets, None)
    }

    /// Final RMSNorm and lm_head: x (..., C) -> logits (..., V).
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.rms_norm(&self.norm, self.cfg.rms_norm_eps)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        x.linear(w, None, WeightLayout::OutIn, Activation::None)
    }

    /// One decoder layer on x (B, T, C) at positions `offset ..`.
    fn layer(&self, l: &Layer, x: Tensor, offset: usize, attn: Attn<'_>) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (h, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let lin = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| {
            x.linear(w, b, WeightLayout::OutIn, Activation::None)
        };
        let n = x.rms_norm(&l.input_norm, cfg.rms_norm_eps)?;
        let qkv = Tensor::concat_last(&[
            lin(&n, &l.q_w, l.q_b.as_ref())?, // (B, T, H·D)
            lin(&n, &l.k_w, l.k_b.as_ref())?, // (B, T, Hkv·D)
            lin(&n, &l.v_w, l.v_b.as_ref())?, // (B, T, Hkv·D)
        ])?;
        let (q, k, v) = crate::split_qkv(&qkv, h, hkv)?; // (B, H, T, D), (B, Hkv, T, D) ×2
        let q = q.rope(&self.rope, offset)?;
        let k = k.rope(&self.rope, offset)?;
        let y = match attn {
            Attn::Full => crate::attention(&q, &k, &v, true)?,
            Attn::Cached(cache) => {
                cache.append(&k, &v)?;
                crate::attend_cached(&q, cache)?
            }
        }; // (B, H, T, D)
        let y = lin(&crate::merge_heads(&y)?, &l.o_w, l.o_b.as_ref())?; // (B, T, C)
        let x = x.add(&y)?;
        let n = x.rms_norm(&l.post_norm, cfg.rms_norm_eps)?;
        let m = crate::swiglu2(&lin(&n, &l.gate_w, None)?, &lin(&n, &l.up_w, None)?)?; // (B, T, F)
        x.add(&lin(&m, &l.down_w, None)?)
    }

    /// Hidden states after the layers for ids (B, T) at positions `offset ..`, through the caches.
    fn cached(&self, ids: &Tensor, offset: usize, caches: &mut [KvCache]) -> Result<Tensor> {
        let mut x = self.embed.gather_rows(ids)?; // (B, T, C)
        for (l, cache) in self.layers.iter().zip(caches.iter_mut()) {
            x = self.layer(l, x, offset, Attn::Cached(cache))?;
        }
        Ok(x)
    }

    /// Continue `prompt` by up to `max_new` tokens with the KV cache:
    /// [`generate::generate`] on this model.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> Result<bool>,
    ) -> Result<Vec<u32>> {
        generate::generate(self, prompt, max_new, sampler, on_token)
    }
}

/// The generation loop's view of a Llama: one [`KvCache`] of Hkv heads per layer.
impl CausalLm for Llama {
    type Cache = Vec<KvCache>;

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_context(&self) -> usize {
        self.context()
    }

    fn new_cache(&self, batch: usize, capacity: usize) -> Result<Vec<KvCache>> {
        let (hkv, d) = (self.cfg.num_key_value_heads, self.cfg.head_dim);
        (0..self.cfg.num_hidden_layers)
            .map(|_| KvCache::new(&self.dev, batch, hkv, capacity, d))
            .collect()
    }

    fn prefill(&self, ids: &[Vec<u32>], caches: &mut Vec<KvCache>) -> Result<Vec<f32>> {
        let (b, t) = (ids.len(), ids[0].len());
        let ids = Tensor::from_u32(&self.dev, &ids.concat(), &[b, t])?;
        self.check_ids("Llama::prefill", &ids)?;
        for c in caches.iter_mut() {
            c.reset();
        }
        let x = self.cached(&ids, 0, caches)?; // (B, T, C)
        self.head(&generate::last_positions(&x, b, t)?)?.to_vec() // (B, V)
    }

    fn decode_step(&self, ids: &[u32], pos: usize, caches: &mut Vec<KvCache>) -> Result<Vec<f32>> {
        let b = ids.len();
        let ids = Tensor::from_u32(&self.dev, ids, &[b, 1])?;
        let x = self.cached(&ids, pos, caches)?; // (B, 1, C)
        self.head(&x)?.to_vec() // (B, 1, V)
    }

    fn last_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = ids.len();
        let x = Tensor::from_u32(&self.dev, ids, &[1, t])?;
        generate::last_positions(&self.forward(&x)?, 1, t)?.to_vec() // (1, V)
    }
}
