//! Checkpoints: parameters, optimizer state and step count in one safetensors file.
//!
//! Layout of the file:
//! - every parameter under its module name (`layers.0.weight`), f32, its own shape: the file is
//!   a plain safetensors state dict that other tools read;
//! - the optimizer state under `optim.{kind}.{parameter}` with PyTorch's kinds (`exp_avg`,
//!   `exp_avg_sq` for Adam/AdamW, `momentum_buffer` for SGD with momentum);
//! - metadata: `format = portagrad-checkpoint`, `version = 1`, `step`, `optimizer`, and for a
//!   model with dropout ([`save_params_with_dropout`]) `dropout_seed` and `dropout_calls`:
//!   where its stream of masks stands, so a resumed run draws the masks the straight run would.
//!   Files without them (older ones, or saved without dropout state) still load.
//!   With loss scaling on ([`Optimizer::enable_loss_scaling`]) also `loss_scale`,
//!   `loss_scale_growth_tracker` (clean steps since the scale last changed) and
//!   `loss_scale_skipped` (overflowing steps skipped, which Adam's device step count leaves
//!   out), so a resumed f16 run is bit-exact; a file without them loads and the scale keeps
//!   its current state (`init_scale` in a fresh optimizer). Loading a file with a loss scale
//!   into an optimizer without loss scaling is an error (its gradients would not be unscaled).
//!
//! Writes are atomic: the bytes go to a temporary file in the same directory, which is fsynced
//! and then renamed over the target (and the directory fsynced), so a failed or interrupted
//! write leaves the previous checkpoint as it was. Loading checks names, dtypes and shapes
//! before it changes anything, and writes the values into the tensors the model already holds
//! (in place), so the model and optimizer keep working with them.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::write_atomic;
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::ops::copy::launch::copy_into;
use crate::optim::Optimizer;
use crate::tensor::Tensor;

const FORMAT: &str = "portagrad-checkpoint";
const VERSION: &str = "1";
const OPTIM_PREFIX: &str = "optim.";

/// What [`load`] found in the file besides the tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Optimizer steps done when the checkpoint was written (0 without optimizer state).
    pub step: u64,
    /// Optimizer algorithm saved with it (`adam`, `adamw`, `sgd`), if any.
    pub optimizer: Option<String>,
    /// The model's dropout stream, when it was saved with one
    /// ([`save_params_with_dropout`]); `None` in older files.
    pub dropout: Option<DropoutState>,
}

/// Where a model's dropout masks stand: the seed of its stream of masks and how many masks it
/// has drawn. Mask `k` depends on both, so a bit-exact resume restores both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropoutState {
    /// Seed of the mask stream.
    pub seed: u64,
    /// Masks drawn so far (dropout calls in training).
    pub calls: u64,
}

fn bad(path: &Path, message: String) -> Error {
    Error::InvalidArgument {
        op: "checkpoint",
        message: format!("{}: {message}", path.display()),
    }
}

/// Save `model`'s parameters and, when given, the optimizer's state and step count.
pub fn save(path: impl AsRef<Path>, model: &dyn Module, opt: Option<&Optimizer>) -> Result<()> {
    save_params(path, &model.parameters(), opt)
}

/// Load a checkpoint written by [`save`] into `model` (and `opt`, when given). Every
/// parameter of the model must be in the file with the same shape, and the file may hold no
/// parameter the model lacks. Returns the saved step count.
pub fn load(
    path: impl AsRef<Path>,
    model: &dyn Module,
    opt: Option<&mut Optimizer>,
) -> Result<CheckpointInfo> {
    load_params(path, &model.parameters(), opt)
}

/// [`save`] for a list of named tensors.
pub fn save_params(
    path: impl AsRef<Path>,
    params: &[(String, Tensor)],
    opt: Option<&Optimizer>,
) -> Result<()> {
    write(path.as_ref(), params, opt, None)
}

/// [`save_params`] with the model's dropout stream (see [`DropoutState`]), which
/// [`load_params`] returns in [`CheckpointInfo::dropout`]: what a resumed run with dropout
/// needs to be bit-exact.
pub fn save_params_with_dropout(
    path: impl AsRef<Path>,
    params: &[(String, Tensor)],
    opt: Option<&Optimizer>,
    dropout: DropoutState,
) -> Result<()> {
    write(path.as_ref(), params, opt, Some(dropout))
}

