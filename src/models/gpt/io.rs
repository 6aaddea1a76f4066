//! Hugging Face GPT-2 directories: `config.json` + `model.safetensors`, read and written.
//! Names with or without the `transformer.` prefix are accepted, Conv1D weights are (in, out) as
//! in our model, a missing `lm_head.weight` means tied to wte, and the `attn.bias` /
//! `attn.masked_bias` buffers are ignored. Every tensor is checked against the config.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{Gpt, GptConfig};
use crate::error::{Error, Result};
pub use crate::io::write_atomic;
use crate::{DType, Device, Tensor};

fn bad(path: &Path, message: String) -> Error {
    bad_in("gpt2 loader", path, message)
}

/// A loader's error about one file.
pub(crate) fn bad_in(loader: &'static str, path: &Path, message: String) -> Error {
    Error::InvalidArgument {
        op: loader,
        message: format!("{}: {message}", path.display()),
    }
}

/// Read a Hugging Face GPT-2 `config.json`.
pub fn load_config(path: &Path) -> Result<GptConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON ({e})")))?;
    let field = |names: &[&str]| -> Result<usize> {
        for n in names {
            if let Some(x) = v.get(*n) {
                return x
                    .as_u64()
                    .filter(|&x| x > 0)
                    .map(|x| x as usize)
                    .ok_or_else(|| bad(path, format!("{n} must be a positive integer, got {x}")));
            }
        }
        Err(bad(path, format!("missing {}", names.join(" / "))))
    };
    if let Some(act) = v.get("activation_function").and_then(|a| a.as_str())
        && !matches!(act, "gelu_new" | "gelu_pytorch_tanh")
    {
        return Err(bad(
            path,
            format!(
                "activation_function {act:?} is not supported (portagrad implements GPT-2's tanh GELU, \"gelu_new\")"
            ),
        ));
    }
    let cfg = GptConfig {
        n_layer: field(&["n_layer"])?,
        n_head: field(&["n_head"])?,
        n_embd: field(&["n_embd"])?,
        block_size: field(&["n_positions", "n_ctx"])?,
        vocab_size: field(&["vocab_size"])?,
        dropout: v.get("resid_pdrop").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
        ln_eps: v
            .get("layer_norm_epsilon")
            .and_then(|x| x.as_f64())
            .unwrap_or(1e-5) as f32,
    };
    cfg.validate().map_err(|e| bad(path, e.to_string()))?;
    Ok(cfg)
}

/// The `config.json` text for `cfg` (loadable by transformers' `GPT2Config`).
pub fn config_json(cfg: &GptConfig) -> String {
    let v = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": cfg.ln_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": true,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
    });
    serde_json::to_string_pretty(&v).expect("a json! value serialises")
}

fn to_f32(
    loader: &'static str,
    path: &Path,
    name: &str,
    dtype: Dtype,
    data: &[u8],
) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        other => {
            return Err(bad_in(
                loader,
                path,
                format!("tensor {name} has dtype {other:?}; expected F32, F16 or BF16"),
            ));
        }
    })
}

/// Upload one safetensors tensor as `want`: 16-bit bytes already in that dtype go up as
/// stored (no decode/encode round trip), anything else is decoded to f32 values first.
/// Shared by the GPT-2 and Llama loaders.
#[allow(clippy::too_many_arguments)]
pub(crate) fn upload_stored(
    dev: &Device,
    loader: &'static str,
    path: &Path,
    name: &str,
    stored: Dtype,
    data: &[u8],
    shape: &[usize],
    want: DType,
) -> Result<Tensor> {
    let stored_as_wanted = matches!(
        (stored, want),
        (Dtype::F16, DType::F16) | (Dtype::BF16, DType::BF16)
    );
    if stored_as_wanted {
        return Tensor::from_half_le_bytes(dev, loader, data, shape, want);
    }
    let v = to_f32(loader, path, name, stored, data)?;
    Tensor::from_slice_as(dev, &v, shape, want)
}

fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// Load a Hugging Face GPT-2 directory (or a `shakespeare` checkpoint directory) onto `dev`.
pub fn load_pretrained(dev: &Device, dir: &Path) -> Result<Gpt> {
    load_pretrained_as(dev, dir, DType::F32)
}

