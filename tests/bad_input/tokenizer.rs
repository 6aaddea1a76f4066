//! The character tokenizer.

use portagrad::models::CharTokenizer;

use crate::{Corpus, err, ok};

#[test]
fn char_tokenizer_unknown_text_and_ids() {
    let mut c = Corpus::new("tokenizer");
    c.case("char tokenizer encode of an unknown character", || {
        let tok = ok(CharTokenizer::from_text("abc"))?;
        err(tok.encode("abz"), "InvalidArgument", &["z"])
    });
    c.case("char tokenizer decode of an id past the vocabulary", || {
        let tok = ok(CharTokenizer::from_text("abc"))?;
        err(tok.decode(&[0, 3]), "InvalidArgument", &["3"])
    });
    c.case("char tokenizer of empty text", || {
        err(
            CharTokenizer::from_text("").map(|_| ()),
            "InvalidArgument",
            &[],
        )
    });
    c.case(
        "char tokenizer vocab json malformed",
        || match CharTokenizer::from_vocab_json("{not json") {
            None => Ok(()),
            Some(r) => err(r.map(|_| ()), "InvalidArgument", &[]),
        },
    );
    c.finish();
}

/// Hostile tokenizer.json / tokenizer_config.json texts: errors, never panics or huge
/// allocations.
#[test]
fn hf_tokenizer_hostile_files() {
    use portagrad::models::HfTokenizer;
    let mut c = Corpus::new("hf_tokenizer");
    let bpe = |vocab: &str, merges: &str| {
        format!(
            r#"{{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
               "post_processor": null, "decoder": null,
               "model": {{"type": "BPE", "vocab": {vocab}, "merges": {merges}}}}}"#
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("empty file", String::new()),
        ("binary garbage", "\u{0}\u{1}\u{fffd}{[".into()),
        ("deeply nested", "[".repeat(100_000)),
        ("model not an object", r#"{"model": 7}"#.into()),
        ("vocab not an object", bpe("[1, 2]", "[]")),
        ("negative id", bpe(r#"{"a": -1}"#, "[]")),
        (
            "merge of unknown tokens",
            bpe(r#"{"a": 0}"#, r#"[["a", "zz"]]"#),
        ),
        ("merges not pairs", bpe(r#"{"a": 0}"#, "[7]")),
    ];
    for (name, text) in cases {
        c.case(&format!("tokenizer.json: {name}"), || {
            err(
                HfTokenizer::from_strings(&text, None),
                "InvalidArgument",
                &["tokenizer.json"],
            )
        });
    }
    // A huge id is accepted by `tokenizers` (the vocabulary is a map): no allocation follows
    // from it, and decoding an id the map lacks is an error.
    c.case("tokenizer.json: huge id", || {
        let tok = ok(HfTokenizer::from_strings(
            &bpe(r#"{"a": 4000000000}"#, "[]"),
            None,
        ))?;
        err(tok.decode(&[3], false), "InvalidArgument", &["3"])
    });
    let good = bpe(r#"{"a": 0, "b": 1, "ab": 2}"#, r#"[["a", "b"]]"#);
    for (name, cfg, words) in [
        (
            "bos_token a number",
            r#"{"bos_token": 5}"#,
            &["bos_token", "not a token"][..],
        ),
        (
            "eos_token an object without content",
            r#"{"eos_token": {"x": 1}}"#,
            &["eos_token"][..],
        ),
        (
            "chat_template a number",
            r#"{"chat_template": 5}"#,
            &["chat_template", "not a template"][..],
        ),
        (
            "chat_template list without default",
            r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#,
            &["default"][..],
        ),
    ] {
        c.case(&format!("tokenizer_config.json: {name}"), || {
            err(
                HfTokenizer::from_strings(&good, Some(cfg)),
                "InvalidArgument",
                words,
            )
        });
    }
    c.case("chat template that loops forever on a huge range", || {
        let cfg = r#"{"chat_template": "{% for i in range(10000000000) %}x{% endfor %}"}"#;
        let tok = ok(HfTokenizer::from_strings(&good, Some(cfg)))?;
        err(
            tok.apply_chat_template_json(r#"[{"role": "user", "content": "x"}]"#, true, None),
            "InvalidArgument",
            &["chat template"],
        )
    });
    c.finish();
}
