//! GPT-2's byte-level BPE tokenizer: `vocab.json` + `merges.txt`, ids identical to Hugging Face's
//! `GPT2Tokenizer` (tested against ids it produced, `tests/golden/gpt2_tokenizer.json`).
//!
//! Encoding runs in three stages, as in OpenAI's `encoder.py`:
//! 1. **Special tokens.** `<|endoftext|>` (id 50256 in GPT-2) is recognised in the text and
//!    becomes its id; the text between occurrences is encoded separately.
//!    [`encode_ordinary`](BpeTokenizer::encode_ordinary) treats it as plain text.
//! 2. **Pre-tokenization** with GPT-2's pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, written out by
//!    hand (the `regex` crate has no lookahead, and a hand-written matcher needs no dependency).
//!    `\p{L}` is the general category from a generated table (`unicode_letters.rs`, made by
//!    `scripts/make_unicode_tables.py`): `char::is_alphabetic` would be wrong, since it also
//!    counts the combining vowel signs of Indic scripts and Arabic harakat, where GPT-2 splits.
//!    `\p{N}` is `char::is_numeric` (exactly Nd, Nl and No) and `\s` is `char::is_whitespace`
//!    (the White_Space property).
//! 3. **Byte-level BPE** on each piece: its UTF-8 bytes become the 256 byte tokens, then the
//!    lowest-ranked adjacent pair is merged until none is in `merges.txt` (a heap over a linked
//!    list, O(n log n) in the piece length; results cached per piece).
//!
//! Decoding concatenates the tokens' bytes and converts them to text, replacing bytes that do not
//! form UTF-8 with U+FFFD (as Hugging Face does). [`StreamDecoder`] does the same token by token
//! for streaming, holding back an incomplete character until its last byte arrives.
//!
//! ```no_run
//! use portagrad::models::BpeTokenizer;
//! # fn main() -> portagrad::Result<()> {
//! let tok = BpeTokenizer::gpt2()?; // data/gpt2-tokenizer in this repository
//! assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
//! assert_eq!(tok.decode(&[15496, 995])?, "Hello world");
//! # Ok(()) }
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::unicode_letters::LETTERS;
use crate::error::{Error, Result};

/// GPT-2's end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Pieces at most this long (bytes) are cached; the cache is cleared when it holds this many.
const CACHE_PIECE_BYTES: usize = 64;
const CACHE_ENTRIES: usize = 1 << 16;

fn bad(what: &Path, message: String) -> Error {
    Error::InvalidArgument {
        op: "BpeTokenizer",
        message: format!("{}: {message}", what.display()),
    }
}

/// GPT-2's map from the 256 byte values to printable characters: printable Latin-1 bytes map to
/// themselves, the rest to U+0100 onwards in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut n = 0;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("below U+0200")
        };
    }
    map
}

/// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
pub(crate) fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    let cp = c as u32;
    LETTERS
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if is_letter(c) {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Split `text` into GPT-2's pre-tokens (pieces that BPE encodes independently), following
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` exactly: at each
/// position the first alternative that matches wins, and each alternative is greedy.
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char, Class)> =
        text.char_indices().map(|(i, c)| (i, c, class(c))).collect();
    let n = chars.len();
    let byte_at = |i: usize| if i < n { chars[i].0 } else { text.len() };
    let run = |from: usize, cls: Class| {
        let mut j = from;
        while j < n && chars[j].2 == cls {
            j += 1;
        }
        j
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i].1;
        let end = 'm: {
            // 's 't 're 've 'm 'll 'd (ASCII, case-sensitive).
            if c == '\'' && i + 1 < n {
                let c1 = chars[i + 1].1;
                if matches!(c1, 's' | 't' | 'm' | 'd') {
                    break 'm i + 2;
                }
                if i + 2 < n && matches!((c1, chars[i + 2].1), ('r', 'e') | ('v', 'e') | ('l', 'l'))
                {
                    break 'm i + 3;
                }
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional U+0020, then a run.
            let j = if c == ' ' { i + 1 } else { i };
            if j < n && chars[j].2 != Class::Space {
                break 'm run(j, chars[j].2);
            }
            // Here chars[i] is whitespace. `\s+(?!\S)`: the run, less its last character when a
            // non-space follows (that one goes with the next piece); `\s+` for a single space
            // before a non-space.
            let k = run(i, Class::Space);
            if k == n || k - i == 1 { k } else { k - 1 }
        };
        out.push(&text[byte_at(i)..byte_at(end)]);
        i = end;
    }
    out
}

/// A GPT-2 byte-level BPE tokenizer, ids identical to Hugging Face's `GPT2Tokenizer`. Safe to
/// share between threads.
pub struct BpeTokenizer {
    /// id -> the token's bytes (`None` for ids the vocabulary skips).
    tokens: Vec<Option<Vec<u8>>>,
    /// byte value -> id of its one-byte token (256 entries).
    byte_ids: Vec<u32>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens recognised in text, longest first.
    specials: Vec<(String, u32)>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BpeTokenizer({} tokens, {} merges, specials {:?})",
            self.vocab_size(),
            self.merges.len(),
            self.specials
        )
    }
}

impl BpeTokenizer {
    /// The tokenizer shipped with this crate: `data/gpt2-tokenizer` (GPT-2's 50,257 tokens).
    pub fn default_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/gpt2-tokenizer")
    }

    /// GPT-2's tokenizer from [`default_dir`](Self::default_dir).
    pub fn gpt2() -> Result<BpeTokenizer> {
        Self::from_dir(&Self::default_dir())
    }

    /// Load `vocab.json` and `merges.txt` from `dir` (a Hugging Face GPT-2 directory works).
    pub fn from_dir(dir: &Path) -> Result<BpeTokenizer> {
        Self::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
    }

    /// Load a vocabulary (JSON object token -> id) and a merges file (one `left right` pair a
    /// line, highest priority first, an optional `#version` first line).
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<BpeTokenizer> {
        let read = |p: &Path| {
            let bytes = std::fs::read(p).map_err(|e| Error::Io {
                path: format!("{} (GPT-2 tokenizer file)", p.display()),
                source: e,
            })?;
            String::from_utf8(bytes).map_err(|e| bad(p, format!("not UTF-8 text ({e})")))
        };
        let (v, m) = (read(vocab)?, read(merges)?);
        Self::parse(&v, &m, vocab, merges)
    }

    /// A tokenizer from the texts of `vocab.json` and `merges.txt`.
    pub fn from_strings(vocab_json: &str, merges_txt: &str) -> Result<BpeTokenizer> {
        Self::parse(
            vocab_json,
            merges_txt,
            Path::new("vocab.json"),
            Path::new("merges.txt"),
        )
    }

    fn parse(
        vocab_json: &str,
        merges_txt: &str,
        vpath: &Path,
        mpath: &Path,
    ) -> Result<BpeTokenizer> {
        let v: serde_json::Value = serde_json::from_str(vocab_json)
            .map_err(|e| bad(vpath, format!("not valid JSON ({e})")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad(vpath, "expected a JSON object of token -> id".into()))?;
        let byte_enc = bytes_to_unicode();
        let mut byte_dec: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, &c) in byte_enc.iter().enumerate() {
            byte_dec.insert(c, b as u8);
        }
        let mut ids: HashMap<&str, u32> = HashMap::with_capacity(obj.len());
        let mut tokens: Vec<Option<Vec<u8>>> = Vec::new();
        for (tok, id) in obj {
            let id = id
                .as_u64()
                .filter(|&i| i < u64::from(u32::MAX) && i < 1 << 24)
                .ok_or_else(|| bad(vpath, format!("token {tok:?} has id {id}, not an id")))?
                as u32;
            let bytes: Option<Vec<u8>> = tok.chars().map(|c| byte_dec.get(&c).copied()).collect();
            let bytes = bytes.ok_or_else(|| {
                bad(
                    vpath,
                    format!("token {tok:?} has a character outside GPT-2's byte alphabet"),
                )
            })?;
            if tok.is_empty() {
                return Err(bad(vpath, "the empty string is not a token".into()));
            }
            let i = id as usize;
            if tokens.len() <= i {
                tokens.resize(i + 1, None);
            }
            if tokens[i].is_some() {
                return Err(bad(vpath, format!("id {id} is used by two tokens")));
            }
            tokens[i] = Some(bytes);
            ids.insert(tok.as_str(), id);
        }
        let mut byte_ids = vec![0u32; 256];
        for (b, c) in byte_enc.iter().enumerate() {
            byte_ids[b] = *ids.get(c.to_string().as_str()).ok_or_else(|| {
                bad(
                    vpath,
                    format!("the one-byte token {c:?} (byte {b}) is missing"),
                )
            })?;
        }
        let mut merges = HashMap::new();
        let mut rank = 0u32;
        for (lineno, line) in merges_txt.lines().enumerate() {
            if line.is_empty() || (lineno == 0 && line.starts_with("#version")) {
                continue;
            }
            let mut parts = line.split(' ');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(
                    mpath,
                    format!(
                        "line {}: expected two tokens separated by one space, got {line:?}",
                        lineno + 1
                    ),
                ));
            };
            let id = |t: &str| {
                ids.get(t).copied().ok_or_else(|| {
                    bad(
                        mpath,
                        format!(
                            "line {}: {t:?} is not in the vocabulary (do vocab.json and merges.txt belong together?)",
                            lineno + 1
                        ),
                    )
                })
            };
            let (ia, ib, iab) = (id(a)?, id(b)?, id(&format!("{a}{b}"))?);
            merges.entry((ia, ib)).or_insert((rank, iab));
            rank += 1;
        }
        if merges.is_empty() {
            return Err(bad(mpath, "no merges".into()));
        }
        let specials = ids
            .get(END_OF_TEXT)
            .map(|&id| vec![(END_OF_TEXT.to_string(), id)])
            .unwrap_or_default();
        Ok(BpeTokenizer {
            tokens,
            byte_ids,
            merges,
            specials,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// One past the largest id (50,257 for GPT-2).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of `<|endoftext|>`, when the vocabulary has it (50256 in GPT-2).
    pub fn end_of_text(&self) -> Option<u32> {
        self.specials
            .iter()
            .find(|(s, _)| s == END_OF_TEXT)
            .map(|&(_, id)| id)
    }

    /// The bytes of token `id` (not necessarily UTF-8 on its own).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// Ids of `text`; `<|endoftext|>` in the text becomes the special token.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, Reverse(len)));
            match next {
                Some((at, len, id)) => {
                    self.encode_into(&rest[..at], &mut out);
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_into(rest, &mut out);
                    break;
                }
            }
        }
        out
    }

    /// Ids of `text` with no special tokens: `<|endoftext|>` is encoded as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        for piece in pre_tokenize(text) {
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let ids = self.bpe(piece.as_bytes());
            out.extend_from_slice(&ids);
            if piece.len() <= CACHE_PIECE_BYTES {
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(piece.to_string(), ids);
            }
        }
    }

    /// Byte-level BPE of one piece: repeatedly merge the adjacent pair of lowest rank (the
    /// leftmost on ties) until no pair has a merge.
    fn bpe(&self, bytes: &[u8]) -> Vec<u32> {
        let n = bytes.len();
        let mut sym: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        if n < 2 {
            return sym;
        }
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, _)) = self.merges.get(&(sym[i], sym[i + 1])) {
                heap.push(Reverse((rank, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j == NONE {
                continue;
            }
            // Stale entries: the pair at i changed since it was pushed.
            let Some(&(r, merged)) = self.merges.get(&(sym[i], sym[j])) else {
                continue;
            };
            if r != rank {
                continue;
            }
            sym[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] != NONE {
                prev[next[j]] = i;
            }
            if prev[i] != NONE
                && let Some(&(r, _)) = self.merges.get(&(sym[prev[i]], sym[i]))
            {
                heap.push(Reverse((r, prev[i])));
            }
            if next[i] != NONE
                && let Some(&(r, _)) = self.merges.get(&(sym[i], sym[next[i]]))
            {
                heap.push(Reverse((r, i)));
            }
        }
        (0..n).filter(|&i| alive[i]).map(|i| sym[i]).collect()
    }

    /// The bytes of `ids`, concatenated; an id outside the vocabulary is an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id).ok_or_else(|| Error::InvalidArgument {
                op: "BpeTokenizer::decode",
                message: format!(
                    "id {id} is not in the vocabulary ({} tokens)",
                    self.vocab_size()
                ),
            })?);
        }
        Ok(out)
    }

    /// The text of `ids`; bytes that do not form UTF-8 become U+FFFD. An id outside the
    /// vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }
}

