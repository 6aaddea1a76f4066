//! The GPT model against PyTorch / Hugging Face golden files (tests/golden/tiny_gpt2, made by
//! scripts/make_gpt2_golden.py in float64): logits, loss, every gradient, 8 AdamW steps.
//! The same golden values are also matched through the `gpt2` example's task functions
//! (`models::lm`: score, grad written to a file, finetune). Plus: overfitting a tiny batch,
//! reproducible seeded generation, loader errors. Mixed precision against the float64 values
//! and against PyTorch's CPU autocast in bf16 and f16 (autocast.safetensors, made by
//! scripts/make_autocast_golden.py).
//!
//! The golden tests run twice: on the shared device, and on one that plans with bindings of
//! [`SPLIT_BYTES`], so the tiny model's (67, 32) embedding is held in 3 uneven row chunks and
//! the loss is computed over chunks of positions, as GPT-2's is on a 128 MiB binding limit.

use std::path::{Path, PathBuf};

use portagrad::models::lm::{self, DecayMode, FinetuneConfig, IdBatch};
use portagrad::models::{Gpt, GptConfig, load_pretrained, save_pretrained};
use portagrad::optim::Optimizer;
use portagrad::testing::{assert_close, shared_device};
use portagrad::{Device, DeviceOptions, Error, Tensor};
use safetensors::SafeTensors;

/// 27 rows of 32 floats: wte (67, 32) in chunks of 27, 27 and 13 rows; 12 positions of
/// logits (67 floats) per loss chunk, so the golden batch's 20 positions take 2 chunks.
const SPLIT_BYTES: u64 = 27 * 32 * 4;

/// A device that splits at [`SPLIT_BYTES`] (one per test binary).
fn split_device() -> Device {
    static DEV: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEV.get_or_init(|| {
        Device::with_options(DeviceOptions::new().plan_binding_bytes(SPLIT_BYTES))
            .expect("a device")
    })
    .clone()
}

/// The tiny model on `dev`; on the split device, check it is held as the 3 chunks planned.
fn load_on(dev: &Device) -> Gpt {
    load_dir(dev, &golden_dir())
}

