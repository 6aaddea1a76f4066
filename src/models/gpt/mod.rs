//! GPT with the GPT-2 architecture: token + position embeddings, pre-LayerNorm blocks (fused QKV
//! linear → fused causal attention → projection; GELU MLP of 4·C), final LayerNorm and an lm_head
//! tied to the token embedding. Parameter names and layouts follow Hugging Face GPT-2
//! (`transformer.h.0.attn.c_attn.weight`, Conv1D weights stored (in, out)).

use std::ops::Range;

use std::sync::atomic::{AtomicU64, Ordering};

mod config;
pub(crate) mod io;

pub use config::GptConfig;

use self::io::HostTensor;
use crate::error::{Error, Result};
use crate::generate::{self, CausalLm, GenerateOptions, Generation, Sampler};
use crate::io::checkpoint::DropoutState;
use crate::{Activation, DType, Device, KvCache, Precision, Tensor, WeightLayout};

/// Where a block's attention gets its keys and values.
enum Attn<'a> {
    /// From this call's positions only (training, scoring).
    Full,
    /// From this call's positions, which are also written to the (empty) cache.
    Prefill(&'a mut KvCache),
    /// From the cache, after appending this call's positions.
    Decode(&'a mut KvCache),
}

/// Bytes of logits one chunk of the fused lm_head + loss makes at least ([`Gpt::loss`] with
/// V > C).
const LCE_CHUNK_BYTES: u64 = 32 << 20;

/// The Hugging Face name of the token embedding.
const WTE: &str = "transformer.wte.weight";

/// The row ranges the (V, C) token embedding is held in on `dev`: as many rows per chunk as
/// fit [`Device::plan_binding_bytes`] (at least one), the last chunk takes the rest.
fn wte_chunks(dev: &Device, cfg: &GptConfig, dtype: DType) -> Vec<Range<usize>> {
    let row = (cfg.n_embd as u64 * dtype.size() as u64).max(1);
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
/// (V, C) tensor ([`save_pretrained`](crate::models::save_pretrained) joins the chunks on the host).
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
    /// The dtype of the weight matrices and the embedding (f32, or f16 / bf16 for inference).
    weight_dtype: DType,
    /// How the matmuls compute ([`Gpt::set_precision`]).
    precision: Precision,
}

impl Gpt {
    /// Whether parameter `name` is one of the matrices held in the model's weight dtype (the
    /// embedding, also the lm_head, and the four projections of each block); biases, LayerNorm
    /// parameters and the position embedding stay f32.
    pub fn is_weight_matrix(name: &str) -> bool {
        name.starts_with(WTE)
            || name.ends_with("attn.c_attn.weight")
            || name.ends_with("c_proj.weight")
            || name.ends_with("mlp.c_fc.weight")
    }

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
        Self::build_as(dev, cfg, seed, DType::F32, make)
    }

    /// [`build`](Self::build) with the weight matrices and the embedding in `weight_dtype`
    /// (f32, f16 or bf16; see [`load_pretrained_as`](super::load_pretrained_as)): `make` must
    /// return them in that dtype, every other parameter in f32. The embedding's row chunks are
    /// sized for the dtype (GPT-2's 154 MB f32 embedding is 77 MB in f16).
    pub fn build_as(
        dev: &Device,
        cfg: GptConfig,
        seed: u64,
        weight_dtype: DType,
        make: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Gpt> {
        cfg.validate()?;
        if !weight_dtype.is_float() {
            return Err(Error::DType {
                op: "Gpt::build",
                expected: "f32, f16 or bf16 weights",
                got: weight_dtype.name(),
            });
        }
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = make(name, shape)?;
            if t.shape() != shape {
                return Err(Error::Shape {
                    op: "Gpt::build",
                    message: format!("{name}: expected {shape:?}, got {:?}", t.shape()),
                });
            }
            let want = if Self::is_weight_matrix(name) {
                weight_dtype
            } else {
                DType::F32
            };
            if t.dtype() != want {
                return Err(Error::DType {
                    op: "Gpt::build",
                    expected: want.name(),
                    got: t.dtype().name(),
                });
            }
            Ok(if t.requires_grad() { t } else { t.with_grad() })
        };
        Self::check_sizes(dev, &cfg)?;
        let c = cfg.n_embd;
        let wte_rows = wte_chunks(dev, &cfg, weight_dtype);
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
            weight_dtype,
            precision: Precision::F32,
        })
    }

    /// Compute the matmuls (the four projections of each block and the lm_head) in
    /// `precision`: with [`Precision::Mixed`] both operands are cast to 16 bits on the way in
    /// (the f32 parameters stay the master copy the optimizer updates; gradients come back
    /// through the casts in f32), attention, LayerNorm, softmax and the loss stay f32.
    /// Mixed precision needs f32 weights (a model loaded in 16 bits is already narrowed).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if let Precision::Mixed(d) = precision {
            if !d.is_half() {
                return Err(Error::DType {
                    op: "Gpt::set_precision",
                    expected: "f16 or bf16 operands",
                    got: d.name(),
                });
            }
            if self.weight_dtype != DType::F32 {
                return Err(Error::InvalidArgument {
                    op: "Gpt::set_precision",
                    message: format!(
                        "mixed precision keeps f32 master weights; this model holds {} weights",
                        self.weight_dtype.name()
                    ),
                });
            }
        }
        self.precision = precision;
        Ok(())
    }

    /// The precision of the matmuls.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `act(x · W + b)` in the model's precision.
    fn dense(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        layout: WeightLayout,
        act: Activation,
    ) -> Result<Tensor> {
        match self.precision {
            Precision::Mixed(d) => x.to_dtype(d)?.linear(&w.to_dtype(d)?, b, layout, act),
            Precision::F32 => x.linear(w, b, layout, act),
        }
    }

    /// The dtype of the weight matrices and the embedding.
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

    /// Where the model's dropout masks stand (its seed and the masks drawn so far), for a
    /// checkpoint ([`save_params_with_dropout`](crate::io::checkpoint::save_params_with_dropout)).
    pub fn dropout_state(&self) -> DropoutState {
        DropoutState {
            seed: self.seed,
            calls: self.dropout_calls.load(Ordering::Relaxed),
        }
    }

    /// Continue the dropout masks from `state` (as saved in a checkpoint): the next training
    /// forward draws the masks a run that never stopped would.
    pub fn set_dropout_state(&mut self, state: DropoutState) {
        self.seed = state.seed;
        self.dropout_calls.store(state.calls, Ordering::Relaxed);
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

    /// Logits (B, T, V) for token ids (B, T). `train` turns dropout on. Logits larger than one
    /// storage binding of the adapter cannot be one tensor: that is an [`Error::TooLarge`]
    /// (found before anything runs), and [`forward_chunks`](Self::forward_chunks) makes them.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = self.check_ids("Gpt::forward", ids)?;
        let v = self.cfg.vocab_size;
        self.dev.check_size(
            "Gpt::forward (logits past one binding: use Gpt::forward_chunks)",
            &[b, t, v],
            (b * t * v) as u64 * 4,
        )?;
        let logits = self.lm_head(&self.hidden(ids, train)?)?; // (B, T, V)
        debug_assert_eq!(logits.shape(), &[b, t, v]);
        Ok(logits)
    }

    /// The logits of [`forward`](Self::forward) as chunks of positions, for logits of any
    /// size: tensors (Nᵢ, V) whose rows, in order, are the B·T positions of ids (B, T)
    /// (row-major), each within [`Device::plan_binding_bytes`] (at least one position per
    /// chunk), as [`loss`](Self::loss) makes them. One chunk (B·T, V) when they all fit.
    pub fn forward_chunks(&self, ids: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let (b, t) = self.check_ids("Gpt::forward_chunks", ids)?;
        let (n, c) = (b * t, self.cfg.n_embd);
        let x = self.hidden(ids, train)?.reshape(&[n, c])?; // (B·T, C)
        self.position_chunks(n)
            .map(|r| self.lm_head(&self.rows(&x, r, n)?)) // (Nᵢ, V)
            .collect()
    }

    /// Ranges of `n` positions whose logits (V floats each) fit
    /// [`Device::plan_binding_bytes`], at least one position each.
    fn position_chunks(&self, n: usize) -> impl Iterator<Item = Range<usize>> {
        let v = self.cfg.vocab_size as u64 * 4;
        let per = (self.dev.plan_binding_bytes() / v).max(1) as usize;
        (0..n).step_by(per).map(move |s| s..(s + per).min(n))
    }

    /// Rows `r` of x (n, C); x itself when `r` is all of it.
    fn rows(&self, x: &Tensor, r: Range<usize>, n: usize) -> Result<Tensor> {
        if r.len() == n {
            return Ok(x.clone());
        }
        let rows: Vec<u32> = (r.start as u32..r.end as u32).collect();
        let rows = Tensor::from_u32(&self.dev, &rows, &[r.len()])?;
        x.gather_rows(&rows) // (r.len(), C)
    }

    /// The final hidden states (B, T, C), after ln_f, for checked ids (B, T).
    fn hidden(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.embed(ids, 0, train)?; // (B, T, C)
        self.trunk(x, train, None)
    }

    /// Every block on the embeddings x (B, T, C), then ln_f -> (B, T, C). With `caches`
    /// (one per layer, and whether this call prefills them) attention reads and fills them.
    ///
    /// Each residual add is fused with the LayerNorm that follows it (the block's ln_2, the
    /// next block's ln_1, or ln_f after the last block): one kernel writes the residual stream
    /// and its normalised copy, and the backward adds the stream's gradient inside the
    /// LayerNorm backward kernel.
    fn trunk(
        &self,
        x: Tensor,
        train: bool,
        mut caches: Option<(&mut [KvCache], bool)>,
    ) -> Result<Tensor> {
        if let Some((c, _)) = &caches
            && c.len() != self.blocks.len()
        {
            return Err(Error::InvalidArgument {
                op: "Gpt (KV caches)",
                message: format!("{} caches for {} layers", c.len(), self.blocks.len()),
            });
        }
        let eps = self.cfg.ln_eps;
        let first = &self.blocks[0]; // n_layer >= 1 (validated)
        let mut h = x.layer_norm(&first.ln_1_w, &first.ln_1_b, eps)?;
        let mut x = x;
        for (i, blk) in self.blocks.iter().enumerate() {
            let attn = match caches.as_mut() {
                None => Attn::Full,
                Some((c, true)) => {
                    c[i].reset();
                    Attn::Prefill(&mut c[i])
                }
                Some((c, false)) => Attn::Decode(&mut c[i]),
            };
            let (w, b) = match self.blocks.get(i + 1) {
                Some(next) => (&next.ln_1_w, &next.ln_1_b),
                None => (&self.ln_f_w, &self.ln_f_b),
            };
            (x, h) = self.block(blk, x, &h, train, attn, (w, b))?;
        }
        Ok(h)
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
        // The one id range check of the model (a chunked embedding's masked gathers make none).
        // Ids made on the GPU carry no bound, as for `gather_rows`.
        let v = self.cfg.vocab_size;
        if let Some(bound) = ids.id_bound
            && bound as usize > v
        {
            // The bound saturates at u32::MAX: name the id itself from the host copy.
            let bad = ids.host_ids.as_deref().and_then(|h| {
                h.iter()
                    .enumerate()
                    .find(|&(_, &i)| i as usize >= v)
                    .map(|(p, &i)| format!("id {i} (at position {p})"))
            });
            return Err(Error::InvalidArgument {
                op,
                message: format!(
                    "{} is out of range for a vocabulary of {v}",
                    bad.unwrap_or_else(|| format!("id {}", bound - 1))
                ),
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
        // Masked gathers skip the range check: `check_ids` made it for every entry point.
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

    /// One Transformer block on the residual stream x (B, T, C) and its ln_1 output h; `attn`
    /// says where keys and values come from. Returns the new stream and its normalisation by
    /// `next_ln` (gamma, beta): the next block's ln_1, or ln_f.
    fn block(
        &self,
        blk: &Block,
        x: Tensor,
        h: &Tensor,
        train: bool,
        attn: Attn<'_>,
        next_ln: (&Tensor, &Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let eps = self.cfg.ln_eps;
        let qkv = self.dense(
            h,
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
        let y = self.dense(
            &y,
            &blk.attn_proj_w,
            Some(&blk.attn_proj_b),
            WeightLayout::InOut,
            Activation::None,
        )?;
        let (x, h) = x.add_layer_norm(&self.dropout(y, train)?, &blk.ln_2_w, &blk.ln_2_b, eps)?;
        let h = self.dense(
            &h,
            &blk.c_fc_w,
            Some(&blk.c_fc_b),
            WeightLayout::InOut,
            Activation::Gelu,
        )?; // (B, T, 4C)
        let h = self.dense(
            &h,
            &blk.mlp_proj_w,
            Some(&blk.mlp_proj_b),
            WeightLayout::InOut,
            Activation::None,
        )?; // (B, T, C)
        x.add_layer_norm(&self.dropout(h, train)?, next_ln.0, next_ln.1, eps)
    }

    /// The tied lm_head on normalised x (..., C) -> (..., V): x · wteᵀ, or with row chunks the
    /// chunks' products x · chunkᵢᵀ side by side.
    fn lm_head(&self, x: &Tensor) -> Result<Tensor> {
        // In mixed precision x is cast once, not once per chunk.
        let cast;
        let x = match self.precision {
            Precision::Mixed(d) => {
                cast = x.to_dtype(d)?;
                &cast
            }
            Precision::F32 => x,
        };
        let prod = |w: &Tensor| self.dense(x, w, None, WeightLayout::OutIn, Activation::None);
        match &self.wte[..] {
            [wte] => prod(wte),
            chunks => Tensor::concat_last(&chunks.iter().map(prod).collect::<Result<Vec<_>>>()?),
        }
    }

    /// Mean cross-entropy of next-token prediction: logits of `ids` (B, T) against `targets`
    /// (B, T). When the (B·T, V) logits would pass [`Device::plan_binding_bytes`], they are
    /// made and scored a chunk of positions at a time, each chunk's mean weighted by its share
    /// of the positions: the same mean, without a tensor past the limit. A vocabulary wider
    /// than the model (V > C; f32, the embedding in one binding) takes the fused lm_head +
    /// cross-entropy instead ([`Tensor::linear_cross_entropy`]), which never makes the
    /// (B·T, V) logits at all.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = self.check_ids("Gpt::loss", ids)?;
        let (n, c) = (b * t, self.cfg.n_embd);
        let x = self.hidden(ids, train)?; // (B, T, C)
        let v = self.cfg.vocab_size;
        if v > c
            && self.precision == Precision::F32
            && let [wte] = &self.wte[..]
            && wte.dtype() == DType::F32
        {
            // A vocabulary wider than the model: the lm_head and the loss fused, so no
            // (B·T, V) logits (nor their gradient) exist, only a chunk at a time: at least
            // LCE_CHUNK_BYTES and 6·C positions (each chunk adds a (V, C) product into dW,
            // then under a tenth of its ~5 passes over its logits), within one binding.
            let row = v as u64 * 4;
            let rows = (LCE_CHUNK_BYTES / row)
                .max(6 * c as u64)
                .min(self.dev.plan_binding_bytes() / row)
                .max(1) as usize;
            targets.expect_shape("Gpt::loss", &[b, t])?;
            return x
                .reshape(&[n, c])?
                .linear_cross_entropy(wte, &targets.reshape(&[n])?, rows);
        }
        let chunks: Vec<Range<usize>> = self.position_chunks(n).collect();
        if chunks.len() <= 1 {
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
        for r in chunks {
            let y = Tensor::from_u32(&self.dev, &tgt[r.clone()], &[r.len()])?;
            let share = r.len() as f32 / n as f32;
            let logits = self.lm_head(&self.rows(&x, r, n)?)?; // (Nᵢ, V)
            let part = logits.cross_entropy(&y, None)?.mul_scalar(share)?;
            total = Some(match total {
                None => part,
                Some(acc) => acc.add(&part)?,
            });
        }
        Ok(total.expect("n >= 1 position"))
    }

    /// Continue `prompt` by up to `max_new` tokens: [`generate::generate`] on this model.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> Result<bool>,
    ) -> Result<Vec<u32>> {
        generate::generate(self, prompt, max_new, sampler, on_token)
    }

    /// The uncached reference for [`generate`](Self::generate):
    /// [`generate::generate_full_context`] on this model (each token re-runs the context
    /// through [`forward`](Self::forward)).
    pub fn generate_full_context(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> Result<bool>,
    ) -> Result<Vec<u32>> {
        generate::generate_full_context(self, prompt, max_new, sampler, on_token)
    }

    /// Generate from a batch of prompts at once with per-layer [`KvCache`]s:
    /// [`generate::generate_batch`] on this model, which says how.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        samplers: &mut [Sampler],
        on_token: &mut dyn FnMut(usize, u32) -> Result<bool>,
    ) -> Result<Generation> {
        generate::generate_batch(self, prompts, opts, samplers, on_token)
    }
}

/// The generation loop's view of a GPT: one [`KvCache`] per layer.
impl CausalLm for Gpt {
    type Cache = Vec<KvCache>;

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn max_context(&self) -> usize {
        self.cfg.block_size
    }

    fn new_cache(&self, batch: usize, capacity: usize) -> Result<Vec<KvCache>> {
        let (h, d) = (self.cfg.n_head, self.cfg.n_embd / self.cfg.n_head);
        (0..self.cfg.n_layer)
            .map(|_| KvCache::new(&self.dev, batch, h, capacity, d))
            .collect()
    }

    fn prefill(&self, ids: &[Vec<u32>], caches: &mut Vec<KvCache>) -> Result<Vec<f32>> {
        let (b, t) = (ids.len(), ids[0].len());
        let flat: Vec<u32> = ids.concat();
        let ids = Tensor::from_u32(&self.dev, &flat, &[b, t])?;
        self.check_ids("Gpt::prefill", &ids)?;
        let x = self.embed(&ids, 0, false)?; // (B, T, C)
        let x = self.trunk(x, false, Some((&mut caches[..], true)))?; // (B, T, C) after ln_f
        self.lm_head(&generate::last_positions(&x, b, t)?)?.to_vec() // (B, V)
    }

    fn decode_step(&self, ids: &[u32], pos: usize, caches: &mut Vec<KvCache>) -> Result<Vec<f32>> {
        let b = ids.len();
        let ids = Tensor::from_u32(&self.dev, ids, &[b, 1])?;
        let x = self.embed(&ids, pos, false)?; // (B, 1, C)
        let x = self.trunk(x, false, Some((&mut caches[..], false)))?;
        self.lm_head(&x)?.to_vec() // (B, 1, V)
    }

    fn last_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = ids.len();
        let x = Tensor::from_u32(&self.dev, ids, &[1, t])?;
        generate::last_positions(&self.forward(&x, false)?, 1, t)?.to_vec() // (1, V)
    }
}
