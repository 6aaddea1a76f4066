//! Parameter groups: which tensors an optimizer updates, with what weight decay and
//! learning-rate multiplier, and the flat list the optimizer keeps of them.

use std::sync::Arc;

use super::OptimConfig;
use crate::error::{Error, Result};
use crate::runtime::Storage;
use crate::tensor::{DType, Tensor};

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

/// One parameter to update: (name, tensor, weight decay, learning-rate multiplier).
pub(super) type Member = (String, Tensor, f64, f64);

/// The parameters of `groups` in order, each with its group's settings resolved against `cfg`;
/// checks that each is an f32 leaf with a gradient and that there is at least one.
pub(super) fn flatten(cfg: &OptimConfig, groups: Vec<ParamGroup>) -> Result<Vec<Member>> {
    let mut flat: Vec<Member> = Vec::new();
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
    if flat.is_empty() {
        return Err(Error::InvalidArgument {
            op: "Optimizer::new",
            message: "no parameters to optimize".into(),
        });
    }
    Ok(flat)
}
