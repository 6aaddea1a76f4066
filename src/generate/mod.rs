//! Text generation for every model: the KV-cached loop (batched prefill, one position per
//! decode step, context rebuilds), its options and statistics, and next-token
//! [`sampling`] beside it.
//!
//! A model takes part by implementing [`CausalLm`]: its sizes, a cache for a batch, a prefill
//! and a decode step over that cache, and an uncached last-position forward (the reference
//! the cached loop is tested against). The loop, the checks of the prompts and the context
//! policy live here once, whatever the model family.

pub mod sampling;

pub use sampling::{Sampler, SamplingConfig};

use crate::Tensor;
use crate::error::{Error, Result};

/// A causal language model the generation loop can drive.
///
/// Logits come back to the host row-major, V floats per sequence. Ids handed to these methods
/// have been checked against [`vocab_size`](Self::vocab_size) and fit
/// [`max_context`](Self::max_context) positions.
pub trait CausalLm {
    /// The model's key/value cache for a batch of sequences (e.g. one [`KvCache`] per layer).
    ///
    /// [`KvCache`]: crate::KvCache
    type Cache;

    /// Vocabulary size V.
    fn vocab_size(&self) -> usize;

    /// Longest context in positions.
    fn max_context(&self) -> usize;

    /// An empty cache for `batch` sequences of up to `capacity` positions.
    fn new_cache(&self, batch: usize, capacity: usize) -> Result<Self::Cache>;

    /// Reset `cache` and run `ids` (B sequences of T tokens, positions 0..T) through the
    /// model, filling it; returns the last position's logits (B·V).
    fn prefill(&self, ids: &[Vec<u32>], cache: &mut Self::Cache) -> Result<Vec<f32>>;

    /// Feed one token per sequence at position `pos` (the cache holds positions 0..pos);
    /// returns the logits (B·V).
    fn decode_step(&self, ids: &[u32], pos: usize, cache: &mut Self::Cache) -> Result<Vec<f32>>;

    /// The logits (V) of the last position of `ids` (one sequence, positions 0..T), computed
    /// without a cache: the reference for [`generate_full_context`].
    fn last_logits(&self, ids: &[u32]) -> Result<Vec<f32>>;
}

/// Settings of [`generate_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    /// New tokens per prompt, at most.
    pub max_new_tokens: usize,
    /// End a sequence when it samples this token (GPT-2's `<|endoftext|>`: 50256); the token
    /// itself is not output.
    pub stop_token: Option<u32>,
    /// When the sequences fill the context, rebuild the caches from this many last tokens
    /// (default: three quarters of the context, so a rebuild comes every quarter context).
    /// `Some(max_context)` rebuilds at every token past the context: the same tokens as
    /// [`generate_full_context`], at the same cost.
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

/// What [`generate_batch`] produced, with timings.
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

/// The last position of each of `b` sequences of `t` in `x` (B, T, C): (B, C). Prefill and
/// `last_logits` send only these rows through the head, and only they come back to the host.
pub(crate) fn last_positions(x: &Tensor, b: usize, t: usize) -> Result<Tensor> {
    let c = x.shape()[x.shape().len() - 1];
    let last: Vec<u32> = (0..b).map(|i| (i * t + t - 1) as u32).collect();
    let last = Tensor::from_u32(x.device(), &last, &[b])?;
    x.reshape(&[b * t, c])?.gather_rows(&last)
}

/// Continue `prompt` by up to `max_new` tokens, calling `on_token` with each new token as it
/// is produced (return `false` to stop). KV-cached: one prefill of the prompt, then one
/// position per token (see [`generate_batch`], which this calls with a batch of one, no stop
/// token and the default context policy). A prompt longer than the context is cropped from
/// the left with a warning. Runs in inference mode.
pub fn generate<M: CausalLm + ?Sized>(
    model: &M,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    let opts = GenerateOptions {
        max_new_tokens: max_new,
        ..Default::default()
    };
    let out = generate_batch(
        model,
        &[prompt.to_vec()],
        &opts,
        std::slice::from_mut(sampler),
        &mut |_, id| on_token(id),
    )?;
    Ok(out.tokens.into_iter().next().unwrap_or_default())
}

