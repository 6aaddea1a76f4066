//! `cargo run --release --example gpt2 -- <command>` — GPT-2 from a Hugging Face directory
//! (`config.json` + `model.safetensors`, any size) or a `shakespeare` checkpoint: generate,
//! tokenize, score, gradients and fine-tuning. Results match PyTorch / transformers (see
//! tests/gpt.rs); machine-readable output goes to stdout, progress and speed to stderr.
//!
//! ```text
//! gpt2 generate --model DIR [--prompt TEXT]... [--max-new-tokens N] [--temperature T]
//!               [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--greedy]
//! gpt2 tokenize [--tokenizer DIR] --text TEXT            # [15496, 995]
//! gpt2 score    --model DIR --ids FILE                   # {"loss": 4.2}
//! gpt2 grad     --model DIR --ids FILE --out FILE.safetensors
//! gpt2 finetune --model DIR (--ids FILE | --text FILE) --steps N [--lr 1e-3]
//!               [--weight-decay 0.1] [--decay all|matrices] [--clip NORM] [--out DIR]
//! ```
//!
//! `--ids FILE` holds a JSON array of equal-length id arrays (B, T); the loss is Hugging Face's
//! `labels=input_ids` one (logits[:, :-1] against ids[:, 1:]). Text is tokenized with the
//! model directory's tokenizer: a `shakespeare` checkpoint's characters, the directory's own
//! `vocab.json` + `merges.txt`, or GPT-2's (data/gpt2-tokenizer); `--tokenizer DIR` overrides.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use portagrad::generate::{Sampler, SamplingConfig};
use portagrad::models::lm::{self, DecayMode, FinetuneConfig, IdBatch, TextTokenizer};
use portagrad::models::{
    BpeTokenizer, GenerateOptions, Gpt, StreamDecoder, load_pretrained_as, save_host_tensors,
    save_pretrained,
};
use portagrad::{DType, Device, Error, Precision, Result};

fn cli() -> Command {
    let model = || {
        Arg::new("model")
            .long("model")
            .value_name("DIR")
            .required(true)
            .help("Hugging Face GPT-2 directory or shakespeare checkpoint")
    };
    let tokenizer = || {
        Arg::new("tokenizer")
            .long("tokenizer")
            .value_name("DIR")
            .help("directory with vocab.json + merges.txt (default: the model's, else GPT-2's)")
    };
    let ids = || {
        Arg::new("ids")
            .long("ids")
            .value_name("FILE")
            .help("JSON array of equal-length token id arrays (B, T)")
    };
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
    let dtype = || {
        Arg::new("dtype")
            .long("dtype")
            .value_parser(["f32", "f16", "bf16"])
            .default_value("f32")
            .help("dtype of the weight matrices and the embedding (f16 / bf16: half the memory; computed in f32)")
    };
    Command::new("gpt2")
        .about("GPT-2 from Hugging Face weights: generate, tokenize, score, gradients, fine-tune")
        .subcommand_required(true)
        .subcommand(
            Command::new("generate")
                .about("Continue prompts (KV-cached); several --prompt run as one batch")
                .arg(model())
                .arg(tokenizer())
                .arg(Arg::new("prompt").long("prompt").action(ArgAction::Append).help("prompt text (repeat for a batch; default: <|endoftext|>)"))
                .arg(Arg::new("prompt-ids").long("prompt-ids").value_name("JSON").conflicts_with("prompt").help("prompt token ids: [1, 2] or [[1, 2], [3]]"))
                .arg(num("max-new-tokens", "new tokens per prompt").default_value("50"))
                .arg(float("temperature", "softmax temperature (0: greedy)").default_value("1.0"))
                .arg(num("top-k", "sample from the k most likely tokens"))
                .arg(float("top-p", "nucleus sampling threshold"))
                .arg(float("repetition-penalty", "penalise tokens already present (1: off)").default_value("1.0"))
                .arg(Arg::new("seed").long("seed").default_value("0").value_parser(value_parser!(u64)))
                .arg(Arg::new("greedy").long("greedy").action(ArgAction::SetTrue).help("argmax decoding"))
                .arg(Arg::new("no-stop").long("no-stop").action(ArgAction::SetTrue).help("do not stop at <|endoftext|>"))
                .arg(Arg::new("no-cache").long("no-cache").action(ArgAction::SetTrue).help("re-run the whole context for every token (the uncached reference path, one prompt; for speed comparisons)"))
                .arg(Arg::new("warmup").long("warmup").action(ArgAction::SetTrue).help("run the prompts once untimed first (compiles the kernels), so the tokens/s are steady-state"))
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("print {\"tokens\": [[...]], \"text\": [...]} instead of streaming text"))
                .arg(dtype()),
        )
        .subcommand(
            Command::new("tokenize")
                .about("Print the ids of a text as a JSON array")
                .arg(tokenizer())
                .arg(Arg::new("text").long("text").required(true)),
        )
        .subcommand(
            Command::new("score")
                .about("Print {\"loss\": L}: mean next-token cross-entropy of the ids")
                .arg(model())
                .arg(ids().required(true))
                .arg(Arg::new("logits-out").long("logits-out").value_name("FILE").help("also write the logits (B, T, V) to this safetensors file, as \"logits\""))
                .arg(dtype()),
        )
        .subcommand(
            Command::new("grad")
                .about("Write the loss's gradient for every parameter (HF names) to safetensors")
                .arg(model())
                .arg(ids().required(true))
                .arg(Arg::new("out").long("out").value_name("FILE").required(true)),
        )
        .subcommand(
            Command::new("finetune")
                .about("AdamW fine-tuning; prints {\"losses\": [...]}, the loss before each step")
                .arg(model())
                .arg(tokenizer())
                .arg(ids().conflicts_with("text"))
                .arg(Arg::new("text").long("text").value_name("FILE").help("text to tokenize and cut into batches"))
                .group(clap::ArgGroup::new("data").args(["ids", "text"]).required(true))
                .arg(num("steps", "optimizer steps").required(true))
                .arg(float("lr", "learning rate").default_value("1e-3"))
                .arg(float("weight-decay", "decoupled weight decay").default_value("0.1"))
                .arg(Arg::new("decay").long("decay").value_parser(["all", "matrices"]).default_value("all").help("decay every parameter (torch's default) or matrices only"))
                .arg(float("clip", "clip gradients to this global norm (default: no clipping)"))
                .arg(num("batch-size", "sequences per step with --text").default_value("4"))
                .arg(num("seq-len", "tokens per sequence with --text (default: min(context, 128))"))
                .arg(Arg::new("no-dropout").long("no-dropout").action(ArgAction::SetTrue).help("train with dropout off"))
                .arg(Arg::new("precision").long("precision").value_parser(["f32", "mixed", "mixed-bf16", "mixed-f16"]).default_value("f32").help("f32, or mixed: 16-bit matmul operands (bf16; mixed-f16 for f16, with dynamic loss scaling), f32 master weights"))
                .arg(Arg::new("out").long("out").value_name("DIR").help("write the fine-tuned model here (Hugging Face format)")),
        )
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn path_arg(m: &ArgMatches, name: &str) -> Option<PathBuf> {
    m.get_one::<String>(name).map(PathBuf::from)
}

