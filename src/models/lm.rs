//! Language-model tasks on any [`LanguageModel`] ([`Gpt`], [`Llama`]), as the `gpt2` and `lm`
//! examples run them and the golden tests check them: the loss of a batch of ids under Hugging Face's `labels=input_ids` convention,
//! its gradient for every parameter under Hugging Face names, AdamW fine-tuning, batches from
//! JSON or text, and the tokenizer that goes with a model directory.

use std::path::Path;

use super::bpe::BpeTokenizer;
use super::char_tokenizer::CharTokenizer;
use super::gpt::Gpt;
use super::gpt::io::{HostTensor, save_host_tensors};
use super::llama::Llama;
use crate::error::{Error, Result};
use crate::optim::{OptimConfig, Optimizer, ParamGroup, decay_groups};
use crate::{Device, Tensor};

fn invalid(op: &'static str, message: String) -> Error {
    Error::InvalidArgument { op, message }
}

/// What the tasks here need of a causal language model whose parameters carry Hugging Face
/// names: [`Gpt`] (GPT-2) and [`Llama`] (Llama, Qwen2, Mistral) implement it.
pub trait LanguageModel {
    /// The device the parameters live on.
    fn device(&self) -> &Device;
    /// Vocabulary size V.
    fn vocab_size(&self) -> usize;
    /// Longest sequence in positions.
    fn context(&self) -> usize;
    /// Every trainable parameter under its Hugging Face name.
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// Mean cross-entropy of `targets` (B, T) under the logits of `ids` (B, T); `train` turns
    /// dropout on where the model has any.
    fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor>;
    /// Whether training runs f16 mixed precision (which needs dynamic loss scaling).
    fn mixed_f16(&self) -> bool {
        false
    }
    /// Gradients named as [`parameters`](Self::parameters) names them, as whole host tensors
    /// in Hugging Face layouts (GPT-2 joins its wte row chunks).
    fn host_gradients(&self, grads: &[(String, Tensor)]) -> Result<Vec<HostTensor>> {
        grads
            .iter()
            .map(|(n, g)| Ok((n.clone(), g.shape().to_vec(), g.to_vec()?)))
            .collect()
    }
}

impl LanguageModel for Gpt {
    fn device(&self) -> &Device {
        Gpt::device(self)
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn context(&self) -> usize {
        self.config().block_size
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        Gpt::parameters(self)
    }
    fn loss(&self, ids: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        Gpt::loss(self, ids, targets, train)
    }
    fn mixed_f16(&self) -> bool {
        self.precision() == crate::Precision::Mixed(crate::DType::F16)
    }
    fn host_gradients(&self, grads: &[(String, Tensor)]) -> Result<Vec<HostTensor>> {
        Gpt::join_wte_chunks(grads)
    }
}

/// Llama has no dropout: `train` changes nothing.
impl LanguageModel for Llama {
    fn device(&self) -> &Device {
        Llama::device(self)
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn context(&self) -> usize {
        Llama::context(self)
    }
    fn parameters(&self) -> Vec<(String, Tensor)> {
        Llama::parameters(self)
    }
    fn loss(&self, ids: &Tensor, targets: &Tensor, _train: bool) -> Result<Tensor> {
        Llama::loss(self, ids, targets)
    }
}

/// A batch of token ids, B sequences of T each (row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdBatch {
    /// Sequences B.
    pub batch: usize,
    /// Tokens per sequence T.
    pub len: usize,
    /// B·T ids, sequence after sequence.
    pub ids: Vec<u32>,
}

impl IdBatch {
    /// A batch from rows that must all have the same, non-zero length.
    pub fn from_rows(rows: &[Vec<u32>]) -> Result<IdBatch> {
        const OP: &str = "IdBatch";
        let Some(first) = rows.first() else {
            return Err(invalid(OP, "the batch has no sequences".into()));
        };
        let len = first.len();
        if len == 0 {
            return Err(invalid(OP, "sequence 0 is empty".into()));
        }
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != len) {
            return Err(invalid(
                OP,
                format!(
                    "sequences must have equal lengths: sequence 0 has {len} ids, sequence {i} has {}",
                    r.len()
                ),
            ));
        }
        Ok(IdBatch {
            batch: rows.len(),
            len,
            ids: rows.concat(),
        })
    }

