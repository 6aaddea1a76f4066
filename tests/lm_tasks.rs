//! The language-model tasks of `lm` (src/models/lm.rs), which the `lm` example's score, grad,
//! finetune and generate commands call, on the Llama-family golden models
//! (tests/golden/tiny_llama and tiny_qwen2, made by scripts/make_llama_golden.py in float64):
//! the loss, the gradient file's names and values, AdamW fine-tuning with the golden's settings
//! (lr 1e-3, weight decay 0.1 on every parameter, β (0.9, 0.999), ε 1e-8) and greedy generation
//! that stops at any of several stop tokens.

use std::path::{Path, PathBuf};

use portagrad::generate::{GenerateOptions, Sampler, SamplingConfig};
use portagrad::models::lm::{self, DecayMode, FinetuneConfig, IdBatch};
use portagrad::models::load_llama;
use portagrad::testing::{assert_close, shared_device};
use safetensors::{Dtype, SafeTensors};

const MODELS: [&str; 2] = ["tiny_llama", "tiny_qwen2"];

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Every tensor of a safetensors file as (name, shape, f64 values), sorted by name.
fn read_all(path: &Path) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v: Vec<f64> = match t.dtype() {
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
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, t.shape().to_vec(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn golden(name: &str) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    read_all(&golden_dir(name).join("golden.safetensors"))
}

fn get<'a>(
    g: &'a [(String, Vec<usize>, Vec<f64>)],
    name: &str,
) -> &'a (String, Vec<usize>, Vec<f64>) {
    g.iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("{name} in golden file"))
}

fn golden_batch(g: &[(String, Vec<usize>, Vec<f64>)]) -> IdBatch {
    let (_, shape, v) = get(g, "ids");
    let rows: Vec<Vec<u32>> = v
        .chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect();
    IdBatch::from_rows(&rows).unwrap()
}

fn u32s(g: &[(String, Vec<usize>, Vec<f64>)], name: &str) -> Vec<u32> {
    get(g, name).2.iter().map(|&x| x as u32).collect()
}

