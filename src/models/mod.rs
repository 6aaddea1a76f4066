//! Models built from the library's ops: a GPT-2-architecture Transformer, its Hugging Face
//! loader and saver, the Llama family (Llama, Qwen2, Mistral) and its Hugging Face loader,
//! GPT-2's byte-level BPE tokenizer, Hugging Face `tokenizer.json` tokenizers with their chat
//! templates, a character tokenizer for small text experiments, and the language-model tasks
//! (score, gradients, fine-tuning) of the `gpt2` example.

mod bpe;
mod char_tokenizer;
mod chat_template;
mod gpt;
#[cfg(not(target_arch = "wasm32"))]
mod hf_tokenizer;
mod llama;
pub mod lm;
mod unicode_letters;

pub use crate::generate::{GenerateOptions, Generation};
pub use bpe::{BpeTokenizer, END_OF_TEXT, StreamDecoder, pre_tokenize};
pub use char_tokenizer::CharTokenizer;
pub use chat_template::{ChatMessage, ChatTemplate, parse_messages};
pub use gpt::io::{
    HostTensor, config_json, load_config, load_pretrained, load_pretrained_as, save_host_tensors,
    save_pretrained, save_tensors, write_atomic,
};
pub use gpt::{Gpt, GptConfig};
#[cfg(not(target_arch = "wasm32"))]
pub use hf_tokenizer::{HfDecodeStream, HfTokenizer};
pub use llama::{
    DEFAULT_CONTEXT, Llama, LlamaConfig, LlamaFamily, llama_config_json, load_llama, load_llama_as,
    load_llama_with_context, save_llama,
};
