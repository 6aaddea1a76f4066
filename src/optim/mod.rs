//! Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW, with global-norm gradient
//! clipping, learning-rate schedules and parameter groups.
//!
//! How a step touches the GPU:
//! - **In place.** Parameters are ordinary tensors made with [`Tensor::with_grad`]; a module and
//!   the optimizer hold clones that share one buffer. The update kernel binds that buffer
//!   read-write and overwrites it, so after [`Optimizer::step`] every holder of the tensor
//!   (the model, the optimizer, a user's copy) sees the new values. Nothing is reallocated and
//!   the tensors keep their identity, so the next `backward()` keys gradients the same way.
//! - **Fused, multi-tensor.** The optimizer state (Adam's two moments, SGD's momentum) of
//!   *all* parameters lives in flat buffers with an offset per tensor. One dispatch binds up
//!   to [`tensors_per_dispatch`] parameter/gradient pairs (the adapter's storage-buffer limit
//!   decides: up to 128 on GPUs; 2 under WebGPU's default limits; 8 on CPU adapters, where a
//!   wider dispatch measured slower)
//!   plus the flat state, with a table of (offset, length, first workgroup, scalars) per
//!   tensor, and updates every element of all of them: one dispatch per step for a model of
//!   up to 128 tensors (a 10-layer GPT), and with clipping or loss scaling one sum-of-squares
//!   pass and one finalising workgroup before it.
//! - **No readback.** Gradient clipping computes the global norm on the device (partial sums of
//!   squares, one finalising workgroup) and the update kernels read the coefficient from there.
//!   The step counter, bias corrections and schedule are host values passed as uniforms.
//!
//! The arithmetic follows PyTorch's single-tensor `torch.optim.SGD`, `Adam`, `AdamW` and
//! `torch.nn.utils.clip_grad_norm_` operation for operation in f32, with the scalar
//! hyperparameters in f64 (as Python floats) until they reach the kernel.

// The rule and schedule (`config`), which tensors with what settings (`groups`), where the
// state lives and how checkpoints see it (`state`), gradient clipping (`clip`); the step here.
mod clip;
mod config;
mod groups;
mod state;

pub use config::{Algorithm, LrSchedule, OptimConfig};
pub use groups::{ParamGroup, decay_groups};

use std::sync::Arc;

use self::state::{Bank, Entry, make_slot};
use crate::autograd::Gradients;
use crate::error::{Error, Result};
use crate::ops::optim::launch as kernel;
use crate::runtime::Device;
use crate::tensor::{DType, Tensor};

/// Parameter tensors one fused dispatch updates at most (where an adapter allows 259 storage
/// buffers per shader stage, as Vulkan and DX12 adapters do; under WebGPU's default limit of
/// 8, two; on Metal's 31, fourteen).
pub const TENSORS_PER_DISPATCH: usize = kernel::MAX_SLOTS;

/// Parameter tensors one fused dispatch updates on `dev` by default (its storage-buffer limit
/// decides; CPU adapters take at most 8, which measured faster there).
pub fn tensors_per_dispatch(dev: &Device) -> usize {
    kernel::slots_for(dev)
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
    /// (3 + partials): clip coefficient, global norm, skipped steps (loss scaling), partial
    /// sums of squares.
    aux: Tensor,
    chunk: u32,
    fill_param: Tensor,
    fill_grad: Tensor,
    /// Parameter tensors per dispatch (the adapter's most, or less when asked).
    per_dispatch: usize,
    /// Dynamic loss scaling: its rule and its device state (4): scale, clean steps since the
    /// last change, overflow in the last step, skipped steps.
    scaler: Option<(LossScaling, Tensor)>,
}

/// Dynamic loss scaling for f16 mixed precision, `torch.amp.GradScaler`'s rule: the loss is
/// multiplied by a scale before the backward ([`Optimizer::scale_loss`]) so small f16
/// gradients do not flush to zero; [`Optimizer::step`] divides it back out, and when any
/// gradient overflowed it skips the step and multiplies the scale by `backoff_factor`; after
/// `growth_interval` clean steps in a row the scale grows by `growth_factor`. All of it on the
/// device: no value is read back per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaling {
    /// The first scale (a power of two keeps scaling exact).
    pub init_scale: f32,
    /// Multiplier after `growth_interval` clean steps.
    pub growth_factor: f32,
    /// Multiplier after an overflow.
    pub backoff_factor: f32,
    /// Clean steps before the scale grows.
    pub growth_interval: u32,
}

