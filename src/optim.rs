//! Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW, with global-norm gradient
//! clipping, learning-rate schedules and parameter groups.
//!
//! How a step touches the GPU:
//! - **In place.** Parameters are ordinary tensors made with [`Tensor::with_grad`]; a module and
//!   the optimizer hold clones that share one buffer. The update kernel binds that buffer
//!   read-write and overwrites it, so after [`Optimizer::step`] every holder of the tensor
//!   (the model, the optimizer, a user's copy) sees the new values. Nothing is reallocated and
//!   the tensors keep their identity, so the next `backward()` keys gradients the same way.
//! - **Fused.** The optimizer state (Adam's two moments, SGD's momentum) of *all* parameters
//!   lives in flat buffers with an offset per tensor. One dispatch binds up to
//!   [`TENSORS_PER_DISPATCH`] parameter/gradient pairs plus the flat state and updates every
//!   element of all of them; a model with more tensors takes `ceil(tensors / 8)` dispatches
//!   (the seed MLP's six tensors: one dispatch per step).
//! - **No readback.** Gradient clipping computes the global norm on the device (partial sums of
//!   squares, one finalising workgroup) and the update kernels read the coefficient from there.
//!   The step counter, bias corrections and schedule are host values passed as uniforms.
//!
//! The arithmetic follows PyTorch's single-tensor `torch.optim.SGD`, `Adam`, `AdamW` and
//! `torch.nn.utils.clip_grad_norm_` operation for operation in f32, with the scalar
//! hyperparameters in f64 (as Python floats) until they reach the kernel.

use std::sync::Arc;

use crate::autograd::Gradients;
use crate::error::{Error, Result};
use crate::ops::optim::launch as kernel;
use crate::runtime::{Device, Storage};
use crate::tensor::{DType, Tensor};

/// Parameter tensors one fused dispatch updates at most (where an adapter allows 19 storage
/// buffers per shader stage; under WebGPU's default limit of 8, two).
pub const TENSORS_PER_DISPATCH: usize = kernel::SLOTS;

/// Parameter tensors one fused dispatch updates on `dev` (its storage-buffer limit decides).
pub fn tensors_per_dispatch(dev: &Device) -> usize {
    kernel::slots_for(dev)
}

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

/// What an [`Optimizer`] does: the rule, the base rate, default weight decay, clipping, schedule.
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

    fn validate(&self) -> Result<()> {
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

/// Parameters that share settings: a weight decay (or the optimizer's default) and a
/// learning-rate multiplier.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// Named parameters, e.g. from [`Module::parameters`](crate::nn::Module::parameters).
    pub params: Vec<(String, Tensor)>,
    /// Weight decay of this group; `None` uses the optimizer's.
    pub weight_decay: Option<f64>,
    /// Multiplies the (scheduled) learning rate for this group.
    pub lr_scale: f64,
}

impl ParamGroup {
    /// A group with the optimizer's weight decay and learning rate.
    pub fn new(params: Vec<(String, Tensor)>) -> Self {
        ParamGroup {
            params,
            weight_decay: None,
            lr_scale: 1.0,
        }
    }
    /// This group's weight decay.
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = Some(wd);
        self
    }
    /// This group's learning-rate multiplier.
    pub fn lr_scale(mut self, s: f64) -> Self {
        self.lr_scale = s;
        self
    }
}

/// The usual split: matrices (weights, embeddings: rank >= 2) decay with `weight_decay`,
/// vectors (biases, LayerNorm gains and shifts: rank <= 1) do not.
pub fn decay_groups(params: Vec<(String, Tensor)>, weight_decay: f64) -> Vec<ParamGroup> {
    let (decay, no_decay): (Vec<_>, Vec<_>) = params.into_iter().partition(|(_, t)| t.rank() >= 2);
    vec![
        ParamGroup::new(decay).weight_decay(weight_decay),
        ParamGroup::new(no_decay).weight_decay(0.0),
    ]
}

