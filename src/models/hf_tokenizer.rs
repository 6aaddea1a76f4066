//! Hugging Face tokenizers: a model directory's `tokenizer.json` (byte-level BPE as in Llama 3,
//! Qwen2 and SmolLM2; SentencePiece-style BPE with byte fallback as in Llama 2 and TinyLlama;
//! any other model the file describes), its `tokenizer_config.json` (special tokens, chat
//! template) and `generation_config.json` (end-of-sequence ids).
//!
//! Encoding and decoding run the `tokenizers` crate, the Rust code under Python's `tokenizers`,
//! so ids are the same by construction; `tests/hf_tokenizer.rs` checks them against ids made by
//! the Python library (`scripts/make_hf_tokenizer_golden.py`). Chat templates are rendered by
//! [`ChatTemplate`] (minijinja), byte for byte as `transformers`' `apply_chat_template`.
//!
//! ```no_run
//! use portagrad::models::{ChatMessage, HfTokenizer};
//! # fn main() -> portagrad::Result<()> {
//! let tok = HfTokenizer::from_dir("SmolLM2-135M-Instruct".as_ref())?;
//! let ids = tok.encode("Hello world", true)?;
//! assert_eq!(tok.decode(&ids, true)?, "Hello world");
//! let (prompt, prompt_ids) =
//!     tok.encode_chat(&[ChatMessage::new("user", "我的笔记本电脑保修期是多久？")], true)?;
//! let stop = tok.stop_token_ids(); // generation ends on any of these (e.g. <|im_end|>)
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenizers::Tokenizer;

use super::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};

/// Tokens that end an assistant turn in the chat templates of today's models. One of these is a
/// stop token when it is a special token of the vocabulary and its chat template writes it.
const END_OF_TURN: [&str; 6] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
];

/// The `model.type`s of tokenizer.json that the `tokenizers` crate implements.
const MODEL_TYPES: [&str; 4] = ["BPE", "WordPiece", "WordLevel", "Unigram"];

fn bad(what: &Path, message: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        op: "HfTokenizer",
        message: format!("{}: {message}", what.display()),
    }
}

fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: format!("{} ({what})", path.display()),
        source: e,
    })?;
    String::from_utf8(bytes).map_err(|e| bad(path, format!("not UTF-8 text ({e})")))
}

/// A Hugging Face tokenizer with its special tokens, chat template and stop tokens. Safe to
/// share between threads.
pub struct HfTokenizer {
    tok: Tokenizer,
    /// The same tokenizer with special tokens encoded as plain text (built on first use).
    plain: OnceLock<Tokenizer>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    template: Option<ChatTemplate>,
    stop_ids: Vec<u32>,
    source: PathBuf,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HfTokenizer({}: {} tokens, bos {:?}, eos {:?}, stop ids {:?}, chat template: {})",
            self.source.display(),
            self.vocab_size(),
            self.bos_token,
            self.eos_token,
            self.stop_ids,
            self.template.is_some()
        )
    }
}

/// A special token in tokenizer_config.json: a string, an AddedToken object or null.
fn token_text(cfg: &serde_json::Value, name: &str, path: &Path) -> Result<Option<String>> {
    match cfg.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => match v.get("content").and_then(|c| c.as_str()) {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(bad(
                path,
                format!("{name} is {v}, not a token (a string or {{\"content\": ...}})"),
            )),
        },
    }
}

impl HfTokenizer {
    /// Load a model directory: `tokenizer.json` (or, for GPT-2-style directories, `vocab.json` +
    /// `merges.txt`), with the optional `tokenizer_config.json`, `chat_template.jinja` and
    /// `generation_config.json` beside it.
    pub fn from_dir(dir: &Path) -> Result<HfTokenizer> {
        let json = dir.join("tokenizer.json");
        let tok = if json.is_file() || !dir.join("vocab.json").is_file() {
            let what = "Hugging Face tokenizer file (nor are vocab.json + merges.txt there)";
            Self::parse_tokenizer_json(&read_text(&json, what)?, &json)?
        } else {
            Self::gpt2_files(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let opt = |name: &str| -> Result<Option<(String, PathBuf)>> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(Some((read_text(&p, name)?, p)))
            } else {
                Ok(None)
            }
        };
        let config = opt("tokenizer_config.json")?;
        let jinja = opt("chat_template.jinja")?;
        let generation = opt("generation_config.json")?;
        Self::assemble(
            tok,
            config.as_ref().map(|(t, p)| (t.as_str(), p.as_path())),
            jinja.map(|(t, _)| t),
            generation.as_ref().map(|(t, p)| (t.as_str(), p.as_path())),
            dir,
        )
    }

    /// Load a `tokenizer.json` alone (no special-token configuration, no chat template).
    pub fn from_file(path: &Path) -> Result<HfTokenizer> {
        let tok =
            Self::parse_tokenizer_json(&read_text(path, "Hugging Face tokenizer file")?, path)?;
        Self::assemble(tok, None, None, None, path)
    }

