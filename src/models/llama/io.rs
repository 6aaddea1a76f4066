//! Hugging Face Llama-family directories: `config.json` + `model.safetensors`, or shards listed
//! by `model.safetensors.index.json`. F32, F16 and BF16 tensors are read (upcast to f32 on the
//! host, or the weight matrices kept in 16 bits with [`load_llama_as`]). Every tensor is
//! checked against the config: a missing, unexpected, duplicated or wrongly shaped tensor is an
//! error naming it. [`save_llama`] writes such a directory back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use super::{DEFAULT_CONTEXT, Llama, LlamaConfig};
use crate::error::{Error, Result};
use crate::models::gpt::io::{bad_in, upload_stored};
use crate::{DType, Device};

fn bad(path: &Path, message: String) -> Error {
    bad_in("llama loader", path, message)
}

/// The weight files of a directory: `model.safetensors`, else the shards named by
/// `model.safetensors.index.json`'s `weight_map` (each file once, in first-mention order).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(bad(
            dir,
            "neither model.safetensors nor model.safetensors.index.json is present".into(),
        ));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON ({e})")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad(&index, "missing the weight_map object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| bad(&index, format!("weight_map[{name:?}] is not a file name")))?;
        // A shard is a plain file name beside the index.
        if f.contains('/') || f.contains('\\') || f == ".." || f.is_empty() {
            return Err(bad(
                &index,
                format!("shard name {f:?} is not a plain file name"),
            ));
        }
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(bad(&index, "weight_map lists no tensors".into()));
    }
    Ok(files)
}

/// Load a Hugging Face Llama / Qwen2 / Mistral directory onto `dev`, with rotary tables for
/// `min(max_position_embeddings, DEFAULT_CONTEXT)` positions.
pub fn load_llama(dev: &Device, dir: &Path) -> Result<Llama> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let context = cfg.max_position_embeddings.min(DEFAULT_CONTEXT);
    load_with(dev, dir, cfg, context, DType::F32)
}

/// [`load_llama`] with rotary tables (the longest sequence the model will run) for
/// `context` positions, 1 ..= `max_position_embeddings`.
pub fn load_llama_with_context(dev: &Device, dir: &Path, context: usize) -> Result<Llama> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    load_with(dev, dir, cfg, context, DType::F32)
}

/// [`load_llama_with_context`] with the weight matrices, the embedding and the lm_head held in
/// `dtype` (f32, f16 or bf16; see [`Llama::build_as`]): half the memory in 16 bits, for
/// inference. A file tensor already in `dtype` is uploaded as stored; others are rounded to
/// nearest on the host.
pub fn load_llama_as(dev: &Device, dir: &Path, context: usize, dtype: DType) -> Result<Llama> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    load_with(dev, dir, cfg, context, dtype)
}

