//! The size of a GPT and its checks.

use crate::error::{Error, Result};

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
