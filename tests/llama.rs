//! The Llama-family model against PyTorch / Hugging Face golden files (tests/golden/tiny_llama
//! and tests/golden/tiny_qwen2, made by scripts/make_llama_golden.py in float64): logits, loss,
//! every gradient, 8 AdamW steps, greedy generation with the KV cache. Plus the config.json
//! checks and the loader: sharded files, F16 / BF16 files, and a clear error for every
//! mismatch between config and tensors.

use std::path::{Path, PathBuf};

use portagrad::generate::{
    GenerateOptions, Sampler, SamplingConfig, generate_batch, generate_full_context,
};
use portagrad::models::{
    Llama, LlamaConfig, LlamaFamily, load_llama, load_llama_as, load_llama_with_context, save_llama,
};
use portagrad::optim::Optimizer;
use portagrad::testing::{assert_close, shared_device};
use portagrad::{DType, Error, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const MODELS: [&str; 2] = ["tiny_llama", "tiny_qwen2"];

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load(name: &str) -> Golden {
        Golden {
            bytes: std::fs::read(golden_dir(name).join("golden.safetensors")).expect("golden file"),
        }
    }
    fn f64s(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in golden file"));
        let v = match t.dtype() {
            Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            d => panic!("{name}: unexpected dtype {d:?}"),
        };
        (t.shape().to_vec(), v)
    }
    fn u32s(&self, name: &str) -> Vec<u32> {
        self.f64s(name).1.iter().map(|&v| v as u32).collect()
    }
    fn grad_names(&self) -> Vec<String> {
        let mut v: Vec<String> = SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix("grad.").map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

/// ids (B, T), and inputs ids[:, :-1] / targets ids[:, 1:] (HF's labels=input_ids loss).
fn batch(g: &Golden) -> (usize, usize, Vec<u32>, Vec<u32>, Vec<u32>) {
    let (shape, _) = g.f64s("ids");
    let (b, t) = (shape[0], shape[1]);
    let ids = g.u32s("ids");
    let rows = |r: std::ops::Range<usize>| -> Vec<u32> {
        (0..b)
            .flat_map(|i| ids[i * t + r.start..i * t + r.end].to_vec())
            .collect()
    };
    (b, t, ids.clone(), rows(0..t - 1), rows(1..t))
}

#[test]
fn configs_of_the_golden_models() {
    let l = LlamaConfig::from_file(&golden_dir("tiny_llama").join("config.json")).unwrap();
    assert_eq!(l.family, LlamaFamily::Llama);
    assert_eq!(
        (l.num_attention_heads, l.num_key_value_heads, l.head_dim),
        (4, 2, 16)
    );
    assert_eq!(l.rope_theta, 500_000.0);
    assert!(l.rope_scaling.is_some(), "llama3 scaling read");
    assert!(!l.tie_word_embeddings && !l.qkv_bias());
    let q = LlamaConfig::from_file(&golden_dir("tiny_qwen2").join("config.json")).unwrap();
    assert_eq!(q.family, LlamaFamily::Qwen2);
    assert_eq!(q.num_key_value_heads, 1);
    assert_eq!(q.rope_theta, 1_000_000.0);
    assert!(q.rope_scaling.is_none());
    assert!(q.tie_word_embeddings && q.qkv_bias() && !q.o_bias());
    assert_eq!(q.rms_norm_eps, 1e-6);
    for cfg in [&l, &q] {
        let listed: usize = Llama::parameter_shapes(cfg)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(listed, cfg.num_params(), "{:?}", cfg.family);
    }
    // SmolLM2-135M's sizes: transformers' LlamaForCausalLM(...).num_parameters() says 134515008.
    let smol = LlamaConfig::from_json(
        r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192,
            "tie_word_embeddings": true}"#,
    )
    .unwrap();
    assert_eq!(smol.num_params(), 134_515_008);
}

/// The tiny Llama's config.json edited by `edit`, parsed.
fn edited(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<LlamaConfig, Error> {
    let text = std::fs::read_to_string(golden_dir("tiny_llama").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(v.as_object_mut().unwrap());
    LlamaConfig::from_json(&v.to_string())
}

fn err_text(r: Result<LlamaConfig, Error>) -> String {
    match r {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_defaults_and_older_rope_fields() {
    use serde_json::json;
    // No num_key_value_heads / head_dim: multi-head attention, D = C / H.
    let c = edited(|m| {
        m.remove("num_key_value_heads");
        m.remove("head_dim");
    })
    .unwrap();
    assert_eq!((c.num_key_value_heads, c.head_dim), (4, 16));
    // Pre-transformers-5 files: rope_theta and rope_scaling at the top level.
    let c = edited(|m| {
        m.remove("rope_parameters");
        m.insert("rope_theta".into(), json!(123456.0));
        m.insert(
            "rope_scaling".into(),
            json!({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        );
    })
    .unwrap();
    assert_eq!(c.rope_theta, 123456.0);
    assert!(c.rope_scaling.is_some());
    let c = edited(|m| {
        m.remove("rope_parameters");
    })
    .unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (10_000.0, None));
    // Mistral with no window, or one as long as the context, is Llama.
    let c = edited(|m| {
        m.insert("model_type".into(), json!("mistral"));
        m.insert("sliding_window".into(), json!(64));
    })
    .unwrap();
    assert_eq!(c.family, LlamaFamily::Mistral);
}

#[test]
fn config_errors_name_the_field() {
    use serde_json::json;
    for field in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "model_type",
    ] {
        let e = err_text(edited(|m| {
            m.remove(field);
        }));
        assert!(e.contains(field) && e.contains("missing"), "{field}: {e}");
    }
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("model_type", json!("gpt_neox"), "gpt_neox"),
        ("hidden_act", json!("gelu"), "hidden_act"),
        ("num_key_value_heads", json!(3), "not a multiple"),
        ("hidden_size", json!(-4), "hidden_size"),
        ("intermediate_size", json!(1.5), "intermediate_size"),
        ("rms_norm_eps", json!(0.0), "rms_norm_eps"),
        ("rms_norm_eps", json!("small"), "rms_norm_eps"),
        ("tie_word_embeddings", json!(1), "tie_word_embeddings"),
        ("mlp_bias", json!(true), "mlp_bias"),
        ("head_dim", json!(15), "head_dim"),
        (
            "rope_parameters",
            json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}),
            "yarn",
        ),
        (
            "rope_parameters",
            json!({"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0}),
            "low_freq_factor",
        ),
        (
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": 0.5}),
            "rope_theta",
        ),
    ];
    for (field, value, needle) in cases {
        let e = err_text(edited(|m| {
            m.insert(field.into(), value.clone());
        }));
        assert!(e.contains(needle), "{field} = {value}: {e}");
    }
    // No head_dim and a width the heads do not divide.
    let e = err_text(edited(|m| {
        m.remove("head_dim");
        m.insert("hidden_size".into(), json!(66));
    }));
    assert!(e.contains("not a multiple"), "{e}");
    // A sliding window shorter than the context is not implemented.
    let e = err_text(edited(|m| {
        m.insert("model_type".into(), json!("mistral"));
        m.insert("sliding_window".into(), json!(32));
    }));
    assert!(e.contains("sliding_window"), "{e}");
    let e = err_text(LlamaConfig::from_json("[1, 2]"));
    assert!(e.contains("object"), "{e}");
    let e = err_text(LlamaConfig::from_json("{ not json"));
    assert!(e.contains("JSON"), "{e}");
}

// Tolerances (f32 GPU vs float64 PyTorch from the same f32 weights): logits 1e-4 absolute
// (values up to ~10, a few hundred-term f32 sums per layer); loss 1e-5 relative; gradients
// 1e-3 relative + 2e-6 of their largest magnitude (as for GPT-2; llm.c accepts 1e-2).
#[test]
fn logits_loss_and_every_gradient_match_pytorch() {
    let dev = shared_device();
    for name in MODELS {
        let g = Golden::load(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let (b, t, ids, inp, tgt) = batch(&g);
        let full = Tensor::from_u32(&dev, &ids, &[b, t]).unwrap();
        let logits = portagrad::inference(|| model.forward(&full)).unwrap();
        let (shape, want) = g.f64s("logits");
        assert_eq!(logits.shape(), &shape[..], "{name}");
        assert_close(
            &format!("{name} logits"),
            &logits.to_vec().unwrap(),
            &want,
            0.0,
            1e-4,
        );

        let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
        let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
        let loss = model.loss(&x, &y).unwrap();
        let (_, want_loss) = g.f64s("loss");
        assert_close(
            &format!("{name} loss"),
            &[loss.item().unwrap()],
            &want_loss,
            1e-5,
            0.0,
        );

        let grads = loss.backward().unwrap();
        let mut names = Vec::new();
        for (pname, p) in model.parameters() {
            let got = grads
                .get(&p)
                .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let (shape, want) = g.f64s(&format!("grad.{pname}"));
            assert_eq!(got.shape(), &shape[..], "{name} {pname}");
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert_close(
                &format!("{name} grad {pname}"),
                &got.to_vec().unwrap(),
                &want,
                1e-3,
                2e-6 * scale.max(1e-3),
            );
            names.push(pname);
        }
        names.sort();
        assert_eq!(
            names,
            g.grad_names(),
            "{name}: every HF parameter, HF names"
        );
    }
}

#[test]
fn eight_adamw_steps_match_pytorch() {
    let dev = shared_device();
    for name in MODELS {
        let g = Golden::load(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let (b, t, _, inp, tgt) = batch(&g);
        let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
        let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
        let mut opt = Optimizer::adamw(model.parameters(), 1e-3, 0.1).unwrap();
        let mut losses = Vec::new();
        for _ in 0..8 {
            let loss = model.loss(&x, &y).unwrap();
            losses.push(loss.item().unwrap());
            let grads = loss.backward().unwrap();
            opt.step(&grads).unwrap();
        }
        let (_, want) = g.f64s("adamw_losses");
        assert_close(&format!("{name} AdamW losses"), &losses, &want, 2e-5, 0.0);
    }
}

fn greedy() -> Sampler {
    Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    })
    .unwrap()
}

/// transformers' `generate(do_sample=False)` tokens, with the KV cache (rotary offset = the
/// cache's length) and without it. The script prints the smallest top-1 / top-2 logit gap on
/// the way (2e-3 for tiny_llama, 4e-2 for tiny_qwen2), far above the logits' f32 error.
#[test]
fn greedy_generation_matches_transformers() {
    let dev = shared_device();
    for name in MODELS {
        let g = Golden::load(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let prompt = g.u32s("prompt");
        let want = g.u32s("greedy");
        let cached = model
            .generate(&prompt, want.len(), &mut greedy(), &mut |_| Ok(true))
            .unwrap();
        assert_eq!(cached, want, "{name}: KV-cached greedy tokens");
        let full = generate_full_context(&model, &prompt, want.len(), &mut greedy(), &mut |_| {
            Ok(true)
        })
        .unwrap();
        assert_eq!(full, want, "{name}: uncached greedy tokens");
    }
}

/// One tensor of a safetensors file, owned.
#[derive(Clone)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| Entry {
            name: n,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn write_entries(path: &Path, entries: &[Entry]) {
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                TensorView::new(e.dtype, e.shape.clone(), &e.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A fresh directory holding `model`'s config.json.
fn scratch(model: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portagrad-llama-{}-{model}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        golden_dir(model).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    dir
}

fn logits_of(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::from_u32(model.device(), ids, &[1, ids.len()]).unwrap();
    portagrad::inference(|| model.forward(&x))
        .unwrap()
        .to_vec()
        .unwrap()
}

#[test]
fn sharded_files_load_as_one() {
    let dev = shared_device();
    let name = "tiny_llama";
    let entries = read_entries(&golden_dir(name).join("model.safetensors"));
    let dir = scratch(name, "shards");
    let (a, b) = entries.split_at(entries.len() / 2);
    write_entries(&dir.join("model-00001-of-00002.safetensors"), a);
    write_entries(&dir.join("model-00002-of-00002.safetensors"), b);
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|e| (e.name.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(
            b.iter()
                .map(|e| (e.name.clone(), "model-00002-of-00002.safetensors".into())),
        )
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ids = Golden::load(name).u32s("prompt");
    let whole = load_llama(&dev, &golden_dir(name)).unwrap();
    let sharded = load_llama(&dev, &dir).unwrap();
    assert_eq!(logits_of(&sharded, &ids), logits_of(&whole, &ids));

    // A shard the index names but the directory lacks.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_llama(&dev, &dir).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    // A tensor in two shards.
    write_entries(
        &dir.join("model-00002-of-00002.safetensors"),
        entries.as_slice(),
    );
    let e = load_llama(&dev, &dir).unwrap_err().to_string();
    assert!(e.contains("is in both"), "{e}");
    // No weights at all.
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    let e = load_llama(&dev, &dir).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// F16 and BF16 files are upcast exactly: the same logits as an F32 file of the rounded values.
#[test]
fn f16_and_bf16_files_load_exactly() {
    let dev = shared_device();
    let name = "tiny_qwen2";
    let entries = read_entries(&golden_dir(name).join("model.safetensors"));
    let ids = Golden::load(name).u32s("prompt");
    for dtype in [Dtype::F16, Dtype::BF16] {
        let (mut half, mut rounded) = (entries.clone(), entries.clone());
        for (h, r) in half.iter_mut().zip(rounded.iter_mut()) {
            let f: Vec<f32> = bytemuck::pod_collect_to_vec(&h.data);
            let (bits, back): (Vec<u16>, Vec<f32>) = match dtype {
                Dtype::F16 => f
                    .iter()
                    .map(|&x| {
                        let y = half::f16::from_f32(x);
                        (y.to_bits(), y.to_f32())
                    })
                    .unzip(),
                _ => f
                    .iter()
                    .map(|&x| {
                        let y = half::bf16::from_f32(x);
                        (y.to_bits(), y.to_f32())
                    })
                    .unzip(),
            };
            h.dtype = dtype;
            h.data = bytemuck::cast_slice(&bits).to_vec();
            r.data = bytemuck::cast_slice(&back).to_vec();
        }
        let (dh, dr) = (
            scratch(name, &format!("{dtype:?}")),
            scratch(name, &format!("{dtype:?}-f32")),
        );
        write_entries(&dh.join("model.safetensors"), &half);
        write_entries(&dr.join("model.safetensors"), &rounded);
        let a = load_llama(&dev, &dh).unwrap();
        let b = load_llama(&dev, &dr).unwrap();
        let (la, lb) = (logits_of(&a, &ids), logits_of(&b, &ids));
        assert_eq!(la, lb, "{dtype:?}");
        // And the rounding did change something (the test would be empty otherwise).
        let whole = load_llama(&dev, &golden_dir(name)).unwrap();
        assert_ne!(la, logits_of(&whole, &ids), "{dtype:?}");
        std::fs::remove_dir_all(&dh).unwrap();
        std::fs::remove_dir_all(&dr).unwrap();
    }
}

/// Each mismatch between config.json and the tensors is an error naming the tensor.
#[test]
fn loader_errors_name_the_tensor() {
    let dev = shared_device();
    type Edit = Box<dyn Fn(&mut Vec<Entry>)>;
    let cases: Vec<(&str, &str, Edit, &str)> = vec![
        (
            "tiny_llama",
            "missing",
            Box::new(|v| v.retain(|e| e.name != "model.layers.1.mlp.up_proj.weight")),
            "model.layers.1.mlp.up_proj.weight (shape [88, 64]) is missing",
        ),
        (
            "tiny_llama",
            "no-head",
            Box::new(|v| v.retain(|e| e.name != "lm_head.weight")),
            "lm_head.weight (shape [131, 64]) is missing",
        ),
        (
            "tiny_qwen2",
            "no-bias",
            Box::new(|v| v.retain(|e| e.name != "model.layers.0.self_attn.k_proj.bias")),
            "model.layers.0.self_attn.k_proj.bias (shape [16]) is missing",
        ),
        (
            "tiny_llama",
            "unexpected",
            Box::new(|v| {
                let mut e = v[0].clone();
                e.name = "model.layers.2.mlp.up_proj.weight".into();
                v.push(e);
            }),
            "model.layers.2.mlp.up_proj.weight",
        ),
        (
            "tiny_llama",
            "bias-in-llama",
            Box::new(|v| {
                let mut e = v
                    .iter()
                    .find(|e| e.name == "model.norm.weight")
                    .unwrap()
                    .clone();
                e.name = "model.layers.0.self_attn.o_proj.bias".into();
                v.push(e);
            }),
            "model.layers.0.self_attn.o_proj.bias",
        ),
        (
            "tiny_llama",
            "shape",
            Box::new(|v| {
                let e = v
                    .iter_mut()
                    .find(|e| e.name == "model.layers.0.self_attn.k_proj.weight")
                    .unwrap();
                // (Hkv·D, C) = (32, 64) stored as if Hkv were H: (64, 32).
                e.shape = vec![64, 32];
            }),
            "model.layers.0.self_attn.k_proj.weight has shape [64, 32] but config.json implies [32, 64]",
        ),
        (
            "tiny_qwen2",
            "dtype",
            Box::new(|v| {
                let e = v
                    .iter_mut()
                    .find(|e| e.name == "model.norm.weight")
                    .unwrap();
                e.dtype = Dtype::I32;
            }),
            "model.norm.weight has dtype I32",
        ),
    ];
    // What checkpoints carry besides the parameters is accepted: older rotary buffers, and a
    // tied head saved anyway; a tied head of the wrong shape is not.
    let mut entries = read_entries(&golden_dir("tiny_qwen2").join("model.safetensors"));
    let embed = entries
        .iter()
        .find(|e| e.name == "model.embed_tokens.weight")
        .unwrap()
        .clone();
    let mut inv = entries
        .iter()
        .find(|e| e.name == "model.norm.weight")
        .unwrap()
        .clone();
    inv.name = "model.layers.0.self_attn.rotary_emb.inv_freq".into();
    entries.push(inv);
    entries.push(Entry {
        name: "lm_head.weight".into(),
        ..embed
    });
    let dir = scratch("tiny_qwen2", "extras");
    write_entries(&dir.join("model.safetensors"), &entries);
    let ids = Golden::load("tiny_qwen2").u32s("prompt");
    let whole = load_llama(&dev, &golden_dir("tiny_qwen2")).unwrap();
    assert_eq!(
        logits_of(&load_llama(&dev, &dir).unwrap(), &ids),
        logits_of(&whole, &ids)
    );
    entries.last_mut().unwrap().shape = vec![64, 97];
    write_entries(&dir.join("model.safetensors"), &entries);
    let e = load_llama(&dev, &dir).unwrap_err().to_string();
    assert!(
        e.contains("lm_head.weight has shape [64, 97] but config.json implies [97, 64]"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    for (model, tag, edit, needle) in cases {
        let mut entries = read_entries(&golden_dir(model).join("model.safetensors"));
        edit(&mut entries);
        let dir = scratch(model, tag);
        write_entries(&dir.join("model.safetensors"), &entries);
        let e = load_llama(&dev, &dir).unwrap_err().to_string();
        assert!(e.contains(needle), "{model} {tag}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn context_and_id_errors() {
    let dev = shared_device();
    let dir = golden_dir("tiny_llama");
    let e = load_llama_with_context(&dev, &dir, 65)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
    let model = load_llama_with_context(&dev, &dir, 8).unwrap();
    assert_eq!(model.context(), 8);
    let long = Tensor::from_u32(&dev, &[1; 9], &[1, 9]).unwrap();
    let e = model.forward(&long).unwrap_err().to_string();
    assert!(e.contains("1..=8"), "{e}");
    let bad = Tensor::from_u32(&dev, &[1, 131], &[1, 2]).unwrap();
    assert!(
        model.forward(&bad).is_err(),
        "id 131 past a vocabulary of 131"
    );
}

/// A trained model written by `save_llama` loads back to the same config and the same logits
/// (the updated weights, not the file's first ones).
#[test]
fn save_after_training_loads_back() {
    let dev = shared_device();
    for name in MODELS {
        let g = Golden::load(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let (b, t, _, inp, tgt) = batch(&g);
        let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
        let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
        let mut opt = Optimizer::adamw(model.parameters(), 1e-2, 0.1).unwrap();
        let grads = model.loss(&x, &y).unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
        let dir = scratch(name, "saved");
        save_llama(&model, &dir).unwrap();
        let back = load_llama(&dev, &dir).unwrap();
        assert_eq!(back.config(), model.config(), "{name}");
        let ids = g.u32s("prompt");
        let trained = logits_of(&model, &ids);
        assert_eq!(logits_of(&back, &ids), trained, "{name}");
        let first = load_llama(&dev, &golden_dir(name)).unwrap();
        assert_ne!(
            logits_of(&first, &ids),
            trained,
            "{name}: the step changed the weights"
        );
        // A tied head is not written, as transformers saves it.
        let names: Vec<String> = read_entries(&dir.join("model.safetensors"))
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            !model.config().tie_word_embeddings,
            "{name}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Two sequences in one batch (B = 2 in the caches) give each one's single-sequence tokens.
#[test]
fn batched_generation_matches_single() {
    let dev = shared_device();
    for name in MODELS {
        let g = Golden::load(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let prompt = g.u32s("prompt");
        let want = g.u32s("greedy");
        let other: Vec<u32> = prompt.iter().rev().copied().collect();
        let alone = model
            .generate(&other, want.len(), &mut greedy(), &mut |_| Ok(true))
            .unwrap();
        let opts = GenerateOptions {
            max_new_tokens: want.len(),
            ..Default::default()
        };
        let out = generate_batch(
            &model,
            &[prompt, other],
            &opts,
            &mut [greedy(), greedy()],
            &mut |_, _| Ok(true),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![want, alone], "{name}");
    }
}

/// Past the context the caches are rebuilt (rotary offsets restart from the kept tokens):
/// rebuilding at every token is the uncached full-context generation, token for token.
#[test]
fn generation_past_the_context_matches_full_context() {
    let dev = shared_device();
    for name in MODELS {
        let g = Golden::load(name);
        let model = load_llama_with_context(&dev, &golden_dir(name), 9).unwrap();
        let prompt = g.u32s("prompt");
        let opts = GenerateOptions {
            max_new_tokens: 10,
            context_keep: Some(9),
            ..Default::default()
        };
        let out = generate_batch(
            &model,
            std::slice::from_ref(&prompt),
            &opts,
            &mut [greedy()],
            &mut |_, _| Ok(true),
        )
        .unwrap();
        assert!(out.context_rebuilds > 0, "{name}: the context filled");
        let full =
            generate_full_context(&model, &prompt, 10, &mut greedy(), &mut |_| Ok(true)).unwrap();
        assert_eq!(out.tokens[0], full, "{name}");
    }
}

/// Entries with the weight matrices (those `Llama::is_weight_matrix` names) rounded to 16 bits:
/// stored in `dtype` when `store_half`, else as f32 holding the rounded values.
fn round_matrices(entries: &[Entry], dtype: DType, store_half: bool) -> Vec<Entry> {
    let mut out = entries.to_vec();
    for e in out.iter_mut().filter(|e| Llama::is_weight_matrix(&e.name)) {
        let f: Vec<f32> = bytemuck::pod_collect_to_vec(&e.data);
        let (bits, back): (Vec<u16>, Vec<f32>) = f
            .iter()
            .map(|&x| match dtype {
                DType::F16 => {
                    let y = half::f16::from_f32(x);
                    (y.to_bits(), y.to_f32())
                }
                _ => {
                    let y = half::bf16::from_f32(x);
                    (y.to_bits(), y.to_f32())
                }
            })
            .unzip();
        if store_half {
            e.dtype = if dtype == DType::F16 {
                Dtype::F16
            } else {
                Dtype::BF16
            };
            e.data = bytemuck::cast_slice(&bits).to_vec();
        } else {
            e.data = bytemuck::cast_slice(&back).to_vec();
        }
    }
    out
}

/// Weight matrices held in f16 / bf16: half their memory, the logits of the f32 model of the
/// rounded weights (same values; only the matmul kernels differ, so 1e-4 as for the golden
/// logits), its greedy tokens, and a file already in 16 bits uploaded as stored.
#[test]
fn sixteen_bit_weights_for_inference() {
    let dev = shared_device();
    for name in MODELS {
        let entries = read_entries(&golden_dir(name).join("model.safetensors"));
        let g = Golden::load(name);
        let prompt = g.u32s("prompt");
        let f32_model = load_llama(&dev, &golden_dir(name)).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let half = load_llama_as(&dev, &golden_dir(name), 64, dtype).unwrap();
            assert_eq!(half.weight_dtype(), dtype);
            let e = Optimizer::adamw(half.parameters(), 1e-3, 0.0).unwrap_err();
            assert!(e.to_string().contains("f32"), "{name} {dtype:?}: {e}");
            let norms_and_biases: u64 = f32_model
                .parameters()
                .iter()
                .filter(|(n, _)| !Llama::is_weight_matrix(n))
                .map(|(_, t)| t.numel() as u64 * 4)
                .sum();
            assert_eq!(
                half.parameter_bytes() - norms_and_biases,
                (f32_model.parameter_bytes() - norms_and_biases) / 2,
                "{name} {dtype:?}: matrices in half the bytes"
            );
            let dir = scratch(name, &format!("rounded-{dtype:?}"));
            write_entries(
                &dir.join("model.safetensors"),
                &round_matrices(&entries, dtype, false),
            );
            let rounded = load_llama(&dev, &dir).unwrap();
            let want: Vec<f64> = logits_of(&rounded, &prompt)
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let got = logits_of(&half, &prompt);
            assert_close(&format!("{name} {dtype:?} logits"), &got, &want, 0.0, 1e-4);
            // The rounding moves the logits past that tolerance: the comparison can tell.
            let moved = logits_of(&f32_model, &prompt)
                .iter()
                .zip(&got)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                moved > 1e-3,
                "{name} {dtype:?}: rounding moved logits {moved}"
            );
            let a = rounded
                .generate(&prompt, 8, &mut greedy(), &mut |_| Ok(true))
                .unwrap();
            let b = half
                .generate(&prompt, 8, &mut greedy(), &mut |_| Ok(true))
                .unwrap();
            assert_eq!(a, b, "{name} {dtype:?} greedy");
            // A file in 16 bits: the same bits on the device as rounding on load.
            write_entries(
                &dir.join("model.safetensors"),
                &round_matrices(&entries, dtype, true),
            );
            let stored = load_llama_as(&dev, &dir, 64, dtype).unwrap();
            assert_eq!(logits_of(&stored, &prompt), got, "{name} {dtype:?}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
