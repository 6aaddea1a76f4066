//! GPT with the GPT-2 architecture: token + position embeddings, pre-LayerNorm blocks (fused QKV
//! linear → fused causal attention → projection; GELU MLP of 4·C), final LayerNorm and an lm_head
//! tied to the token embedding. Parameter names and layouts follow Hugging Face GPT-2
//! (`transformer.h.0.attn.c_attn.weight`, Conv1D weights stored (in, out)).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::generate::Sampler;
use crate::{Activation, Device, KvCache, Tensor, WeightLayout};

/// Size of a GPT.
#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Embedding width C (a multiple of `n_head`).
    pub n_embd: usize,
    /// Longest context in tokens.
    pub block_size: usize,
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Dropout probability in training (embeddings, attention output, MLP output).
    pub dropout: f32,
    /// LayerNorm epsilon (GPT-2: 1e-5).
    pub ln_eps: f32,
}

impl Default for GptConfig {
    /// GPT-2 small (124M).
    fn default() -> Self {
        GptConfig {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            block_size: 1024,
            vocab_size: 50257,
            dropout: 0.0,
            ln_eps: 1e-5,
        }
    }
}

impl GptConfig {
    /// Check the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidArgument {
                op: "GptConfig",
                message: m,
            })
        };
        if self.n_layer == 0
            || self.n_head == 0
            || self.n_embd == 0
            || self.block_size == 0
            || self.vocab_size == 0
        {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        // Far beyond any real model, but small enough that counting parameters cannot overflow
        // and a hostile config.json cannot make the loader list billions of layers.
        const MAX_LAYERS: usize = 4096;
        const MAX_DIM: usize = 1 << 24;
        if self.n_layer > MAX_LAYERS
            || [self.n_embd, self.block_size, self.vocab_size]
                .iter()
                .any(|&d| d > MAX_DIM)
        {
            return bad(format!(
                "sizes out of range (n_layer <= {MAX_LAYERS}, widths, context and vocabulary <= {MAX_DIM}): {self:?}"
            ));
        }
        if !(self.ln_eps > 0.0 && self.ln_eps.is_finite()) {
            return bad(format!(
                "layer norm epsilon {} must be positive",
                self.ln_eps
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Number of parameters (the tied lm_head counted once).
    pub fn num_params(&self) -> usize {
        let c = self.n_embd;
        let block =
            2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
        self.vocab_size * c + self.block_size * c + self.n_layer * block + 2 * c
    }
}

/// Where a block's attention gets its keys and values.
enum Attn<'a> {
    /// From this call's positions only (training, scoring).
    Full,
    /// From this call's positions, which are also written to the (empty) cache.
    Prefill(&'a mut KvCache),
    /// From the cache, after appending this call's positions.
    Decode(&'a mut KvCache),
}

/// One Transformer block's parameters.
struct Block {
    ln_1_w: Tensor,      // (C)
    ln_1_b: Tensor,      // (C)
    c_attn_w: Tensor,    // (C, 3C)
    c_attn_b: Tensor,    // (3C)
    attn_proj_w: Tensor, // (C, C)
    attn_proj_b: Tensor, // (C)
    ln_2_w: Tensor,      // (C)
    ln_2_b: Tensor,      // (C)
    c_fc_w: Tensor,      // (C, 4C)
    c_fc_b: Tensor,      // (4C)
    mlp_proj_w: Tensor,  // (4C, C)
    mlp_proj_b: Tensor,  // (C)
}

impl std::fmt::Debug for Gpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gpt({:?}, {} parameters)",
            self.cfg,
            self.cfg.num_params()
        )
    }
}

/// A GPT-2-architecture language model whose parameters live on the GPU.
pub struct Gpt {
    cfg: GptConfig,
    dev: Device,
    wte: Tensor, // (V, C), also the lm_head
    wpe: Tensor, // (block_size, C)
    blocks: Vec<Block>,
    ln_f_w: Tensor, // (C)
    ln_f_b: Tensor, // (C)
    dropout_calls: AtomicU64,
    seed: u64,
}

impl Gpt {
    /// A freshly initialised model: weights normal(0, 0.02), residual projections scaled by
    /// 1/sqrt(2·n_layer) as in GPT-2, biases zero, LayerNorm gains one.
    pub fn new(dev: &Device, cfg: GptConfig, seed: u64) -> Result<Gpt> {
        cfg.validate()?;
        let mut k = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let proj_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
        Self::build(dev, cfg, seed, &mut |name, shape| {
            k = k.wrapping_add(1);
            let t = if name.ends_with("ln_1.weight")
                || name.ends_with("ln_2.weight")
                || name.ends_with("ln_f.weight")
            {
                Tensor::ones(dev, shape)?
            } else if name.ends_with(".bias") {
                Tensor::zeros(dev, shape)?
            } else if name.ends_with("c_proj.weight") {
                Tensor::rand_normal(dev, shape, 0.0, proj_std, k)?
            } else {
                Tensor::rand_normal(dev, shape, 0.0, 0.02, k)?
            };
            Ok(t.with_grad())
        })
    }

    /// The parameter names and shapes of a config, in [`parameters`](Self::parameters) order.
    pub fn parameter_shapes(cfg: &GptConfig) -> Vec<(String, Vec<usize>)> {
        let c = cfg.n_embd;
        let mut v = vec![
            (
                "transformer.wte.weight".to_string(),
                vec![cfg.vocab_size, c],
            ),
            (
                "transformer.wpe.weight".to_string(),
                vec![cfg.block_size, c],
            ),
        ];
        for i in 0..cfg.n_layer {
            for (name, shape) in [
                ("ln_1.weight", vec![c]),
                ("ln_1.bias", vec![c]),
                ("attn.c_attn.weight", vec![c, 3 * c]),
                ("attn.c_attn.bias", vec![3 * c]),
                ("attn.c_proj.weight", vec![c, c]),
                ("attn.c_proj.bias", vec![c]),
                ("ln_2.weight", vec![c]),
                ("ln_2.bias", vec![c]),
                ("mlp.c_fc.weight", vec![c, 4 * c]),
                ("mlp.c_fc.bias", vec![4 * c]),
                ("mlp.c_proj.weight", vec![4 * c, c]),
                ("mlp.c_proj.bias", vec![c]),
            ] {
                v.push((format!("transformer.h.{i}.{name}"), shape));
            }
        }
        v.push(("transformer.ln_f.weight".to_string(), vec![c]));
        v.push(("transformer.ln_f.bias".to_string(), vec![c]));
        v
    }

    /// A model whose parameters come from `make(name, shape)` (each must return a tensor of
    /// that shape; it is made a gradient leaf here).
    pub fn build(
        dev: &Device,
        cfg: GptConfig,
        seed: u64,
        make: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Gpt> {
        cfg.validate()?;
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = make(name, shape)?;
            if t.shape() != shape {
                return Err(Error::Shape {
                    op: "Gpt::build",
                    message: format!("{name}: expected {shape:?}, got {:?}", t.shape()),
                });
            }
            Ok(if t.requires_grad() { t } else { t.with_grad() })
        };
        let c = cfg.n_embd;
        let wte = get("transformer.wte.weight", &[cfg.vocab_size, c])?;
        let wpe = get("transformer.wpe.weight", &[cfg.block_size, c])?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let h = |n: &str| format!("transformer.h.{i}.{n}");
            blocks.push(Block {
                ln_1_w: get(&h("ln_1.weight"), &[c])?,
                ln_1_b: get(&h("ln_1.bias"), &[c])?,
                c_attn_w: get(&h("attn.c_attn.weight"), &[c, 3 * c])?,
                c_attn_b: get(&h("attn.c_attn.bias"), &[3 * c])?,
                attn_proj_w: get(&h("attn.c_proj.weight"), &[c, c])?,
                attn_proj_b: get(&h("attn.c_proj.bias"), &[c])?,
                ln_2_w: get(&h("ln_2.weight"), &[c])?,
                ln_2_b: get(&h("ln_2.bias"), &[c])?,
                c_fc_w: get(&h("mlp.c_fc.weight"), &[c, 4 * c])?,
                c_fc_b: get(&h("mlp.c_fc.bias"), &[4 * c])?,
                mlp_proj_w: get(&h("mlp.c_proj.weight"), &[4 * c, c])?,
                mlp_proj_b: get(&h("mlp.c_proj.bias"), &[c])?,
            });
        }
        let ln_f_w = get("transformer.ln_f.weight", &[c])?;
        let ln_f_b = get("transformer.ln_f.bias", &[c])?;
        Ok(Gpt {
            dev: dev.clone(),
            wte,
            wpe,
            blocks,
            ln_f_w,
            ln_f_b,
            dropout_calls: AtomicU64::new(0),
            seed,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Every parameter under its Hugging Face name (the tied lm_head appears once, as wte).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut p = vec![
            ("transformer.wte.weight".to_string(), self.wte.clone()),
            ("transformer.wpe.weight".to_string(), self.wpe.clone()),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            let h = format!("transformer.h.{i}");
            for (name, t) in [
                ("ln_1.weight", &b.ln_1_w),
                ("ln_1.bias", &b.ln_1_b),
                ("attn.c_attn.weight", &b.c_attn_w),
                ("attn.c_attn.bias", &b.c_attn_b),
                ("attn.c_proj.weight", &b.attn_proj_w),
                ("attn.c_proj.bias", &b.attn_proj_b),
                ("ln_2.weight", &b.ln_2_w),
                ("ln_2.bias", &b.ln_2_b),
                ("mlp.c_fc.weight", &b.c_fc_w),
                ("mlp.c_fc.bias", &b.c_fc_b),
                ("mlp.c_proj.weight", &b.mlp_proj_w),
                ("mlp.c_proj.bias", &b.mlp_proj_b),
            ] {
                p.push((format!("{h}.{name}"), t.clone()));
            }
        }
        p.push(("transformer.ln_f.weight".to_string(), self.ln_f_w.clone()));
        p.push(("transformer.ln_f.bias".to_string(), self.ln_f_b.clone()));
        p
    }

    /// Mutable handles on every parameter, by name (for loaders).
    pub fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut p: Vec<(String, &mut Tensor)> = vec![
            ("transformer.wte.weight".to_string(), &mut self.wte),
            ("transformer.wpe.weight".to_string(), &mut self.wpe),
        ];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let h = format!("transformer.h.{i}");
            for (name, t) in [
                ("ln_1.weight", &mut b.ln_1_w),
                ("ln_1.bias", &mut b.ln_1_b),
                ("attn.c_attn.weight", &mut b.c_attn_w),
                ("attn.c_attn.bias", &mut b.c_attn_b),
                ("attn.c_proj.weight", &mut b.attn_proj_w),
                ("attn.c_proj.bias", &mut b.attn_proj_b),
                ("ln_2.weight", &mut b.ln_2_w),
                ("ln_2.bias", &mut b.ln_2_b),
                ("mlp.c_fc.weight", &mut b.c_fc_w),
                ("mlp.c_fc.bias", &mut b.c_fc_b),
                ("mlp.c_proj.weight", &mut b.mlp_proj_w),
                ("mlp.c_proj.bias", &mut b.mlp_proj_b),
            ] {
                p.push((format!("{h}.{name}"), t));
            }
        }
        p.push(("transformer.ln_f.weight".to_string(), &mut self.ln_f_w));
        p.push(("transformer.ln_f.bias".to_string(), &mut self.ln_f_b));
        p
    }

    /// Replace the parameter `name` with `value` (same shape required); it becomes a leaf
    /// that collects gradients.
    pub fn set_parameter(&mut self, name: &str, value: &Tensor) -> Result<()> {
        for (n, t) in self.parameters_mut() {
            if n == name {
                if t.shape() != value.shape() {
                    return Err(Error::Shape {
                        op: "Gpt::set_parameter",
                        message: format!(
                            "{name}: model expects {:?}, got {:?}",
                            t.shape(),
                            value.shape()
                        ),
                    });
                }
                *t = value.detach().with_grad();
                return Ok(());
            }
        }
        Err(Error::InvalidArgument {
            op: "Gpt::set_parameter",
            message: format!("no parameter named {name}"),
        })
    }

    fn dropout(&self, x: Tensor, train: bool) -> Result<Tensor> {
        if !train || self.cfg.dropout == 0.0 {
            return Ok(x);
        }
        let k = self.dropout_calls.fetch_add(1, Ordering::Relaxed);
        x.dropout(
            self.cfg.dropout,
            self.seed ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03),
        )
    }

    /// Logits (B, T, V) for token ids (B, T). `train` turns dropout on.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = self.check_ids("Gpt::forward", ids)?;
        let mut x = self.embed(ids, 0, train)?; // (B, T, C)
        for blk in &self.blocks {
            x = self.block(blk, x, train, Attn::Full)?;
        }
        let logits = self.head(&x)?; // (B, T, V)
        debug_assert_eq!(logits.shape(), &[b, t, self.cfg.vocab_size]);
        Ok(logits)
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
        if t == 0 || t > self.cfg.block_size {
            return Err(Error::Shape {
                op,
                message: format!("sequence length {t} must be in 1..={}", self.cfg.block_size),
            });
        }
        Ok((b, t))
    }

    /// Token + position embeddings of ids (B, T) at positions `start .. start + T` -> (B, T, C).
    fn embed(&self, ids: &Tensor, start: usize, train: bool) -> Result<Tensor> {
        let t = ids.shape()[1];
        let pos: Vec<u32> = (start as u32..(start + t) as u32).collect();
        let pos = Tensor::from_u32(&self.dev, &pos, &[t])?;
        let tok = self.wte.gather_rows(ids)?; // (B, T, C)
        let pe = self.wpe.gather_rows(&pos)?; // (T, C)
        self.dropout(tok.add(&pe)?, train)
    }

    /// One Transformer block on x (B, T, C); `attn` says where keys and values come from.
    fn block(&self, blk: &Block, x: Tensor, train: bool, attn: Attn<'_>) -> Result<Tensor> {
        let h = x.layer_norm(&blk.ln_1_w, &blk.ln_1_b, self.cfg.ln_eps)?;
        let qkv = h.linear(
            &blk.c_attn_w,
            Some(&blk.c_attn_b),
            WeightLayout::InOut,
            Activation::None,
        )?; // (B, T, 3C)
        let y = match attn {
            // One recorded op: its backward writes d(qkv) with a single kernel.
            Attn::Full => crate::attention_qkv(&qkv, self.cfg.n_head, true)?, // (B, T, C)
            Attn::Prefill(cache) => {
                let (q, k, v) = crate::split_heads(&qkv, self.cfg.n_head)?; // (B, H, T, D) each
                cache.append(&k, &v)?;
                crate::merge_heads(&crate::attention(&q, &k, &v, true)?)?
            }
            Attn::Decode(cache) => {
                let (q, k, v) = crate::split_heads(&qkv, self.cfg.n_head)?;
                cache.append(&k, &v)?;
                crate::merge_heads(&crate::attend_cached(&q, cache)?)?
            }
        }; // (B, T, C)
        let y = y.linear(
            &blk.attn_proj_w,
            Some(&blk.attn_proj_b),
            WeightLayout::InOut,
            Activation::None,
        )?;
        let x = x.add(&self.dropout(y, train)?)?;
        let h = x.layer_norm(&blk.ln_2_w, &blk.ln_2_b, self.cfg.ln_eps)?;
        let h = h.linear(
            &blk.c_fc_w,
            Some(&blk.c_fc_b),
            WeightLayout::InOut,
            Activation::Gelu,
        )?; // (B, T, 4C)
        let h = h.linear(
            &blk.mlp_proj_w,
            Some(&blk.mlp_proj_b),
            WeightLayout::InOut,
            Activation::None,
        )?; // (B, T, C)
        x.add(&self.dropout(h, train)?)
    }

    /// Final LayerNorm and the tied lm_head: x (..., C) -> logits (..., V) = ln_f(x) · wteᵀ.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.layer_norm(&self.ln_f_w, &self.ln_f_b, self.cfg.ln_eps)?;
        x.linear(&self.wte, None, WeightLayout::OutIn, Activation::None)
    }

    /// Mean cross-entropy of next-token prediction: logits of `ids` (B, T) against `targets` (B, T).
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        let logits = self.forward(ids, train)?;
        logits.cross_entropy(targets, None)
    }

    /// Continue `prompt` by up to `max_new` tokens, calling `on_token` with each new token as
    /// it is produced (return `false` to stop). KV-cached: one prefill of the prompt, then one
    /// position per token (see [`generate_batch`](Self::generate_batch), which this calls with a
    /// batch of one, no stop token and the default context policy). A prompt longer than the
    /// context is cropped from the left with a warning. Runs in inference mode.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> Result<bool>,
    ) -> Result<Vec<u32>> {
        let opts = GenerateOptions {
            max_new_tokens: max_new,
            ..Default::default()
        };
        let out = self.generate_batch(
            &[prompt.to_vec()],
            &opts,
            std::slice::from_mut(sampler),
            &mut |_, id| on_token(id),
        )?;
        Ok(out.tokens.into_iter().next().unwrap_or_default())
    }

    /// The uncached reference for [`generate`](Self::generate): every token re-runs the whole
    /// context (the last `block_size` tokens) through [`forward`](Self::forward). Quadratic in
    /// the length; kept for tests and comparisons.
    pub fn generate_full_context(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> Result<bool>,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument {
                op: "Gpt::generate_full_context",
                message: "the prompt is empty".into(),
            });
        }
        let _g = crate::no_grad();
        let mut ids = prompt.to_vec();
        let v = self.cfg.vocab_size;
        for _ in 0..max_new {
            let start = ids.len().saturating_sub(self.cfg.block_size);
            let ctx = &ids[start..];
            let t = ctx.len();
            let x = Tensor::from_u32(&self.dev, ctx, &[1, t])?;
            let logits = self.forward(&x, false)?.reshape(&[t, v])?;
            // Only the last row comes back to the host.
            let last = Tensor::from_u32(&self.dev, &[t as u32 - 1], &[1])?;
            let row = logits.gather_rows(&last)?.to_vec()?;
            let next = sampler.sample(&row, &ids)?;
            ids.push(next);
            if !on_token(next)? {
                break;
            }
        }
        Ok(ids[prompt.len()..].to_vec())
    }

    /// Generate from a batch of prompts at once with per-layer [`KvCache`]s.
    ///
    /// **How.** The prompts need not have the same length, and nothing is padded: all sequences
    /// advance through the same positions, so the caches stay aligned without an attention
    /// mask. The first `min(prompt lengths)` positions of every prompt go through one batched
    /// *prefill* (full causal attention over those positions, keys and values written to the
    /// caches). Then each *decode* step feeds one token per sequence at the next position and
    /// attends to the cache with [`attend_cached`](crate::attend_cached): a sequence whose
    /// prompt is longer still feeds its own prompt tokens (its sampled token is ignored, as in
    /// Meta's LLaMA reference code) until its prompt is used up. So every sequence sees exactly
    /// its own tokens, at the positions it would have alone; a long prompt next to a short one
    /// costs decode steps instead of prefill. Only the last position's logits (B, V) are read
    /// back per step.
    ///
    /// **Sampling.** `samplers[i]` picks the tokens of prompt `i` (one per prompt, see
    /// [`Sampler::batch`]); its repetition penalty sees the prompt and the tokens so far.
    /// `on_token(i, id)` streams each new token of prompt `i` as soon as it is sampled;
    /// returning `false` ends that sequence. A sequence also ends after `max_new_tokens` or at
    /// `stop_token` (which ends it without being output or streamed). Finished sequences keep
    /// being fed (their outputs are discarded) until all are done.
    ///
    /// **Context.** A prompt longer than `block_size` is cropped to its last `block_size`
    /// tokens, with a warning on stderr and the count in [`Generation::truncated`]. When the
    /// sequences reach `block_size` positions, the caches are rebuilt by one prefill of each
    /// sequence's last [`context_keep`](GenerateOptions::context_keep) tokens, and decoding
    /// goes on from there.
    ///
    /// Errors (never panics): no prompts, an empty prompt, a token id past the vocabulary, a
    /// sampler count that differs from the prompt count.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        samplers: &mut [Sampler],
        on_token: &mut dyn FnMut(usize, u32) -> Result<bool>,
    ) -> Result<Generation> {
        const OP: &str = "Gpt::generate";
        let bad = |message: String| Err(Error::InvalidArgument { op: OP, message });
        let (bs, vocab) = (self.cfg.block_size, self.cfg.vocab_size);
        if prompts.is_empty() {
            return bad("no prompts".into());
        }
        if samplers.len() != prompts.len() {
            return bad(format!(
                "{} samplers for {} prompts (one each)",
                samplers.len(),
                prompts.len()
            ));
        }
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return bad(format!("prompt {i} is empty"));
            }
            if let Some((j, &id)) = p.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
                return bad(format!(
                    "prompt {i}: token id {id} at position {j} is out of range for a vocabulary of {vocab}"
                ));
            }
        }
        let keep = opts.context_keep.unwrap_or(bs - bs / 4).clamp(1, bs);
        let b = prompts.len();
        let mut out = Generation {
            tokens: vec![Vec::new(); b],
            stopped: vec![false; b],
            truncated: vec![0; b],
            ..Default::default()
        };
        // Each sequence's tokens (prompt, then generated) for the repetition penalty.
        let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(b);
        for (i, p) in prompts.iter().enumerate() {
            let cut = p.len().saturating_sub(bs);
            if cut > 0 {
                eprintln!(
                    "warning: prompt {i} has {} tokens, more than the model's context of {bs}; \
                     keeping the last {bs}",
                    p.len()
                );
            }
            out.truncated[i] = cut;
            seqs.push(p[cut..].to_vec());
        }
        let max_new = opts.max_new_tokens;
        if max_new == 0 {
            return Ok(out);
        }
        let plen: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let p0 = *plen.iter().min().expect("non-empty");
        let pmax = *plen.iter().max().expect("non-empty");
        let _g = crate::no_grad();
        let (h, d) = (self.cfg.n_head, self.cfg.n_embd / self.cfg.n_head);
        // Positions ever fed: the last sequence's prompt plus all but its last new token.
        let cap = (pmax + max_new - 1).min(bs).max(p0);
        let mut caches = (0..self.cfg.n_layer)
            .map(|_| KvCache::new(&self.dev, b, h, cap, d))
            .collect::<Result<Vec<_>>>()?;
        // The tokens fed at positions 0..pos, per sequence (equal lengths; for rebuilds).
        let mut fed: Vec<Vec<u32>> = seqs.iter().map(|s| s[..p0].to_vec()).collect();
        let t0 = std::time::Instant::now();
        let mut logits = self.prefill(&fed, &mut caches)?;
        out.prefill_tokens += b * p0;
        out.prefill_secs += t0.elapsed().as_secs_f64();
        let mut pos = p0;
        let mut done = vec![false; b];
        let mut feed = vec![0u32; b];
        loop {
            for i in 0..b {
                if done[i] {
                    feed[i] = *fed[i].last().expect("non-empty");
                } else if pos < plen[i] {
                    feed[i] = seqs[i][pos];
                } else {
                    let row = &logits[i * vocab..(i + 1) * vocab];
                    let id = samplers[i].sample(row, &seqs[i])?;
                    feed[i] = id;
                    if Some(id) == opts.stop_token {
                        out.stopped[i] = true;
                        done[i] = true;
                        continue;
                    }
                    seqs[i].push(id);
                    out.tokens[i].push(id);
                    if !on_token(i, id)? || out.tokens[i].len() >= max_new {
                        done[i] = true;
                    }
                }
            }
            if done.iter().all(|&x| x) {
                break;
            }
            for (f, &id) in fed.iter_mut().zip(&feed) {
                f.push(id);
            }
            let t = std::time::Instant::now();
            if pos == cap {
                // The context is full: rebuild the caches from the last `keep` tokens.
                let window: Vec<Vec<u32>> =
                    fed.iter().map(|f| f[f.len() - keep..].to_vec()).collect();
                logits = self.prefill(&window, &mut caches)?;
                out.prefill_tokens += b * keep;
                out.prefill_secs += t.elapsed().as_secs_f64();
                out.context_rebuilds += 1;
                pos = keep;
            } else {
                logits = self.decode_step(&feed, pos, &mut caches)?;
                out.decode_tokens += b;
                out.decode_secs += t.elapsed().as_secs_f64();
                pos += 1;
            }
        }
        Ok(out)
    }

    /// Reset `caches` and run `ids` (B sequences of T tokens, positions 0..T) through the model,
    /// filling them; returns the last position's logits (B·V, row-major) on the host.
    fn prefill(&self, ids: &[Vec<u32>], caches: &mut [KvCache]) -> Result<Vec<f32>> {
        let (b, t) = (ids.len(), ids[0].len());
        let flat: Vec<u32> = ids.concat();
        let ids = Tensor::from_u32(&self.dev, &flat, &[b, t])?;
        self.check_ids("Gpt::prefill", &ids)?;
        let mut x = self.embed(&ids, 0, false)?;
        for (blk, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            cache.reset();
            x = self.block(blk, x, false, Attn::Prefill(cache))?;
        }
        // Only the last position of each sequence goes through the head.
        let c = self.cfg.n_embd;
        let last: Vec<u32> = (0..b).map(|i| (i * t + t - 1) as u32).collect();
        let last = Tensor::from_u32(&self.dev, &last, &[b])?;
        let x = x.reshape(&[b * t, c])?.gather_rows(&last)?; // (B, C)
        self.head(&x)?.to_vec()
    }

    /// Feed one token per sequence at position `pos` (the caches hold positions 0..pos);
    /// returns the logits (B·V, row-major) on the host.
    fn decode_step(&self, ids: &[u32], pos: usize, caches: &mut [KvCache]) -> Result<Vec<f32>> {
        let b = ids.len();
        let ids = Tensor::from_u32(&self.dev, ids, &[b, 1])?;
        let mut x = self.embed(&ids, pos, false)?; // (B, 1, C)
        for (blk, cache) in self.blocks.iter().zip(caches.iter_mut()) {
            x = self.block(blk, x, false, Attn::Decode(cache))?;
        }
        self.head(&x)?.to_vec() // (B, 1, V)
    }
}