impl Default for LossScaling {
    /// PyTorch's defaults: 2^16, x2 every 2000 clean steps, x0.5 on overflow.
    fn default() -> Self {
        LossScaling {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
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
        let flat = groups::flatten(&cfg, groups)?;
        let dev = flat[0].1.dev.clone(); // `flatten` errs on an empty list
        if flat.iter().any(|(_, t, ..)| !t.storage.same_device(&dev)) {
            return Err(Error::DeviceMismatch {
                op: "Optimizer::new",
            });
        }
        let (need_m, need_v) = match cfg.algorithm {
            Algorithm::Sgd { momentum, .. } => (momentum != 0.0, false),
            _ => (true, true),
        };
        let (entries, banks) = state::assign(&dev, flat, need_m, need_v)?;
        let total: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
        let chunk = clip::chunk_for(total);
        let aux = clip::aux_for(&dev, &entries, chunk)?;
        let dummy = |n: usize| Tensor::zeros(&dev, &[n]);
        let fill_param = dummy(1)?;
        let fill_grad = dummy(1)?;
        let per_dispatch = kernel::slots_for(&dev);
        Ok(Optimizer {
            dev,
            cfg,
            entries,
            banks,
            step: 0,
            aux,
            chunk,
            fill_param,
            fill_grad,
            per_dispatch,
            scaler: None,
        })
    }

    /// Turn on dynamic loss scaling (see [`LossScaling`]): from now on pass
    /// [`scale_loss`](Self::scale_loss)`(&loss)` to the backward. A skipped step does not count
    /// towards Adam's bias correction nor SGD's first momentum step (PyTorch's GradScaler with
    /// fused Adam): the device subtracts its count of skipped steps from the step number, no
    /// readback. The host passes its f64 bias corrections for the first 8 skipped steps of a
    /// run (bit-exact with an unscaled run of the applied steps); after that the kernel
    /// computes them in f32, as fused Adam does (within a few ulps: a geometric sum, no
    /// cancellation). Checkpoints keep the scale, its growth
    /// tracker and the skipped count ([`crate::io::checkpoint`]): enable loss scaling before
    /// loading one.
    pub fn enable_loss_scaling(&mut self, s: LossScaling) -> Result<()> {
        let ok = s.init_scale.is_finite()
            && s.init_scale > 0.0
            && s.growth_factor.is_finite()
            && s.growth_factor >= 1.0
            && s.backoff_factor > 0.0
            && s.backoff_factor < 1.0
            && s.growth_interval > 0;
        if !ok {
            return Err(Error::InvalidArgument {
                op: "Optimizer::enable_loss_scaling",
                message: format!(
                    "{s:?}: needs a finite scale > 0, growth >= 1, backoff in (0, 1) and an interval > 0"
                ),
            });
        }
        let state = Tensor::from_slice(&self.dev, &[s.init_scale, 0.0, 0.0, 0.0], &[4])?;
        self.scaler = Some((s, state));
        Ok(())
    }

    /// `loss` times the current loss scale (on the device), for the backward; `loss` itself
    /// when loss scaling is off.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        match &self.scaler {
            Some((_, state)) => loss.mul(&state.view_raw(vec![1]))?.reshape(loss.shape()),
            None => Ok(loss.clone()),
        }
    }

    /// The current loss scale and the number of skipped steps (read back from the device);
    /// `None` without loss scaling.
    pub fn loss_scale(&self) -> Result<Option<(f32, u64)>> {
        match &self.scaler {
            Some((_, state)) => {
                let v = state.to_vec()?;
                Ok(Some((v[0], v[3] as u64)))
            }
            None => Ok(None),
        }
    }

    /// The loss-scaling state for checkpoints: (scale, clean steps since the last change,
    /// skipped steps); `None` without loss scaling. Reads back.
    pub(crate) fn export_scaling(&self) -> Result<Option<(f32, u64, u64)>> {
        match &self.scaler {
            Some((_, state)) => {
                let v = state.to_vec()?;
                Ok(Some((v[0], v[1] as u64, v[3] as u64)))
            }
            None => Ok(None),
        }
    }

    /// Restore [`export_scaling`](Self::export_scaling)'s state (checked first by
    /// [`check_scaling`](Self::check_scaling)).
    pub(crate) fn import_scaling(&mut self, scale: f32, clean: u64, skipped: u64) -> Result<()> {
        self.check_scaling(scale, clean, skipped)?;
        if let Some((_, state)) = &mut self.scaler {
            *state =
                Tensor::from_slice(&self.dev, &[scale, clean as f32, 0.0, skipped as f32], &[4])?;
        }
        Ok(())
    }

    /// Whether [`import_scaling`](Self::import_scaling) would take this state: loss scaling on,
    /// a finite positive scale, counts the device keeps exactly.
    pub(crate) fn check_scaling(&self, scale: f32, clean: u64, skipped: u64) -> Result<()> {
        let Some((rule, _)) = &self.scaler else {
            return Err(Error::InvalidArgument {
                op: "checkpoint",
                message: "holds a loss scale, the optimizer has no loss scaling: enable it (Optimizer::enable_loss_scaling) before loading".into(),
            });
        };
        // Counts are kept as f32 on the device: exact below 2^24.
        let ok = scale.is_finite()
            && scale > 0.0
            && clean < u64::from(rule.growth_interval)
            && skipped < 1 << 24;
        if !ok {
            return Err(Error::InvalidArgument {
                op: "checkpoint",
                message: format!(
                    "loss scale {scale}, growth tracker {clean}, skipped {skipped}: needs a finite scale > 0, a tracker below the growth interval {} and a count below 2^24",
                    rule.growth_interval
                ),
            });
        }
        Ok(())
    }

    /// Parameter tensors one fused dispatch updates (and one clipping pass sums over): the
    /// adapter's most ([`tensors_per_dispatch`]) unless lowered with
    /// [`set_tensors_per_dispatch`](Self::set_tensors_per_dispatch).
    pub fn tensors_per_dispatch(&self) -> usize {
        self.per_dispatch
    }

    /// Update at most `n` tensors per dispatch (at least 1, at most what the adapter's
    /// storage-buffer limit binds: 14 on lavapipe, where the default is 8). The results are the
    /// same bits whatever `n`: each element's arithmetic does not depend on which dispatch
    /// does it.
    pub fn set_tensors_per_dispatch(&mut self, n: usize) {
        self.per_dispatch = n.clamp(1, kernel::slots_limit(&self.dev));
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
        let fill = kernel::Fillers {
            param: &self.fill_param.storage,
            grad: &self.fill_grad.storage,
        };
        // beta^(t - k): the bias corrections when k steps were skipped so far (loss scaling;
        // the kernel picks k on the device). k = 0 is the only one used without loss scaling.
        let (beta1_t, beta2_t): ([f64; kernel::BACK], [f64; kernel::BACK]) =
            match self.cfg.algorithm {
                Algorithm::Adam { beta1, beta2, .. } | Algorithm::AdamW { beta1, beta2, .. } => {
                    let pow = |b: f64, k: usize| {
                        if t > k as u64 {
                            b.powf((t - k as u64) as f64)
                        } else {
                            0.0 // no such step: never read
                        }
                    };
                    (
                        std::array::from_fn(|k| pow(beta1, k)),
                        std::array::from_fn(|k| pow(beta2, k)),
                    )
                }
                Algorithm::Sgd { .. } => ([0.0; kernel::BACK], [0.0; kernel::BACK]),
            };
        let scale = self.scaler.as_ref().map(|(s, state)| (state, s));
        if clip.is_some() || scale.is_some() {
            self.record_norm(&live, lr, &beta1_t, fill, clip, scale)?;
        }
        let mode = match (&self.scaler, clip) {
            (Some(_), _) => kernel::GradMode::Scaled,
            (None, Some(_)) => kernel::GradMode::Clipped,
            (None, None) => kernel::GradMode::Plain,
        };
        let entries = &self.entries;
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
                    bc2_sqrt: (1.0 - beta2_t[0]).sqrt() as f32,
                    bc2_back: beta2_t.map(|b| (1.0 - b).sqrt() as f32),
                    decoupled: matches!(self.cfg.algorithm, Algorithm::AdamW { .. }),
                }
            }
        };
        for (b, bank) in self.banks.iter().enumerate() {
            let mine: Vec<&(usize, Tensor)> = live
                .iter()
                .filter(|(i, _)| self.entries[*i].bank == b)
                .collect();
            for chunk in mine.chunks(self.per_dispatch) {
                let slots: Vec<kernel::Slot<'_>> = chunk
                    .iter()
                    .map(|x| make_slot(entries, x, lr, &beta1_t))
                    .collect();
                let bufs = kernel::Buffers {
                    fill,
                    m: &bank.m.storage,
                    v: &bank.v.storage,
                    aux: &self.aux.storage,
                };
                kernel::update(&self.dev, t, rule, &slots, &bufs, mode)?;
            }
        }
        self.step = t;
        Ok(())
    }
}