    /// Parse a JSON array of equal-length arrays of ids, `[[464, 3290], [40, 588]]` (B, T); a
    /// flat array `[464, 3290]` is one sequence.
    pub fn from_json(text: &str) -> Result<IdBatch> {
        const OP: &str = "IdBatch::from_json";
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(OP, format!("not valid JSON ({e})")))?;
        let arr = v.as_array().ok_or_else(|| {
            invalid(
                OP,
                "expected a JSON array of arrays of token ids, (B, T)".into(),
            )
        })?;
        let row = |i: usize, r: &serde_json::Value| -> Result<Vec<u32>> {
            r.as_array()
                .ok_or_else(|| invalid(OP, format!("sequence {i} is not an array of ids")))?
                .iter()
                .enumerate()
                .map(|(j, x)| {
                    x.as_u64()
                        .filter(|&x| x <= u64::from(u32::MAX))
                        .map(|x| x as u32)
                        .ok_or_else(|| {
                            invalid(
                                OP,
                                format!("sequence {i}, position {j}: {x} is not a token id"),
                            )
                        })
                })
                .collect()
        };
        let rows = if arr.iter().all(|x| x.is_number()) && !arr.is_empty() {
            vec![row(0, &v)?]
        } else {
            arr.iter()
                .enumerate()
                .map(|(i, r)| row(i, r))
                .collect::<Result<Vec<_>>>()?
        };
        IdBatch::from_rows(&rows)
    }

    /// [`from_json`](Self::from_json) of a file's contents.
    pub fn load(path: &Path) -> Result<IdBatch> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidArgument { op, message } => Error::InvalidArgument {
                op,
                message: format!("{}: {message}", path.display()),
            },
            e => e,
        })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.len..(i + 1) * self.len]
    }

    /// The rows as vectors.
    pub fn rows(&self) -> Vec<Vec<u32>> {
        (0..self.batch).map(|i| self.row(i).to_vec()).collect()
    }

    /// Check the batch fits `model`: every id below the vocabulary and T within the context.
    pub fn check(&self, model: &(impl LanguageModel + ?Sized)) -> Result<()> {
        const OP: &str = "IdBatch";
        let (vocab_size, context) = (model.vocab_size(), model.context());
        if let Some(k) = self.ids.iter().position(|&id| id as usize >= vocab_size) {
            return Err(invalid(
                OP,
                format!(
                    "token id {} (sequence {}, position {}) is out of range for the model's vocabulary of {}",
                    self.ids[k],
                    k / self.len,
                    k % self.len,
                    vocab_size
                ),
            ));
        }
        if self.len > context {
            return Err(invalid(
                OP,
                format!(
                    "sequences of {} ids are longer than the model's context of {}",
                    self.len, context
                ),
            ));
        }
        Ok(())
    }
}

/// Mean cross-entropy of next-token prediction in Hugging Face's `labels=input_ids`
/// convention: the logits of positions `0..T-1` against the ids at `1..T`, averaged over all
/// B·(T-1) predictions. (The logits at those positions do not depend on the last id, so the
/// model runs on the first T-1.) Needs T >= 2; `train` turns dropout on.
pub fn lm_loss(
    model: &(impl LanguageModel + ?Sized),
    batch: &IdBatch,
    train: bool,
) -> Result<Tensor> {
    batch.check(model)?;
    let (b, t) = (batch.batch, batch.len);
    if t < 2 {
        return Err(invalid(
            "lm_loss",
            format!("sequences of {t} id have nothing to predict: the loss needs T >= 2"),
        ));
    }
    let mut inp = Vec::with_capacity(b * (t - 1));
    let mut tgt = Vec::with_capacity(b * (t - 1));
    for i in 0..b {
        let r = batch.row(i);
        inp.extend_from_slice(&r[..t - 1]);
        tgt.extend_from_slice(&r[1..]);
    }
    let dev = model.device();
    let x = Tensor::from_u32(dev, &inp, &[b, t - 1])?;
    let y = Tensor::from_u32(dev, &tgt, &[b, t - 1])?;
    model.loss(&x, &y, train)
}

