//! GPT with the GPT-2 architecture: token + position embeddings, pre-LayerNorm blocks (fused QKV
//! linear → fused causal attention → projection; GELU MLP of 4·C), final LayerNorm and an lm_head
//! tied to the token embedding. Parameter names and layouts follow Hugging Face GPT-2
//! (`transformer.h.0.attn.c_attn.weight`, Conv1D weights stored (in, out)).

use std::ops::Range;

use std::sync::atomic::{AtomicU64, Ordering};

use super::gpt_io::HostTensor;
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

/// The Hugging Face name of the token embedding.
const WTE: &str = "transformer.wte.weight";

/// The row ranges the (V, C) token embedding is held in on `dev`: as many rows per chunk as
/// fit [`Device::plan_binding_bytes`] (at least one), the last chunk takes the rest.
fn wte_chunks(dev: &Device, cfg: &GptConfig) -> Vec<Range<usize>> {
    let row = (cfg.n_embd as u64 * 4).max(1);
    let per = (dev.plan_binding_bytes() / row).clamp(1, cfg.vocab_size as u64) as usize;
    (0..cfg.vocab_size)
        .step_by(per)
        .map(|s| s..(s + per).min(cfg.vocab_size))
        .collect()
}

/// The parameter name of the chunk `rows` of the embedding: the Hugging Face name when the
/// embedding is one chunk, else `transformer.wte.weight[start:end]`.
fn wte_name(rows: &Range<usize>, chunks: usize) -> String {
    if chunks == 1 {
        WTE.to_string()
    } else {
        format!("{WTE}[{}:{}]", rows.start, rows.end)
    }
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
///
/// **Large vocabularies.** A token embedding (V, C) larger than one storage binding
/// ([`Device::plan_binding_bytes`]: 128 MiB on lavapipe and in WebGPU's defaults, so GPT-2's
/// 154 MB wte) is held as row chunks, contiguous row ranges each within the limit, named
/// `transformer.wte.weight[start:end]` in [`Gpt::parameters`]. The lookup sums one masked gather
/// per chunk ([`Tensor::gather_rows_masked`]), the tied lm_head concatenates the chunks'
/// products ([`Tensor::concat_last`]), and [`Gpt::loss`] runs over chunks of positions so no
/// logits tensor passes the limit. When the embedding fits (the usual case on GPUs) there is
/// one chunk under the Hugging Face name and none of this runs. Files always hold the whole
/// (V, C) tensor ([`save_pretrained`](super::save_pretrained) joins the chunks on the host).
pub struct Gpt {
    cfg: GptConfig,
    dev: Device,
    wte: Vec<Tensor>, // row chunks (rows_i, C) of the (V, C) token embedding, also the lm_head
    wte_rows: Vec<Range<usize>>, // the rows of each chunk: 0..V when there is one
    wpe: Tensor,      // (block_size, C)
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

    /// The parameter names and shapes of a config, in [`parameters`](Self::parameters) order,
    /// with the token embedding whole (as files hold it) even where a device splits it.
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

    /// The rows of the token embedding that the parameter `name` holds, when it is a row chunk
    /// (`transformer.wte.weight[start:end]`, see [`Gpt`]); `None` for any
    /// other name, the whole embedding included.
    pub fn wte_chunk_rows(name: &str) -> Option<Range<usize>> {
        let (a, b) = name
            .strip_prefix(WTE)?
            .strip_prefix('[')?
            .strip_suffix(']')?
            .split_once(':')?;
        let (a, b) = (a.parse().ok()?, b.parse().ok()?);
        (a < b).then_some(a..b)
    }

    /// Parameters read back to the host under Hugging Face names, with the token embedding's
    /// row chunks (or their gradients: pass `(name, tensor)` pairs in [`parameters`] order)
    /// joined into one (V, C) `transformer.wte.weight`. Each entry: name, shape, values.
    ///
    /// [`parameters`]: Self::parameters
    pub fn join_wte_chunks(named: &[(String, Tensor)]) -> Result<Vec<HostTensor>> {
        let mut out: Vec<HostTensor> = Vec::with_capacity(named.len());
        for (name, t) in named {
            let Some(rows) = Self::wte_chunk_rows(name) else {
                out.push((name.clone(), t.shape().to_vec(), t.to_vec()?));
                continue;
            };
            let c = t.shape().get(1).copied().unwrap_or(0);
            // Chunks come in row order: a chunk starting at row 0 opens the joined tensor.
            let joined = match out.last_mut() {
                Some((n, shape, data)) if n == WTE && rows.start == shape[0] => {
                    data.extend(t.to_vec()?);
                    shape[0] = rows.end;
                    None
                }
                _ if rows.start == 0 => Some((WTE.to_string(), vec![rows.end, c], t.to_vec()?)),
                _ => {
                    return Err(Error::InvalidArgument {
                        op: "Gpt::join_wte_chunks",
                        message: format!("{name} does not follow the chunk before it"),
                    });
                }
            };
            out.extend(joined);
        }
        Ok(out)
    }

    /// Bytes past the adapter's limit for a parameter that is not split, found before anything
    /// is allocated (the embedding is split, so only its rows and a logits row must fit).
    fn check_sizes(dev: &Device, cfg: &GptConfig) -> Result<()> {
        const OP: &str = "Gpt (a parameter that cannot be split)";
        let (v, c) = (cfg.vocab_size, cfg.n_embd);
        for (name, shape) in Self::parameter_shapes(cfg) {
            // One embedding row, and one row of logits (V): the loss splits positions only.
            let shapes = if name == WTE {
                vec![vec![1, c], vec![1, v]]
            } else {
                vec![shape]
            };
            for s in shapes {
                let bytes = s.iter().map(|&d| d as u64).product::<u64>() * 4;
                dev.check_size(OP, &s, bytes)?;
            }
        }
        Ok(())
    }

    /// A model whose parameters come from `make(name, shape)` (each must return a tensor of
    /// that shape; it is made a gradient leaf here). A token embedding held in row chunks on
    /// this device (see [`Gpt`]) is asked for chunk by chunk, under the names
    /// [`wte_chunk_rows`](Self::wte_chunk_rows) reads. Sizes are checked against the adapter
    /// before the first call, so a model that cannot fit fails without allocating.
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
        Self::check_sizes(dev, &cfg)?;
        let c = cfg.n_embd;
        let wte_rows = wte_chunks(dev, &cfg);
        let wte = wte_rows
            .iter()
            .map(|r| get(&wte_name(r, wte_rows.len()), &[r.len(), c]))
            .collect::<Result<Vec<_>>>()?;
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
            wte_rows,
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

    /// Every parameter under its Hugging Face name (the tied lm_head appears once, as wte; a
    /// wte held in row chunks appears as its chunks, `transformer.wte.weight[start:end]`, see
    /// [`join_wte_chunks`](Self::join_wte_chunks)).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let n = self.wte.len();
        let mut p: Vec<(String, Tensor)> = self
            .wte
            .iter()
            .zip(&self.wte_rows)
            .map(|(t, r)| (wte_name(r, n), t.clone()))
            .collect();
        p.push(("transformer.wpe.weight".to_string(), self.wpe.clone()));
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

    /// Mutable handles on every parameter, by name (for loaders), as in
    /// [`parameters`](Self::parameters).
    pub fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let n = self.wte.len();
        let mut p: Vec<(String, &mut Tensor)> = self
            .wte
            .iter_mut()
            .zip(&self.wte_rows)
            .map(|(t, r)| (wte_name(r, n), t))
            .collect();
        p.push(("transformer.wpe.weight".to_string(), &mut self.wpe));
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
    /// that collects gradients. The whole (V, C) `transformer.wte.weight` is accepted also
    /// when the model holds it in row chunks (it is split on the device).
    pub fn set_parameter(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if name == WTE && self.wte.len() > 1 {
            let want = [self.cfg.vocab_size, self.cfg.n_embd];
            if value.shape() != want {
                return Err(Error::Shape {
                    op: "Gpt::set_parameter",
                    message: format!("{name}: model expects {want:?}, got {:?}", value.shape()),
                });
            }
            let _g = crate::no_grad();
            for (t, r) in self.wte.iter_mut().zip(&self.wte_rows) {
                let rows: Vec<u32> = (r.start as u32..r.end as u32).collect();
                let rows = Tensor::from_u32(&self.dev, &rows, &[r.len()])?;
                *t = value.gather_rows(&rows)?.with_grad(); // (rows_i, C)
            }
            return Ok(());
        }
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
        let logits = self.lm_head(&self.hidden(ids, train)?)?; // (B, T, V)
        debug_assert_eq!(logits.shape(), &[b, t, self.cfg.vocab_size]);
        Ok(logits)
    }

    /// The final hidden states (B, T, C), after ln_f, for checked ids (B, T).
    fn hidden(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.embed(ids, 0, train)?; // (B, T, C)
        for blk in &self.blocks {
            x = self.block(blk, x, train, Attn::Full)?;
        }
        x.layer_norm(&self.ln_f_w, &self.ln_f_b, self.cfg.ln_eps)
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
        let tok = self.lookup(ids)?; // (B, T, C)
        let pe = self.wpe.gather_rows(&pos)?; // (T, C)
        self.dropout(tok.add(&pe)?, train)
    }

    /// Rows of the token embedding for ids (B, T) -> (B, T, C): one gather, or with row chunks
    /// the sum of each chunk's masked gather (exact: every row comes from one chunk, the
    /// others add zeros).
    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        if let [wte] = &self.wte[..] {
            return wte.gather_rows(ids);
        }
        // Masked gathers skip the range check a whole-table gather does.
        let v = self.cfg.vocab_size;
        if let Some(bound) = ids.id_bound
            && bound as usize > v
        {
            let bad = ids.host_ids.as_deref().and_then(|h| {
                h.iter()
                    .enumerate()
                    .find(|&(_, &i)| i as usize >= v)
                    .map(|(p, &i)| format!("id {i} (at position {p})"))
            });
            return Err(Error::InvalidArgument {
                op: "gather_rows",
                message: format!(
                    "{} is out of range for a table of {v} rows",
                    bad.unwrap_or_else(|| format!("id {}", bound - 1))
                ),
            });
        }
        let mut tok: Option<Tensor> = None;
        for (w, r) in self.wte.iter().zip(&self.wte_rows) {
            let part = w.gather_rows_masked(ids, r.start)?; // (B, T, C)
            tok = Some(match tok {
                None => part,
                Some(acc) => acc.add(&part)?,
            });
        }
        Ok(tok.expect("at least one chunk"))
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
        self.lm_head(&x)
    }

    /// The tied lm_head on normalised x (..., C) -> (..., V): x · wteᵀ, or with row chunks the
    /// chunks' products x · chunkᵢᵀ side by side.
    fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        let prod = |w: &Tensor| x.linear(w, None, WeightLayout::OutIn, Activation::None);
        match &self.wte[..] {
            [wte] => prod(wte),
            chunks => Tensor::concat_last(&chunks.iter().map(prod).collect::<Result<Vec<_>>>()?),
        }
    }

    /// Mean cross-entropy of next-token prediction: logits of `ids` (B, T) against `targets`
    /// (B, T). When the (B·T, V) logits would pass [`Device::plan_binding_bytes`], they are
    /// made and scored a chunk of positions at a time, each chunk's mean weighted by its share
    /// of the positions: the same mean, without a tensor past the limit.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = self.check_ids("Gpt::loss", ids)?;
        let (n, v, c) = (b * t, self.cfg.vocab_size, self.cfg.n_embd);
        let per = (self.dev.plan_binding_bytes() / (v as u64 * 4)).max(1) as usize;
        let x = self.hidden(ids, train)?; // (B, T, C)
        if n <= per {
            return self.lm_head(&x)?.cross_entropy(targets, None);
        }
        targets.expect_dtype("Gpt::loss", crate::DType::U32)?;
        targets.expect_shape("Gpt::loss", &[b, t])?;
        // Each chunk's targets are uploaded from the host (read back once if made on the GPU).
        let tgt: Vec<u32> = match &targets.host_ids {
            Some(h) => h.to_vec(),
            None => targets.to_vec_u32()?,
        };
        let x = x.reshape(&[n, c])?;
        let mut total: Option<Tensor> = None;
        for s in (0..n).step_by(per) {
            let e = (s + per).min(n);
            let rows: Vec<u32> = (s as u32..e as u32).collect();
            let rows = Tensor::from_u32(&self.dev, &rows, &[e - s])?;
            let y = Tensor::from_u32(&self.dev, &tgt[s..e], &[e - s])?;
            let logits = self.lm_head(&x.gather_rows(&rows)?)?; // (e - s, V)
            let part = logits
                .cross_entropy(&y, None)?
                .mul_scalar((e - s) as f32 / n as f32)?;
            total = Some(match total {
                None => part,
                Some(acc) => acc.add(&part)?,
            });
        }
        Ok(total.expect("n >= 1 position"))
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
        let t0 = crate::time::Instant::now();
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
            let t = crate::time::Instant::now();
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
