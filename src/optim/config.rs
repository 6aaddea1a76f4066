//! What an optimizer does: the update rule ([`Algorithm`]), the learning-rate schedule
//! ([`LrSchedule`]) and the configuration that holds them ([`OptimConfig`]), with its checks.

use crate::error::{Error, Result};

/// The update rule and its constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Algorithm {
    /// Stochastic gradient descent, optionally with (Nesterov) momentum.
    Sgd {
        /// Momentum factor (0: plain SGD, no state).
        momentum: f64,
        /// Dampening of the gradient added to the momentum buffer.
        dampening: f64,
        /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
        nesterov: bool,
    },
    /// Adam; weight decay is L2 added to the gradient.
    Adam {
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the denominator.
        eps: f64,
    },
    /// AdamW: Adam with weight decay applied to the weights directly (decoupled).
    AdamW {
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the denominator.
        eps: f64,
    },
}

impl Algorithm {
    /// Short name (`sgd`, `adam`, `adamw`), also written into checkpoints.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Sgd { .. } => "sgd",
            Algorithm::Adam { .. } => "adam",
            Algorithm::AdamW { .. } => "adamw",
        }
    }
}

/// Learning rate as a function of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up from `base / warmup_steps` to `base` over `warmup_steps`, then cosine decay
    /// to `min_lr` at `total_steps`, constant `min_lr` after.
    WarmupCosine {
        /// Steps of linear warm-up.
        warmup_steps: u64,
        /// Step at which the cosine reaches `min_lr`.
        total_steps: u64,
        /// Final learning rate.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// Linear warm-up then cosine decay (see [`LrSchedule::WarmupCosine`]).
    pub fn warmup_cosine(warmup_steps: u64, total_steps: u64, min_lr: f64) -> Self {
        LrSchedule::WarmupCosine {
            warmup_steps,
            total_steps,
            min_lr,
        }
    }

    /// The rate for update number `step` (0 for the first update) given the base rate.
    pub fn lr_at(&self, base: f64, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::WarmupCosine {
                warmup_steps,
                total_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                if step >= total_steps {
                    return min_lr;
                }
                let span = (total_steps - warmup_steps).max(1) as f64;
                let progress = (step - warmup_steps) as f64 / span;
                min_lr + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (base - min_lr)
            }
        }
    }
}

/// What an [`Optimizer`](super::Optimizer) does: the rule, the base rate, default weight decay, clipping, schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    /// Update rule.
    pub algorithm: Algorithm,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay of groups that do not set their own.
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm before the update (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
}

impl OptimConfig {
    /// Plain SGD (no momentum, no weight decay).
    pub fn sgd(lr: f64) -> Self {
        Self::with(
            Algorithm::Sgd {
                momentum: 0.0,
                dampening: 0.0,
                nesterov: false,
            },
            lr,
            0.0,
        )
    }
    /// Adam with PyTorch's defaults (betas 0.9, 0.999; eps 1e-8; no weight decay).
    pub fn adam(lr: f64) -> Self {
        Self::with(
            Algorithm::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            lr,
            0.0,
        )
    }
    /// AdamW with PyTorch's defaults (betas 0.9, 0.999; eps 1e-8; weight decay 0.01).
    pub fn adamw(lr: f64) -> Self {
        Self::with(
            Algorithm::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            lr,
            0.01,
        )
    }
    fn with(algorithm: Algorithm, lr: f64, weight_decay: f64) -> Self {
        OptimConfig {
            algorithm,
            lr,
            weight_decay,
            max_grad_norm: None,
            schedule: LrSchedule::Constant,
        }
    }
    /// SGD momentum (ignored by Adam).
    pub fn momentum(mut self, m: f64) -> Self {
        if let Algorithm::Sgd { momentum, .. } = &mut self.algorithm {
            *momentum = m;
        }
        self
    }
    /// SGD dampening (ignored by Adam).
    pub fn dampening(mut self, d: f64) -> Self {
        if let Algorithm::Sgd { dampening, .. } = &mut self.algorithm {
            *dampening = d;
        }
        self
    }
    /// SGD Nesterov momentum (ignored by Adam).
    pub fn nesterov(mut self, on: bool) -> Self {
        if let Algorithm::Sgd { nesterov, .. } = &mut self.algorithm {
            *nesterov = on;
        }
        self
    }
    /// Adam betas (ignored by SGD).
    pub fn betas(mut self, b1: f64, b2: f64) -> Self {
        if let Algorithm::Adam { beta1, beta2, .. } | Algorithm::AdamW { beta1, beta2, .. } =
            &mut self.algorithm
        {
            *beta1 = b1;
            *beta2 = b2;
        }
        self
    }
    /// Adam epsilon (ignored by SGD).
    pub fn eps(mut self, e: f64) -> Self {
        if let Algorithm::Adam { eps, .. } | Algorithm::AdamW { eps, .. } = &mut self.algorithm {
            *eps = e;
        }
        self
    }
    /// Default weight decay (groups may override it).
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Clip the global gradient norm to `max` before each update.
    pub fn clip_grad_norm(mut self, max: f64) -> Self {
        self.max_grad_norm = Some(max);
        self
    }
    /// Learning-rate schedule.
    pub fn schedule(mut self, s: LrSchedule) -> Self {
        self.schedule = s;
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::InvalidArgument {
                op: "Optimizer::new",
                message,
            })
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("learning rate {} must be finite and >= 0", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        if let Some(m) = self.max_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            return bad(format!("max gradient norm {m} must be finite and > 0"));
        }
        match self.algorithm {
            Algorithm::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                if !(0.0..1.0 + f64::EPSILON).contains(&momentum) {
                    return bad(format!("momentum {momentum} must be in [0, 1]"));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return bad("Nesterov momentum needs momentum > 0 and dampening 0".into());
                }
            }
            Algorithm::Adam { beta1, beta2, eps } | Algorithm::AdamW { beta1, beta2, eps } => {
                for (n, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&b) {
                        return bad(format!("{n} {b} must be in [0, 1)"));
                    }
                }
                if !(eps.is_finite() && eps >= 0.0) {
                    return bad(format!("eps {eps} must be finite and >= 0"));
                }
            }
        }
        if let LrSchedule::WarmupCosine {
            warmup_steps,
            total_steps,
            min_lr,
        } = self.schedule
            && (warmup_steps > total_steps || !(min_lr.is_finite() && min_lr >= 0.0))
        {
            return bad(format!(
                "warm-up/cosine schedule needs warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) and a finite min_lr >= 0 ({min_lr})"
            ));
        }
        Ok(())
    }
}