/// The logits (B, T, V) of every position of `batch`, in inference mode (what transformers'
/// `model(ids).logits` gives). Logits past one storage binding are an [`Error::TooLarge`]:
/// [`logits_chunks`] makes those.
pub fn logits(model: &Gpt, batch: &IdBatch) -> Result<Tensor> {
    batch.check(model)?;
    let _g = crate::no_grad();
    let ids = Tensor::from_u32(model.device(), &batch.ids, &[batch.batch, batch.len])?;
    model.forward(&ids, false)
}

/// [`logits`] of any size, as [`Gpt::forward_chunks`] makes them: chunks (Nᵢ, V) of the B·T
/// positions in order, each within [`Device::plan_binding_bytes`](crate::Device::plan_binding_bytes).
pub fn logits_chunks(model: &Gpt, batch: &IdBatch) -> Result<Vec<Tensor>> {
    batch.check(model)?;
    let _g = crate::no_grad();
    let ids = Tensor::from_u32(model.device(), &batch.ids, &[batch.batch, batch.len])?;
    model.forward_chunks(&ids, false)
}

/// The [`lm_loss`] of `batch` in inference mode (no dropout, no graph).
pub fn score(model: &(impl LanguageModel + ?Sized), batch: &IdBatch) -> Result<f32> {
    let _g = crate::no_grad();
    lm_loss(model, batch, false)?.item()
}

/// The [`lm_loss`] of `batch` (no dropout) and its gradient for every parameter, under
/// Hugging Face names in [`LanguageModel::parameters`] order. A tied embedding (GPT-2's
/// `transformer.wte.weight`, Qwen2's `model.embed_tokens.weight`) gets the sum of its two uses,
/// as in PyTorch; GPT-2's wte held in row chunks has one gradient per chunk
/// ([`LanguageModel::host_gradients`] joins them).
pub fn gradients(
    model: &(impl LanguageModel + ?Sized),
    batch: &IdBatch,
) -> Result<(f32, Vec<(String, Tensor)>)> {
    let loss = lm_loss(model, batch, false)?;
    let grads = loss.backward()?;
    let mut out = Vec::new();
    for (name, p) in model.parameters() {
        let g = match grads.get(&p) {
            Some(g) => g.clone(),
            // A parameter the loss does not reach (e.g. position rows past T) has gradient 0.
            None => Tensor::zeros(model.device(), p.shape())?,
        };
        out.push((name, g));
    }
    Ok((loss.item()?, out))
}

/// [`gradients`] written to a safetensors file (f32, Hugging Face names and layouts, the
/// whole (V, C) embedding gradient even when GPT-2 holds wte in row chunks); returns the loss.
pub fn save_gradients(
    model: &(impl LanguageModel + ?Sized),
    batch: &IdBatch,
    path: &Path,
) -> Result<f32> {
    let (loss, grads) = gradients(model, batch)?;
    save_host_tensors(path, &model.host_gradients(&grads)?)?;
    Ok(loss)
}

/// Which parameters AdamW's weight decay applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayMode {
    /// Every parameter, as `torch.optim.AdamW(model.parameters(), ...)` does.
    All,
    /// Matrices and embeddings only (not biases or LayerNorm parameters), see [`decay_groups`].
    Matrices,
}

/// Fine-tuning settings: AdamW with β = (0.9, 0.999), ε = 1e-8, a constant learning rate.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Which parameters decay.
    pub decay: DecayMode,
    /// Clip the gradients to this global norm (`None`: no clipping).
    pub clip: Option<f64>,
    /// Train with the model's dropout on (Hugging Face's `model.train()`); the golden losses
    /// are made with dropout 0, where this makes no difference.
    pub dropout: bool,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            steps: 10,
            lr: 1e-3,
            weight_decay: 0.1,
            decay: DecayMode::All,
            clip: None,
            dropout: true,
        }
    }
}

