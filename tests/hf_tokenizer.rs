//! Hugging Face tokenizer.json tokenizers and chat templates against Python: ids from
//! `tokenizers` and chat texts from transformers' `apply_chat_template`, for small tokenizers with
//! the structure of Llama 3's, Qwen2's, SmolLM2's, TinyLlama's and Llama 2's
//! (tests/golden/hf_tokenizers/<name>/, written by scripts/make_hf_tokenizer_golden.py), and GPT-2's
//! real vocab.json + merges.txt against tests/golden/gpt2_tokenizer.json. Plus errors.

use std::path::{Path, PathBuf};

use portagrad::Error;
use portagrad::models::{BpeTokenizer, ChatMessage, HfTokenizer};

const FIXTURES: [&str; 6] = [
    "llama3",
    "llama3_0",
    "qwen2",
    "smollm2",
    "tinyllama",
    "llama2",
];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/hf_tokenizers")
        .join(name)
}

fn golden(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir(name).join("golden.json")).expect("golden file");
    serde_json::from_str(&text).expect("JSON")
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn load(name: &str) -> HfTokenizer {
    HfTokenizer::from_dir(&dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn encode_matches_python_tokenizers() {
    for name in FIXTURES {
        let tok = load(name);
        let g = golden(name);
        let cases = g["encode"].as_array().unwrap();
        assert!(cases.len() > 100, "{name}: {} cases", cases.len());
        let mut bad = Vec::new();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            for (key, got) in [
                ("ids", tok.encode(text, true).unwrap()),
                ("ids_no_special", tok.encode(text, false).unwrap()),
                ("ids_split_special", tok.encode_plain(text).unwrap()),
            ] {
                let want = ids_of(&c[key]);
                if got != want {
                    bad.push(format!("{name} {key} {text:?}: got {got:?}, want {want:?}"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}

#[test]
fn decode_matches_python_tokenizers() {
    for name in FIXTURES {
        let tok = load(name);
        for c in golden(name)["decode"].as_array().unwrap() {
            let ids = ids_of(&c["ids"]);
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                c["text"].as_str().unwrap(),
                "{name} {ids:?}"
            );
            assert_eq!(
                tok.decode(&ids, true).unwrap(),
                c["text_skip"].as_str().unwrap(),
                "{name} {ids:?} skip"
            );
        }
    }
}

#[test]
fn the_fixtures_exercise_what_they_claim() {
    // Special tokens inside text map to their ids; plain encoding does not produce them.
    let l3 = load("llama3");
    let eot = l3.token_to_id("<|eot_id|>").unwrap();
    let bos = l3.token_to_id("<|begin_of_text|>").unwrap();
    let ids = l3.encode("a <|eot_id|> b", true).unwrap();
    assert_eq!(ids[0], bos);
    assert!(ids.contains(&eot));
    assert!(!l3.encode_plain("a <|eot_id|> b").unwrap().contains(&eot));
    // Byte fallback: a character outside the SentencePiece vocabulary becomes <0xNN> tokens.
    let tl = load("tinyllama");
    let ids = tl.encode("🐍", false).unwrap();
    let toks: Vec<String> = ids.iter().map(|&i| tl.id_to_token(i).unwrap()).collect();
    assert!(
        toks.iter().filter(|t| t.starts_with("<0x")).count() >= 3,
        "{toks:?}"
    );
    assert_eq!(tl.decode(&ids, false).unwrap(), "🐍");
    // Part of a character: one U+FFFD per byte token, as Python's `tokenizers` decodes
    // [▁, <0xF0>] and [▁, <0xF0>, <0x9F>].
    assert_eq!(tl.decode(&ids[..2], false).unwrap(), "\u{FFFD}");
    assert_eq!(tl.decode(&ids[..3], false).unwrap(), "\u{FFFD}\u{FFFD}");
}

#[test]
fn chat_templates_render_as_transformers() {
    for name in FIXTURES {
        let tok = load(name);
        let g = golden(name);
        let chats = g["chat"].as_array().unwrap();
        assert!(!chats.is_empty());
        for c in chats {
            // The golden file's key order is Python's (tojson prints it); serde_json's Value
            // sorts keys, so the messages go through minijinja's order-keeping parse instead.
            let messages = c["messages_json"].as_str().unwrap();
            let kwargs = c["kwargs_json"].as_str().unwrap();
            // encode_chat_json is what `lm tokenize --chat` (and --tools) prints.
            let (text, ids) = tok
                .encode_chat_json(messages, true, Some(kwargs))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(text, c["text"].as_str().unwrap(), "{name}: {messages}");
            assert_eq!(ids, ids_of(&c["ids"]), "{name}: {messages}");
        }
        for c in g["chat_errors"].as_array().unwrap() {
            let messages = c["messages_json"].as_str().unwrap();
            let err = tok
                .apply_chat_template_json(messages, true, None)
                .unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            let want = c["error"].as_str().unwrap();
            assert!(
                err.to_string().contains(want),
                "{name}: {err} lacks {want:?}"
            );
        }
    }
}

#[test]
fn plain_messages_api_equals_the_json_one() {
    let tok = load("qwen2");
    let msgs = [
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "我的笔记本电脑保修期是多久？"),
    ];
    let json = r#"[{"role": "system", "content": "You are helpful."},
                   {"role": "user", "content": "我的笔记本电脑保修期是多久？"}]"#;
    let (text, ids) = tok.encode_chat(&msgs, true).unwrap();
    assert_eq!(
        text,
        tok.apply_chat_template_json(json, true, None).unwrap()
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    assert_eq!(ids, tok.encode(&text, false).unwrap());
    let without = tok.apply_chat_template(&msgs, false).unwrap();
    assert_eq!(format!("{without}<|im_start|>assistant\n"), text);
}

#[test]
fn stop_tokens_are_the_end_of_turn_tokens() {
    let id = |t: &HfTokenizer, s: &str| t.token_to_id(s).unwrap();
    let l3 = load("llama3"); // eos <|eot_id|>, generation_config [end_of_text, eom, eot]
    let mut want = vec![
        id(&l3, "<|end_of_text|>"),
        id(&l3, "<|eom_id|>"),
        id(&l3, "<|eot_id|>"),
    ];
    want.sort();
    assert_eq!(l3.stop_token_ids(), want);
    let l30 = load("llama3_0"); // eos <|end_of_text|>; the template writes <|eot_id|>
    let mut want = vec![id(&l30, "<|end_of_text|>"), id(&l30, "<|eot_id|>")];
    want.sort();
    assert_eq!(l30.stop_token_ids(), want);
    let q = load("qwen2");
    assert_eq!(q.stop_token_ids(), [id(&q, "<|im_end|>")]);
    assert!(q.is_stop(id(&q, "<|im_end|>")) && !q.is_stop(id(&q, "<|endoftext|>")));
    let tl = load("tinyllama");
    assert_eq!(tl.stop_token_ids(), [2]);
    assert_eq!(
        (tl.bos_token(), tl.eos_token()),
        (Some("<s>"), Some("</s>"))
    );
}

#[test]
fn strftime_now_writes_todays_date() {
    // Llama 3.2's template writes strftime_now("%d %b %Y") when no date_string is given.
    let tok = load("llama3");
    let text = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Today Date: "))
        .expect(&text);
    let date = &line["Today Date: ".len()..];
    let parts: Vec<&str> = date.split(' ').collect();
    assert_eq!(parts.len(), 3, "{date:?}");
    assert!(
        parts[0].len() == 2 && parts[0].parse::<u32>().is_ok_and(|d| (1..=31).contains(&d)),
        "{date:?}"
    );
    assert!(
        [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
        ]
        .contains(&parts[1])
    );
    assert!(parts[2].parse::<u32>().is_ok_and(|y| y >= 2025), "{date:?}");
}

#[test]
fn streaming_decode_equals_whole_decode() {
    for name in ["llama3", "tinyllama", "llama2"] {
        let tok = load(name);
        let text = "emoji 😀👍🏽, 中文保修, नमस्ते\n\tdone  ";
        let ids = tok.encode(text, false).unwrap();
        let mut stream = tok.decode_stream(false);
        let mut out = String::new();
        for &id in &ids {
            out += &stream.step(id).unwrap().unwrap_or_default();
        }
        assert_eq!(out, tok.decode(&ids, false).unwrap(), "{name}");
    }
}

#[test]
fn gpt2_vocab_and_merges_match_hugging_face() {
    let tok = HfTokenizer::from_dir(&BpeTokenizer::default_dir()).unwrap();
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gpt2_tokenizer.json");
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let cases = g["encode"].as_array().unwrap();
    assert!(cases.len() > 400);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids_of(&c["ids"]),
            "{text:?}"
        );
    }
    for c in g["decode"].as_array().unwrap() {
        let ids = ids_of(&c["ids"]);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            c["text"].as_str().unwrap()
        );
    }
    assert_eq!(tok.stop_token_ids(), [50256]);
    assert!(tok.chat_template().is_none());
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portagrad-hftok-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn expect_err(r: portagrad::Result<HfTokenizer>, want: &[&str]) -> Error {
    let err = r.expect_err("expected an error");
    let s = err.to_string();
    for w in want {
        assert!(s.contains(w), "{s:?} lacks {w:?}");
    }
    err
}

#[test]
fn bad_files_are_clear_errors() {
    let src = dir("qwen2");
    let json = std::fs::read_to_string(src.join("tokenizer.json")).unwrap();
    let config = std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap();

    let d = tmp("missing");
    let err = expect_err(HfTokenizer::from_dir(&d), &["tokenizer.json"]);
    assert!(matches!(err, Error::Io { .. }), "{err}");
    expect_err(HfTokenizer::from_file(&d.join("nope.json")), &["nope.json"]);

    expect_err(
        HfTokenizer::from_strings(&json[..json.len() / 2], None),
        &["not valid JSON"],
    );
    expect_err(HfTokenizer::from_strings("[1, 2]", None), &["no \"model\""]);
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["model"]["type"] = "SentencePieceChar".into();
    expect_err(
        HfTokenizer::from_strings(&v.to_string(), None),
        &["unsupported", "SentencePieceChar"],
    );
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["model"]["merges"] = serde_json::json!([["qq", "zz"]]);
    expect_err(
        HfTokenizer::from_strings(&v.to_string(), None),
        &["not a valid tokenizer.json"],
    );
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed".into();
    expect_err(
        HfTokenizer::from_strings(&v.to_string(), None),
        &["not a valid tokenizer.json"],
    );

    expect_err(
        HfTokenizer::from_strings(&json, Some("{oops")),
        &["tokenizer_config.json", "not valid JSON"],
    );
    expect_err(
        HfTokenizer::from_strings(&json, Some("[]")),
        &["expected a JSON object"],
    );
    let mut c: serde_json::Value = serde_json::from_str(&config).unwrap();
    c["eos_token"] = "<|not_a_token|>".into();
    expect_err(
        HfTokenizer::from_strings(&json, Some(&c.to_string())),
        &["eos_token", "not in the vocabulary"],
    );
    let mut c: serde_json::Value = serde_json::from_str(&config).unwrap();
    c["chat_template"] = "{% for m in messages %}{{ m.content }".into();
    expect_err(
        HfTokenizer::from_strings(&json, Some(&c.to_string())),
        &["chat template does not compile"],
    );
    // A GPT-2-style directory without merges.txt.
    std::fs::copy(
        BpeTokenizer::default_dir().join("vocab.json"),
        d.join("vocab.json"),
    )
    .unwrap();
    let err = expect_err(HfTokenizer::from_dir(&d), &["merges.txt"]);
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // generation_config.json naming an id past the vocabulary.
    let g = tmp("gencfg");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), g.join(f)).unwrap();
    }
    std::fs::write(
        g.join("generation_config.json"),
        r#"{"eos_token_id": [5, 99999]}"#,
    )
    .unwrap();
    expect_err(
        HfTokenizer::from_dir(&g),
        &["generation_config.json", "99999"],
    );
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&g).ok();
}