#[test]
fn score_is_the_golden_loss() {
    let dev = shared_device();
    for name in MODELS {
        let g = golden(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let loss = lm::score(&model, &golden_batch(&g)).unwrap();
        assert_close(
            &format!("{name} score"),
            &[loss],
            &get(&g, "loss").2,
            1e-5,
            0.0,
        );
    }
}

/// The file `lm grad` writes: every gradient under its Hugging Face name (those of
/// transformers' `named_parameters()`), with the golden values.
#[test]
fn gradient_file_has_hugging_face_names_and_golden_values() {
    let dev = shared_device();
    for name in MODELS {
        let g = golden(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let path = std::env::temp_dir().join(format!(
            "portagrad-lm-tasks-{}-{name}-grad.safetensors",
            std::process::id()
        ));
        let loss = lm::save_gradients(&model, &golden_batch(&g), &path).unwrap();
        let got = read_all(&path);
        std::fs::remove_file(&path).unwrap();
        assert_close(
            &format!("{name} loss"),
            &[loss],
            &get(&g, "loss").2,
            1e-5,
            0.0,
        );
        let want: Vec<_> = g
            .iter()
            .filter_map(|(n, s, v)| n.strip_prefix("grad.").map(|n| (n.to_string(), s, v)))
            .collect();
        let got_names: Vec<&String> = got.iter().map(|(n, _, _)| n).collect();
        let want_names: Vec<&String> = want.iter().map(|(n, _, _)| n).collect();
        assert_eq!(got_names, want_names, "{name}: gradient names");
        for ((n, shape, v), (_, wshape, w)) in got.iter().zip(&want) {
            assert_eq!(shape, *wshape, "{name} {n}");
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            assert_close(
                &format!("{name} grad {n}"),
                &v,
                w,
                1e-3,
                2e-6 * scale.max(1e-3),
            );
        }
    }
}

/// `lm finetune --steps 8 --lr 1e-3 --weight-decay 0.1 --decay all`: the golden's 8 AdamW
/// losses (torch.optim.AdamW over `model.parameters()`).
#[test]
fn finetune_losses_are_the_golden_adamw_losses() {
    let dev = shared_device();
    for name in MODELS {
        let g = golden(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let batch = golden_batch(&g);
        let cfg = FinetuneConfig {
            steps: 8,
            lr: 1e-3,
            weight_decay: 0.1,
            decay: DecayMode::All,
            clip: None,
            dropout: true,
        };
        let mut seen = Vec::new();
        let losses = lm::finetune(&model, &cfg, &mut |_| Ok(batch.clone()), &mut |s, l| {
            seen.push((s, l))
        })
        .unwrap();
        let want = &get(&g, "adamw_losses").2;
        assert_close(&format!("{name} finetune losses"), &losses, want, 2e-5, 0.0);
        assert_eq!(seen.len(), 8, "{name}: on_step once per step");
    }
}

/// Matrices-only decay trains the 1-D RMSNorm gains without decay, so from the second step on
/// its losses differ from decaying everything (same first loss).
#[test]
fn matrices_only_decay_differs_from_all() {
    let dev = shared_device();
    let g = golden("tiny_llama");
    let batch = golden_batch(&g);
    let run = |decay| {
        let model = load_llama(&dev, &golden_dir("tiny_llama")).unwrap();
        let cfg = FinetuneConfig {
            steps: 3,
            lr: 1e-2,
            weight_decay: 0.5,
            decay,
            clip: None,
            dropout: false,
        };
        lm::finetune(&model, &cfg, &mut |_| Ok(batch.clone()), &mut |_, _| {}).unwrap()
    };
    let (all, mat) = (run(DecayMode::All), run(DecayMode::Matrices));
    assert_eq!(all[0], mat[0]);
    assert!(
        (all[2] - mat[2]).abs() > 1e-6,
        "decay groups made no difference: {all:?} vs {mat:?}"
    );
}

#[test]
fn ids_past_the_vocabulary_are_an_error() {
    let dev = shared_device();
    let model = load_llama(&dev, &golden_dir("tiny_qwen2")).unwrap();
    let batch = IdBatch::from_rows(&[vec![1, 2, 97]]).unwrap();
    let e = lm::score(&model, &batch).unwrap_err().to_string();
    assert!(
        e.contains("token id 97") && e.contains("vocabulary of 97"),
        "{e}"
    );
}

fn greedy() -> Vec<Sampler> {
    Sampler::batch(
        &SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        },
        1,
    )
    .unwrap()
}

/// `lm generate --greedy` is transformers' `generate(do_sample=False)`; with stop tokens it ends
/// at the first one sampled, without outputting or streaming it.
#[test]
fn greedy_generation_and_stop_tokens() {
    let dev = shared_device();
    for name in MODELS {
        let g = golden(name);
        let model = load_llama(&dev, &golden_dir(name)).unwrap();
        let prompt = vec![u32s(&g, "prompt")];
        let want = u32s(&g, "greedy");
        let opts = GenerateOptions {
            max_new_tokens: want.len(),
            ..Default::default()
        };
        let mut streamed = Vec::new();
        let out =
            lm::generate_until_stop(&model, &prompt, &opts, &[], &mut greedy(), &mut |_, id| {
                streamed.push(id);
                Ok(true)
            })
            .unwrap();
        assert_eq!(out.tokens[0], want, "{name}: greedy tokens");
        assert_eq!(streamed, want, "{name}: streamed tokens");
        assert!(!out.stopped[0]);

        // Stop at the third token's id, listed second after an id the model never samples.
        let stop = want[2];
        let first = want.iter().position(|&t| t == stop).unwrap();
        let mut streamed = Vec::new();
        let out = lm::generate_until_stop(
            &model,
            &prompt,
            &opts,
            &[want.iter().copied().max().unwrap() + 1, stop],
            &mut greedy(),
            &mut |_, id| {
                streamed.push(id);
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(
            out.tokens[0],
            want[..first],
            "{name}: tokens before the stop"
        );
        assert_eq!(
            streamed,
            want[..first],
            "{name}: the stop token is not streamed"
        );
        assert!(out.stopped[0], "{name}: stopped");
    }
}

/// A tokenizer of another model (the SmolLM2 fixture, 559 tokens) on tiny_llama (131): a clear
/// error naming both sizes, where its ids would otherwise pass the embedding.
#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
    let dev = shared_device();
    let model = load_llama(&dev, &golden_dir("tiny_llama")).unwrap();
    let tok =
        portagrad::models::HfTokenizer::from_dir(&golden_dir("hf_tokenizers/smollm2")).unwrap();
    let e = lm::check_tokenizer_fits(&tok, &model)
        .unwrap_err()
        .to_string();
    assert!(e.contains("559") && e.contains("131"), "{e}");
    let qwen = load_llama(&dev, &golden_dir("tiny_qwen2")).unwrap();
    assert!(lm::check_tokenizer_fits(&tok, &qwen).is_err());
}
