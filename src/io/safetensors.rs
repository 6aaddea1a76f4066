//! Named tensors in safetensors files, in their own dtypes: f32, f16 and bf16 (and u32 ids)
//! are loaded as they are stored, without upcasting, and saved the same way.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::write_atomic;
use crate::error::{Error, Result};
use crate::runtime::Device;
use crate::tensor::{DType, Tensor};

fn bad(path: &Path, message: String) -> Error {
    Error::InvalidArgument {
        op: "safetensors",
        message: format!("{}: {message}", path.display()),
    }
}

/// The safetensors dtype of a tensor dtype.
fn file_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::U32 => Dtype::U32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    }
}

/// Every tensor of the safetensors file at `path`, sorted by name, on `dev` in its
/// stored dtype (F32, F16, BF16 or U32; another dtype is an error naming the tensor).
pub fn load_safetensors(dev: &Device, path: &Path) -> Result<Vec<(String, Tensor)>> {
    const OP: &str = "load_safetensors";
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(path, format!("not a readable safetensors file ({e})")))?;
    let mut named: Vec<(String, TensorView<'_>)> = st.tensors();
    // By name: the file's own order is the writer's choice (safetensors sorts by alignment).
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
        .into_iter()
        .map(|(name, v)| {
            let data = v.data();
            let shape = v.shape().to_vec();
            let t = match v.dtype() {
                Dtype::F32 => {
                    let f: Vec<f32> = bytemuck::pod_collect_to_vec(data);
                    Tensor::from_slice(dev, &f, &shape)
                }
                Dtype::U32 => {
                    let u: Vec<u32> = bytemuck::pod_collect_to_vec(data);
                    Tensor::from_u32(dev, &u, &shape)
                }
                Dtype::F16 => Tensor::from_half_le_bytes(dev, OP, data, &shape, DType::F16),
                Dtype::BF16 => Tensor::from_half_le_bytes(dev, OP, data, &shape, DType::BF16),
                other => {
                    return Err(bad(
                        path,
                        format!(
                            "tensor {name} has dtype {other:?}; expected F32, F16, BF16 or U32"
                        ),
                    ));
                }
            }?;
            Ok((name, t))
        })
        .collect()
}

/// Write named tensors, each in its own dtype, as a safetensors file (metadata
/// `format = pt`, as PyTorch's `save_file` writes), atomically.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    // Each tensor's stored bytes are what the file holds (all little-endian).
    let bytes = tensors
        .iter()
        .map(|(_, t)| t.raw_bytes())
        .collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| (n.as_str(), file_dtype(t.dtype()), t.shape(), &b[..]))
        .collect();
    write_host(path, &views)
}

/// Serialise (name, dtype, shape, little-endian bytes) tensors to `path`, atomically; the
/// bytes are borrowed, not copied.
pub(crate) fn write_host(path: &Path, host: &[(&str, Dtype, &[usize], &[u8])]) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = host
        .iter()
        .map(|&(n, d, s, b)| {
            TensorView::new(d, s.to_vec(), b)
                .map(|v| (n.to_string(), v))
                .map_err(|e| Error::Shape {
                    op: "save_tensors",
                    message: format!("{n}: {e}"),
                })
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| Error::InvalidArgument {
        op: "save_tensors",
        message: format!("{}: {e}", path.display()),
    })?;
    write_atomic(path, &data)
}