fn open_model(m: &ArgMatches) -> Result<(Device, PathBuf, Gpt)> {
    let dev = Device::new()?;
    eprintln!("{}", dev.info());
    let dir = path_arg(m, "model").expect("required");
    let t = Instant::now();
    // Only generate and score take --dtype; the training commands keep f32 weights.
    let dtype = match m
        .try_get_one::<String>("dtype")
        .ok()
        .flatten()
        .map(String::as_str)
    {
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let model = load_pretrained_as(&dev, &dir, dtype)?;
    let c = model.config();
    eprintln!(
        "model {}: {} layers, {} heads, {} wide, context {}, vocabulary {} ({:.1}M parameters, {:.1} MB as {}), loaded in {:.2} s",
        dir.display(),
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.block_size,
        c.vocab_size,
        c.num_params() as f64 / 1e6,
        model.parameter_bytes() as f64 / 1e6,
        dtype.name(),
        t.elapsed().as_secs_f64()
    );
    Ok((dev, dir, model))
}

fn run() -> Result<()> {
    let m = cli().get_matches();
    match m.subcommand() {
        Some(("generate", s)) => generate(s),
        Some(("tokenize", s)) => {
            let dir = path_arg(s, "tokenizer").unwrap_or_else(BpeTokenizer::default_dir);
            let tok = BpeTokenizer::from_dir(&dir)?;
            let text: &String = s.get_one("text").expect("required");
            println!("{}", serde_json::to_string(&tok.encode(text)).expect("ids"));
            Ok(())
        }
        Some(("score", s)) => {
            let ids = IdBatch::load(&path_arg(s, "ids").expect("required"))?;
            let (_, _, model) = open_model(s)?;
            let loss = lm::score(&model, &ids)?;
            if let Some(p) = path_arg(s, "logits-out") {
                // In chunks, joined on the host: (B, T, V) may pass one storage binding.
                let mut all = Vec::new();
                for chunk in lm::logits_chunks(&model, &ids)? {
                    all.extend(chunk.to_vec()?);
                }
                let shape = vec![ids.batch, ids.len, model.config().vocab_size];
                save_host_tensors(&p, &[("logits".to_string(), shape, all)])?;
            }
            println!("{}", serde_json::json!({ "loss": loss }));
            Ok(())
        }
        Some(("grad", s)) => {
            let ids = IdBatch::load(&path_arg(s, "ids").expect("required"))?;
            let out = path_arg(s, "out").expect("required");
            let (_, _, model) = open_model(s)?;
            let loss = lm::save_gradients(&model, &ids, &out)?;
            eprintln!(
                "wrote {} gradients to {}",
                model.parameters().len(),
                out.display()
            );
            println!("{}", serde_json::json!({ "loss": loss }));
            Ok(())
        }
        Some(("finetune", s)) => finetune(s),
        _ => unreachable!("a subcommand is required"),
    }
}

fn tokenizer_for(dir: &Path, m: &ArgMatches, model: &Gpt) -> Result<TextTokenizer> {
    let tok = TextTokenizer::for_model(dir, path_arg(m, "tokenizer").as_deref())?;
    tok.check_fits(model.config().vocab_size)?;
    Ok(tok)
}

fn generate(m: &ArgMatches) -> Result<()> {
    let (_, dir, model) = open_model(m)?;
    let json = m.get_flag("json");
    // Prompts: ids as given, or text through the model's tokenizer.
    let mut tok = None;
    let prompts: Vec<Vec<u32>> = if let Some(j) = m.get_one::<String>("prompt-ids") {
        IdBatch::from_json(j)
            .map(|b| b.rows())
            .or_else(|_| ragged_ids(j))?
    } else {
        let t = tokenizer_for(&dir, m, &model)?;
        let texts: Vec<String> = match m.get_many::<String>("prompt") {
            Some(v) => v.cloned().collect(),
            None => Vec::new(),
        };
        let prompts = if texts.is_empty() {
            // No prompt: start from <|endoftext|>, as transformers does for GPT-2.
            match t.end_of_text() {
                Some(eot) => vec![vec![eot]],
                None => {
                    return Err(Error::InvalidArgument {
                        op: "gpt2 generate",
                        message: "this tokenizer has no <|endoftext|>; give a --prompt".into(),
                    });
                }
            }
        } else {
            texts
                .iter()
                .map(|p| t.encode(p))
                .collect::<Result<Vec<_>>>()?
        };
        tok = Some(t);
        prompts
    };
    // With ids only, decode text when the model's tokenizer fits.
    if tok.is_none()
        && let Ok(t) = tokenizer_for(&dir, m, &model)
    {
        tok = Some(t);
    }
    let greedy = m.get_flag("greedy");
    let cfg = SamplingConfig {
        temperature: if greedy {
            0.0
        } else {
            *m.get_one::<f64>("temperature").expect("default") as f32
        },
        top_k: m.get_one::<usize>("top-k").copied(),
        top_p: m.get_one::<f64>("top-p").map(|&p| p as f32),
        repetition_penalty: *m.get_one::<f64>("repetition-penalty").expect("default") as f32,
        seed: *m.get_one("seed").expect("default"),
    };
    let opts = GenerateOptions {
        max_new_tokens: *m.get_one("max-new-tokens").expect("default"),
        stop_token: if m.get_flag("no-stop") {
            None
        } else {
            tok.as_ref()
                .and_then(TextTokenizer::end_of_text)
                .filter(|&e| (e as usize) < model.config().vocab_size)
        },
        context_keep: None,
    };
    if m.get_flag("warmup") {
        let warm = GenerateOptions {
            max_new_tokens: opts.max_new_tokens.min(3),
            ..opts.clone()
        };
        let mut s = Sampler::batch(&cfg, prompts.len())?;
        model.generate_batch(&prompts, &warm, &mut s, &mut |_, _| Ok(true))?;
    }
    let mut samplers = Sampler::batch(&cfg, prompts.len())?;
    // One prompt streams its text as it comes; a batch prints each completion at the end.
    let stream = !json && prompts.len() == 1 && tok.is_some();
    let mut stdout = std::io::stdout();
    let mut decoder = StreamDecoder::new();
    if stream {
        let t = tok.as_ref().expect("checked");
        let shown: Vec<u32> = prompts[0]
            .iter()
            .copied()
            .filter(|&id| Some(id) != t.end_of_text())
            .collect();
        print!("{}", t.decode(&shown)?);
        let _ = stdout.flush();
    }
    let mut on_token = |_, id| -> Result<bool> {
        if stream {
            let t = tok.as_ref().expect("checked");
            print!("{}", decoder.push(&t.token_bytes(id)?));
            let _ = stdout.flush();
        }
        Ok(true)
    };
    if m.get_flag("no-cache") {
        if prompts.len() != 1 {
            return Err(Error::InvalidArgument {
                op: "gpt2 generate --no-cache",
                message: "the uncached path takes one prompt".into(),
            });
        }
        let t = Instant::now();
        let ids = model.generate_full_context(
            &prompts[0],
            opts.max_new_tokens,
            &mut samplers[0],
            &mut |id| on_token(0, id),
        )?;
        let secs = t.elapsed().as_secs_f64();
        if stream {
            println!("{}", decoder.finish());
        } else {
            println!("{}", serde_json::json!({ "tokens": [ids] }));
        }
        eprintln!(
            "uncached: {} tokens in {secs:.3} s = {:.1} tokens/s (every token re-runs the context)",
            ids.len(),
            ids.len() as f64 / secs
        );
        return Ok(());
    }
    let out = model.generate_batch(&prompts, &opts, &mut samplers, &mut on_token)?;
    if stream {
        println!("{}", decoder.finish());
    } else if json {
        let text: Vec<Option<String>> = out
            .tokens
            .iter()
            .map(|ids| tok.as_ref().and_then(|t| t.decode(ids).ok()))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "tokens": out.tokens, "text": text, "stopped": out.stopped })
        );
    } else {
        for (i, ids) in out.tokens.iter().enumerate() {
            match tok.as_ref() {
                Some(t) => println!("--- {i} ---\n{}{}", t.decode(&prompts[i])?, t.decode(ids)?),
                None => println!("--- {i} ---\n{}", serde_json::to_string(ids).expect("ids")),
            }
        }
    }
    eprintln!(
        "prefill: {} tokens in {:.3} s = {:.1} tokens/s; decode: {} tokens in {:.3} s = {:.1} tokens/s (batch {}, {} context rebuilds)",
        out.prefill_tokens,
        out.prefill_secs,
        out.prefill_tokens_per_sec(),
        out.decode_tokens,
        out.decode_secs,
        out.decode_tokens_per_sec(),
        prompts.len(),
        out.context_rebuilds
    );
    Ok(())
}

