//! `cargo run --release --example lm -- <command>` — language models from Hugging Face
//! directories: GPT-2 and the Llama family (Llama, Qwen2, Mistral), told apart by
//! `config.json`'s `model_type`. Machine-readable output goes to stdout, anything else to stderr.
//!
//! ```text
//! lm tokenize --tokenizer DIR --text TEXT [--no-special]        # [128000, 9906, 1917]
//! lm tokenize --tokenizer DIR --chat FILE.json [--tools FILE.json] [--no-generation-prompt]
//!                                                               # {"text": "...", "ids": [...]}
//! lm generate --model DIR [--tokenizer DIR] [--prompt TEXT]... [--prompt-ids JSON]
//!             [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
//!             [--repetition-penalty R] [--seed S] [--greedy] [--no-stop] [--json]
//! lm score    --model DIR --ids FILE                            # {"loss": 4.2}
//! lm grad     --model DIR --ids FILE --out FILE.safetensors     # {"loss": 4.2}
//! lm finetune --model DIR --ids FILE --steps N [--lr 1e-3] [--weight-decay 0.1]
//!             [--decay all|matrices] [--clip NORM] [--no-dropout] [--out DIR]
//!                                                               # {"losses": [...]}
//! lm chat     --model DIR [--tokenizer DIR] [--system TEXT] [--max-new-tokens N] [--greedy]
//! ```
//!
//! `DIR` holds `tokenizer.json` (+ `tokenizer_config.json`, whose `chat_template` renders
//! `--chat`), or GPT-2's `vocab.json` + `merges.txt`. `--text` ids are `tokenizers`'
//! `encode(text, add_special_tokens=True)` (Llama's BOS first; `--no-special`: none added); special
//! tokens written in the text become their ids. `--chat FILE.json` is a JSON list of `{"role",
//! "content"}` messages (other fields, such as tool calls, are passed to the template); the
//! output is transformers' `apply_chat_template(..., add_generation_prompt=True)` and its ids.
//!
//! The model commands take the tokenizer of the model directory (`tokenizer.json`, else for
//! GPT-2 its `vocab.json` + `merges.txt` or GPT-2's own) or of `--tokenizer DIR`; one whose ids
//! pass the model's vocabulary is an error. `generate` stops at the tokenizer's stop tokens
//! (end of text, end of turn). `--ids FILE` holds a JSON array of equal-length id arrays
//! (B, T); the loss is Hugging Face's `labels=input_ids` one. `grad` writes every parameter's
//! gradient under its Hugging Face name. `chat` reads one user message per line from stdin,
//! renders the whole conversation with the chat template (generation prompt added), streams
//! the reply and keeps it in the history; an empty line or end of input ends it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Arg, ArgAction, ArgMatches, Command, value_parser};
use portagrad::generate::{GenerateOptions, Generation, Sampler, SamplingConfig};
use portagrad::models::lm::{
    self, DecayMode, FinetuneConfig, IdBatch, LanguageModel, TextTokenizer,
};
use portagrad::models::{
    Gpt, HfTokenizer, Llama, StreamDecoder, load_llama, load_pretrained, save_llama,
    save_pretrained,
};
use portagrad::{Device, Error, Result};

