//! `cargo run --release --example shakespeare` — train a character-level GPT on Shakespeare's
//! plays and watch it write.
//!
//! With no flags the model size is chosen by the adapter: a 4-layer, 128-wide model that trains
//! in about ten minutes on a software adapter (lavapipe), the `gpu` preset (6 layers, 384 wide,
//! block 256) on a real GPU. Checkpoints go to `--out` (default `shakespeare-out/`, a Hugging Face
//! GPT-2 directory plus optimizer state) and can be resumed with `--resume`; `sample` generates
//! from a checkpoint:
//!
//! ```text
//! cargo run --release --example shakespeare -- sample --prompt "ROMEO:" --temperature 0.8
//! ```

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use portagrad::generate::{Sampler, SamplingConfig};
use portagrad::io::checkpoint;
use portagrad::models::{
    CharTokenizer, Gpt, GptConfig, load_pretrained, save_pretrained, write_atomic,
};
use portagrad::optim::{LossScaling, LrSchedule, OptimConfig, Optimizer, decay_groups};
use portagrad::plot::{Series, line_charts_svg};
use portagrad::rng::mix;
use portagrad::{Device, Error, Precision, Result, Tensor};

fn cli() -> Command {
    let num = |name: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .help(help)
            .value_parser(value_parser!(usize))
    };
    let float = |name: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .help(help)
            .value_parser(value_parser!(f64))
    };
    Command::new("shakespeare")
        .about("Train a character-level GPT on a text (default: eight Shakespeare plays) and sample from it")
        .args_conflicts_with_subcommands(true)
        .arg(Arg::new("text").long("text").value_name("FILE").default_value(concat!(env!("CARGO_MANIFEST_DIR"), "/data/shakespeare.txt")).help("training text"))
        .arg(Arg::new("preset").long("preset").value_parser(["cpu", "gpu"]).help("model size; default: gpu on a hardware adapter, cpu on a software one"))
        .arg(num("n-layer", "transformer blocks"))
        .arg(num("n-head", "attention heads"))
        .arg(num("n-embd", "embedding width"))
        .arg(num("block-size", "context length in characters"))
        .arg(num("batch-size", "sequences per step"))
        .arg(num("steps", "optimizer steps"))
        .arg(float("lr", "peak learning rate (AdamW)"))
        .arg(float("dropout", "dropout probability"))
        .arg(float("weight-decay", "AdamW weight decay on matrices (not biases or norms)").default_value("0.1"))
        .arg(float("clip", "clip gradients to this global norm").default_value("1.0"))
        .arg(num("eval-every", "steps between validation runs (with a sample)"))
        .arg(num("eval-batches", "batches per validation estimate").default_value("8"))
        .arg(Arg::new("seed").long("seed").default_value("1337").value_parser(value_parser!(u64)))
        .arg(Arg::new("precision").long("precision").value_parser(["f32", "mixed", "mixed-bf16", "mixed-f16"]).default_value("f32").help("f32, or mixed (bf16 matmul operands; mixed-f16 for f16, with dynamic loss scaling) with f32 master weights"))
        .arg(Arg::new("out").long("out").value_name("DIR").default_value("shakespeare-out").help("checkpoint directory"))
        .arg(Arg::new("resume").long("resume").action(ArgAction::SetTrue).help("continue from the checkpoint in --out"))
        .arg(Arg::new("svg").long("svg").default_value("shakespeare.svg").help("loss curves"))
        .subcommand(
            Command::new("sample")
                .about("Generate text from a checkpoint")
                .arg(Arg::new("out").long("out").value_name("DIR").default_value("shakespeare-out").help("checkpoint directory"))
                .arg(Arg::new("prompt").long("prompt").default_value("\n"))
                .arg(Arg::new("chars").long("chars").default_value("500").value_parser(value_parser!(usize)))
                .arg(Arg::new("temperature").long("temperature").default_value("0.8").value_parser(value_parser!(f32)))
                .arg(Arg::new("top-k").long("top-k").value_parser(value_parser!(usize)))
                .arg(Arg::new("seed").long("seed").default_value("0").value_parser(value_parser!(u64))),
        )
}

/// Training settings after presets and flags.
struct Plan {
    cfg: GptConfig,
    batch: usize,
    steps: usize,
    lr: f64,
    eval_every: usize,
}

