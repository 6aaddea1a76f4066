//! Global-norm gradient clipping on the device: partial sums of squares over every live
//! gradient, one finalising workgroup that writes the coefficient the update kernels read,
//! nothing read back (PyTorch's `torch.nn.utils.clip_grad_norm_`).

use super::Optimizer;
use super::state::{Entry, make_slot};
use crate::error::Result;
use crate::ops::optim::launch as kernel;
use crate::runtime::Device;
use crate::tensor::Tensor;

/// Elements one clipping workgroup sums over `total` parameter elements.
pub(super) fn chunk_for(total: u64) -> u32 {
    // Each workgroup sums at least 16 elements per invocation (workgroups and their
    // barriers are what costs on CPU adapters), and there are at most ~1024 partials
    // (plus one per tensor) whatever the model size. An invocation loops chunk / WG times:
    // under llvmpipe's cap of 65,535 loop iterations up to ~17e9 parameters.
    (total.div_ceil(kernel::WG as u64 * 1024).max(16) * kernel::WG as u64)
        .min(u64::from(u32::MAX / 2)) as u32
}

/// The clipping scratch buffer for `entries` summed in chunks of `chunk`:
/// (3 + partials): clip coefficient, global norm, skipped steps (loss scaling), partial sums of
/// squares.
pub(super) fn aux_for(dev: &Device, entries: &[Entry], chunk: u32) -> Result<Tensor> {
    let lens: Vec<u32> = entries.iter().map(|e| e.len).collect();
    Tensor::zeros(dev, &[3 + kernel::partials(&lens, chunk) as usize])
}

impl Optimizer {
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

    /// Record the global norm of the `live` gradients and the coefficient the update kernels
    /// multiply them by, into `aux`: with loss scaling (`scale`, the optimizer's scale state
    /// and its rule) the coefficient also unscales and the scale is updated; else it clips to
    /// at most `max_norm`.
    pub(super) fn record_norm(
        &self,
        live: &[(usize, Tensor)],
        lr: f64,
        beta1_t: &[f64; kernel::BACK],
        fill: kernel::Fillers<'_>,
        max_norm: Option<f64>,
        scale: Option<(&Tensor, &super::LossScaling)>,
    ) -> Result<()> {
        let b0 = &self.banks[0];
        let bufs = kernel::Buffers {
            fill,
            m: &b0.m.storage,
            v: &b0.v.storage,
            aux: &self.aux.storage,
        };
        let mut parts = 0u32;
        for chunk in live.chunks(self.per_dispatch) {
            let slots: Vec<kernel::Slot<'_>> = chunk
                .iter()
                .map(|x| make_slot(&self.entries, x, lr, beta1_t))
                .collect();
            parts += kernel::sumsq(&self.dev, &slots, &bufs, self.chunk, parts)?;
        }
        // Without clipping (loss scaling alone) the coefficient's clip factor is 1.
        let max_norm = max_norm.map_or(f32::MAX, |m| m as f32);
        match scale {
            Some((state, s)) => {
                let rule = kernel::ScaleRule {
                    max_norm,
                    growth_factor: s.growth_factor,
                    backoff_factor: s.backoff_factor,
                    growth_interval: s.growth_interval as f32,
                };
                kernel::scale_finalize(&self.dev, &bufs, parts, &state.storage, &rule)
            }
            None => kernel::clip_finalize(&self.dev, &bufs, parts, max_norm),
        }
    }
}