/// The kernel's view of one live parameter: buffers and this step's scalars (f64 on the host).
fn make_slot<'a>(
    entries: &'a [Entry],
    (i, g): &'a (usize, Tensor),
    lr: f64,
    beta1_t: f64,
) -> kernel::Slot<'a> {
    let e = &entries[*i];
    let lr_e = lr * e.lr_scale;
    kernel::Slot {
        param: &e.param.storage,
        grad: &g.storage,
        off: e.off,
        len: e.len,
        lr: lr_e as f32,
        wd: e.wd as f32,
        step_size: (lr_e / (1.0 - beta1_t)) as f32,
        decay: (1.0 - lr_e * e.wd) as f32,
    }
}

/// A state tensor on the host: (`kind.parameter`, values, shape).
pub(crate) type StateArray = (String, Vec<f32>, Vec<usize>);

/// One parameter tensor and where its state lives.
struct Entry {
    name: String,
    param: Tensor,
    bank: usize,
    off: u32,
    len: u32,
    wd: f64,
    lr_scale: f64,
}

/// Flat state of the tensors assigned to it (each within one storage binding).
struct Bank {
    m: Tensor,
    v: Tensor,
    len: usize,
}

/// An optimizer over a fixed set of parameters. See the [module docs](self) for how a step
/// runs on the GPU.
///
/// ```no_run
/// # use portagrad::{Device, Tensor, optim::{Optimizer, OptimConfig}};
/// # fn main() -> portagrad::Result<()> {
/// let dev = Device::new()?;
/// let w = Tensor::rand_uniform(&dev, &[3], -1.0, 1.0, 0)?.with_grad();
/// let mut opt = Optimizer::new(OptimConfig::adam(1e-2), vec![("w".into(), w.clone())])?;
/// for _ in 0..100 {
///     let loss = w.mul(&w)?.sum()?;
///     opt.step(&loss.backward()?)?; // w now holds the updated values
/// }
/// # Ok(()) }
/// ```
pub struct Optimizer {
    dev: Device,
    cfg: OptimConfig,
    entries: Vec<Entry>,
    banks: Vec<Bank>,
    step: u64,
    /// (2 + partials): clip coefficient, global norm, partial sums of squares.
    aux: Tensor,
    chunk: u32,
    fill_params: Vec<Tensor>,
    fill_grad: Tensor,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Optimizer({}, lr {}, {} tensors, {} elements, step {})",
            self.cfg.algorithm.name(),
            self.cfg.lr,
            self.entries.len(),
            self.num_elements(),
            self.step
        )
    }
}

impl Optimizer {
    /// An optimizer over `params` (one group).
    pub fn new(cfg: OptimConfig, params: Vec<(String, Tensor)>) -> Result<Optimizer> {
        Self::with_groups(cfg, vec![ParamGroup::new(params)])
    }

    /// Adam with PyTorch's defaults at learning rate `lr`.
    pub fn adam(params: Vec<(String, Tensor)>, lr: f64) -> Result<Optimizer> {
        Self::new(OptimConfig::adam(lr), params)
    }

