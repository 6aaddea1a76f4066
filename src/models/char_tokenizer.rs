//! A character-level tokenizer: the sorted set of characters in a text, one id each.

use crate::error::{Error, Result};

/// Maps characters to ids and back. Built from a training text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl CharTokenizer {
    /// The vocabulary of `text`: every distinct character, sorted.
    pub fn from_text(text: &str) -> Result<CharTokenizer> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        if chars.is_empty() {
            return Err(Error::InvalidArgument {
                op: "CharTokenizer::from_text",
                message: "the text is empty".into(),
            });
        }
        Ok(CharTokenizer { chars })
    }

    /// A tokenizer from an explicit character list (as saved with a checkpoint).
    pub fn from_chars(chars: Vec<char>) -> Result<CharTokenizer> {
        let mut sorted = chars.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if chars.is_empty() || sorted != chars {
            return Err(Error::InvalidArgument {
                op: "CharTokenizer::from_chars",
                message: "the vocabulary must be a non-empty, sorted list of distinct characters"
                    .into(),
            });
        }
        Ok(CharTokenizer { chars })
    }

    /// The `vocab.json` the `shakespeare` example writes next to a checkpoint:
    /// `{"chars": "<every character, in id order>"}`.
    pub fn to_vocab_json(&self) -> String {
        let s: String = self.chars.iter().collect();
        serde_json::json!({ "chars": s }).to_string()
    }

    /// A tokenizer from [`to_vocab_json`](Self::to_vocab_json)'s text; `None` when the JSON is
    /// not of that form (for example a BPE `vocab.json`), an error when it is but the list is
    /// invalid.
    pub fn from_vocab_json(text: &str) -> Option<Result<CharTokenizer>> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let chars = v.as_object()?.get("chars")?.as_str()?;
        Some(CharTokenizer::from_chars(chars.chars().collect()))
    }

    /// The characters, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Number of ids.
    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    /// Ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.chars
                    .binary_search(&c)
                    .map(|i| i as u32)
                    .map_err(|_| Error::InvalidArgument {
                        op: "CharTokenizer::encode",
                        message: format!("character {c:?} is not in the vocabulary"),
                    })
            })
            .collect()
    }

    /// Text of `ids`; an id past the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                self.chars
                    .get(i as usize)
                    .copied()
                    .ok_or_else(|| Error::InvalidArgument {
                        op: "CharTokenizer::decode",
                        message: format!(
                            "id {i} is out of range for a vocabulary of {}",
                            self.chars.len()
                        ),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = CharTokenizer::from_text("hello world\n").unwrap();
        assert_eq!(t.vocab_size(), 9);
        let ids = t.encode("hello\n").unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "hello\n");
        assert!(t.encode("z").is_err());
        assert!(t.decode(&[9]).is_err());
        assert!(CharTokenizer::from_text("").is_err());
        assert_eq!(CharTokenizer::from_chars(t.chars().to_vec()).unwrap(), t);
        assert!(CharTokenizer::from_chars(vec!['b', 'a']).is_err());
        let json = t.to_vocab_json();
        assert_eq!(CharTokenizer::from_vocab_json(&json).unwrap().unwrap(), t);
        assert!(CharTokenizer::from_vocab_json("{\"a\": 0}").is_none());
        assert!(
            CharTokenizer::from_vocab_json("{\"chars\": \"ba\"}")
                .unwrap()
                .is_err()
        );
    }
}