fn load_dir(dev: &Device, dir: &Path) -> Gpt {
    let model = load_pretrained(dev, dir).expect("load tiny gpt2");
    let chunks: Vec<_> = model
        .parameters()
        .iter()
        .filter_map(|(n, _)| Gpt::wte_chunk_rows(n))
        .collect();
    if dev.plan_binding_bytes() == SPLIT_BYTES {
        assert_eq!(chunks, [0..27, 27..54, 54..67]);
    } else {
        assert!(chunks.is_empty(), "one wte chunk under the HF name");
    }
    model
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny_gpt2")
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load() -> Golden {
        Self::load_file("golden.safetensors")
    }
    fn load_file(file: &str) -> Golden {
        Golden {
            bytes: std::fs::read(golden_dir().join(file)).expect("golden file"),
        }
    }
    fn f64s(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in golden file"));
        let v = match t.dtype() {
            safetensors::Dtype::F64 => t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
                .collect(),
            safetensors::Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            d => panic!("{name}: unexpected dtype {d:?}"),
        };
        (t.shape().to_vec(), v)
    }
    fn names(&self) -> Vec<String> {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

/// ids (B, T) from the golden file; inputs are ids[:, :-1], targets ids[:, 1:] (HF's labels=ids).
fn batch(g: &Golden) -> (usize, usize, Vec<u32>, Vec<u32>, Vec<u32>) {
    let (shape, ids) = g.f64s("ids");
    let (b, t) = (shape[0], shape[1]);
    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let inp: Vec<u32> = (0..b)
        .flat_map(|i| ids[i * t..(i + 1) * t - 1].to_vec())
        .collect();
    let tgt: Vec<u32> = (0..b)
        .flat_map(|i| ids[i * t + 1..(i + 1) * t].to_vec())
        .collect();
    (b, t, ids, inp, tgt)
}

// Tolerances (f32 GPU vs float64 PyTorch): logits 2e-5 absolute (values are O(1)); loss 1e-5
// relative; gradients 1e-3 relative + 2e-6 absolute of their scale — llm.c accepts 1e-2 / 2e-2.
#[test]
fn logits_loss_and_every_gradient_match_pytorch() {
    logits_loss_and_every_gradient(&shared_device());
}

#[test]
fn split_embedding_and_loss_match_pytorch() {
    logits_loss_and_every_gradient(&split_device());
}

fn logits_loss_and_every_gradient(dev: &Device) {
    let dev = dev.clone();
    let g = Golden::load();
    let model = load_on(&dev);
    let (b, t, ids, inp, tgt) = batch(&g);

    let full = Tensor::from_u32(&dev, &ids, &[b, t]).unwrap();
    let logits = portagrad::inference(|| model.forward(&full, false)).unwrap();
    let (_, want_logits) = g.f64s("logits");
    assert_close("logits", &logits.to_vec().unwrap(), &want_logits, 0.0, 2e-5);

    let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
    let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
    let loss = model.loss(&x, &y, false).unwrap();
    let (_, want_loss) = g.f64s("loss");
    assert_close("loss", &[loss.item().unwrap()], &want_loss, 1e-5, 0.0);

    let grads = loss.backward().unwrap();
    let named: Vec<(String, Tensor)> = model
        .parameters()
        .into_iter()
        .map(|(name, p)| {
            let g = grads
                .get(&p)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            (name, g.clone())
        })
        .collect();
    let mut checked = 0;
    // Row chunks of the wte gradient joined into the whole (V, C) tensor.
    for (name, shape_got, got) in Gpt::join_wte_chunks(&named).unwrap() {
        let key = format!("grad.{name}");
        assert!(g.names().contains(&key), "golden file lacks {key}");
        let (shape, want) = g.f64s(&key);
        assert_eq!(shape_got, shape, "{name}");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("grad {name}"),
            &got,
            &want,
            1e-3,
            2e-6 * scale.max(1e-3),
        );
        checked += 1;
    }
    assert_eq!(checked, 2 + 12 * 2 + 2, "every parameter checked");
}

#[test]
fn eight_adamw_steps_match_pytorch() {
    eight_adamw_steps(&shared_device());
}

#[test]
fn eight_adamw_steps_split_match_pytorch() {
    eight_adamw_steps(&split_device());
}

fn eight_adamw_steps(dev: &Device) {
    let dev = dev.clone();
    let g = Golden::load();
    let model = load_on(&dev);
    let (b, t, _, inp, tgt) = batch(&g);
    let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
    let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
    let mut opt = Optimizer::adamw(model.parameters(), 1e-3, 0.1).unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss = model.loss(&x, &y, true).unwrap();
        losses.push(loss.item().unwrap());
        let grads = loss.backward().unwrap();
        opt.step(&grads).unwrap();
    }
    let (_, want) = g.f64s("adamw_losses");
    assert_close("AdamW losses", &losses, &want, 2e-5, 0.0);
}

/// The golden ids as the `gpt2` example reads them: (B, T), HF's labels=input_ids convention.
fn id_batch(g: &Golden) -> IdBatch {
    let (_, t, ids, _, _) = batch(g);
    IdBatch::from_rows(&ids.chunks(t).map(<[u32]>::to_vec).collect::<Vec<_>>()).unwrap()
}

// `gpt2 score`, `gpt2 grad` and `gpt2 finetune --ids` are these library calls; same golden
// values and tolerances as the model-API tests above. The gradients go through the file the
// example writes and are read back by name.
#[test]
fn example_tasks_score_grad_finetune_match_pytorch() {
    example_tasks(&shared_device());
}

#[test]
fn example_tasks_split_match_pytorch() {
    example_tasks(&split_device());
}

fn example_tasks(dev: &Device) {
    let dev = dev.clone();
    let g = Golden::load();
    let ids = id_batch(&g);
    let (_, want_loss) = g.f64s("loss");

    let model = load_on(&dev);
    let loss = lm::score(&model, &ids).unwrap();
    assert_close("score", &[loss], &want_loss, 1e-5, 0.0);

    let path = std::env::temp_dir().join(format!(
        "portagrad-grads-{}-{}.safetensors",
        std::process::id(),
        dev.plan_binding_bytes()
    ));
    let loss = lm::save_gradients(&model, &ids, &path).unwrap();
    assert_close("grad loss", &[loss], &want_loss, 1e-5, 0.0);
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut want_names: Vec<String> = g
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix("grad.").map(str::to_string))
        .collect();
    want_names.sort();
    assert_eq!(names, want_names, "one gradient per parameter, HF names");
    for name in &names {
        let t = file.tensor(name).unwrap();
        let (shape, want) = g.f64s(&format!("grad.{name}"));
        assert_eq!(t.shape(), &shape[..], "{name}");
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("grad file {name}"),
            &got,
            &want,
            1e-3,
            2e-6 * scale.max(1e-3),
        );
    }
    std::fs::remove_file(&path).ok();

    let model = load_on(&dev);
    let cfg = FinetuneConfig {
        steps: 8,
        lr: 1e-3,
        weight_decay: 0.1,
        decay: DecayMode::All,
        clip: None,
        dropout: true,
    };
    let mut seen = Vec::new();
    let losses = lm::finetune(&model, &cfg, &mut |_| Ok(ids.clone()), &mut |s, l| {
        seen.push((s, l))
    })
    .unwrap();
    let (_, want) = g.f64s("adamw_losses");
    assert_close("finetune losses", &losses, &want, 2e-5, 0.0);
    assert_eq!(seen.len(), 8);
}

