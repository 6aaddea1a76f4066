//! Chat templates: the Jinja `chat_template` of a Hugging Face `tokenizer_config.json`, rendered
//! with `minijinja` the way `transformers`' `apply_chat_template` renders it (tested byte for
//! byte against it, `tests/hf_tokenizer.rs`).
//!
//! transformers' environment, reproduced here: `trim_blocks` and `lstrip_blocks` on, loop
//! controls (`{% break %}`, `{% continue %}`), a `tojson` filter that is Python's `json.dumps`
//! (`", "` and `": "` separators, non-ASCII kept, `indent=`, `sort_keys=`; not Jinja's
//! HTML-escaping one), `raise_exception(message)` and `strftime_now(format)` globals, and the
//! variables `messages`, `tools` and `documents` (none unless given), `add_generation_prompt` and
//! the special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`). Python's string and
//! dict methods that templates call (`.strip()`, `.startswith()`, `.items()`, ...) come from
//! `minijinja-contrib`'s pycompat.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

use crate::error::{Error, Result};

const NAME: &str = "chat_template";

fn bad(message: String) -> Error {
    Error::InvalidArgument {
        op: "ChatTemplate",
        message,
    }
}

/// One chat message: `{"role": ..., "content": ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as the template sees them.
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTemplate(special tokens {:?})", self.special_tokens)
    }
}

impl ChatTemplate {
    /// Compile `source`; `special_tokens` are (name, text) pairs such as `("bos_token", "<s>")`.
    /// A syntax error is an [`Error::InvalidArgument`] naming the line.
    pub fn new(source: &str, special_tokens: Vec<(String, String)>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| {
                bad(format!(
                    "the chat template does not compile: {}",
                    describe(&e)
                ))
            })?;
        Ok(ChatTemplate {
            env,
            special_tokens,
        })
    }

    /// Render `messages`; with `add_generation_prompt` the template appends the assistant's
    /// header so that the model's continuation is its reply.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        self.render_values(Value::from(messages), add_generation_prompt, &[])
    }

    /// Render messages given as JSON text (a list of objects, any fields: tool calls, ...), with
    /// `extra` a JSON object of further template variables (`tools`, `date_string`, ...). Object
    /// key order is kept (it shows in `tojson`'s output).
    pub fn render_json(
        &self,
        messages_json: &str,
        add_generation_prompt: bool,
        extra_json: Option<&str>,
    ) -> Result<String> {
        let messages = parse_messages(messages_json)?;
        let mut extra = Vec::new();
        if let Some(text) = extra_json {
            let v: Value = serde_json::from_str(text)
                .map_err(|e| bad(format!("template variables: not valid JSON ({e})")))?;
            if v.kind() != ValueKind::Map {
                return Err(bad("template variables: expected a JSON object".into()));
            }
            for key in v.try_iter().map_err(|e| bad(e.to_string()))? {
                let name = key
                    .as_str()
                    .ok_or_else(|| bad("template variables: keys must be strings".into()))?
                    .to_string();
                let value = v.get_item(&key).map_err(|e| bad(e.to_string()))?;
                extra.push((name, value));
            }
        }
        self.render_values(messages, add_generation_prompt, &extra)
    }

    fn render_values(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        extra: &[(String, Value)],
    ) -> Result<String> {
        if messages.len() == Some(0) {
            return Err(bad("cannot apply the chat template to no messages".into()));
        }
        // transformers passes tools and documents as None when not given; a later entry
        // overrides an earlier one, as its kwargs override the special tokens.
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), messages),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
        ];
        for (k, v) in &self.special_tokens {
            ctx.push((k.clone(), Value::from(v.as_str())));
        }
        ctx.extend(extra.iter().cloned());
        let ctx: Value = ctx
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        let template = self.env.get_template(NAME).map_err(|e| bad(describe(&e)))?;
        template.render(ctx).map_err(|e| {
            if e.kind() == ErrorKind::InvalidOperation
                && e.detail().is_some_and(|d| d.starts_with(RAISED))
            {
                let d = e.detail().unwrap_or_default();
                bad(format!(
                    "the chat template raised an exception: {}",
                    &d[RAISED.len()..]
                ))
            } else {
                bad(format!("the chat template failed: {}", describe(&e)))
            }
        })
    }
}