fn write(
    path: &Path,
    params: &[(String, Tensor)],
    opt: Option<&Optimizer>,
    dropout: Option<DropoutState>,
) -> Result<()> {
    let mut names = HashSet::new();
    let mut host: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, t) in params {
        if name.starts_with(OPTIM_PREFIX) || !names.insert(name.clone()) {
            return Err(bad(
                path,
                format!("parameter name {name:?} is reserved or repeated"),
            ));
        }
        let v = t.to_vec()?;
        host.push((
            name.clone(),
            bytemuck::cast_slice(&v).to_vec(),
            t.shape().to_vec(),
        ));
    }
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
    ]);
    if let Some(d) = dropout {
        meta.insert("dropout_seed".into(), d.seed.to_string());
        meta.insert("dropout_calls".into(), d.calls.to_string());
    }
    if let Some(opt) = opt {
        meta.insert("step".into(), opt.step_count().to_string());
        meta.insert(
            "optimizer".into(),
            opt.config().algorithm.name().to_string(),
        );
        if let Some((scale, clean, skipped)) = opt.export_scaling()? {
            // f32 Display round-trips exactly.
            meta.insert("loss_scale".into(), scale.to_string());
            meta.insert("loss_scale_growth_tracker".into(), clean.to_string());
            meta.insert("loss_scale_skipped".into(), skipped.to_string());
        }
        for (name, v, shape) in opt.export_state()? {
            host.push((
                format!("{OPTIM_PREFIX}{name}"),
                bytemuck::cast_slice(&v).to_vec(),
                shape,
            ));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = host
        .iter()
        .map(|(n, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| bad(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| bad(path, format!("serialising: {e}")))?;
    write_atomic(path, &bytes)
}

/// [`load`] for a list of named tensors.
pub fn load_params(
    path: impl AsRef<Path>,
    params: &[(String, Tensor)],
    opt: Option<&mut Optimizer>,
) -> Result<CheckpointInfo> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a readable safetensors file ({e})")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, format!("header: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").is_some_and(|f| f != FORMAT) {
        return Err(bad(
            path,
            format!("format {:?} is not {FORMAT}", meta["format"]),
        ));
    }
    let number = |key: &str| -> Result<Option<u64>> {
        meta.get(key)
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| bad(path, format!("{key} {s:?} is not a number")))
            })
            .transpose()
    };
    let step = number("step")?.unwrap_or(0);
    // Both or neither: a stream without its seed (or count) cannot be resumed.
    let dropout = match (number("dropout_seed")?, number("dropout_calls")?) {
        (Some(seed), Some(calls)) => Some(DropoutState { seed, calls }),
        (None, None) => None,
        _ => {
            return Err(bad(
                path,
                "holds only one of dropout_seed and dropout_calls".into(),
            ));
        }
    };
    let saved_opt = meta.get("optimizer").cloned();
    // All three or none (older files, or a run without loss scaling).
    let scaling = match (
        meta.get("loss_scale"),
        number("loss_scale_growth_tracker")?,
        number("loss_scale_skipped")?,
    ) {
        (Some(s), Some(clean), Some(skipped)) => {
            let scale = s
                .parse::<f32>()
                .map_err(|_| bad(path, format!("loss_scale {s:?} is not a number")))?;
            Some((scale, clean, skipped))
        }
        (None, None, None) => None,
        _ => {
            return Err(bad(
                path,
                "holds only some of loss_scale, loss_scale_growth_tracker and loss_scale_skipped"
                    .into(),
            ));
        }
    };

    // Everything is checked before anything is written.
    let fetch = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(path, format!("tensor {name} (shape {shape:?}) is missing")))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(
                path,
                format!("tensor {name} is {:?}, expected F32", t.dtype()),
            ));
        }
        if t.shape() != shape {
            return Err(bad(
                path,
                format!(
                    "tensor {name} has shape {:?}, the model {shape:?}",
                    t.shape()
                ),
            ));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let mut values = Vec::with_capacity(params.len());
    for (name, t) in params {
        values.push(fetch(name, t.shape())?);
    }
    let known: HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    let mut unexpected: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !n.starts_with(OPTIM_PREFIX) && !known.contains(n))
        .map(str::to_string)
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        unexpected.truncate(5);
        return Err(bad(
            path,
            format!(
                "holds parameters the model does not have: {}",
                unexpected.join(", ")
            ),
        ));
    }
    let mut opt_state: Option<HashMap<String, Vec<f32>>> = None;
    if let Some(opt) = opt.as_deref() {
        let want = opt.config().algorithm.name();
        match &saved_opt {
            None => return Err(bad(path, "has no optimizer state".into())),
            Some(a) if a != want => {
                return Err(bad(
                    path,
                    format!("optimizer state is for {a}, the optimizer is {want}"),
                ));
            }
            _ => {}
        }
        let mut m = HashMap::new();
        for (name, shape) in opt.state_names() {
            let v = fetch(&format!("{OPTIM_PREFIX}{name}"), &shape)?;
            m.insert(name, v);
        }
        opt_state = Some(m);
        if let Some((scale, clean, skipped)) = scaling {
            opt.check_scaling(scale, clean, skipped)
                .map_err(|e| bad(path, e.to_string()))?;
        }
    }

    for ((_, t), v) in params.iter().zip(values) {
        let src = Tensor::from_slice(t.device(), &v, t.shape())?;
        copy_into(t, &src)?;
    }
    if let (Some(opt), Some(state)) = (opt, opt_state) {
        opt.import_state(step, &|name| {
            state
                .get(name)
                .cloned()
                .ok_or_else(|| bad(path, format!("optimizer state {name} is missing")))
        })?;
        if let Some((scale, clean, skipped)) = scaling {
            opt.import_scaling(scale, clean, skipped)?;
        }
    }
    Ok(CheckpointInfo {
        step,
        optimizer: saved_opt,
        dropout,
    })
}
