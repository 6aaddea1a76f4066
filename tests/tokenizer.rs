//! GPT-2's BPE tokenizer against ids made by Hugging Face's GPT2Tokenizer
//! (tests/golden/gpt2_tokenizer.json, written by scripts/make_tokenizer_golden.py, which also
//! checks every encoding against OpenAI's original encoder.py), plus round trips and errors.

use std::path::{Path, PathBuf};

use portagrad::Error;
use portagrad::models::{BpeTokenizer, StreamDecoder};

fn golden() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gpt2_tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("golden file")).expect("JSON")
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn tok() -> BpeTokenizer {
    BpeTokenizer::gpt2().expect("data/gpt2-tokenizer")
}

#[test]
fn ids_match_hugging_face_on_every_golden_text() {
    let tok = tok();
    let g = golden();
    let cases = g["encode"].as_array().unwrap();
    assert!(cases.len() > 400, "{} cases", cases.len());
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want = ids_of(&c["ids"]);
        let got = tok.encode(text);
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(tok.decode(&got).unwrap(), text, "round trip");
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn decode_matches_hugging_face_including_split_characters() {
    let tok = tok();
    for c in golden()["decode"].as_array().unwrap() {
        let ids = ids_of(&c["ids"]);
        assert_eq!(
            tok.decode(&ids).unwrap(),
            c["text"].as_str().unwrap(),
            "{ids:?}"
        );
    }
}

#[test]
fn well_known_ids() {
    let tok = tok();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.end_of_text(), Some(50256));
    assert_eq!(tok.encode("Hello world"), [15496, 995]);
    assert_eq!(tok.encode("<|endoftext|>"), [50256]);
    assert_ne!(tok.encode_ordinary("<|endoftext|>"), [50256]);
    assert_eq!(
        tok.decode(&tok.encode_ordinary("<|endoftext|>")).unwrap(),
        "<|endoftext|>"
    );
}

#[test]
fn round_trips_long_and_odd_texts() {
    let tok = tok();
    let shakespeare =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt"))
            .unwrap();
    let text = &shakespeare[..200_000];
    let ids = tok.encode(text);
    assert!(
        ids.len() < text.len() / 3,
        "{} ids for {} bytes",
        ids.len(),
        text.len()
    );
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // Long runs (the BPE is O(n log n) per piece) and every byte value.
    let mut s = "a".repeat(20_000);
    s += &" ".repeat(5_000);
    s += &"😀".repeat(2_000);
    s.extend((0u8..128).map(char::from));
    s.extend(('\u{80}'..='\u{17F}').chain('\u{3000}'..='\u{30FF}'));
    assert_eq!(tok.decode(&tok.encode(&s)).unwrap(), s);
}

#[test]
fn streaming_decode_equals_whole_decode() {
    let tok = tok();
    let text = "emoji 😀👍🏽, 中文, नमस्ते <|endoftext|> done";
    let ids = tok.encode(text);
    let mut d = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed += &d.push(tok.token_bytes(id).unwrap());
    }
    streamed += &d.finish();
    assert_eq!(streamed, text);
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portagrad-tok-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let src = BpeTokenizer::default_dir();
    let vocab = std::fs::read_to_string(src.join("vocab.json")).unwrap();
    let merges = std::fs::read_to_string(src.join("merges.txt")).unwrap();

    let dir = tmp("missing");
    let err = BpeTokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("vocab.json"), "{err}");
    std::fs::write(dir.join("vocab.json"), &vocab).unwrap();
    let err = BpeTokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("merges.txt"), "{err}");

    // A truncated file on disk (cut inside a character: not even UTF-8).
    let cut = vocab.as_bytes()[..449_334].to_vec();
    std::fs::write(dir.join("vocab.json"), &cut).unwrap();
    std::fs::write(dir.join("merges.txt"), &merges).unwrap();
    let err = BpeTokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("UTF-8"), "{err}");
    let at = vocab
        .char_indices()
        .nth(vocab.chars().count() / 2)
        .unwrap()
        .0;
    let cases: [(&str, String, String, &str); 6] = [
        (
            "truncated vocab",
            vocab[..at].to_string(),
            merges.clone(),
            "not valid JSON",
        ),
        (
            "vocab not an object",
            "[1, 2]".into(),
            merges.clone(),
            "JSON object",
        ),
        (
            "bad id",
            vocab.replacen("\"!\": 0", "\"!\": -1", 1),
            merges.clone(),
            "not an id",
        ),
        (
            "missing byte",
            vocab.replacen("\"!\": 0,", "", 1),
            merges.clone(),
            "one-byte token",
        ),
        (
            "foreign merge",
            vocab.clone(),
            merges.replacen("\u{120} t", "\u{120} t\nqq zz", 1),
            "not in the vocabulary",
        ),
        (
            "bad merge line",
            vocab.clone(),
            merges.replacen("\u{120} t", "\u{120}t", 1),
            "two tokens",
        ),
    ];
    for (what, v, m, want) in cases {
        let err = BpeTokenizer::from_strings(&v, &m).unwrap_err().to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
    let err = BpeTokenizer::from_strings(&vocab, "#version: 0.2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no merges"), "{err}");
    // Decoding an id past the vocabulary is an error, not a panic.
    assert!(
        tok()
            .decode(&[50257])
            .unwrap_err()
            .to_string()
            .contains("50257")
    );
    std::fs::remove_dir_all(&dir).ok();
}