/// The AdamW optimizer [`finetune`] uses for `model`.
pub fn finetune_optimizer(
    model: &(impl LanguageModel + ?Sized),
    cfg: &FinetuneConfig,
) -> Result<Optimizer> {
    let mut oc = OptimConfig::adamw(cfg.lr)
        .betas(0.9, 0.999)
        .eps(1e-8)
        .weight_decay(cfg.weight_decay);
    if let Some(c) = cfg.clip {
        oc = oc.clip_grad_norm(c);
    }
    let groups = match cfg.decay {
        DecayMode::All => vec![ParamGroup::new(model.parameters())],
        DecayMode::Matrices => decay_groups(model.parameters(), cfg.weight_decay),
    };
    let mut opt = Optimizer::with_groups(oc, groups)?;
    // f16 mixed precision trains with dynamic loss scaling (bf16 has f32's range).
    if model.mixed_f16() {
        opt.enable_loss_scaling(crate::optim::LossScaling::default())?;
    }
    Ok(opt)
}

/// Fine-tune `model` in place for `cfg.steps` AdamW steps; step `s` trains on
/// `next_batch(s)` (return the same batch each time to overfit it). Returns the loss before
/// each step; `on_step(s, loss)` sees each as it is known. A loss that is not finite is an
/// error naming the step.
pub fn finetune(
    model: &(impl LanguageModel + ?Sized),
    cfg: &FinetuneConfig,
    next_batch: &mut dyn FnMut(usize) -> Result<IdBatch>,
    on_step: &mut dyn FnMut(usize, f32),
) -> Result<Vec<f32>> {
    let mut opt = finetune_optimizer(model, cfg)?;
    let mut losses = Vec::with_capacity(cfg.steps);
    for s in 0..cfg.steps {
        let batch = next_batch(s)?;
        let loss = lm_loss(model, &batch, cfg.dropout)?;
        let grads = opt.scale_loss(&loss)?.backward()?;
        opt.step(&grads)?;
        let l = loss.item()?;
        if !l.is_finite() {
            return Err(invalid(
                "finetune",
                format!("the loss became {l} at step {s}; lower the learning rate or use clipping"),
            ));
        }
        on_step(s, l);
        losses.push(l);
    }
    Ok(losses)
}

/// Batches from a long run of ids: the ids are cut into consecutive windows of `len`, and
/// step `s` takes windows `s·B .. s·B + B` (wrapping around), so the steps walk through the
/// text in order. Errors when the ids do not fill one window.
pub fn window_batches(
    ids: Vec<u32>,
    batch: usize,
    len: usize,
) -> Result<impl FnMut(usize) -> Result<IdBatch>> {
    let windows = ids.len().checked_div(len).unwrap_or(0);
    if batch == 0 || windows == 0 {
        return Err(invalid(
            "window_batches",
            format!(
                "{} ids do not make a batch of {batch} windows of {len} (need at least {len} ids and a batch of at least 1)",
                ids.len()
            ),
        ));
    }
    Ok(move |s: usize| {
        let rows: Vec<Vec<u32>> = (0..batch)
            .map(|r| {
                let w = (s * batch + r) % windows;
                ids[w * len..(w + 1) * len].to_vec()
            })
            .collect();
        IdBatch::from_rows(&rows)
    })
}

/// The tokenizer of a model directory.
#[derive(Debug)]
pub enum TextTokenizer {
    /// GPT-2's byte-level BPE.
    Bpe(BpeTokenizer),
    /// Characters (a `shakespeare` example checkpoint).
    Char(CharTokenizer),
}

impl TextTokenizer {
    /// The tokenizer for the model in `dir`: a `shakespeare` checkpoint's character
    /// `vocab.json` (`{"chars": ...}`); else `vocab.json` + `merges.txt` from `tokenizer_dir`
    /// when given, from `dir` when it has them, or GPT-2's from
    /// [`BpeTokenizer::default_dir`].
    pub fn for_model(dir: &Path, tokenizer_dir: Option<&Path>) -> Result<TextTokenizer> {
        if let Some(t) = tokenizer_dir {
            return Ok(TextTokenizer::Bpe(BpeTokenizer::from_dir(t)?));
        }
        let vocab = dir.join("vocab.json");
        if let Ok(text) = std::fs::read_to_string(&vocab)
            && let Some(chars) = CharTokenizer::from_vocab_json(&text)
        {
            return Ok(TextTokenizer::Char(chars.map_err(|e| {
                invalid(
                    "TextTokenizer",
                    format!("{}: character vocabulary: {e}", vocab.display()),
                )
            })?));
        }
        if vocab.exists() && dir.join("merges.txt").exists() {
            return Ok(TextTokenizer::Bpe(BpeTokenizer::from_dir(dir)?));
        }
        Ok(TextTokenizer::Bpe(BpeTokenizer::gpt2()?))
    }