#[test]
fn bad_ids_messages_and_templates_are_clear_errors() {
    let tok = load("qwen2");
    let n = tok.vocab_size() as u32;
    let err = tok.decode(&[1, n], false).unwrap_err().to_string();
    assert!(err.contains(&n.to_string()), "{err}");
    assert!(tok.decode_stream(false).step(n).is_err());
    for (messages, want) in [
        ("{\"role\": \"user\"}", "expected a JSON list"),
        ("[{\"content\": \"hi\"}]", "message 0"),
        ("[1]", "message 0"),
        ("[", "not valid JSON"),
        ("[]", "no messages"),
    ] {
        let err = tok
            .apply_chat_template_json(messages, true, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{messages}: {err}");
    }
    let err = tok.apply_chat_template_json(
        "[{\"role\": \"user\", \"content\": \"x\"}]",
        true,
        Some("[1]"),
    );
    assert!(err.unwrap_err().to_string().contains("JSON object"));
    // A template error at render time (not a raise_exception) names the problem.
    let json = std::fs::read_to_string(dir("qwen2").join("tokenizer.json")).unwrap();
    let t = HfTokenizer::from_strings(
        &json,
        Some(r#"{"chat_template": "{{ messages[0].content + 1 }}"}"#),
    )
    .unwrap();
    let err = t
        .apply_chat_template(&[ChatMessage::new("user", "x")], true)
        .unwrap_err();
    assert!(err.to_string().contains("chat template failed"), "{err}");
}

#[test]
fn template_from_chat_template_jinja_or_a_named_list() {
    // transformers 5 saves the template as chat_template.jinja beside tokenizer_config.json;
    // older configs may hold a list of named templates.
    let src = dir("smollm2");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let template = cfg["chat_template"].as_str().unwrap().to_string();
    let msgs = [ChatMessage::new("user", "Hi 你好")];
    let want = load("smollm2").apply_chat_template(&msgs, true).unwrap();

    let d = tmp("jinja");
    std::fs::copy(src.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let mut c = cfg.clone();
    c.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(d.join("tokenizer_config.json"), c.to_string()).unwrap();
    std::fs::write(d.join("chat_template.jinja"), &template).unwrap();
    let tok = HfTokenizer::from_dir(&d).unwrap();
    assert_eq!(tok.apply_chat_template(&msgs, true).unwrap(), want);
    assert_eq!(tok.stop_token_ids(), load("smollm2").stop_token_ids());

    let mut c = cfg.clone();
    c["chat_template"] = serde_json::json!([
        {"name": "tool_use", "template": "unused"},
        {"name": "default", "template": template},
    ]);
    let json = std::fs::read_to_string(src.join("tokenizer.json")).unwrap();
    let tok = HfTokenizer::from_strings(&json, Some(&c.to_string())).unwrap();
    assert_eq!(tok.apply_chat_template(&msgs, true).unwrap(), want);
    std::fs::remove_dir_all(&d).ok();
}
