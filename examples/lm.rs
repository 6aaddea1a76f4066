//! `cargo run --release --example lm -- <command>` — language models from Hugging Face
//! directories. Machine-readable output goes to stdout, anything else to stderr.
//!
//! ```text
//! lm tokenize --tokenizer DIR --text TEXT [--no-special]        # [128000, 9906, 1917]
//! lm tokenize --tokenizer DIR --chat FILE.json [--tools FILE.json] [--no-generation-prompt]
//!                                                               # {"text": "...", "ids": [...]}
//! ```
//!
//! `DIR` holds `tokenizer.json` (+ `tokenizer_config.json`, whose `chat_template` renders
//! `--chat`), or GPT-2's `vocab.json` + `merges.txt`. `--text` ids are `tokenizers`'
//! `encode(text, add_special_tokens=True)` (Llama's BOS first; `--no-special`: none added); special
//! tokens written in the text become their ids. `--chat FILE.json` is a JSON list of `{"role",
//! "content"}` messages (other fields, such as tool calls, are passed to the template); the
//! output is transformers' `apply_chat_template(..., add_generation_prompt=True)` and its ids.
//!
//! Only `tokenize` exists so far; the model commands (generate, score, grad, finetune, chat) are
//! to come, each a subcommand here with its own function below.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};
use portagrad::models::HfTokenizer;
use portagrad::{Error, Result};

fn cli() -> Command {
    let tokenizer = || {
        Arg::new("tokenizer")
            .long("tokenizer")
            .value_name("DIR")
            .required(true)
            .help("directory with tokenizer.json (+ tokenizer_config.json), or vocab.json + merges.txt")
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