    /// One past the largest id.
    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Bpe(t) => t.vocab_size(),
            TextTokenizer::Char(t) => t.vocab_size(),
        }
    }

    /// The end-of-text id, if the tokenizer has one.
    pub fn end_of_text(&self) -> Option<u32> {
        match self {
            TextTokenizer::Bpe(t) => t.end_of_text(),
            TextTokenizer::Char(_) => None,
        }
    }

    /// Error unless every id this tokenizer makes is inside a model vocabulary of `vocab_size`.
    pub fn check_fits(&self, vocab_size: usize) -> Result<()> {
        if self.vocab_size() > vocab_size {
            return Err(invalid(
                "TextTokenizer",
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary has {vocab_size}: \
                     they do not belong together (pass token ids instead, or the model's tokenizer)",
                    self.vocab_size()
                ),
            ));
        }
        Ok(())
    }

    /// Ids of `text` (a character outside a character vocabulary is an error).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextTokenizer::Bpe(t) => Ok(t.encode(text)),
            TextTokenizer::Char(t) => t.encode(text),
        }
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextTokenizer::Bpe(t) => t.decode(ids),
            TextTokenizer::Char(t) => t.decode(ids),
        }
    }

    /// The UTF-8 bytes of one token (for [`StreamDecoder`](super::StreamDecoder)).
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        match self {
            TextTokenizer::Bpe(t) => t.decode_bytes(&[id]),
            TextTokenizer::Char(t) => Ok(t.decode(&[id])?.into_bytes()),
        }
    }
}

/// [`generate_batch`](crate::generate::generate_batch) that ends a sequence at any of `stops`
/// (a tokenizer's end-of-text and end-of-turn ids, [`HfTokenizer::stop_token_ids`]): the stop
/// token is neither output nor passed to `on_token`, and [`Generation::stopped`] says which
/// sequences met one, as `opts.stop_token` does for a single id (which this ignores).
///
/// [`HfTokenizer::stop_token_ids`]: super::HfTokenizer::stop_token_ids
/// [`Generation::stopped`]: crate::generate::Generation::stopped
pub fn generate_until_stop<M: crate::generate::CausalLm + ?Sized>(
    model: &M,
    prompts: &[Vec<u32>],
    opts: &crate::generate::GenerateOptions,
    stops: &[u32],
    samplers: &mut [crate::generate::Sampler],
    on_token: &mut dyn FnMut(usize, u32) -> Result<bool>,
) -> Result<crate::generate::Generation> {
    let opts = crate::generate::GenerateOptions {
        stop_token: None,
        ..opts.clone()
    };
    let mut out =
        crate::generate::generate_batch(model, prompts, &opts, samplers, &mut |i, id| {
            if stops.contains(&id) {
                return Ok(false);
            }
            on_token(i, id)
        })?;
    for (tokens, stopped) in out.tokens.iter_mut().zip(out.stopped.iter_mut()) {
        if tokens.last().is_some_and(|id| stops.contains(id)) {
            tokens.pop();
            *stopped = true;
        }
    }
    Ok(out)
}

/// Error unless every id `tokenizer` makes is inside `model`'s vocabulary: a tokenizer from
/// another model would feed ids past the embedding.
#[cfg(not(target_arch = "wasm32"))]
pub fn check_tokenizer_fits(
    tokenizer: &super::HfTokenizer,
    model: &(impl LanguageModel + ?Sized),
) -> Result<()> {
    let (have, vocab) = (tokenizer.vocab_size(), model.vocab_size());
    if have > vocab {
        return Err(invalid(
            "check_tokenizer_fits",
            format!(
                "the tokenizer has {have} tokens but the model's vocabulary has {vocab}: \
                 they do not belong together (pass token ids instead, or the model's tokenizer)"
            ),
        ));
    }
    Ok(())
}