fn load_with(
    dev: &Device,
    dir: &Path,
    cfg: LlamaConfig,
    context: usize,
    dtype: DType,
) -> Result<Llama> {
    let files = weight_files(dir)?;
    let blobs: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| Error::io(p, e)))
        .collect::<Result<_>>()?;
    let sts: Vec<SafeTensors<'_>> = blobs
        .iter()
        .zip(&files)
        .map(|(b, p)| {
            SafeTensors::deserialize(b)
                .map_err(|e| bad(p, format!("not a readable safetensors file ({e})")))
        })
        .collect::<Result<_>>()?;
    // Tensor name -> the file holding it.
    let mut at: HashMap<String, usize> = HashMap::new();
    for (i, st) in sts.iter().enumerate() {
        for n in st.names() {
            if let Some(j) = at.insert(n.to_string(), i) {
                return Err(bad(
                    dir,
                    format!(
                        "tensor {n} is in both {} and {}",
                        files[j].display(),
                        files[i].display()
                    ),
                ));
            }
        }
    }
    let expected = Llama::parameter_shapes(&cfg);
    let known: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    // Ignored: rotary buffers older checkpoints saved, and a tied lm_head saved anyway.
    let ignored = |n: &str| {
        n.ends_with(".rotary_emb.inv_freq") || (cfg.tie_word_embeddings && n == "lm_head.weight")
    };
    let mut unexpected: Vec<&String> = at
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !ignored(k))
        .collect();
    if !unexpected.is_empty() {
        unexpected.sort();
        unexpected.truncate(5);
        return Err(bad(
            dir,
            format!(
                "tensors not in a {} model of this config: {unexpected:?}",
                cfg.family.model_type()
            ),
        ));
    }
    // A tied head saved anyway must still be the embedding's shape.
    if cfg.tie_word_embeddings
        && let Some(&i) = at.get("lm_head.weight")
    {
        let t = sts[i]
            .tensor("lm_head.weight")
            .map_err(|e| bad(&files[i], format!("lm_head.weight: {e}")))?;
        let want = [cfg.vocab_size, cfg.hidden_size];
        if t.shape() != want {
            return Err(bad(
                &files[i],
                format!(
                    "tensor lm_head.weight has shape {:?} but config.json implies {want:?} \
                     (tied to the embedding)",
                    t.shape()
                ),
            ));
        }
    }
    let shapes: HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    Llama::build_as(dev, cfg.clone(), context, dtype, &mut |name, shape| {
        let file = *at
            .get(name)
            .ok_or_else(|| bad(dir, format!("tensor {name} (shape {shape:?}) is missing")))?;
        let path = &files[file];
        let t = sts[file]
            .tensor(name)
            .map_err(|e| bad(path, format!("{name}: {e}")))?;
        if t.shape() != shape {
            return Err(bad(
                path,
                format!(
                    "tensor {name} has shape {:?} but config.json implies {:?}",
                    t.shape(),
                    shapes[name]
                ),
            ));
        }
        let want = if Llama::is_weight_matrix(name) {
            dtype
        } else {
            DType::F32
        };
        upload_stored(
            dev,
            "llama loader",
            path,
            name,
            t.dtype(),
            t.data(),
            shape,
            want,
        )
    })
}

/// The `config.json` text for `cfg`, loadable by `transformers` (`AutoConfig`) for its
/// `model_type`, and by [`LlamaConfig::from_json`].
pub fn llama_config_json(cfg: &LlamaConfig) -> String {
    use super::LlamaFamily;
    let arch = match cfg.family {
        LlamaFamily::Llama => "LlamaForCausalLM",
        LlamaFamily::Qwen2 => "Qwen2ForCausalLM",
        LlamaFamily::Mistral => "MistralForCausalLM",
    };
    // The f32 epsilon as its shortest decimal (1e-5, not 9.999999747378752e-6).
    let eps: f64 = cfg.rms_norm_eps.to_string().parse().unwrap_or(1e-6);
    let scaling = match cfg.rope_scaling {
        None => serde_json::Value::Null,
        Some(crate::RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings as u64,
        }),
    };
    let mut v = serde_json::json!({
        "architectures": [arch],
        "model_type": cfg.family.model_type(),
        "hidden_act": "silu",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "sliding_window": null,
    });
    let m = v.as_object_mut().expect("an object");
    match cfg.family {
        LlamaFamily::Qwen2 => {
            m.insert("use_sliding_window".into(), false.into());
        }
        _ => {
            m.insert("attention_bias".into(), cfg.attention_bias.into());
            m.insert("mlp_bias".into(), false.into());
        }
    }
    serde_json::to_string_pretty(&v).expect("a json! value serialises")
}

/// Write `model` as a Hugging Face directory (`config.json` + `model.safetensors`, f32, Hugging
/// Face names; a tied lm_head is not written, as `transformers` saves it), each file written
/// to a temporary name and renamed, so a failure leaves the previous files intact.
pub fn save_llama(model: &Llama, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::io::save_safetensors(&dir.join("model.safetensors"), &model.parameters())?;
    crate::io::write_atomic(
        &dir.join("config.json"),
        llama_config_json(model.config()).as_bytes(),
    )
}
