//! Sampling next tokens from logits: greedy, temperature, top-k, top-p, repetition penalty,
//! all seeded so the same seed gives the same text.

use crate::error::{Error, Result};

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `p` (nucleus sampling).
    pub top_p: Option<f32>,
    /// Divide positive logits (multiply negative ones) of tokens already seen by this (1 = off).
    pub repetition_penalty: f32,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Check the values make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidArgument {
                op: "sampling",
                message: m,
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p {p} must be in (0, 1]"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty {} must be positive",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A seeded sampler (SplitMix64 stream).
pub struct Sampler {
    cfg: SamplingConfig,
    rng: crate::rng::SplitMix64,
}

impl Sampler {
    /// A sampler for `cfg` (validated).
    pub fn new(cfg: SamplingConfig) -> Result<Sampler> {
        cfg.validate()?;
        let rng = crate::rng::SplitMix64::new(cfg.seed ^ 0x5DEE_CE66_D1CE_4E5B);
        Ok(Sampler { cfg, rng })
    }

    /// One sampler per sequence of a batch of `n`: sequence `i` draws from seed
    /// `cfg.seed + i`, so sequence 0 samples exactly as `Sampler::new(cfg)` would alone.
    pub fn batch(cfg: &SamplingConfig, n: usize) -> Result<Vec<Sampler>> {
        (0..n)
            .map(|i| {
                Sampler::new(SamplingConfig {
                    seed: cfg.seed.wrapping_add(i as u64),
                    ..cfg.clone()
                })
            })
            .collect()
    }

    /// The settings.
    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    fn next_f64(&mut self) -> f64 {
        self.rng.next_f64()
    }

    /// Pick a token from one row of logits; `history` feeds the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidArgument {
                op: "sample",
                message: "no logits".into(),
            });
        }
        let mut l: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        if self.cfg.repetition_penalty != 1.0 {
            let rp = f64::from(self.cfg.repetition_penalty);
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v > 0.0 { *v / rp } else { *v * rp };
                }
            }
        }
        if l.iter().any(|v| v.is_nan()) {
            return Err(Error::InvalidArgument {
                op: "sample",
                message: "logits contain NaN".into(),
            });
        }
        // Ties go to the lowest id, so greedy decoding is deterministic.
        let argmax = l
            .iter()
            .enumerate()
            .fold(0, |best, (i, &v)| if v > l[best] { i } else { best });
        if self.cfg.temperature == 0.0 {
            return Ok(argmax as u32);
        }
        let t = f64::from(self.cfg.temperature);
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        if let Some(k) = self.cfg.top_k {
            idx.truncate(k.min(idx.len()));
        }
        let m = l[idx[0]];
        let mut p: Vec<f64> = idx.iter().map(|&i| ((l[i] - m) / t).exp()).collect();
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= z);
        if let Some(top_p) = self.cfg.top_p {
            let mut acc = 0.0;
            let mut keep = p.len();
            for (j, v) in p.iter().enumerate() {
                acc += v;
                if acc >= f64::from(top_p) {
                    keep = j + 1;
                    break;
                }
            }
            idx.truncate(keep);
            p.truncate(keep);
            let z: f64 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= z);
        }
        let u = self.next_f64();
        let mut acc = 0.0;
        for (j, v) in p.iter().enumerate() {
            acc += v;
            if u < acc {
                return Ok(idx[j] as u32);
            }
        }
        Ok(*idx.last().expect("at least one candidate") as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_topk_topp_and_seeds() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, -2.0];
        let mut g = Sampler::new(SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            g.sample(&logits, &[]).unwrap(),
            1,
            "ties go to the lowest id"
        );
        let mut k1 = Sampler::new(SamplingConfig {
            top_k: Some(1),
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(k1.sample(&logits, &[]).unwrap(), 1);
        }
        let mut p = Sampler::new(SamplingConfig {
            top_p: Some(0.5),
            seed: 3,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..50 {
            assert!([1, 3].contains(&p.sample(&logits, &[]).unwrap()));
        }
        let draw = |seed| {
            let mut s = Sampler::new(SamplingConfig {
                seed,
                ..Default::default()
            })
            .unwrap();
            (0..64)
                .map(|_| s.sample(&logits, &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut rp = Sampler::new(SamplingConfig {
            temperature: 0.0,
            repetition_penalty: 10.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            rp.sample(&logits, &[1]).unwrap(),
            3,
            "the penalty moves greedy off a seen token"
        );
        assert!(
            Sampler::new(SamplingConfig {
                top_p: Some(0.0),
                ..Default::default()
            })
            .is_err()
        );
        assert!(g.sample(&[f32::NAN], &[]).is_err());
    }
}