fn cli() -> Command {
    let tokenizer = || {
        Arg::new("tokenizer")
            .long("tokenizer")
            .value_name("DIR")
            .required(true)
            .help("directory with tokenizer.json (+ tokenizer_config.json), or vocab.json + merges.txt")
    };
    let model = || {
        Arg::new("model")
            .long("model")
            .value_name("DIR")
            .required(true)
            .help("Hugging Face model directory (config.json + model.safetensors): gpt2, llama, qwen2, mistral")
    };
    let model_tokenizer = || {
        Arg::new("tokenizer")
            .long("tokenizer")
            .value_name("DIR")
            .help("tokenizer directory (default: the model's)")
    };
    let ids = || {
        Arg::new("ids")
            .long("ids")
            .value_name("FILE")
            .required(true)
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
    let sampling = |c: Command| {
        c.arg(num("max-new-tokens", "new tokens per prompt").default_value("50"))
            .arg(float("temperature", "softmax temperature (0: greedy)").default_value("1.0"))
            .arg(num("top-k", "sample from the k most likely tokens"))
            .arg(float("top-p", "nucleus sampling threshold"))
            .arg(
                float(
                    "repetition-penalty",
                    "penalise tokens already present (1: off)",
                )
                .default_value("1.0"),
            )
            .arg(
                Arg::new("seed")
                    .long("seed")
                    .default_value("0")
                    .value_parser(value_parser!(u64)),
            )
            .arg(
                Arg::new("greedy")
                    .long("greedy")
                    .action(ArgAction::SetTrue)
                    .help("argmax decoding"),
            )
    };
    Command::new("lm")
        .about("Language models from Hugging Face directories")
        .subcommand_required(true)
        .subcommand(
            Command::new("tokenize")
                .about("Print the ids of a text as a JSON array, or of a chat as {\"text\", \"ids\"}")
                .arg(tokenizer())
                .arg(Arg::new("text").long("text").help("text to encode"))
                .arg(
                    Arg::new("chat")
                        .long("chat")
                        .value_name("FILE")
                        .help("JSON list of {\"role\", \"content\"} messages to render with the chat template"),
                )
                .group(clap::ArgGroup::new("input").args(["text", "chat"]).required(true))
                .arg(
                    Arg::new("no-special")
                        .long("no-special")
                        .action(ArgAction::SetTrue)
                        .conflicts_with("chat")
                        .help("with --text: add no special tokens (no BOS)"),
                )
                .arg(
                    Arg::new("tools")
                        .long("tools")
                        .value_name("FILE")
                        .requires("chat")
                        .help("JSON list of tool schemas, passed to the template as `tools`"),
                )
                .arg(
                    Arg::new("no-generation-prompt")
                        .long("no-generation-prompt")
                        .action(ArgAction::SetTrue)
                        .requires("chat")
                        .help("do not append the assistant header"),
                ),
        )
        .subcommand(sampling(
            Command::new("generate")
                .about("Continue prompts (KV-cached); several --prompt run as one batch")
                .arg(model())
                .arg(model_tokenizer())
                .arg(Arg::new("prompt").long("prompt").action(ArgAction::Append).help("prompt text (repeat for a batch; default: the BOS or end-of-text token)"))
                .arg(Arg::new("prompt-ids").long("prompt-ids").value_name("JSON").conflicts_with("prompt").help("prompt token ids: [1, 2] or [[1, 2], [3]]"))
                .arg(Arg::new("no-stop").long("no-stop").action(ArgAction::SetTrue).help("do not stop at the tokenizer's stop tokens"))
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("print {\"tokens\": [[...]], \"text\": [...], \"stopped\": [...]} instead of streaming text")),
        ))
        .subcommand(
            Command::new("score")
                .about("Print {\"loss\": L}: mean next-token cross-entropy of the ids")
                .arg(model())
                .arg(ids()),
        )
        .subcommand(
            Command::new("grad")
                .about("Write the loss's gradient for every parameter (HF names) to safetensors")
                .arg(model())
                .arg(ids())
                .arg(Arg::new("out").long("out").value_name("FILE").required(true)),
        )
        .subcommand(
            Command::new("finetune")
                .about("AdamW fine-tuning on one batch; prints {\"losses\": [...]}, the loss before each step")
                .arg(model())
                .arg(ids())
                .arg(num("steps", "optimizer steps").required(true))
                .arg(float("lr", "learning rate").default_value("1e-3"))
                .arg(float("weight-decay", "decoupled weight decay").default_value("0.1"))
                .arg(Arg::new("decay").long("decay").value_parser(["all", "matrices"]).default_value("all").help("decay every parameter (torch's default) or matrices only"))
                .arg(float("clip", "clip gradients to this global norm (default: no clipping)"))
                .arg(Arg::new("no-dropout").long("no-dropout").action(ArgAction::SetTrue).help("train GPT-2 with dropout off (Llama-family models have none)"))
                .arg(Arg::new("out").long("out").value_name("DIR").help("write the fine-tuned model here (Hugging Face format)")),
        )
        .subcommand(sampling(
            Command::new("chat")
                .about("Interactive chat: one user message per line on stdin, the reply streamed")
                .arg(model())
                .arg(model_tokenizer())
                .arg(Arg::new("system").long("system").value_name("TEXT").help("a system message first")),
        ).mut_arg("max-new-tokens", |a| a.default_value("256")))
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

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn run() -> Result<()> {
    let m = cli().get_matches();
    match m.subcommand() {
        Some(("tokenize", s)) => tokenize(s),
        Some(("generate", s)) => generate(s),
        Some(("score", s)) => {
            let ids = IdBatch::load(&path_arg(s, "ids").expect("required"))?;
            let (_, model) = open_model(s)?;
            let loss = lm::score(model.lm(), &ids)?;
            println!("{}", serde_json::json!({ "loss": loss }));
            Ok(())
        }
        Some(("grad", s)) => {
            let ids = IdBatch::load(&path_arg(s, "ids").expect("required"))?;
            let out = path_arg(s, "out").expect("required");
            let (_, model) = open_model(s)?;
            let loss = lm::save_gradients(model.lm(), &ids, &out)?;
            eprintln!(
                "wrote {} gradients to {}",
                model.lm().parameters().len(),
                out.display()
            );
            println!("{}", serde_json::json!({ "loss": loss }));
            Ok(())
        }
        Some(("finetune", s)) => finetune(s),
        Some(("chat", s)) => chat(s),
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn tokenize(s: &ArgMatches) -> Result<()> {
    let tok = HfTokenizer::from_dir(&path_arg(s, "tokenizer").expect("required"))?;
    if let Some(text) = s.get_one::<String>("text") {
        let ids = tok.encode(text, !s.get_flag("no-special"))?;
        println!("{}", serde_json::to_string(&ids).expect("ids"));
        return Ok(());
    }
    let messages = read(&path_arg(s, "chat").expect("--text or --chat"))?;
    let extra = match path_arg(s, "tools") {
        Some(p) => Some(format!("{{\"tools\": {}}}", read(&p)?)),
        None => None,
    };
    let (text, ids) = tok.encode_chat_json(
        &messages,
        !s.get_flag("no-generation-prompt"),
        extra.as_deref(),
    )?;
    // Written by hand so that "text" comes first (serde_json's maps sort their keys).
    let (text, ids) = (serde_json::to_string(&text), serde_json::to_string(&ids));
    println!(
        "{{\"text\": {}, \"ids\": {}}}",
        text.expect("text"),
        ids.expect("ids")
    );
    Ok(())
}

/// A model of either family.
enum AnyLm {
    Gpt(Box<Gpt>),
    Llama(Box<Llama>),
}

impl AnyLm {
    fn lm(&self) -> &dyn LanguageModel {
        match self {
            AnyLm::Gpt(m) => m.as_ref(),
            AnyLm::Llama(m) => m.as_ref(),
        }
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        opts: &GenerateOptions,
        stops: &[u32],
        samplers: &mut [Sampler],
        on_token: &mut dyn FnMut(usize, u32) -> Result<bool>,
    ) -> Result<Generation> {
        match self {
            AnyLm::Gpt(m) => {
                lm::generate_until_stop(m.as_ref(), prompts, opts, stops, samplers, on_token)
            }
            AnyLm::Llama(m) => {
                lm::generate_until_stop(m.as_ref(), prompts, opts, stops, samplers, on_token)
            }
        }
    }
}

/// The model in `--model DIR`, by its config.json's `model_type`.
fn open_model(m: &ArgMatches) -> Result<(PathBuf, AnyLm)> {
    let dev = Device::new()?;
    eprintln!("{}", dev.info());
    let dir = path_arg(m, "model").expect("required");
    let config = dir.join("config.json");
    let v: serde_json::Value =
        serde_json::from_str(&read(&config)?).map_err(|e| Error::InvalidArgument {
            op: "lm",
            message: format!("{}: not valid JSON ({e})", config.display()),
        })?;
    let t = Instant::now();
    let model = match v.get("model_type").and_then(|t| t.as_str()) {
        Some("gpt2") => AnyLm::Gpt(Box::new(load_pretrained(&dev, &dir)?)),
        Some("llama" | "qwen2" | "mistral") => AnyLm::Llama(Box::new(load_llama(&dev, &dir)?)),
        other => {
            return Err(bad(
                "lm",
                format!(
                    "{}: model_type {} is not supported (supported: \"gpt2\", \"llama\", \"qwen2\", \"mistral\")",
                    config.display(),
                    other.map_or("(missing)".to_string(), |t| format!("{t:?}"))
                ),
            ));
        }
    };
    let lm = model.lm();
    eprintln!(
        "model {}: vocabulary {}, context {}, {:.2}M parameters, loaded in {:.2} s",
        dir.display(),
        lm.vocab_size(),
        lm.context(),
        lm.parameters()
            .iter()
            .map(|(_, p)| p.numel())
            .sum::<usize>() as f64
            / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok((dir, model))
}

/// The tokenizer of a model: Hugging Face's tokenizer.json, or GPT-2's BPE files.
enum Tok {
    Hf(Box<HfTokenizer>),
    Text(TextTokenizer),
}

/// Streams text token by token for either tokenizer.
enum Stream<'a> {
    Hf(portagrad::models::HfDecodeStream<'a>),
    Text(&'a TextTokenizer, StreamDecoder),
}

impl Stream<'_> {
    fn step(&mut self, id: u32) -> Result<String> {
        match self {
            Stream::Hf(s) => Ok(s.step(id)?.unwrap_or_default()),
            Stream::Text(t, d) => Ok(d.push(&t.token_bytes(id)?)),
        }
    }
    fn finish(&mut self) -> String {
        match self {
            Stream::Hf(_) => String::new(),
            Stream::Text(_, d) => d.finish(),
        }
    }
}

impl Tok {
    /// `--tokenizer DIR` or the model directory's tokenizer, which must fit the model.
    fn for_model(dir: &Path, m: &ArgMatches, model: &AnyLm) -> Result<Tok> {
        let given = path_arg(m, "tokenizer");
        let tdir = given.as_deref().unwrap_or(dir);
        let tok = if tdir.join("tokenizer.json").exists() {
            Tok::Hf(Box::new(HfTokenizer::from_dir(tdir)?))
        } else if let AnyLm::Gpt(_) = model {
            Tok::Text(TextTokenizer::for_model(dir, given.as_deref())?)
        } else {
            return Err(Error::InvalidArgument {
                op: "lm",
                message: format!(
                    "{} has no tokenizer.json: pass --tokenizer DIR, or token ids",
                    tdir.display()
                ),
            });
        };
        let fits = match &tok {
            Tok::Hf(t) => lm::check_tokenizer_fits(t, model.lm()),
            Tok::Text(t) => t.check_fits(model.lm().vocab_size()),
        };
        fits.map_err(|e| bad("lm", format!("{}: {e}", tdir.display())))?;
        Ok(tok)
    }

    /// Ids of a prompt: with the BOS a Llama tokenizer adds.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tok::Hf(t) => t.encode(text, true),
            Tok::Text(t) => t.encode(text),
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tok::Hf(t) => t.decode(ids, true),
            Tok::Text(t) => t.decode(ids),
        }
    }

    /// The ids that end a generation (end of text, end of turn).
    fn stops(&self) -> Vec<u32> {
        match self {
            Tok::Hf(t) => t.stop_token_ids().to_vec(),
            Tok::Text(t) => t.end_of_text().into_iter().collect(),
        }
    }

    /// A prompt for no prompt text: BOS, else end of text (as transformers starts GPT-2).
    fn start(&self) -> Option<u32> {
        match self {
            Tok::Hf(t) => t
                .bos_token()
                .or(t.eos_token())
                .and_then(|s| t.token_to_id(s)),
            Tok::Text(t) => t.end_of_text(),
        }
    }

    fn stream(&self) -> Stream<'_> {
        match self {
            Tok::Hf(t) => Stream::Hf(t.decode_stream(true)),
            Tok::Text(t) => Stream::Text(t, StreamDecoder::new()),
        }
    }
}

fn sampling(m: &ArgMatches) -> SamplingConfig {
    SamplingConfig {
        temperature: if m.get_flag("greedy") {
            0.0
        } else {
            *m.get_one::<f64>("temperature").expect("default") as f32
        },
        top_k: m.get_one::<usize>("top-k").copied(),
        top_p: m.get_one::<f64>("top-p").map(|&p| p as f32),
        repetition_penalty: *m.get_one::<f64>("repetition-penalty").expect("default") as f32,
        seed: *m.get_one("seed").expect("default"),
    }
}

fn bad(op: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidArgument {
        op,
        message: message.into(),
    }
}

fn generate(m: &ArgMatches) -> Result<()> {
    let (dir, model) = open_model(m)?;
    let json = m.get_flag("json");
    let tok;
    let prompts: Vec<Vec<u32>> = if let Some(j) = m.get_one::<String>("prompt-ids") {
        let v: Vec<Vec<u32>> = serde_json::from_str(j)
            .or_else(|_| serde_json::from_str::<Vec<u32>>(j).map(|r| vec![r]))
            .map_err(|e| {
                bad(
                    "lm generate --prompt-ids",
                    format!("expected [ids] or [[ids], ...] ({e})"),
                )
            })?;
        if v.is_empty() || v.iter().any(Vec::is_empty) {
            return Err(bad("lm generate --prompt-ids", "a prompt is empty"));
        }
        // Decode the output when the model's tokenizer is there and fits.
        tok = Tok::for_model(&dir, m, &model).ok();
        v
    } else {
        let t = Tok::for_model(&dir, m, &model)?;
        let texts: Vec<String> = m
            .get_many::<String>("prompt")
            .map(|v| v.cloned().collect())
            .unwrap_or_default();
        let prompts = if texts.is_empty() {
            vec![vec![t.start().ok_or_else(|| {
                bad(
                    "lm generate",
                    "this tokenizer has no BOS or end-of-text token; give a --prompt",
                )
            })?]]
        } else {
            texts
                .iter()
                .map(|p| t.encode(p))
                .collect::<Result<Vec<_>>>()?
        };
        tok = Some(t);
        prompts
    };
    let opts = GenerateOptions {
        max_new_tokens: *m.get_one("max-new-tokens").expect("default"),
        ..Default::default()
    };
    let stops = match (&tok, m.get_flag("no-stop")) {
        (Some(t), false) => t.stops(),
        _ => Vec::new(),
    };
    let mut samplers = Sampler::batch(&sampling(m), prompts.len())?;
    // One prompt streams its text as it comes; a batch prints each completion at the end.
    let stream = !json && prompts.len() == 1 && tok.is_some();
    let mut stdout = std::io::stdout();
    let mut decoder = tok.as_ref().map(Tok::stream);
    if stream {
        print!("{}", tok.as_ref().expect("checked").decode(&prompts[0])?);
        let _ = stdout.flush();
    }
    let out = model.generate(&prompts, &opts, &stops, &mut samplers, &mut |_, id| {
        if stream && let Some(d) = decoder.as_mut() {
            print!("{}", d.step(id)?);
            let _ = stdout.flush();
        }
        Ok(true)
    })?;
    if stream {
        println!(
            "{}",
            decoder.as_mut().map(Stream::finish).unwrap_or_default()
        );
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
        "prefill: {} tokens in {:.3} s = {:.1} tokens/s; decode: {} tokens in {:.3} s = {:.1} tokens/s (batch {})",
        out.prefill_tokens,
        out.prefill_secs,
        out.prefill_tokens_per_sec(),
        out.decode_tokens,
        out.decode_secs,
        out.decode_tokens_per_sec(),
        prompts.len(),
    );
    Ok(())
}

fn finetune(m: &ArgMatches) -> Result<()> {
    let ids = IdBatch::load(&path_arg(m, "ids").expect("required"))?;
    let (dir, model) = open_model(m)?;
    ids.check(model.lm())?;
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
    let t = Instant::now();
    let losses = lm::finetune(model.lm(), &cfg, &mut |_| Ok(ids.clone()), &mut |s, l| {
        eprintln!(
            "step {:>4}: loss {l:.4} ({:.1} s)",
            s + 1,
            t.elapsed().as_secs_f64()
        );
    })?;
    if let Some(out) = path_arg(m, "out") {
        match &model {
            AnyLm::Gpt(g) => save_pretrained(g, &out)?,
            AnyLm::Llama(l) => save_llama(l, &out)?,
        }
        // Keep the tokenizer with the weights.
        if out.canonicalize().ok() != dir.canonicalize().ok() {
            for f in [
                "vocab.json",
                "merges.txt",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
            ] {
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

fn chat(m: &ArgMatches) -> Result<()> {
    let (dir, model) = open_model(m)?;
    let Tok::Hf(tok) = Tok::for_model(&dir, m, &model)? else {
        return Err(bad(
            "lm chat",
            "chat needs a tokenizer.json with a chat template (pass --tokenizer DIR)",
        ));
    };
    if tok.chat_template().is_none() {
        return Err(bad(
            "lm chat",
            "the tokenizer has no chat_template in its tokenizer_config.json",
        ));
    }
    let opts = GenerateOptions {
        max_new_tokens: *m.get_one("max-new-tokens").expect("default"),
        ..Default::default()
    };
    let stops = tok.stop_token_ids().to_vec();
    let mut sampler = Sampler::new(sampling(m))?;
    let mut history: Vec<serde_json::Value> = Vec::new();
    if let Some(sys) = m.get_one::<String>("system") {
        history.push(serde_json::json!({ "role": "system", "content": sys }));
    }
    let (mut stdout, stdin) = (std::io::stdout(), std::io::stdin());
    eprintln!("type a message and press enter; an empty line ends the chat");
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Error::io(Path::new("<stdin>"), e))?;
        if line.trim().is_empty() {
            break;
        }
        history.push(serde_json::json!({ "role": "user", "content": line }));
        let (_, ids) = tok.encode_chat_json(
            &serde_json::Value::Array(history.clone()).to_string(),
            true,
            None,
        )?;
        let mut stream = tok.decode_stream(true);
        let out = model.generate(
            &[ids],
            &opts,
            &stops,
            std::slice::from_mut(&mut sampler),
            &mut |_, id| {
                if let Some(s) = stream.step(id)? {
                    print!("{s}");
                    let _ = stdout.flush();
                }
                Ok(true)
            },
        )?;
        println!();
        let reply = tok.decode(&out.tokens[0], true)?;
        history.push(serde_json::json!({ "role": "assistant", "content": reply }));
        if !out.stopped[0] {
            eprintln!("(the reply reached --max-new-tokens)");
        }
    }
    Ok(())
}
