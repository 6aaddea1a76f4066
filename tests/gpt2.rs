//! The library side of the `gpt2` example on the tiny golden GPT-2 (tests/golden/tiny_gpt2):
//! KV-cached generation against the full-context path, batches, seeds, stop tokens, streaming,
//! context limits; and bad input to generation, the task functions, tokenizers and the loader,
//! each a clear error, never a panic.

use std::path::{Path, PathBuf};

use portagrad::generate::{Sampler, SamplingConfig};
use portagrad::models::lm::{self, IdBatch, TextTokenizer};
use portagrad::models::{
    CharTokenizer, GenerateOptions, Gpt, GptConfig, load_pretrained, save_pretrained,
};
use portagrad::testing::shared_device;
use portagrad::{Error, Result};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny_gpt2")
}

fn tiny() -> Gpt {
    load_pretrained(&shared_device(), &golden_dir()).expect("tiny gpt2")
}

fn greedy() -> Sampler {
    Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    })
    .unwrap()
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + salt * 17 + 5) % 67)
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portagrad-gpt2-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn kv_cached_greedy_equals_the_full_context_path() {
    let model = tiny();
    let bs = model.config().block_size; // 16
    for (len, salt) in [(1, 0), (2, 1), (5, 2), (9, 3), (15, 4), (16, 5)] {
        let p = prompt(len, salt);
        // Within the context, then well past it (the full-context path slides its window).
        for max_new in [bs + 1 - len.min(bs), 40] {
            let full = model
                .generate_full_context(&p, max_new, &mut greedy(), &mut |_| Ok(true))
                .unwrap();
            // `context_keep = block_size` rebuilds the caches at each token past the context,
            // which is what the full-context path computes.
            let opts = GenerateOptions {
                max_new_tokens: max_new,
                stop_token: None,
                context_keep: Some(bs),
            };
            let cached = model
                .generate_batch(
                    std::slice::from_ref(&p),
                    &opts,
                    &mut [greedy()],
                    &mut |_, _| Ok(true),
                )
                .unwrap();
            assert_eq!(cached.tokens[0], full, "prompt {p:?}, {max_new} new tokens");
            assert_eq!(full.len(), max_new);
        }
        // `generate` (the default policy) agrees while the context is not full.
        let n = bs - len.min(bs - 1);
        let full = model
            .generate_full_context(&p, n, &mut greedy(), &mut |_| Ok(true))
            .unwrap();
        let cached = model
            .generate(&p, n, &mut greedy(), &mut |_| Ok(true))
            .unwrap();
        assert_eq!(cached, full, "generate, prompt {p:?}");
    }
}

#[test]
fn a_batch_gives_each_prompt_what_it_gives_alone() {
    let model = tiny();
    let prompts: Vec<Vec<u32>> = [3, 1, 7, 3, 12]
        .iter()
        .enumerate()
        .map(|(i, &l)| prompt(l, i as u32))
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        ..Default::default()
    };
    let cfg = SamplingConfig {
        temperature: 0.9,
        top_k: Some(20),
        seed: 11,
        ..Default::default()
    };
    let mut streamed: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let out = model
        .generate_batch(
            &prompts,
            &opts,
            &mut Sampler::batch(&cfg, prompts.len()).unwrap(),
            &mut |i, id| {
                streamed[i].push(id);
                Ok(true)
            },
        )
        .unwrap();
    assert_eq!(out.tokens, streamed, "every token is streamed, in order");
    assert!(out.prefill_tokens >= prompts.len() && out.decode_tokens > 0);
    assert!(
        out.context_rebuilds > 0,
        "7 + 20 and 12 + 20 pass the context of 16"
    );
    for (i, p) in prompts.iter().enumerate() {
        let mut one = Sampler::batch(&cfg, prompts.len()).unwrap().swap_remove(i);
        let alone = model
            .generate_batch(
                std::slice::from_ref(p),
                &opts,
                std::slice::from_mut(&mut one),
                &mut |_, _| Ok(true),
            )
            .unwrap();
        assert_eq!(out.tokens[i], alone.tokens[0], "prompt {i}");
        assert_eq!(out.tokens[i].len(), 20);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = tiny();
    let p = prompt(4, 9);
    let run = |cfg: SamplingConfig| -> Vec<u32> {
        let mut s = Sampler::new(cfg).unwrap();
        model.generate(&p, 30, &mut s, &mut |_| Ok(true)).unwrap()
    };
    for cfg in [
        SamplingConfig {
            seed: 1,
            ..Default::default()
        },
        SamplingConfig {
            temperature: 0.7,
            top_k: Some(10),
            seed: 2,
            ..Default::default()
        },
        SamplingConfig {
            top_p: Some(0.9),
            repetition_penalty: 1.3,
            seed: 3,
            ..Default::default()
        },
    ] {
        let a = run(cfg.clone());
        assert_eq!(a, run(cfg.clone()), "{cfg:?}");
        assert_ne!(
            a,
            run(SamplingConfig {
                seed: cfg.seed + 100,
                ..cfg.clone()
            }),
            "{cfg:?}"
        );
        assert_eq!(a.len(), 30);
    }
}