/// Turns a stream of token bytes into text as soon as each character is complete (a character
/// split over tokens, as emoji and CJK often are, is held back until its last byte arrives).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Add `bytes`; returns the text that is now complete. Invalid bytes become U+FFFD; an
    /// incomplete character at the end stays pending.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still pending (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2s() {
        let m = bytes_to_unicode();
        assert_eq!(m[b'!' as usize], '!');
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[0], 'Ā');
        let mut all: Vec<char> = m.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn letters_table() {
        assert!(is_letter('a') && is_letter('é') && is_letter('中') && is_letter('ǅ'));
        assert!(is_letter('ʰ') && is_letter('ก') && is_letter('𝔘'));
        // Marks, letter numbers and symbols are not \p{L}, though some are Alphabetic.
        for c in [
            '\u{0301}', '\u{093E}', '\u{064E}', '\u{0E31}', 'Ⅻ', 'ⓐ', '1', ' ', '😀',
        ] {
            assert!(!is_letter(c), "{c:?}");
        }
        assert!('\u{093E}'.is_alphabetic() && 'ⓐ'.is_alphabetic());
    }

    #[test]
    fn pre_tokenizer_pieces() {
        assert_eq!(pre_tokenize("Hello world"), ["Hello", " world"]);
        assert_eq!(pre_tokenize("a  b"), ["a", " ", " b"]);
        assert_eq!(pre_tokenize("a \n b"), ["a", " \n", " b"]);
        assert_eq!(pre_tokenize("x  "), ["x", "  "]);
        assert_eq!(pre_tokenize("x\nb"), ["x", "\n", "b"]);
        assert_eq!(pre_tokenize("don't"), ["don", "'t"]);
        assert_eq!(pre_tokenize("we'll 're"), ["we", "'ll", " '", "re"]);
        assert_eq!(pre_tokenize("?!'s 12ab"), ["?!'", "s", " 12", "ab"]);
        assert_eq!(pre_tokenize(""), Vec::<&str>::new());
    }

    #[test]
    fn stream_decoder_holds_split_characters() {
        let bytes = "a😀b".as_bytes();
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&bytes[..2]), "a");
        assert_eq!(d.push(&bytes[2..4]), "");
        assert_eq!(d.push(&bytes[4..]), "😀b");
        assert_eq!(d.push(&[0xFF, b'x']), "\u{FFFD}x");
        assert_eq!(d.push(&[0xE4]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