    /// A tokenizer from the texts of `tokenizer.json` and, optionally, `tokenizer_config.json`.
    pub fn from_strings(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
    ) -> Result<HfTokenizer> {
        let p = Path::new("tokenizer.json");
        let tok = Self::parse_tokenizer_json(tokenizer_json, p)?;
        let config = tokenizer_config_json.map(|t| (t, Path::new("tokenizer_config.json")));
        Self::assemble(tok, config, None, None, p)
    }

    fn parse_tokenizer_json(text: &str, path: &Path) -> Result<Tokenizer> {
        // A first look with serde_json, for messages that say what is wrong.
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(path, format!("not valid JSON ({e})")))?;
        let kind = v
            .get("model")
            .and_then(|m| m.get("type"))
            .and_then(|t| t.as_str());
        match kind {
            Some(k) if MODEL_TYPES.contains(&k) => {}
            Some(k) => {
                return Err(bad(
                    path,
                    format!("unsupported tokenizer model type {k:?} (supported: {MODEL_TYPES:?})"),
                ));
            }
            None => {
                return Err(bad(
                    path,
                    "no \"model\": {\"type\": ...} (is this a Hugging Face tokenizer.json?)",
                ));
            }
        }
        text.parse::<Tokenizer>()
            .map_err(|e| bad(path, format!("not a valid tokenizer.json ({e})")))
    }

    /// GPT-2's `vocab.json` + `merges.txt` as transformers converts them: byte-level BPE with
    /// GPT-2's split pattern and `<|endoftext|>` a special token.
    fn gpt2_files(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        for p in [vocab, merges] {
            if !p.is_file() {
                read_text(p, "GPT-2 tokenizer file")?;
            }
        }
        let (v, m) = (vocab.to_string_lossy(), merges.to_string_lossy());
        let bpe = BPE::from_file(&v, &m)
            .build()
            .map_err(|e| bad(vocab, format!("with {}: {e}", merges.display())))?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.with_decoder(Some(ByteLevel::default()));
        tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        if tok.token_to_id(super::END_OF_TEXT).is_some() {
            tok.add_special_tokens([tokenizers::AddedToken::from(super::END_OF_TEXT, true)])
                .map_err(|e| bad(vocab, e))?;
        }
        Ok(tok)
    }

    fn assemble(
        tok: Tokenizer,
        config: Option<(&str, &Path)>,
        jinja: Option<String>,
        generation: Option<(&str, &Path)>,
        source: &Path,
    ) -> Result<HfTokenizer> {
        let cfg: serde_json::Value = match config {
            Some((text, p)) => {
                serde_json::from_str(text).map_err(|e| bad(p, format!("not valid JSON ({e})")))?
            }
            None => serde_json::Value::Null,
        };
        if let Some((_, p)) = config
            && !cfg.is_object()
        {
            return Err(bad(p, "expected a JSON object"));
        }
        let cfg_path = config.map(|c| c.1).unwrap_or(source);
        let mut bos_token = token_text(&cfg, "bos_token", cfg_path)?;
        let mut eos_token = token_text(&cfg, "eos_token", cfg_path)?;
        if config.is_none() && tok.token_to_id(super::END_OF_TEXT).is_some() {
            // A bare GPT-2-style tokenizer: <|endoftext|> is both (as in GPT-2's own config).
            bos_token = Some(super::END_OF_TEXT.into());
            eos_token = bos_token.clone();
        }
        let mut special = Vec::new();
        for name in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let text = match name {
                "bos_token" => bos_token.clone(),
                "eos_token" => eos_token.clone(),
                _ => token_text(&cfg, name, cfg_path)?,
            };
            if let Some(t) = text {
                if tok.token_to_id(&t).is_none() {
                    return Err(bad(
                        config.map(|c| c.1).unwrap_or(source),
                        format!(
                            "{name} {t:?} is not in the vocabulary (do tokenizer.json and tokenizer_config.json belong together?)"
                        ),
                    ));
                }
                special.push((name.to_string(), t));
            }
        }
        // The template: tokenizer_config.json's chat_template (a string, or a list of named
        // templates: "default"), else chat_template.jinja.
        let template_source = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => jinja,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => Some(
                list.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string))
                    .ok_or_else(|| bad(cfg_path, "chat_template: no template named \"default\""))?,
            ),
            Some(v) => {
                return Err(bad(
                    cfg_path,
                    format!(
                        "chat_template is {v}, not a template (a string or a list of {{\"name\", \"template\"}})"
                    ),
                ));
            }
        };
        let template = template_source
            .as_deref()
            .map(|s| ChatTemplate::new(s, special.clone()))
            .transpose()?;

        let mut stop_ids = Vec::new();
        if let Some(id) = eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
            stop_ids.push(id);
        }
        if let Some((text, p)) = generation {
            let g: serde_json::Value =
                serde_json::from_str(text).map_err(|e| bad(p, format!("not valid JSON ({e})")))?;
            let ids: Vec<&serde_json::Value> = match g.get("eos_token_id") {
                Some(serde_json::Value::Array(a)) => a.iter().collect(),
                Some(serde_json::Value::Null) | None => Vec::new(),
                Some(one) => vec![one],
            };
            let vocab = tok.get_vocab_size(true) as u64;
            for id in ids {
                match id.as_u64() {
                    Some(i) if i < vocab => stop_ids.push(i as u32),
                    _ => {
                        return Err(bad(
                            p,
                            format!(
                                "eos_token_id {id} is not an id of this {vocab}-token vocabulary"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(src) = &template_source {
            let specials = tok.get_added_tokens_decoder();
            for t in END_OF_TURN {
                if let Some(id) = tok.token_to_id(t)
                    && specials.get(&id).is_some_and(|a| a.special)
                    && src.contains(t)
                {
                    stop_ids.push(id);
                }
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(HfTokenizer {
            tok,
            plain: OnceLock::new(),
            bos_token,
            eos_token,
            template,
            stop_ids,
            source: source.to_path_buf(),
        })
    }

    /// Vocabulary size including the added tokens (one past the largest id).
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// The id of a token (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }

    /// The token of an id, as the vocabulary writes it (`Ġhello`, `▁hello`, `<0xE4>`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tok.id_to_token(id)
    }

    /// `bos_token` of tokenizer_config.json.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// `eos_token` of tokenizer_config.json.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The chat template, when the directory has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Ids on which generation stops, sorted: the eos token, generation_config.json's
    /// `eos_token_id`s, and the end-of-turn token the chat template writes (`<|eot_id|>`,
    /// `<|im_end|>`, ...).
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether generation should stop on `id`.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.binary_search(&id).is_ok()
    }

    /// Ids of `text`. Special tokens written in the text (`<|eot_id|>`, `</s>`) become their
    /// ids; `add_special_tokens` adds what the post-processor adds (Llama's BOS), as in
    /// `tokenizers`' `encode(text, add_special_tokens)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Self::run_encode(&self.tok, text, add_special_tokens)
    }

    /// Ids of `text` with special tokens in it encoded as plain text and none added: for text
    /// from users, who must not be able to write control tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.tok.clone();
            t.set_encode_special_tokens(true);
            t
        });
        Self::run_encode(plain, text, false)
    }

    fn run_encode(tok: &Tokenizer, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        tok.encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::InvalidArgument {
                op: "HfTokenizer::encode",
                message: e.to_string(),
            })
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size();
        if let Some(&id) = ids
            .iter()
            .find(|&&id| id as usize >= n || self.tok.id_to_token(id).is_none())
        {
            return Err(Error::InvalidArgument {
                op: "HfTokenizer::decode",
                message: format!("token id {id} is not in the vocabulary ({n} tokens)"),
            });
        }
        Ok(())
    }

    /// Text of `ids` (bytes that do not form UTF-8 become U+FFFD); `skip_special_tokens` leaves
    /// out special tokens. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::InvalidArgument {
                op: "HfTokenizer::decode",
                message: e.to_string(),
            })
    }

    /// A decoder for streaming: feed ids one at a time, get text as soon as it is complete
    /// (a character split over byte tokens is held back until its last byte).
    pub fn decode_stream(&self, skip_special_tokens: bool) -> HfDecodeStream<'_> {
        HfDecodeStream {
            owner: self,
            inner: self.tok.decode_stream(skip_special_tokens),
        }
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| {
            bad(
                &self.source,
                "no chat template (tokenizer_config.json has no \"chat_template\" and there is no chat_template.jinja)",
            )
        })
    }

    /// The chat rendered by the template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }

    /// [`apply_chat_template`](Self::apply_chat_template) for messages as JSON (any fields:
    /// tool calls, ...) and extra template variables as a JSON object (`tools`, ...).
    pub fn apply_chat_template_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        extra_json: Option<&str>,
    ) -> Result<String> {
        self.template()?
            .render_json(messages_json, add_generation_prompt, extra_json)
    }

    /// The rendered chat and its ids (the template writes the special tokens, so none is
    /// added), as transformers' `apply_chat_template(messages, tokenize=True)`.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<u32>)> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        let ids = self.encode(&text, false)?;
        Ok((text, ids))
    }

    /// [`encode_chat`](Self::encode_chat) for messages (and extra template variables) as JSON,
    /// as [`apply_chat_template_json`](Self::apply_chat_template_json) takes them.
    pub fn encode_chat_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        extra_json: Option<&str>,
    ) -> Result<(String, Vec<u32>)> {
        let text =
            self.apply_chat_template_json(messages_json, add_generation_prompt, extra_json)?;
        let ids = self.encode(&text, false)?;
        Ok((text, ids))
    }
}

/// Streaming decoder of [`HfTokenizer::decode_stream`].
pub struct HfDecodeStream<'a> {
    owner: &'a HfTokenizer,
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
}

impl HfDecodeStream<'_> {
    /// Add one id; returns the new text, if a complete piece is ready.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.owner.check_ids(&[id])?;
        self.inner.step(id).map_err(|e| Error::InvalidArgument {
            op: "HfTokenizer::decode_stream",
            message: e.to_string(),
        })
    }
}