#[test]
fn save_then_load_round_trips_bit_exact() {
    let dev = shared_device();
    let model = load_pretrained(&dev, &golden_dir()).unwrap();
    let dir = std::env::temp_dir().join(format!("portagrad-gpt-save-{}", std::process::id()));
    save_pretrained(&model, &dir).unwrap();
    let again = load_pretrained(&dev, &dir).unwrap();
    for ((n1, a), (n2, b)) in model.parameters().iter().zip(again.parameters()) {
        assert_eq!(n1, &n2);
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap(), "{n1}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

// A model held in row chunks saves the whole (V, C) wte under the HF name: loaded whole on
// the shared device and in chunks again, every value is the same; the whole wte set on the
// split model is split again.
#[test]
fn split_save_then_load_round_trips_bit_exact() {
    let dev = shared_device();
    let split = load_on(&split_device());
    let dir = std::env::temp_dir().join(format!("portagrad-gpt-split-{}", std::process::id()));
    save_pretrained(&split, &dir).unwrap();
    let whole = load_on(&dev);
    let again = load_dir(&dev, &dir);
    let again_split = load_dir(&split_device(), &dir);
    std::fs::remove_dir_all(&dir).ok();
    let host = |m: &Gpt| Gpt::join_wte_chunks(&m.parameters()).unwrap();
    let want = host(&whole);
    assert_eq!(want, host(&again));
    assert_eq!(want, host(&again_split));
    assert_eq!(want, host(&split));
    let mut split = split;
    let doubled: Vec<f32> = want[0].2.iter().map(|x| x * 2.0).collect();
    let wte = Tensor::from_slice(&split_device(), &doubled, &want[0].1).unwrap();
    split.set_parameter("transformer.wte.weight", &wte).unwrap();
    assert_eq!(host(&split)[0].2, doubled);
    assert_eq!(split.parameters().len(), whole.parameters().len() + 2);
}

#[test]
fn loader_rejects_bad_directories() {
    let dev = shared_device();
    let tmp = std::env::temp_dir().join(format!("portagrad-gpt-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // Missing files.
    assert!(matches!(load_pretrained(&dev, &tmp), Err(Error::Io { .. })));
    // Config that disagrees with the weights.
    let cfg = std::fs::read_to_string(golden_dir().join("config.json")).unwrap();
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"n_embd\": 32", "\"n_embd\": 48"),
    )
    .unwrap();
    std::fs::copy(
        golden_dir().join("model.safetensors"),
        tmp.join("model.safetensors"),
    )
    .unwrap();
    let err = load_pretrained(&dev, &tmp).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
    // Truncated weights.
    std::fs::write(tmp.join("config.json"), &cfg).unwrap();
    let w = std::fs::read(golden_dir().join("model.safetensors")).unwrap();
    std::fs::write(tmp.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let err = load_pretrained(&dev, &tmp).unwrap_err().to_string();
    assert!(err.contains("safetensors"), "{err}");
    // Malformed JSON.
    std::fs::write(tmp.join("config.json"), "{ not json").unwrap();
    assert!(
        load_pretrained(&dev, &tmp)
            .unwrap_err()
            .to_string()
            .contains("JSON")
    );
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn a_tiny_batch_overfits_to_near_zero_loss() {
    let dev = shared_device();
    let cfg = GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        block_size: 16,
        vocab_size: 11,
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    let model = Gpt::new(&dev, cfg, 3).unwrap();
    let seq: Vec<u32> = (0..34).map(|i| ((i * 7 + 3) % 11) as u32).collect();
    let x = Tensor::from_u32(&dev, &[&seq[0..16], &seq[17..33]].concat(), &[2, 16]).unwrap();
    let y = Tensor::from_u32(&dev, &[&seq[1..17], &seq[18..34]].concat(), &[2, 16]).unwrap();
    let mut opt = Optimizer::adamw(model.parameters(), 1e-2, 0.0).unwrap();
    let first = model.loss(&x, &y, true).unwrap().item().unwrap();
    let mut last = first;
    for _ in 0..150 {
        let loss = model.loss(&x, &y, true).unwrap();
        let g = loss.backward().unwrap();
        opt.step(&g).unwrap();
        last = loss.item().unwrap();
    }
    assert!(first > 2.0, "starts near ln(11): {first}");
    assert!(last < 0.05, "overfits: loss {first} -> {last}");
}

#[test]
fn forward_rejects_bad_ids() {
    let dev = shared_device();
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 1,
        n_embd: 8,
        block_size: 4,
        vocab_size: 5,
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    let model = Gpt::new(&dev, cfg, 1).unwrap();
    let too_long = Tensor::from_u32(&dev, &[0; 10], &[2, 5]).unwrap();
    assert!(matches!(
        model.forward(&too_long, false),
        Err(Error::Shape { .. })
    ));
    let out_of_range = Tensor::from_u32(&dev, &[0, 5], &[1, 2]).unwrap();
    assert!(
        model
            .forward(&out_of_range, false)
            .unwrap_err()
            .to_string()
            .contains("out of range")
    );
    let flat = Tensor::from_u32(&dev, &[0, 1], &[2]).unwrap();
    assert!(matches!(
        model.forward(&flat, false),
        Err(Error::Shape { .. })
    ));
}

/// A small GPT with dropout, its AdamW, and one fixed batch, for the resume test.
fn dropout_run(seed: u64) -> (Gpt, Optimizer, Tensor, Tensor) {
    let dev = shared_device();
    let cfg = GptConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        block_size: 8,
        vocab_size: 11,
        dropout: 0.2,
        ln_eps: 1e-5,
    };
    let model = Gpt::new(&dev, cfg, seed).unwrap();
    let opt = Optimizer::adamw(model.parameters(), 1e-2, 0.1).unwrap();
    let seq: Vec<u32> = (0..18).map(|i| ((i * 7 + 3) % 11) as u32).collect();
    let x = Tensor::from_u32(&dev, &[&seq[0..8], &seq[9..17]].concat(), &[2, 8]).unwrap();
    let y = Tensor::from_u32(&dev, &[&seq[1..9], &seq[10..18]].concat(), &[2, 8]).unwrap();
    (model, opt, x, y)
}

/// One training step with dropout on; the loss's bits.
fn dropout_step(model: &Gpt, opt: &mut Optimizer, x: &Tensor, y: &Tensor) -> u32 {
    let loss = model.loss(x, y, true).unwrap();
    let g = loss.backward().unwrap();
    opt.step(&g).unwrap();
    loss.item().unwrap().to_bits()
}

fn gpt_bits(model: &Gpt) -> Vec<(String, Vec<u32>)> {
    model
        .parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

#[test]
fn resume_with_dropout_is_bit_exact() {
    use portagrad::io::checkpoint;
    let dir = std::env::temp_dir().join(format!("portagrad-gpt-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.safetensors");
    // 6 steps straight.
    let (model, mut opt, x, y) = dropout_run(1);
    let want_losses: Vec<u32> = (0..6)
        .map(|_| dropout_step(&model, &mut opt, &x, &y))
        .collect();
    let want = gpt_bits(&model);
    // 3 steps, save, load into a fresh model and optimizer (another seed), 3 more steps.
    let (model_a, mut opt_a, x, y) = dropout_run(1);
    let mut losses: Vec<u32> = (0..3)
        .map(|_| dropout_step(&model_a, &mut opt_a, &x, &y))
        .collect();
    let state = model_a.dropout_state();
    checkpoint::save_params_with_dropout(&path, &model_a.parameters(), Some(&opt_a), state)
        .unwrap();
    let (mut model_b, mut opt_b, _, _) = dropout_run(99);
    let info = checkpoint::load_params(&path, &model_b.parameters(), Some(&mut opt_b)).unwrap();
    assert_eq!(info.step, 3);
    assert_eq!(info.dropout, Some(state));
    assert!(state.calls > 0, "the run drew dropout masks");
    model_b.set_dropout_state(info.dropout.unwrap());
    losses.extend((0..3).map(|_| dropout_step(&model_b, &mut opt_b, &x, &y)));
    assert_eq!(
        losses, want_losses,
        "losses of 6 steps == 3, save, load, 3 (bitwise)"
    );
    assert_eq!(
        gpt_bits(&model_b),
        want,
        "parameters after resuming (bitwise)"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Logits past the binding plan come in position chunks, each within the plan, which joined
/// are the logits of a device that needs no chunks (and PyTorch's).
#[test]
fn forward_chunks_keep_each_chunk_within_the_binding_plan() {
    let g = Golden::load();
    let (b, t, ids, ..) = batch(&g);
    let v = 67;
    let normal = shared_device();
    let whole = load_on(&normal);
    let x = Tensor::from_u32(&normal, &ids, &[b, t]).unwrap();
    let want = portagrad::inference(|| whole.forward(&x, false))
        .unwrap()
        .to_vec()
        .unwrap();
    // On a device that fits them, one chunk: the logits of forward, bit for bit.
    let one = portagrad::inference(|| whole.forward_chunks(&x, false)).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].shape(), &[b * t, v]);
    let bits = |d: &[f32]| d.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one[0].to_vec().unwrap()), bits(&want));

    // 12 positions of logits per chunk on the split device: b·t positions take several.
    let dev = split_device();
    let split = load_on(&dev);
    let per = (SPLIT_BYTES / (v as u64 * 4)) as usize;
    assert!(b * t > per, "the golden batch needs chunks");
    let chunks = lm::logits_chunks(&split, &id_batch(&g)).unwrap();
    assert_eq!(chunks.len(), (b * t).div_ceil(per));
    let mut got = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let rows = per.min(b * t - i * per);
        assert_eq!(c.shape(), &[rows, v], "chunk {i}");
        assert!(
            c.numel() as u64 * 4 <= SPLIT_BYTES,
            "chunk {i} within the plan"
        );
        got.extend(c.to_vec().unwrap());
    }
    let want: Vec<f64> = want.iter().map(|&w| f64::from(w)).collect();
    assert_close("chunked logits", &got, &want, 0.0, 2e-5);
    let (_, golden) = g.f64s("logits");
    assert_close("chunked logits vs PyTorch", &got, &golden, 0.0, 2e-5);
}

/// Logits past the adapter's binding limit are one error, found before anything runs, that
/// names the chunked method.
#[test]
fn forward_past_one_binding_points_at_forward_chunks() {
    let dev = shared_device();
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 1,
        n_embd: 8,
        block_size: 64,
        vocab_size: 1 << 20,
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    let model = Gpt::new(&dev, cfg, 1).unwrap();
    // (16, 64, 2^20) logits: 4 GiB, past any adapter's binding.
    let ids = Tensor::from_u32(&dev, &[0; 16 * 64], &[16, 64]).unwrap();
    let e = model.forward(&ids, false).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("forward_chunks"), "{e}");
}

/// Weights in f16 / bf16 (`load_pretrained_as`): the matrices and the embedding take half the
/// memory, and the model computes exactly the model of its rounded weights — its logits equal,
/// to f32 accumulation order (2e-5), those of an f32 model built from the same rounded values,
/// on the whole device and on the split one (embedding in row chunks). Against PyTorch's f32
/// weights the logits move by the rounding alone; greedy generation keeps the f32 tokens.
#[test]
fn half_weights_compute_the_model_of_their_rounded_values() {
    use portagrad::DType;
    use portagrad::generate::{Sampler, SamplingConfig};
    use portagrad::models::load_pretrained_as;
    let g = Golden::load();
    let (_, golden) = g.f64s("logits");
    for dev in [shared_device(), split_device()] {
        let (b, t, ids, _, _) = batch(&g);
        let full = Tensor::from_u32(&dev, &ids, &[b, t]).unwrap();
        let f32_model = load_on(&dev);
        // Bounds: about 4 units of roundoff of each type (2^-11, 2^-8) on logits of size <= 1.
        for (dtype, bound) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
            let half = load_pretrained_as(&dev, &golden_dir(), dtype).unwrap();
            assert_eq!(half.weight_dtype(), dtype);
            let params = half.parameters();
            for (name, p) in &params {
                let matrix = name.contains("wte")
                    || name.ends_with("c_attn.weight")
                    || name.ends_with("c_proj.weight")
                    || name.ends_with("c_fc.weight");
                let want = if matrix { dtype } else { DType::F32 };
                assert_eq!(p.dtype(), want, "{name}");
            }
            // 16-bit matrices: well under the f32 model's bytes.
            assert!(half.parameter_bytes() * 10 < f32_model.parameter_bytes() * 6);
            // The rounded values on the host (the embedding's chunks joined), chunked as the f32
            // model plans.
            let host = Gpt::join_wte_chunks(&params).unwrap();
            let c = half.config().n_embd;
            let rounded = Gpt::build(&dev, half.config().clone(), 0, &mut |name, shape| {
                let (key, rows) = match Gpt::wte_chunk_rows(name) {
                    Some(r) => ("transformer.wte.weight", Some(r)),
                    None => (name, None),
                };
                let (_, _, v) = host.iter().find(|(n, _, _)| n == key).expect("same names");
                let v = rows.map_or(&v[..], |r| &v[r.start * c..r.end * c]);
                Tensor::from_slice(&dev, v, shape)
            })
            .unwrap();
            let got = portagrad::inference(|| half.forward(&full, false))
                .unwrap()
                .to_vec()
                .unwrap();
            let want = portagrad::inference(|| rounded.forward(&full, false))
                .unwrap()
                .to_vec()
                .unwrap();
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            assert_close(
                &format!("{dtype:?} logits vs rounded f32"),
                &got,
                &want,
                0.0,
                2e-5,
            );
            let moved = got
                .iter()
                .zip(&golden)
                .fold(0.0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
            eprintln!("{dtype:?}: max |logit - PyTorch f32 logit| = {moved:.2e}");
            assert!(moved < bound, "{dtype:?}: logits moved {moved} from f32's");
            // Greedy continuations of the golden prompts are the f32 model's.
            let greedy = || {
                Sampler::new(SamplingConfig {
                    temperature: 0.0,
                    ..Default::default()
                })
            };
            for row in 0..b {
                let p = &ids[row * t..row * t + 4];
                let a = f32_model.generate(p, 8, &mut greedy().unwrap(), &mut |_| Ok(true));
                let h = half.generate(p, 8, &mut greedy().unwrap(), &mut |_| Ok(true));
                assert_eq!(h.unwrap(), a.unwrap(), "{dtype:?} greedy from {p:?}");
            }
        }
    }
}

/// Mixed precision on the golden batch: the matmul operands in bf16 / f16, everything else
/// f32. Loss and every gradient stay within stated tolerances of PyTorch's f32 values (the
/// golden file is f32 PyTorch; autocast's own values differ from it by the same roundings):
/// the loss within 16-bit rounding of the logits, each gradient within 3 units of the type's
/// roundoff (2^-8 bf16, 2^-11 f16) times 4 of its scale (the product of rounded operands, with
/// its gradient rounded once more on the way back through the cast).
#[test]
fn mixed_precision_loss_and_gradients_near_pytorch() {
    use portagrad::{DType, Precision};
    let dev = shared_device();
    let g = Golden::load();
    let (b, t, _, inp, tgt) = batch(&g);
    let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
    let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
    let (_, want_loss) = g.f64s("loss");
    for (d, unit) in [(DType::BF16, 2f64.powi(-8)), (DType::F16, 2f64.powi(-11))] {
        let mut model = load_on(&dev);
        model.set_precision(Precision::Mixed(d)).unwrap();
        let loss = model.loss(&x, &y, false).unwrap();
        let l = f64::from(loss.item().unwrap());
        eprintln!("{d:?}: loss {l} vs {}", want_loss[0]);
        assert!(
            (l - want_loss[0]).abs() < 4.0 * unit * want_loss[0],
            "{d:?} loss {l}"
        );
        let grads = loss.backward().unwrap();
        let mut worst = 0.0f64;
        for (name, p) in model.parameters() {
            let gp = grads
                .get(&p)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(gp.dtype(), DType::F32, "{name}: master gradients are f32");
            let (_, want) = g.f64s(&format!("grad.{name}"));
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = gp
                .to_vec()
                .unwrap()
                .iter()
                .zip(&want)
                .fold(0.0f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
            worst = worst.max(err / scale);
            assert!(
                err <= 12.0 * unit * scale,
                "{d:?} {name}: error {err:.3e} of scale {scale:.3e}"
            );
        }
        eprintln!("{d:?}: worst gradient error {worst:.2e} of its scale");
    }
    // 16-bit master weights are refused: mixed precision keeps f32 parameters.
    let mut half = portagrad::models::load_pretrained_as(&dev, &golden_dir(), DType::F16).unwrap();
    assert!(half.set_precision(Precision::Mixed(DType::BF16)).is_err());
    let mut m = load_on(&dev);
    assert!(m.set_precision(Precision::Mixed(DType::F32)).is_err());
}

/// Mixed precision against PyTorch autocast itself (tests/golden/tiny_gpt2/autocast.safetensors,
/// made by scripts/make_autocast_golden.py: CPU autocast in bf16 and in f16 on the golden model
/// and batch). Autocast rounds more than we do (the matmul outputs, the attention operands and
/// GELU are 16-bit there; we round only the projections' operands), so the two are compared
/// through the exact value: each is within the previous test's bound of the f64 golden values
/// (loss 4 units of the type's roundoff relative, each gradient 12 units of its scale; checked
/// here for autocast too, so the fixture is what it claims), hence within twice that of each
/// other: loss 8 units, gradients 24 units of their scale.
#[test]
fn mixed_precision_loss_and_gradients_near_pytorch_autocast() {
    use portagrad::{DType, Precision};
    let dev = shared_device();
    let g = Golden::load();
    let auto = Golden::load_file("autocast.safetensors");
    let (b, t, _, inp, tgt) = batch(&g);
    let x = Tensor::from_u32(&dev, &inp, &[b, t - 1]).unwrap();
    let y = Tensor::from_u32(&dev, &tgt, &[b, t - 1]).unwrap();
    let (_, exact_loss) = g.f64s("loss");
    for (d, name, unit) in [
        (DType::BF16, "bf16", 2f64.powi(-8)),
        (DType::F16, "f16", 2f64.powi(-11)),
    ] {
        let (_, auto_loss) = auto.f64s(&format!("{name}.loss"));
        assert!(
            (auto_loss[0] - exact_loss[0]).abs() <= 4.0 * unit * exact_loss[0],
            "{name}: autocast loss {} vs exact {}",
            auto_loss[0],
            exact_loss[0]
        );
        let mut model = load_on(&dev);
        model.set_precision(Precision::Mixed(d)).unwrap();
        let loss = model.loss(&x, &y, false).unwrap();
        let l = f64::from(loss.item().unwrap());
        assert!(
            (l - auto_loss[0]).abs() <= 8.0 * unit * auto_loss[0],
            "{name}: loss {l} vs autocast {}",
            auto_loss[0]
        );
        let grads = loss.backward().unwrap();
        let (mut worst, mut worst_auto, mut checked) = (0.0f64, 0.0f64, 0);
        let max_err = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        };
        for (pname, p) in model.parameters() {
            let gp = grads
                .get(&p)
                .unwrap_or_else(|| panic!("no gradient for {pname}"));
            let got: Vec<f64> = gp.to_vec().unwrap().iter().map(|&v| f64::from(v)).collect();
            let (shape, want) = auto.f64s(&format!("{name}.grad.{pname}"));
            assert_eq!(shape, p.shape(), "{pname}");
            let (_, exact) = g.f64s(&format!("grad.{pname}"));
            let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let auto_err = max_err(&want, &exact);
            assert!(
                auto_err <= 12.0 * unit * scale,
                "{name} {pname}: the autocast fixture is {auto_err:.3e} from exact, scale {scale:.3e}"
            );
            let err = max_err(&got, &want);
            assert!(
                err <= 24.0 * unit * scale,
                "{name} {pname}: {err:.3e} from autocast, scale {scale:.3e}"
            );
            worst = worst.max(err / scale / unit);
            worst_auto = worst_auto.max(auto_err / scale / unit);
            checked += 1;
        }
        assert_eq!(checked, 2 + 12 * 2 + 2, "every parameter checked");
        eprintln!(
            "{name}: loss {l} vs autocast {} (exact {}); worst gradient {worst:.2} units of its scale from autocast (autocast from exact: {worst_auto:.2})",
            auto_loss[0], exact_loss[0]
        );
    }
}

/// `lm::finetune` in mixed precision (the `gpt2 finetune --precision` path): 8 AdamW steps on
/// the golden batch follow the f32 run's losses within 16-bit rounding; with f16 the optimizer
/// scales the loss (no step overflows at 2^16 on this model, so none is skipped).
#[test]
fn mixed_precision_finetune_follows_f32() {
    use portagrad::{DType, Precision};
    let dev = shared_device();
    let g = Golden::load();
    let ids = id_batch(&g);
    let cfg = FinetuneConfig {
        steps: 8,
        lr: 1e-3,
        weight_decay: 0.1,
        decay: DecayMode::All,
        clip: Some(1.0),
        dropout: false,
    };
    let run = |p: Precision| {
        let mut model = load_on(&dev);
        model.set_precision(p).unwrap();
        let opt = lm::finetune_optimizer(&model, &cfg).unwrap();
        let scaled = opt.loss_scale().unwrap();
        let losses = lm::finetune(&model, &cfg, &mut |_| Ok(ids.clone()), &mut |_, _| {}).unwrap();
        (losses, scaled)
    };
    let (f32_losses, none) = run(Precision::F32);
    assert_eq!(none, None);
    for (d, unit) in [(DType::BF16, 2f32.powi(-8)), (DType::F16, 2f32.powi(-11))] {
        let (losses, scaled) = run(Precision::Mixed(d));
        assert_eq!(
            scaled.is_some(),
            d == DType::F16,
            "{d:?}: loss scaling only for f16"
        );
        for (s, (a, b)) in losses.iter().zip(&f32_losses).enumerate() {
            assert!(
                (a - b).abs() <= 8.0 * unit * b,
                "{d:?} step {s}: {a} vs f32 {b}"
            );
        }
        assert!(losses[7] < losses[0], "{d:?} trains: {losses:?}");
    }
}

/// A vocabulary wider than the model (V > C) takes the fused lm_head + loss: chunks of
/// logits, never the (B·T, V) logits. On a device that plans 64 KiB bindings (so 5 positions
/// of logits a chunk, 13 chunks), the loss and every gradient equal the plain composition's
/// (logits, then cross-entropy) on an unsplit device, and the step's peak memory stays below
/// the size of the logits it never makes.
#[test]
fn a_wide_vocabulary_loss_never_holds_its_logits() {
    let (v, c, b, t) = (3001, 4, 4, 16);
    let cfg = GptConfig {
        n_layer: 1,
        n_head: 1,
        n_embd: c,
        block_size: t,
        vocab_size: v,
        dropout: 0.0,
        ln_eps: 1e-5,
    };
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7919 + 11) % v) as u32).collect();
    let tgt: Vec<u32> = (0..b * t).map(|i| ((i * 104_729 + 5) % v) as u32).collect();
    let run = |dev: &Device, fused: bool| {
        let model = Gpt::new(dev, cfg.clone(), 3).unwrap();
        // The embedding (48 KB) is one binding on both devices: only the loss differs.
        assert_eq!(model.parameters()[0].0, "transformer.wte.weight");
        let x = Tensor::from_u32(dev, &ids, &[b, t]).unwrap();
        let y = Tensor::from_u32(dev, &tgt, &[b, t]).unwrap();
        dev.sync().unwrap();
        dev.reset_stats();
        let loss = if fused {
            model.loss(&x, &y, true).unwrap()
        } else {
            model
                .forward(&x, true)
                .unwrap()
                .cross_entropy(&y, None)
                .unwrap()
        };
        let grads = loss.backward().unwrap();
        let peak = dev.stats().peak_bytes;
        let values: Vec<(String, Vec<f32>)> = model
            .parameters()
            .into_iter()
            .map(|(n, p)| (n, grads.get(&p).unwrap().to_vec().unwrap()))
            .collect();
        (loss.item().unwrap(), values, peak)
    };
    let dev = Device::with_options(DeviceOptions::new().plan_binding_bytes(64 << 10)).unwrap();
    let (loss, grads, peak) = run(&dev, true);
    let (want_loss, want_grads, _) = run(&shared_device(), false);
    assert_close("loss", &[loss], &[f64::from(want_loss)], 1e-5, 1e-6);
    for ((name, got), (_, want)) in grads.iter().zip(&want_grads) {
        let want: Vec<f64> = want.iter().map(|&w| f64::from(w)).collect();
        assert_close(name, got, &want, 1e-3, 1e-6);
    }
    let logits = (b * t * v * 4) as u64;
    assert!(
        peak < logits,
        "peak {peak} bytes during the step, logits would be {logits}"
    );
}
