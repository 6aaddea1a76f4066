//! Where the optimizer state lives: flat banks (Adam's two moments, SGD's momentum) with an
//! offset per parameter, the kernel's view of one parameter, and the state as host arrays for
//! checkpoints.

use super::groups::Member;
use super::{Algorithm, Optimizer};
use crate::error::{Error, Result};
use crate::ops::optim::launch as kernel;
use crate::runtime::Device;
use crate::tensor::Tensor;

/// A state tensor on the host: (`kind.parameter`, values, shape).
pub(crate) type StateArray = (String, Vec<f32>, Vec<usize>);

/// One parameter tensor and where its state lives.
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) param: Tensor,
    pub(super) bank: usize,
    pub(super) off: u32,
    pub(super) len: u32,
    pub(super) wd: f64,
    pub(super) lr_scale: f64,
}

/// Flat state of the tensors assigned to it (each within one storage binding).
pub(super) struct Bank {
    pub(super) m: Tensor,
    pub(super) v: Tensor,
    pub(super) len: usize,
}

/// Assign the parameters to banks (each bank's state fits one storage binding and u32
/// offsets) and allocate the banks: `need_m` / `need_v` say which of the two state tensors the
/// rule uses (the other is a one-element placeholder).
pub(super) fn assign(
    dev: &Device,
    flat: Vec<Member>,
    need_m: bool,
    need_v: bool,
) -> Result<(Vec<Entry>, Vec<Bank>)> {
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
    let dummy = |n: usize| Tensor::zeros(dev, &[n]);
    let mut banks = Vec::with_capacity(bank_lens.len());
    for &len in &bank_lens {
        banks.push(Bank {
            m: if need_m { dummy(len)? } else { dummy(1)? },
            v: if need_v { dummy(len)? } else { dummy(1)? },
            len,
        });
    }
    Ok((entries, banks))
}

/// The kernel's view of one live parameter: buffers and this step's scalars (f64 on the host).
/// `beta1_t[k]` is beta1^(t - k), Adam's bias correction when `k` steps were skipped (0 for SGD).
pub(super) fn make_slot<'a>(
    entries: &'a [Entry],
    (i, g): &'a (usize, Tensor),
    lr: f64,
    beta1_t: &[f64; kernel::BACK],
) -> kernel::Slot<'a> {
    let e = &entries[*i];
    let lr_e = lr * e.lr_scale;
    let step_back = beta1_t.map(|b| (lr_e / (1.0 - b)) as f32);
    kernel::Slot {
        param: &e.param.storage,
        grad: &g.storage,
        off: e.off,
        len: e.len,
        lr: lr_e as f32,
        wd: e.wd as f32,
        step_size: step_back[0],
        decay: (1.0 - lr_e * e.wd) as f32,
        step_back,
    }
}

impl Optimizer {
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