/// Parse a JSON list of message objects, each with a string `role`.
pub fn parse_messages(messages_json: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(messages_json)
        .map_err(|e| bad(format!("chat messages: not valid JSON ({e})")))?;
    if v.kind() != ValueKind::Seq {
        return Err(bad(
            "chat messages: expected a JSON list of {\"role\", \"content\"} objects".into(),
        ));
    }
    for (i, m) in v.try_iter().map_err(|e| bad(e.to_string()))?.enumerate() {
        let role = m.get_attr("role").ok();
        if m.kind() != ValueKind::Map || role.as_ref().and_then(|r| r.as_str()).is_none() {
            return Err(bad(format!(
                "chat messages: message {i} is not an object with a string \"role\""
            )));
        }
    }
    Ok(v)
}

/// The message and the location of a minijinja error, with its cause chain.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        write!(s, ": {cause}").ok();
        src = cause.source();
    }
    s
}

const RAISED: &str = "raise_exception: ";

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    let opts = JsonOpts {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    write_json(&value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json_str(s: &str, ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    write!(out, "\\u{unit:04x}").ok();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(
    v: &Value,
    o: &JsonOpts,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    // json.dumps: ", " between items unless indenting (then "," and a newline).
    let item_sep = if o.indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                write!(out, "{i}").ok();
            } else {
                let f = f64::try_from(v.clone())?;
                if !f.is_finite() {
                    out.push_str(if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    write!(out, "{f:.1}").ok(); // Python's repr: 2.0
                } else {
                    write!(out, "{f:?}").ok();
                }
            }
        }
        ValueKind::String => write_json_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let name = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                write_json_str(&name, o.ensure_ascii, out);
                out.push_str(": ");
                write_json(&v.get_item(key)?, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {} value", v.kind()),
            ));
        }
    }
    Ok(())
}

/// `strftime_now(format)`: the current time (UTC; transformers uses the local time) formatted
/// with the strftime directives templates use.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = crate::time::SystemTime::now()
        .duration_since(crate::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
        .map(Value::from)
        .map_err(|m| minijinja::Error::new(ErrorKind::InvalidOperation, m))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's
/// civil-from-days).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Format the UTC time `secs` (seconds since the epoch) with `%d %m %Y %y %b %B %a %A %H %M %S
/// %j %e %%`; any other directive is an error.
pub(crate) fn strftime(format: &str, secs: i64) -> std::result::Result<String, String> {
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let jan1 = {
        // Day of the year: days since this year's 1 January.
        let mut lo = days - 366;
        while civil_from_days(lo).0 < y {
            lo += 1;
        }
        days - lo + 1
    };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:2}"),
            Some('m') => write!(out, "{m:02}"),
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('B') => write!(out, "{}", MONTHS[m as usize - 1]),
            Some('b') => write!(out, "{}", &MONTHS[m as usize - 1][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{:02}", tod / 3600),
            Some('M') => write!(out, "{:02}", tod / 60 % 60),
            Some('S') => write!(out, "{:02}", tod % 60),
            Some('j') => write!(out, "{jan1:03}"),
            Some('%') => write!(out, "%"),
            other => {
                return Err(format!(
                    "strftime_now: unsupported directive %{}",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
        .ok();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_and_strftime() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2024-07-26 12:34:56 UTC was a Friday.
        let t = 1_721_997_296;
        assert_eq!(
            strftime("%d %b %Y|%A %a %B %m %y %H:%M:%S %j %e %%", t).unwrap(),
            "26 Jul 2024|Friday Fri July 07 24 12:34:56 208 26 %"
        );
        assert_eq!(strftime("%d", 951_782_400).unwrap(), "29"); // 2000-02-29
        assert!(strftime("%Q", t).unwrap_err().contains("%Q"));
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}|{{ [] | tojson }}",
            vec![],
        )
        .unwrap();
        let out = t
            .render_json(
                r#"[{"role": "user"}]"#,
                false,
                Some(r#"{"x": {"b": [1, 2.5, 3.0, null, true], "a": "é<\"\n"}}"#),
            )
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, 2.5, 3.0, null, true], \"a\": \"é<\\\"\\n\"}|{\n  \"b\": [\n    1,\n    2.5,\n    3.0,\n    null,\n    true\n  ],\n  \"a\": \"é<\\\"\\n\"\n}|{\"a\": \"é<\\\"\\n\", \"b\": [1, 2.5, 3.0, null, true]}|[]"
        );
    }
}