    /// AdamW at `lr` decaying every parameter by `weight_decay`, as
    /// `torch.optim.AdamW(params, lr, weight_decay=...)` does. To leave biases and norms
    /// undecayed, pass [`decay_groups`] to [`with_groups`](Self::with_groups).
    pub fn adamw(params: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> Result<Optimizer> {
        Self::new(OptimConfig::adamw(lr).weight_decay(weight_decay), params)
    }

    /// Plain SGD at `lr`.
    pub fn sgd(params: Vec<(String, Tensor)>, lr: f64) -> Result<Optimizer> {
        Self::new(OptimConfig::sgd(lr), params)
    }

    /// An optimizer over parameter groups with their own weight decay and rate multipliers.
    pub fn with_groups(cfg: OptimConfig, groups: Vec<ParamGroup>) -> Result<Optimizer> {
        cfg.validate()?;
        let mut flat: Vec<(String, Tensor, f64, f64)> = Vec::new();
        let mut seen: Vec<(Arc<Storage>, String)> = Vec::new();
        for g in groups {
            let wd = g.weight_decay.unwrap_or(cfg.weight_decay);
            if !(wd.is_finite() && wd >= 0.0 && g.lr_scale.is_finite() && g.lr_scale >= 0.0) {
                return Err(Error::InvalidArgument {
                    op: "Optimizer::new",
                    message: format!(
                        "group weight decay {wd} and lr scale {} must be finite and >= 0",
                        g.lr_scale
                    ),
                });
            }
            for (name, t) in g.params {
                t.expect_dtype("Optimizer::new", DType::F32)?;
                if !t.requires_grad() || t.node.is_some() {
                    return Err(Error::InvalidArgument {
                        op: "Optimizer::new",
                        message: format!(
                            "{name} (shape {:?}) is not a parameter: make it with .with_grad()",
                            t.shape()
                        ),
                    });
                }
                // Tied weights listed twice are updated once.
                if seen.iter().any(|(s, _)| Arc::ptr_eq(s, &t.storage)) {
                    continue;
                }
                seen.push((t.storage.clone(), name.clone()));
                flat.push((name, t, wd, g.lr_scale));
            }
        }
        let Some(first) = flat.first() else {
            return Err(Error::InvalidArgument {
                op: "Optimizer::new",
                message: "no parameters to optimize".into(),
            });
        };
        let dev = first.1.dev.clone();
        if flat.iter().any(|(_, t, ..)| !t.storage.same_device(&dev)) {
            return Err(Error::DeviceMismatch {
                op: "Optimizer::new",
            });
        }
        let (need_m, need_v) = match cfg.algorithm {
            Algorithm::Sgd { momentum, .. } => (momentum != 0.0, false),
            _ => (true, true),
        };
        // Assign tensors to banks: each bank's state fits one storage binding and u32 offsets.
        let limit = ((dev.info().max_storage_binding / 4).min(u64::from(u32::MAX) / 2)) as usize;
        let mut entries = Vec::with_capacity(flat.len());
        let mut bank_lens = vec![0usize];
        for (name, t, wd, lr_scale) in flat {
            let len = t.numel();
            if len > limit {
                return Err(Error::TooLarge {
                    op: "Optimizer::new",
                    shape: t.shape().to_vec(),
                    bytes: 4 * len as u64,
                    limit: 4 * limit as u64,
                    which: "max storage binding",
                });
            }
            if bank_lens.last().copied().unwrap_or(0) + len > limit {
                bank_lens.push(0);
            }
            let bank = bank_lens.len() - 1;
            let off = bank_lens[bank] as u32;
            bank_lens[bank] += len;
            entries.push(Entry {
                name,
                param: t,
                bank,
                off,
                len: len as u32,
                wd,
                lr_scale,
            });
        }
        let dummy = |n: usize| Tensor::zeros(&dev, &[n]);
        let mut banks = Vec::with_capacity(bank_lens.len());
        for &len in &bank_lens {
            banks.push(Bank {
                m: if need_m { dummy(len)? } else { dummy(1)? },
                v: if need_v { dummy(len)? } else { dummy(1)? },
                len,
            });
        }
        let total: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
        // Clipping: at most ~1024 partial sums (plus one per tensor) whatever the model size.
        // Each workgroup sums at least 16 elements per invocation (workgroups and their
        // barriers are what costs on CPU adapters), and there are at most ~1024 partials
        // (plus one per tensor) whatever the model size. An invocation loops chunk / WG times:
        // under llvmpipe's cap of 65,535 loop iterations up to ~17e9 parameters.
        let chunk = (total.div_ceil(kernel::WG as u64 * 1024).max(16) * kernel::WG as u64)
            .min(u64::from(u32::MAX / 2)) as u32;
        let lens: Vec<u32> = entries.iter().map(|e| e.len).collect();
        let aux = Tensor::zeros(&dev, &[2 + kernel::partials(&lens, chunk) as usize])?;
        let fill_params = (0..kernel::SLOTS)
            .map(|_| dummy(1))
            .collect::<Result<Vec<_>>>()?;
        let fill_grad = dummy(1)?;
        Ok(Optimizer {
            dev,
            cfg,
            entries,
            banks,
            step: 0,
            aux,
            chunk,
            fill_params,
            fill_grad,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Updates done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The scheduled learning rate of the next update (before group multipliers).
    pub fn lr(&self) -> f64 {
        self.cfg.schedule.lr_at(self.cfg.lr, self.step)
    }

    /// Change the base learning rate (the schedule scales it).
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        let mut c = self.cfg;
        c.lr = lr;
        c.validate()?;
        self.cfg = c;
        Ok(())
    }

    /// Change the schedule.
    pub fn set_schedule(&mut self, s: LrSchedule) -> Result<()> {
        let mut c = self.cfg;
        c.schedule = s;
        c.validate()?;
        self.cfg = c;
        Ok(())
    }

    /// Turn global-norm clipping on (`Some(max)`) or off.
    pub fn set_clip_grad_norm(&mut self, max: Option<f64>) -> Result<()> {
        let mut c = self.cfg;
        c.max_grad_norm = max;
        c.validate()?;
        self.cfg = c;
        Ok(())
    }

    /// The parameters, by name, in the order the optimizer keeps them.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.param.clone()))
            .collect()
    }

    /// Total parameter elements.
    pub fn num_elements(&self) -> usize {
        self.entries.iter().map(|e| e.len as usize).sum()
    }

    /// The global gradient norm (before clipping) of the last step, when clipping is on.
    /// Reads it back from the device.
    pub fn last_grad_norm(&self) -> Result<Option<f32>> {
        if self.cfg.max_grad_norm.is_none() || self.step == 0 {
            return Ok(None);
        }
        let bytes = self.dev.read(&self.aux.storage, 8)?;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        Ok(Some(v[1]))
    }

    /// One update of every parameter that has a gradient in `grads` (from `loss.backward()`);
    /// parameters without one are left as they are. Records the work; nothing is read back.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        let mut live: Vec<(usize, Tensor)> = Vec::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            let Some(g) = grads.get(&e.param) else {
                continue;
            };
            if g.shape() != e.param.shape() || g.dtype() != DType::F32 {
                return Err(Error::Shape {
                    op: "Optimizer::step",
                    message: format!(
                        "gradient of {} has shape {:?} ({}), the parameter {:?}",
                        e.name,
                        g.shape(),
                        g.dtype().name(),
                        e.param.shape()
                    ),
                });
            }
            // A gradient that shares a parameter's buffer cannot be bound next to it.
            let g = if self
                .entries
                .iter()
                .any(|o| Arc::ptr_eq(&o.param.storage, &g.storage))
            {
                let _ng = crate::autograd::no_grad();
                g.mul_scalar(1.0)?
            } else {
                g.clone()
            };
            live.push((i, g));
        }
        if live.is_empty() {
            return Err(Error::InvalidArgument {
                op: "Optimizer::step",
                message: format!(
                    "none of the optimizer's {} parameters ({}, ...) has a gradient: was the loss computed from them?",
                    self.entries.len(),
                    self.entries[0].name
                ),
            });
        }
        let t = self.step + 1;
        let lr = self.lr();
        let clip = self.cfg.max_grad_norm;
        let fill_refs: Vec<&Storage> = self.fill_params.iter().map(|t| &*t.storage).collect();
        let fill_arr: [&Storage; kernel::SLOTS] = std::array::from_fn(|i| fill_refs[i]);
        let fill = kernel::Fillers {
            param: &fill_arr,
            grad: &self.fill_grad.storage,
        };
        let (beta1_t, beta2_t) = match self.cfg.algorithm {
            Algorithm::Adam { beta1, beta2, .. } | Algorithm::AdamW { beta1, beta2, .. } => {
                (beta1.powf(t as f64), beta2.powf(t as f64))
            }
            Algorithm::Sgd { .. } => (0.0, 0.0),
        };
        let entries = &self.entries;
        if let Some(max_norm) = clip {
            let b0 = &self.banks[0];
            let bufs = kernel::Buffers {
                fill,
                m: &b0.m.storage,
                v: &b0.v.storage,
                aux: &self.aux.storage,
            };
            let mut parts = 0u32;
            for chunk in live.chunks(kernel::slots_for(&self.dev)) {
                let slots: Vec<kernel::Slot<'_>> = chunk
                    .iter()
                    .map(|x| make_slot(entries, x, lr, beta1_t))
                    .collect();
                parts += kernel::sumsq(&self.dev, &slots, &bufs, self.chunk, parts)?;
            }
            kernel::clip_finalize(&self.dev, &bufs, parts, max_norm as f32)?;
        }
        let rule = match self.cfg.algorithm {
            Algorithm::Sgd {
                momentum,
                dampening,
                nesterov,
            } => kernel::Rule::Sgd {
                momentum: momentum as f32,
                one_minus_dampening: (1.0 - dampening) as f32,
                nesterov,
                first: self.step == 0,
            },
            Algorithm::Adam { beta1, beta2, eps } | Algorithm::AdamW { beta1, beta2, eps } => {
                kernel::Rule::Adam {
                    beta1: beta1 as f32,
                    one_minus_beta1: (1.0 - beta1) as f32,
                    beta2: beta2 as f32,
                    one_minus_beta2: (1.0 - beta2) as f32,
                    eps: eps as f32,
                    bc2_sqrt: (1.0 - beta2_t).sqrt() as f32,
                    decoupled: matches!(self.cfg.algorithm, Algorithm::AdamW { .. }),
                }
            }
        };
        for (b, bank) in self.banks.iter().enumerate() {
            let mine: Vec<&(usize, Tensor)> = live
                .iter()
                .filter(|(i, _)| self.entries[*i].bank == b)
                .collect();
            for chunk in mine.chunks(kernel::slots_for(&self.dev)) {
                let slots: Vec<kernel::Slot<'_>> = chunk
                    .iter()
                    .map(|x| make_slot(entries, x, lr, beta1_t))
                    .collect();
                let bufs = kernel::Buffers {
                    fill,
                    m: &bank.m.storage,
                    v: &bank.v.storage,
                    aux: &self.aux.storage,
                };
                kernel::update(&self.dev, rule, &slots, &bufs, clip.is_some())?;
            }
        }
        self.step = t;
        Ok(())
    }

    /// Names of the state tensors of each parameter, by kind (`exp_avg`, `exp_avg_sq`,
    /// `momentum_buffer`), as checkpoints store them.
    fn state_kinds(&self) -> Vec<(&'static str, bool)> {
        match self.cfg.algorithm {
            Algorithm::Sgd { momentum, .. } => {
                if momentum != 0.0 {
                    vec![("momentum_buffer", true)]
                } else {
                    vec![]
                }
            }
            _ => vec![("exp_avg", true), ("exp_avg_sq", false)],
        }
    }

    /// The optimizer state as host arrays: (`kind.param_name`, values, shape). Reads back.
    pub(crate) fn export_state(&self) -> Result<Vec<StateArray>> {
        let mut out = Vec::new();
        for (kind, is_m) in self.state_kinds() {
            for (b, bank) in self.banks.iter().enumerate() {
                let t = if is_m { &bank.m } else { &bank.v };
                let all = t.to_vec()?;
                for e in self.entries.iter().filter(|e| e.bank == b) {
                    let s = e.off as usize;
                    out.push((
                        format!("{kind}.{}", e.name),
                        all[s..s + e.len as usize].to_vec(),
                        e.param.shape().to_vec(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Replace the state and step count; `get(name)` returns the values saved under a name of
    /// [`export_state`](Self::export_state) (already checked for shape by the caller).
    pub(crate) fn import_state(
        &mut self,
        step: u64,
        get: &dyn Fn(&str) -> Result<Vec<f32>>,
    ) -> Result<()> {
        let kinds = self.state_kinds();
        let mut new_banks: Vec<[Option<Vec<f32>>; 2]> =
            self.banks.iter().map(|_| [None, None]).collect();
        for (kind, is_m) in kinds {
            for (b, bank) in self.banks.iter().enumerate() {
                let mut flat = vec![0f32; bank.len];
                for e in self.entries.iter().filter(|e| e.bank == b) {
                    let vals = get(&format!("{kind}.{}", e.name))?;
                    let s = e.off as usize;
                    flat[s..s + e.len as usize].copy_from_slice(&vals);
                }
                new_banks[b][usize::from(!is_m)] = Some(flat);
            }
        }
        for (bank, [m, v]) in self.banks.iter_mut().zip(new_banks) {
            if let Some(m) = m {
                bank.m = Tensor::from_slice(&self.dev, &m, &[m.len()])?;
            }
            if let Some(v) = v {
                bank.v = Tensor::from_slice(&self.dev, &v, &[v.len()])?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Names the state of each parameter is saved under.
    pub(crate) fn state_names(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (kind, _) in self.state_kinds() {
            for e in &self.entries {
                out.push((format!("{kind}.{}", e.name), e.param.shape().to_vec()));
            }
        }
        out
    }
}