#[test]
fn stop_token_streaming_and_early_stop() {
    let model = tiny();
    let p = prompt(3, 2);
    let all = model
        .generate(&p, 12, &mut greedy(), &mut |_| Ok(true))
        .unwrap();
    // Stop at the 4th token greedy would produce (first occurrence).
    let stop = all[3];
    let first = all.iter().position(|&t| t == stop).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 12,
        stop_token: Some(stop),
        ..Default::default()
    };
    let out = model
        .generate_batch(
            std::slice::from_ref(&p),
            &opts,
            &mut [greedy()],
            &mut |_, _| Ok(true),
        )
        .unwrap();
    assert_eq!(out.tokens[0], all[..first], "stops before the stop token");
    assert!(out.stopped[0]);
    // The callback ends generation by returning false.
    let mut n = 0;
    let got = model
        .generate(&p, 12, &mut greedy(), &mut |_| {
            n += 1;
            Ok(n < 5)
        })
        .unwrap();
    assert_eq!(got, all[..5]);
    // An error from the callback propagates.
    let err = model
        .generate(&p, 12, &mut greedy(), &mut |_| -> Result<bool> {
            Err(Error::InvalidArgument {
                op: "test",
                message: "stop here".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop here"));
    // Zero new tokens is an empty answer.
    assert!(
        model
            .generate(&p, 0, &mut greedy(), &mut |_| Ok(true))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_prompt_longer_than_the_context_keeps_its_end() {
    let model = tiny();
    let long = prompt(40, 1);
    let opts = GenerateOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let out = model
        .generate_batch(
            std::slice::from_ref(&long),
            &opts,
            &mut [greedy()],
            &mut |_, _| Ok(true),
        )
        .unwrap();
    assert_eq!(out.truncated, [24]);
    let tail = model
        .generate_batch(
            &[long[24..].to_vec()],
            &opts,
            &mut [greedy()],
            &mut |_, _| Ok(true),
        )
        .unwrap();
    assert_eq!(out.tokens, tail.tokens);
    assert_eq!(tail.truncated, [0]);
}

#[test]
fn generation_rejects_bad_input() {
    let model = tiny();
    let opts = GenerateOptions::default();
    let msg = |r: Result<portagrad::models::Generation>| r.unwrap_err().to_string();
    let mut ok = |_: usize, _: u32| Ok(true);
    assert!(
        msg(model.generate_batch(&[vec![]], &opts, &mut [greedy()], &mut ok)).contains("empty")
    );
    assert!(msg(model.generate_batch(&[], &opts, &mut [], &mut ok)).contains("no prompts"));
    let e = msg(model.generate_batch(&[vec![1, 67]], &opts, &mut [greedy()], &mut ok));
    assert!(e.contains("67") && e.contains("out of range"), "{e}");
    let e = msg(model.generate_batch(&[vec![1], vec![2]], &opts, &mut [greedy()], &mut ok));
    assert!(e.contains("samplers"), "{e}");
    assert!(
        model
            .generate(&[], 3, &mut greedy(), &mut |_| Ok(true))
            .is_err()
    );
    assert!(
        model
            .generate_full_context(&[], 3, &mut greedy(), &mut |_| Ok(true))
            .is_err()
    );
}

#[test]
fn tasks_reject_bad_ids() {
    let model = tiny();
    let e = |r: Result<IdBatch>| r.unwrap_err().to_string();
    assert!(e(IdBatch::from_json("[[1, 2, 3], [4, 5]]")).contains("equal lengths"));
    assert!(e(IdBatch::from_json("[]")).contains("no sequences"));
    assert!(e(IdBatch::from_json("[[]]")).contains("empty"));
    assert!(e(IdBatch::from_json("[[1, -2]]")).contains("not a token id"));
    assert!(e(IdBatch::from_json("[[1, 2.5]]")).contains("not a token id"));
    assert!(e(IdBatch::from_json("{\"ids\": 1}")).contains("array"));
    assert!(e(IdBatch::from_json("[[1, 2]")).contains("JSON"));
    assert_eq!(IdBatch::from_json("[5, 6]").unwrap().rows(), [vec![5, 6]]);
    let missing = tmp("ids").join("missing.json");
    assert!(matches!(IdBatch::load(&missing), Err(Error::Io { .. })));

    let too_big = IdBatch::from_rows(&[vec![1, 2], vec![3, 67]]).unwrap();
    let err = lm::score(&model, &too_big).unwrap_err().to_string();
    assert!(
        err.contains("67") && err.contains("sequence 1, position 1"),
        "{err}"
    );
    assert!(lm::gradients(&model, &too_big).is_err());
    let one = IdBatch::from_rows(&[vec![1]]).unwrap();
    assert!(
        lm::score(&model, &one)
            .unwrap_err()
            .to_string()
            .contains("T >= 2")
    );
    let long = IdBatch::from_rows(&[prompt(17, 0)]).unwrap();
    assert!(
        lm::score(&model, &long)
            .unwrap_err()
            .to_string()
            .contains("context")
    );
    assert!(lm::window_batches(vec![1, 2, 3], 2, 4).is_err());
    let mut next = lm::window_batches((0..20).collect(), 2, 4).unwrap();
    assert_eq!(
        next(0).unwrap().rows(),
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
    assert_eq!(
        next(2).unwrap().rows(),
        [vec![16, 17, 18, 19], vec![0, 1, 2, 3]]
    );
}

#[test]
fn tokenizers_for_model_directories() {
    let dev = shared_device();
    // The tiny model has 67 ids: GPT-2's tokenizer does not fit it.
    let tok = TextTokenizer::for_model(&golden_dir(), None).unwrap();
    assert!(matches!(tok, TextTokenizer::Bpe(_)));
    assert!(tok.check_fits(50257).is_ok());
    let e = tok.check_fits(67).unwrap_err().to_string();
    assert!(e.contains("50257") && e.contains("67"), "{e}");
    // Missing tokenizer files named in the error.
    let e = TextTokenizer::for_model(&golden_dir(), Some(&tmp("notok"))).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("vocab.json"),
        "{e}"
    );
    // A `shakespeare` checkpoint: config.json + model.safetensors + a character vocab.json.
    let chars = CharTokenizer::from_text("abc ROMEO:\n").unwrap();
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        block_size: 8,
        vocab_size: chars.vocab_size(),
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    let dir = tmp("chars");
    save_pretrained(&Gpt::new(&dev, cfg, 1).unwrap(), &dir).unwrap();
    std::fs::write(dir.join("vocab.json"), chars.to_vocab_json()).unwrap();
    let model = load_pretrained(&dev, &dir).unwrap();
    let tok = TextTokenizer::for_model(&dir, None).unwrap();
    assert!(matches!(tok, TextTokenizer::Char(_)));
    tok.check_fits(model.config().vocab_size).unwrap();
    let ids = tok.encode("ROMEO:").unwrap();
    let new = model
        .generate(&ids, 10, &mut greedy(), &mut |_| Ok(true))
        .unwrap();
    assert_eq!(tok.decode(&new).unwrap().chars().count(), 10);
    assert!(
        tok.encode("z").is_err(),
        "a character outside the vocabulary"
    );
    std::fs::write(dir.join("vocab.json"), "{\"chars\": \"ba\"}").unwrap();
    assert!(
        TextTokenizer::for_model(&dir, None)
            .unwrap_err()
            .to_string()
            .contains("character vocabulary")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loader_rejects_more_disagreements() {
    let dev = shared_device();
    let dir = tmp("cfg");
    std::fs::copy(
        golden_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(golden_dir().join("config.json")).unwrap();
    for (what, from, to, want) in [
        (
            "more layers than tensors",
            "\"n_layer\": 2",
            "\"n_layer\": 3",
            "missing",
        ),
        (
            "fewer layers",
            "\"n_layer\": 2",
            "\"n_layer\": 1",
            "not in a GPT-2 of this config",
        ),
        (
            "vocabulary",
            "\"vocab_size\": 67",
            "\"vocab_size\": 50257",
            "shape",
        ),
        (
            "context",
            "\"n_positions\": 16",
            "\"n_positions\": 1024",
            "shape",
        ),
        ("heads", "\"n_head\": 2", "\"n_head\": 3", "multiple"),
        ("activation", "\"gelu_new\"", "\"relu\"", "activation"),
    ] {
        std::fs::write(dir.join("config.json"), cfg.replace(from, to)).unwrap();
        let err = load_pretrained(&dev, &dir).unwrap_err().to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
    // A safetensors header that promises more bytes than the file has.
    std::fs::write(dir.join("config.json"), &cfg).unwrap();
    let w = std::fs::read(golden_dir().join("model.safetensors")).unwrap();
    for cut in [0, 7, 100, w.len() - 1] {
        std::fs::write(dir.join("model.safetensors"), &w[..cut]).unwrap();
        let err = load_pretrained(&dev, &dir).unwrap_err().to_string();
        assert!(err.contains("safetensors"), "cut at {cut}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A device that plans with 128 MiB bindings and a one-layer GPT-2-sized config.
fn gpt2_sized() -> (portagrad::Device, GptConfig) {
    use portagrad::{Device, DeviceOptions};
    let dev = Device::with_options(DeviceOptions::new().plan_binding_bytes(128 << 20)).unwrap();
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 12,
        n_embd: 768,
        block_size: 32,
        ..GptConfig::default()
    };
    (dev, cfg)
}

// GPT-2's real embedding, (50257, 768) = 154 MB, past a 128 MiB binding (lavapipe's limit and
// WebGPU's default; the device plans with it on every adapter): held in 2 row chunks, it
// scores and generates. One layer and a short context keep it to a few seconds.
#[test]
fn a_gpt2_sized_embedding_scores_and_generates_in_chunks() {
    use portagrad::Tensor;
    let (dev, cfg) = gpt2_sized();
    let model = Gpt::new(&dev, cfg, 7).unwrap();
    let chunks: Vec<_> = model
        .parameters()
        .iter()
        .filter_map(|(n, _)| Gpt::wte_chunk_rows(n))
        .collect();
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[1].end, 50257);
    // Ids from both chunks, the last id included.
    let ids = IdBatch::from_rows(&[vec![50256, 3, 40000, 25000, 0, 50256, 17, 43690]]).unwrap();
    let loss = lm::score(&model, &ids).unwrap();
    // Logits of std about 0.02·sqrt(768) = 0.55 around zero: ln(50257) + 0.55² / 2 = 10.98.
    assert!((loss - 10.98).abs() < 0.1, "loss {loss}");
    // One greedy step is the argmax of the last position's logits.
    let x = Tensor::from_u32(&dev, &ids.ids, &[1, 8]).unwrap();
    let logits = portagrad::inference(|| model.forward(&x, false)).unwrap();
    let last = logits.to_vec().unwrap()[7 * 50257..].to_vec();
    let argmax = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap() as u32;
    let next = model
        .generate(&ids.ids, 1, &mut greedy(), &mut |_| Ok(true))
        .unwrap();
    assert_eq!(next, [argmax]);
    let e = lm::score(&model, &IdBatch::from_rows(&[vec![1, 50257]]).unwrap()).unwrap_err();
    assert!(e.to_string().contains("50257"), "{e}");
}

/// The same GPT-2-sized embedding in f16 is 77 MB: one binding of 128 MiB, no chunks; the
/// model built from f16 values (`Gpt::build_as`) scores and generates like the f32 model of
/// the same rounded values (whose embedding needs two chunks).
#[test]
fn a_gpt2_sized_embedding_in_f16_is_one_binding() {
    use portagrad::testing::reference::convert::{from_f16_bits, to_f16_bits};
    use portagrad::{DType, Tensor};
    let (dev, cfg) = gpt2_sized();
    let c = cfg.n_embd;
    let matrix = Gpt::is_weight_matrix;
    // The matrices rounded to f16 on the host, once: both models hold these values.
    let seed_model = Gpt::new(&dev, cfg.clone(), 7).unwrap();
    let host: Vec<(String, Vec<f32>)> = Gpt::join_wte_chunks(&seed_model.parameters())
        .unwrap()
        .into_iter()
        .map(|(n, _, v)| {
            let v = if matrix(&n) {
                v.into_iter()
                    .map(|x| from_f16_bits(to_f16_bits(x)))
                    .collect()
            } else {
                v
            };
            (n, v)
        })
        .collect();
    drop(seed_model);
    let build = |dtype: DType| {
        Gpt::build_as(&dev, cfg.clone(), 7, dtype, &mut |name, shape| {
            // An f32 embedding is asked for in row chunks.
            let (key, rows) = match Gpt::wte_chunk_rows(name) {
                Some(r) => ("transformer.wte.weight", Some(r)),
                None => (name, None),
            };
            let (_, v) = host.iter().find(|(n, _)| n == key).expect("name");
            let v = rows.map_or(&v[..], |r| &v[r.start * c..r.end * c]);
            let d = if matrix(name) { dtype } else { DType::F32 };
            Tensor::from_slice_as(&dev, v, shape, d)
        })
        .unwrap()
    };
    let half = build(DType::F16);
    let params = half.parameters();
    assert!(
        params.iter().all(|(n, _)| Gpt::wte_chunk_rows(n).is_none()),
        "the f16 embedding is one chunk"
    );
    let (_, wte) = params.iter().find(|(n, _)| n.contains("wte")).unwrap();
    assert_eq!(
        (wte.shape(), wte.dtype()),
        (&[50257usize, 768][..], DType::F16)
    );
    let rounded = build(DType::F32);
    assert!(
        rounded
            .parameters()
            .iter()
            .any(|(n, _)| Gpt::wte_chunk_rows(n).is_some()),
        "the f32 embedding needs chunks"
    );
    let ids = IdBatch::from_rows(&[vec![50256, 3, 40000, 25000, 0, 50256, 17, 43690]]).unwrap();
    let (a, b) = (
        lm::score(&half, &ids).unwrap(),
        lm::score(&rounded, &ids).unwrap(),
    );
    assert!((a - b).abs() < 1e-5 * b.abs(), "f16 {a} vs rounded f32 {b}");
    let next = |m: &Gpt| {
        m.generate(&ids.ids, 3, &mut greedy(), &mut |_| Ok(true))
            .unwrap()
    };
    assert_eq!(next(&half), next(&rounded));
}