/// Settings of [`Gpt::generate_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    /// New tokens per prompt, at most.
    pub max_new_tokens: usize,
    /// End a sequence when it samples this token (GPT-2's `<|endoftext|>`: 50256); the token
    /// itself is not output.
    pub stop_token: Option<u32>,
    /// When the sequences fill the context, rebuild the caches from this many last tokens
    /// (default: three quarters of `block_size`, so a rebuild comes every quarter context).
    /// `Some(block_size)` rebuilds at every token past the context: the same tokens as
    /// [`Gpt::generate_full_context`], at the same cost.
    pub context_keep: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            stop_token: None,
            context_keep: None,
        }
    }
}

/// What [`Gpt::generate_batch`] produced, with timings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// The new tokens of each prompt (without the stop token).
    pub tokens: Vec<Vec<u32>>,
    /// Whether each sequence ended at the stop token.
    pub stopped: Vec<bool>,
    /// Tokens cropped from the left of each prompt to fit the context.
    pub truncated: Vec<usize>,
    /// Positions run through prefills (B per position, rebuilds included).
    pub prefill_tokens: usize,
    /// Seconds in prefills, including reading back their logits.
    pub prefill_secs: f64,
    /// Positions run through decode steps (B per step).
    pub decode_tokens: usize,
    /// Seconds in decode steps, including reading back their logits (not sampling).
    pub decode_secs: f64,
    /// Times the context filled and the caches were rebuilt.
    pub context_rebuilds: usize,
}

impl Generation {
    /// Prefill throughput in tokens per second.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs.max(1e-12)
    }

    /// Decode throughput in tokens per second (all sequences of the batch counted).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_secs.max(1e-12)
    }
}
