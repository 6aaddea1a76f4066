//! Checkpoints: parameters, optimizer state and step count in one safetensors file.
//!
//! Layout of the file:
//! - every parameter under its module name (`layers.0.weight`), f32, its own shape: the file is
//!   a plain safetensors state dict that other tools read;
//! - the optimizer state under `optim.{kind}.{parameter}` with PyTorch's kinds (`exp_avg`,
//!   `exp_avg_sq` for Adam/AdamW, `momentum_buffer` for SGD with momentum);
//! - metadata: `format = portagrad-checkpoint`, `version = 1`, `step`, `optimizer`.
//!
//! Writes are atomic: the bytes go to a temporary file in the same directory, which is fsynced
//! and then renamed over the target (and the directory fsynced), so a failed or interrupted
//! write leaves the previous checkpoint as it was. Loading checks names, dtypes and shapes
//! before it changes anything, and writes the values into the tensors the model already holds
//! (in place), so the model and optimizer keep working with them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

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
    let path = path.as_ref();
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
    if let Some(opt) = opt {
        meta.insert("step".into(), opt.step_count().to_string());
        meta.insert(
            "optimizer".into(),
            opt.config().algorithm.name().to_string(),
        );
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

/// The temporary file a write to `path` goes through (same directory, so the rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Write `bytes` to `path` so that `path` holds either its old contents or all of `bytes`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.file_name().is_none() {
        return Err(bad(path, "not a file path".into()));
    }
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        {
            // Closed before the rename.
            let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the temporary may not exist (or be a directory someone else made).
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable (not possible on every platform; harmless where not).
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
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
    let step = match meta.get("step") {
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| bad(path, format!("step {s:?} is not a number")))?,
        None => 0,
    };
    let saved_opt = meta.get("optimizer").cloned();

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
    }
    Ok(CheckpointInfo {
        step,
        optimizer: saved_opt,
    })
}
