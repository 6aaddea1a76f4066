//! Models built from the library's ops: a GPT-2-architecture Transformer, its Hugging Face
//! loader and saver, and a character tokenizer for small text experiments.

mod char_tokenizer;
mod gpt;
mod gpt_io;

pub use char_tokenizer::CharTokenizer;
pub use gpt::{Gpt, GptConfig};
pub use gpt_io::{config_json, load_config, load_pretrained, save_pretrained, write_atomic};