/// The uncached reference for [`generate`]: every token re-runs the whole context (the last
/// `max_context` tokens) through [`CausalLm::last_logits`]. Quadratic in the length; kept for
/// tests and comparisons.
pub fn generate_full_context<M: CausalLm + ?Sized>(
    model: &M,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument {
            op: "generate_full_context",
            message: "the prompt is empty".into(),
        });
    }
    let _g = crate::no_grad();
    let mut ids = prompt.to_vec();
    for _ in 0..max_new {
        let start = ids.len().saturating_sub(model.max_context());
        let row = model.last_logits(&ids[start..])?;
        let next = sampler.sample(&row, &ids)?;
        ids.push(next);
        if !on_token(next)? {
            break;
        }
    }
    Ok(ids[prompt.len()..].to_vec())
}

/// Generate from a batch of prompts at once over the model's KV cache.
///
/// **How.** The prompts need not have the same length, and nothing is padded: all sequences
/// advance through the same positions, so the caches stay aligned without an attention mask.
/// The first `min(prompt lengths)` positions of every prompt go through one batched *prefill*
/// (full causal attention over those positions, keys and values written to the cache). Then
/// each *decode* step feeds one token per sequence at the next position and attends to the
/// cache: a sequence whose prompt is longer still feeds its own prompt tokens (its sampled
/// token is ignored, as in Meta's LLaMA reference code) until its prompt is used up. So every
/// sequence sees exactly its own tokens, at the positions it would have alone; a long prompt
/// next to a short one costs decode steps instead of prefill. Only the last position's logits
/// (B, V) are read back per step.
///
/// **Sampling.** `samplers[i]` picks the tokens of prompt `i` (one per prompt, see
/// [`Sampler::batch`]); its repetition penalty sees the prompt and the tokens so far.
/// `on_token(i, id)` streams each new token of prompt `i` as soon as it is sampled; returning
/// `false` ends that sequence. A sequence also ends after `max_new_tokens` or at `stop_token`
/// (which ends it without being output or streamed). Finished sequences keep being fed (their
/// outputs are discarded) until all are done.
///
/// **Context.** A prompt longer than the context is cropped to its last `max_context` tokens,
/// with a warning on stderr and the count in [`Generation::truncated`]. When the sequences
/// reach `max_context` positions, the cache is rebuilt by one prefill of each sequence's last
/// [`context_keep`](GenerateOptions::context_keep) tokens, and decoding goes on from there.
///
/// Errors (never panics): no prompts, an empty prompt, a token id past the vocabulary, a
/// sampler count that differs from the prompt count.
pub fn generate_batch<M: CausalLm + ?Sized>(
    model: &M,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    samplers: &mut [Sampler],
    on_token: &mut dyn FnMut(usize, u32) -> Result<bool>,
) -> Result<Generation> {
    const OP: &str = "generate";
    let bad = |message: String| Err(Error::InvalidArgument { op: OP, message });
    let (bs, vocab) = (model.max_context(), model.vocab_size());
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
        // Checked before cropping: an id past the vocabulary is an error wherever it is.
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
    // Positions ever fed: the last sequence's prompt plus all but its last new token.
    let cap = (pmax + max_new - 1).min(bs).max(p0);
    let mut cache = model.new_cache(b, cap)?;
    // The tokens fed at positions 0..pos, per sequence (equal lengths; for rebuilds).
    let mut fed: Vec<Vec<u32>> = seqs.iter().map(|s| s[..p0].to_vec()).collect();
    let t0 = crate::time::Instant::now();
    let mut logits = model.prefill(&fed, &mut cache)?;
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
            // The context is full: rebuild the cache from the last `keep` tokens.
            let window: Vec<Vec<u32>> = fed.iter().map(|f| f[f.len() - keep..].to_vec()).collect();
            logits = model.prefill(&window, &mut cache)?;
            out.prefill_tokens += b * keep;
            out.prefill_secs += t.elapsed().as_secs_f64();
            out.context_rebuilds += 1;
            pos = keep;
        } else {
            logits = model.decode_step(&feed, pos, &mut cache)?;
            out.decode_tokens += b;
            out.decode_secs += t.elapsed().as_secs_f64();
            pos += 1;
        }
    }
    Ok(out)
}