fn plan(dev: &Device, m: &ArgMatches, vocab: usize) -> Plan {
    let gpu = match m.get_one::<String>("preset").map(String::as_str) {
        Some(p) => p == "gpu",
        None => !dev.info().is_cpu,
    };
    // cpu: ~2M training tokens in about ten minutes on two cores with lavapipe.
    // gpu: the size known to reach ~1.5 nats/char on this data.
    let (l, h, c, t, b, steps, lr, drop, every) = if gpu {
        (6, 6, 384, 256, 64, 5000, 1e-3, 0.2, 500)
    } else {
        (4, 4, 128, 128, 16, 1000, 3e-3, 0.0, 200)
    };
    let get = |k: &str, d: usize| m.get_one::<usize>(k).copied().unwrap_or(d);
    Plan {
        cfg: GptConfig {
            n_layer: get("n-layer", l),
            n_head: get("n-head", h),
            n_embd: get("n-embd", c),
            block_size: get("block-size", t),
            vocab_size: vocab,
            dropout: m.get_one::<f64>("dropout").copied().unwrap_or(drop) as f32,
            ln_eps: 1e-5,
        },
        batch: get("batch-size", b),
        steps: get("steps", steps),
        lr: m.get_one::<f64>("lr").copied().unwrap_or(lr),
        eval_every: get("eval-every", every).max(1),
    }
}

/// A (B, T) input batch and its (B, T) next-character targets from random offsets. Offsets are
/// a pure function of (seed, step), so a resumed run sees the same batches as an uninterrupted one.
fn batch(dev: &Device, data: &[u32], b: usize, t: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let span = data.len() - t - 1;
    let mut x = Vec::with_capacity(b * t);
    let mut y = Vec::with_capacity(b * t);
    for i in 0..b {
        let o = (mix(seed ^ mix(i as u64)) % span as u64) as usize;
        x.extend_from_slice(&data[o..o + t]);
        y.extend_from_slice(&data[o + 1..o + t + 1]);
    }
    Ok((
        Tensor::from_u32(dev, &x, &[b, t])?,
        Tensor::from_u32(dev, &y, &[b, t])?,
    ))
}

fn val_loss(model: &Gpt, dev: &Device, data: &[u32], p: &Plan, batches: usize) -> Result<f32> {
    let _g = portagrad::no_grad();
    let t = p.cfg.block_size.min(data.len() - 1);
    let mut total = 0.0;
    for k in 0..batches {
        let (x, y) = batch(dev, data, p.batch, t, 0xE7A1 ^ k as u64)?;
        total += model.loss(&x, &y, false)?.item()?;
    }
    Ok(total / batches as f32)
}

fn sample_text(
    model: &Gpt,
    tok: &CharTokenizer,
    prompt: &str,
    n: usize,
    cfg: SamplingConfig,
    stream: bool,
) -> Result<String> {
    let ids = tok.encode(prompt)?;
    let mut sampler = Sampler::new(cfg)?;
    let mut out = String::new();
    let mut on = |id: u32| -> Result<bool> {
        let s = tok.decode(&[id])?;
        if stream {
            print!("{s}");
            let _ = std::io::stdout().flush();
        }
        out += &s;
        Ok(true)
    };
    model.generate(&ids, n, &mut sampler, &mut on)?;
    Ok(out)
}

fn save_vocab(dir: &Path, tok: &CharTokenizer) -> Result<()> {
    let s: String = tok.chars().iter().collect();
    write_atomic(
        &dir.join("vocab.json"),
        serde_json::json!({ "chars": s }).to_string().as_bytes(),
    )
}

fn load_vocab(dir: &Path) -> Result<CharTokenizer> {
    let path = dir.join("vocab.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::InvalidArgument {
        op: "shakespeare",
        message: format!("{}: not valid JSON ({e})", path.display()),
    })?;
    let chars = v
        .get("chars")
        .and_then(|c| c.as_str())
        .ok_or_else(|| Error::InvalidArgument {
            op: "shakespeare",
            message: format!("{}: no \"chars\" string", path.display()),
        })?;
    CharTokenizer::from_chars(chars.chars().collect())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let m = cli().get_matches();
    let dev = Device::new()?;
    println!("{}", dev.info());
    if let Some(s) = m.subcommand_matches("sample") {
        let dir = PathBuf::from(s.get_one::<String>("out").expect("default"));
        let tok = load_vocab(&dir)?;
        let model = load_pretrained(&dev, &dir)?;
        let prompt: &String = s.get_one("prompt").expect("default");
        let cfg = SamplingConfig {
            temperature: *s.get_one("temperature").expect("default"),
            top_k: s.get_one::<usize>("top-k").copied(),
            seed: *s.get_one("seed").expect("default"),
            ..Default::default()
        };
        print!("{prompt}");
        sample_text(
            &model,
            &tok,
            prompt,
            *s.get_one("chars").expect("default"),
            cfg,
            true,
        )?;
        println!();
        return Ok(());
    }
    train(&dev, &m)
}