/// Prompt ids of unequal lengths (a batch of prompts need not be rectangular).
fn ragged_ids(text: &str) -> Result<Vec<Vec<u32>>> {
    let bad = |m: String| Error::InvalidArgument {
        op: "gpt2 generate --prompt-ids",
        message: m,
    };
    let v: Vec<Vec<u32>> = serde_json::from_str(text)
        .map_err(|e| bad(format!("expected [ids] or [[ids], ...] ({e})")))?;
    if v.is_empty() || v.iter().any(Vec::is_empty) {
        return Err(bad("a prompt is empty".into()));
    }
    Ok(v)
}

fn finetune(m: &ArgMatches) -> Result<()> {
    let (_, dir, mut model) = open_model(m)?;
    let precision = m
        .get_one::<String>("precision")
        .and_then(|s| Precision::parse(s))
        .unwrap_or_default();
    model.set_precision(precision)?;
    eprintln!("precision: {}", precision.name());
    let cfg = FinetuneConfig {
        steps: *m.get_one("steps").expect("required"),
        lr: *m.get_one("lr").expect("default"),
        weight_decay: *m.get_one("weight-decay").expect("default"),
        decay: match m.get_one::<String>("decay").map(String::as_str) {
            Some("matrices") => DecayMode::Matrices,
            _ => DecayMode::All,
        },
        clip: m.get_one::<f64>("clip").copied(),
        dropout: !m.get_flag("no-dropout"),
    };
    let mut next: Box<dyn FnMut(usize) -> Result<IdBatch>> = if let Some(p) = path_arg(m, "ids") {
        let ids = IdBatch::load(&p)?;
        ids.check(&model)?;
        Box::new(move |_| Ok(ids.clone()))
    } else {
        let path = path_arg(m, "text").expect("the data group is required");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let tok = tokenizer_for(&dir, m, &model)?;
        let ids = tok.encode(&text)?;
        let len = m
            .get_one::<usize>("seq-len")
            .copied()
            .unwrap_or(128)
            .min(model.config().block_size);
        let batch = *m.get_one::<usize>("batch-size").expect("default");
        eprintln!(
            "{}: {} tokens, batches of {batch} x {len}",
            path.display(),
            ids.len()
        );
        Box::new(lm::window_batches(ids, batch, len)?)
    };
    let t = Instant::now();
    let losses = lm::finetune(&model, &cfg, &mut next, &mut |s, l| {
        eprintln!(
            "step {:>4}: loss {l:.4} ({:.1} s)",
            s + 1,
            t.elapsed().as_secs_f64()
        );
    })?;
    if let Some(out) = path_arg(m, "out") {
        save_pretrained(&model, &out)?;
        // Keep the tokenizer with the weights.
        if out.canonicalize().ok() != dir.canonicalize().ok() {
            for f in ["vocab.json", "merges.txt"] {
                let src = dir.join(f);
                if src.exists() {
                    std::fs::copy(&src, out.join(f)).map_err(|e| Error::io(&src, e))?;
                }
            }
        }
        eprintln!("saved the fine-tuned model to {}", out.display());
    }
    println!("{}", serde_json::json!({ "losses": losses }));
    Ok(())
}