/// [`load_pretrained`] with the weight matrices and the embedding held in `dtype` (f32, f16 or
/// bf16): half the memory in 16 bits, for inference (matmuls unpack the 16-bit weights and
/// accumulate in f32; biases, LayerNorm and the position embedding stay f32). A file tensor
/// already in `dtype` is uploaded as it is stored; others are rounded to nearest on the host.
/// The optimizers take f32 parameters only, so a 16-bit model is not trained.
pub fn load_pretrained_as(dev: &Device, dir: &Path, dtype: DType) -> Result<Gpt> {
    let cfg = load_config(&dir.join("config.json"))?;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(&path, format!("not a readable safetensors file ({e})")))?;
    // Map our names to the file's (with or without the `transformer.` prefix).
    let mut names: HashMap<String, String> = HashMap::new();
    for n in st.names() {
        let key = if n.starts_with("transformer.") || n == "lm_head.weight" {
            n.to_string()
        } else {
            format!("transformer.{n}")
        };
        names.insert(key, n.to_string());
    }
    let expected = Gpt::parameter_shapes(&cfg);
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut unexpected: Vec<&String> = names
        .keys()
        .filter(|k| {
            !known.contains(k.as_str())
                && k.as_str() != "lm_head.weight"
                && !k.ends_with(".attn.bias")
                && !k.ends_with(".attn.masked_bias")
        })
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        unexpected.truncate(5);
        return Err(bad(
            &path,
            format!("tensors not in a GPT-2 of this config: {unexpected:?}"),
        ));
    }
    let model = Gpt::build_as(dev, cfg.clone(), 0, dtype, &mut |name, shape| {
        // A row chunk of the embedding reads its rows of the file's whole (V, C) tensor.
        let rows = Gpt::wte_chunk_rows(name);
        let (name, full) = match &rows {
            Some(_) => ("transformer.wte.weight", vec![cfg.vocab_size, cfg.n_embd]),
            None => (name, shape.to_vec()),
        };
        let file_name = names
            .get(name)
            .ok_or_else(|| bad(&path, format!("tensor {name} (shape {full:?}) is missing")))?;
        let t = st
            .tensor(file_name)
            .map_err(|e| bad(&path, format!("{name}: {e}")))?;
        if t.shape() != full {
            return Err(bad(
                &path,
                format!(
                    "tensor {name} has shape {:?} but config.json implies {full:?}",
                    t.shape()
                ),
            ));
        }
        let data = match rows {
            Some(r) => {
                // Bytes per row: the shape was checked, so the data holds V rows of them.
                let row = t.data().len() / cfg.vocab_size;
                &t.data()[r.start * row..r.end * row]
            }
            None => t.data(),
        };
        let want = if Gpt::is_weight_matrix(name) {
            dtype
        } else {
            DType::F32
        };
        upload_stored(
            dev,
            "gpt2 loader",
            &path,
            name,
            t.dtype(),
            data,
            shape,
            want,
        )
    })?;
    if let Some(lm) = names.get("lm_head.weight") {
        let t = st
            .tensor(lm)
            .map_err(|e| bad(&path, format!("lm_head.weight: {e}")))?;
        if t.shape() != [cfg.vocab_size, cfg.n_embd] {
            return Err(bad(
                &path,
                format!("lm_head.weight has shape {:?}", t.shape()),
            ));
        }
    }
    Ok(model)
}

/// Write `model` as a Hugging Face GPT-2 directory (config.json + model.safetensors), each file
/// written to a temporary name and renamed, so a failure leaves the previous files intact.
pub fn save_pretrained(model: &Gpt, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_host_tensors(
        &dir.join("model.safetensors"),
        &Gpt::join_wte_chunks(&model.parameters())?,
    )?;
    write_atomic(
        &dir.join("config.json"),
        config_json(model.config()).as_bytes(),
    )
}

/// Write named tensors, each in its own dtype (f32 for a model's parameters), as a safetensors
/// file (metadata `format = pt`, as PyTorch's `save_file` writes), atomically:
/// [`crate::io::save_safetensors`].
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    crate::io::save_safetensors(path, tensors)
}

/// A tensor read back to the host: name, shape, values (row-major).
pub type HostTensor = (String, Vec<usize>, Vec<f32>);

/// [`save_tensors`] of values already on the host: (name, shape, values) each, as
/// [`Gpt::join_wte_chunks`] returns them (a tensor larger than one device buffer can be
/// written).
pub fn save_host_tensors(path: &Path, host: &[HostTensor]) -> Result<()> {
    if let Some((n, s, v)) = host
        .iter()
        .find(|(_, s, v)| s.iter().product::<usize>() != v.len())
    {
        return Err(Error::Shape {
            op: "save_tensors",
            message: format!("{n}: shape {s:?} but {} values", v.len()),
        });
    }
    let views: Vec<_> = host
        .iter()
        .map(|(n, s, v)| {
            (
                n.as_str(),
                Dtype::F32,
                s.as_slice(),
                bytemuck::cast_slice(v),
            )
        })
        .collect();
    crate::io::safetensors::write_host(path, &views)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }
}