fn train(dev: &Device, m: &ArgMatches) -> Result<()> {
    let text_path = PathBuf::from(m.get_one::<String>("text").expect("default"));
    let text = std::fs::read_to_string(&text_path).map_err(|e| Error::io(&text_path, e))?;
    let out = PathBuf::from(m.get_one::<String>("out").expect("default"));
    let resume = m.get_flag("resume");
    let tok = if resume {
        load_vocab(&out)?
    } else {
        CharTokenizer::from_text(&text)?
    };
    let data = tok.encode(&text)?;
    let split = data.len() * 9 / 10;
    let (train_ids, val_ids) = data.split_at(split);
    let mut p = plan(dev, m, tok.vocab_size());
    if val_ids.len() < 2 || train_ids.len() < 2 {
        return Err(Error::InvalidArgument {
            op: "shakespeare",
            message: format!("{}: the text is too short to train on", text_path.display()),
        });
    }
    // Short texts: shrink the context to what the validation split can fill.
    p.cfg.block_size = p
        .cfg
        .block_size
        .min(val_ids.len() - 1)
        .min(train_ids.len() - 1);
    let seed: u64 = *m.get_one("seed").expect("default");
    let mut model = if resume {
        let model = load_pretrained(dev, &out)?;
        if model.config().vocab_size != tok.vocab_size() {
            return Err(Error::InvalidArgument {
                op: "shakespeare",
                message: "the checkpoint's vocabulary does not match".into(),
            });
        }
        p.cfg = model.config().clone();
        model
    } else {
        Gpt::new(dev, p.cfg.clone(), seed)?
    };
    let precision = m
        .get_one::<String>("precision")
        .and_then(|s| Precision::parse(s))
        .unwrap_or_default();
    model.set_precision(precision)?;
    let cfg = OptimConfig::adamw(p.lr)
        .betas(0.9, 0.95)
        .clip_grad_norm(*m.get_one::<f64>("clip").expect("default"))
        .schedule(LrSchedule::warmup_cosine(
            (p.steps / 10).max(1) as u64,
            p.steps as u64,
            p.lr / 10.0,
        ));
    let wd = *m.get_one::<f64>("weight-decay").expect("default");
    let mut opt = Optimizer::with_groups(cfg, decay_groups(model.parameters(), wd))?;
    if precision == Precision::Mixed(portagrad::DType::F16) {
        opt.enable_loss_scaling(LossScaling::default())?;
    }
    let state_path = out.join("train_state.safetensors");
    let mut start = 0usize;
    if resume {
        let info = checkpoint::load_params(&state_path, &model.parameters(), Some(&mut opt))?;
        start = info.step as usize;
        // The masks the uninterrupted run would draw next (older checkpoints have no state).
        if let Some(d) = info.dropout {
            model.set_dropout_state(d);
        }
        println!("resumed from {} at step {start}", out.display());
    }
    let c = &p.cfg;
    println!(
        "model: {} layers, {} heads, {} wide, block {}, vocab {} ({:.2}M parameters); batch {}, {} steps, lr {}, dropout {}, precision {}",
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.block_size,
        c.vocab_size,
        c.num_params() as f64 / 1e6,
        p.batch,
        p.steps,
        p.lr,
        c.dropout,
        precision.name()
    );
    println!(
        "data: {} ({} characters: {} train, {} validation)",
        text_path.display(),
        data.len(),
        train_ids.len(),
        val_ids.len()
    );

    let eval_batches: usize = *m.get_one("eval-batches").expect("default");
    let tokens_per_step = p.batch * c.block_size;
    let bar = ProgressBar::new(p.steps as u64);
    bar.set_position(start as u64);
    if std::io::stdout().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut train_curve: Vec<(f64, f64)> = Vec::new();
    let mut val_curve: Vec<(f64, f64)> = Vec::new();
    dev.sync()?;
    dev.reset_stats();
    let t0 = Instant::now();
    let mut timed_steps = 0usize;
    let mut train_time = 0.0f64;
    let mut loss_acc = (0.0f32, 0usize);
    // Work done by evaluation and sampling, taken out of the per-step figures.
    let mut eval_stats = portagrad::Stats::default();
    let log_every = 10;
    for step in start..p.steps {
        let ts = Instant::now();
        let (x, y) = batch(
            dev,
            train_ids,
            p.batch,
            c.block_size,
            mix(seed) ^ step as u64,
        )?;
        let loss = model.loss(&x, &y, true)?;
        // With f16 mixed precision the loss is scaled for the backward (see LossScaling).
        let grads = opt.scale_loss(&loss)?.backward()?;
        opt.step(&grads)?;
        // Read the loss only now and then: every read waits for the GPU.
        if (step + 1) % log_every == 0 || step + 1 == p.steps {
            let l = loss.item()?;
            if !l.is_finite() {
                return Err(Error::InvalidArgument {
                    op: "shakespeare",
                    message: format!(
                        "loss became {l} at step {step}; the last checkpoint in {} is intact",
                        out.display()
                    ),
                });
            }
            loss_acc = (loss_acc.0 + l, loss_acc.1 + 1);
            train_curve.push(((step + 1) as f64, f64::from(l)));
            let secs = train_time + ts.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {l:.3}, {:.0} tok/s",
                (timed_steps + 1) as f64 * tokens_per_step as f64 / secs.max(1e-9)
            ));
        } else {
            dev.flush()?;
        }
        drop((loss, grads, x, y));
        train_time += ts.elapsed().as_secs_f64();
        timed_steps += 1;
        bar.inc(1);
        if (step + 1) % p.eval_every == 0 || step + 1 == p.steps {
            let before = dev.stats();
            let vl = val_loss(&model, dev, val_ids, &p, eval_batches)?;
            val_curve.push(((step + 1) as f64, f64::from(vl)));
            let sample = sample_text(
                &model,
                &tok,
                "\n",
                120,
                SamplingConfig {
                    temperature: 0.8,
                    seed: step as u64,
                    ..Default::default()
                },
                false,
            )?;
            let report = format!(
                "step {:>5}: train loss {:.3}, val loss {vl:.3}, lr {:.2e}\n{}\n",
                step + 1,
                loss_acc.0 / loss_acc.1.max(1) as f32,
                opt.lr(),
                sample.trim_end()
            );
            // A hidden bar (stdout not a terminal) drops println: print directly then.
            if bar.is_hidden() {
                println!("{report}");
            } else {
                bar.println(report);
            }
            loss_acc = (0.0, 0);
            save_pretrained(&model, &out)?;
            save_vocab(&out, &tok)?;
            checkpoint::save_params_with_dropout(
                &state_path,
                &model.parameters(),
                Some(&opt),
                model.dropout_state(),
            )?;
            let after = dev.stats();
            eval_stats.dispatches += after.dispatches - before.dispatches;
            eval_stats.submits += after.submits - before.submits;
            eval_stats.readbacks += after.readbacks - before.readbacks;
        }
    }
    bar.finish_and_clear();
    let stats = dev.stats();
    let wall = t0.elapsed().as_secs_f64();
    let steps_run = timed_steps.max(1);
    let final_val = val_loss(&model, dev, val_ids, &p, eval_batches * 4)?;
    println!("--- sample ---");
    let s = sample_text(
        &model,
        &tok,
        "\n",
        500,
        SamplingConfig {
            temperature: 0.8,
            seed,
            ..Default::default()
        },
        true,
    )?;
    let _ = s;
    println!("\n--------------");
    println!("final validation loss: {final_val:.4} nats/char");
    if let Some((scale, skipped)) = opt.loss_scale()? {
        println!("loss scale {scale}, {skipped} steps skipped on overflow");
    }
    println!(
        "training: {:.0} tokens/s, {:.1} ms/step over {steps_run} steps ({:.0} s in all, with evaluation)",
        (steps_run * tokens_per_step) as f64 / train_time,
        train_time / steps_run as f64 * 1e3,
        wall
    );
    println!(
        "per step: {:.1} dispatches, {:.2} submits, {:.2} readbacks; peak GPU memory {:.1} MiB",
        (stats.dispatches - eval_stats.dispatches) as f64 / steps_run as f64,
        (stats.submits - eval_stats.submits) as f64 / steps_run as f64,
        (stats.readbacks - eval_stats.readbacks) as f64 / steps_run as f64,
        stats.peak_bytes as f64 / (1 << 20) as f64
    );
    let svg_path = PathBuf::from(m.get_one::<String>("svg").expect("default"));
    let svg = line_charts_svg(
        &format!("shakespeare: {} layers, {} wide", c.n_layer, c.n_embd),
        &[(
            "cross-entropy (nats/char)",
            "step",
            vec![
                Series {
                    name: "train",
                    points: train_curve,
                },
                Series {
                    name: "validation",
                    points: val_curve,
                },
            ],
        )],
    );
    write_atomic(&svg_path, svg.as_bytes())?;
    println!(
        "checkpoint: {} (sample with: cargo run --release --example shakespeare -- sample)",
        out.display()
    );
    println!("loss curves: {}", svg_path.display());
    Ok(())
}
