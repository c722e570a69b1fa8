//! Datasets in TRL's formats (TRL docs, "Dataset formats"): preference pairs for reward-model
//! training and prompts for RL, from JSON Lines (`.jsonl`, `.json`) or Parquet (`.parquet`).
//!
//! | kind | standard (plain text) | conversational |
//! | --- | --- | --- |
//! | preference | `{"prompt": str, "chosen": str, "rejected": str}` | `{"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}` |
//! | preference, implicit prompt | `{"chosen": str, "rejected": str}` | `{"chosen": [msgs], "rejected": [msgs]}` |
//! | prompt-only | `{"prompt": str}` | `{"prompt": [msgs]}` |
//!
//! A message is `{"role": "system"|"user"|"assistant"|"tool", "content": str}` (other keys are
//! ignored). Preference records ignore other columns; prompt records keep them in
//! [`PromptExample::meta`]. A `null` prompt in a preference record counts as absent (Parquet
//! stores a missing value as null).
//!
//! Loading is strict: every malformed record is an error naming the file, the line (JSONL) or row
//! (Parquet) and the field: invalid JSON (with serde's column), a record that is not an object, a
//! missing field, a wrong type, an empty string, an empty message list, a message without role or
//! content or with an unknown role, plain and conversational fields mixed in one record (or a file
//! whose records disagree with its first valid one), and `chosen == rejected` (TRL would train on a
//! pair that carries no preference). A file with no records is an error. With
//! [`LoadOptions::skip_invalid`], malformed records are listed in [`Loaded::skipped`] instead;
//! nothing else is dropped. Blank JSONL lines are not records.
//!
//! Rendering, tokenizing, padding and minibatch order live in [`batch`](self::batch).
use crate::error::{Error, Result};
use crate::tokenizer::Message;
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

pub mod batch;
mod jsonl;
mod parquet;

pub use batch::{
    collate_pairs, epoch_order, pad_batch, render_preference, render_prompt, tokenize_pairs, Batcher, Batches, Cursor, PadSide, TokenBatch,
    TokenizedPairs,
};

/// Roles a message may have (TRL's conversational format; `tool` for tool results).
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// A field of a record: plain text (TRL "standard") or a list of chat messages ("conversational").
/// Serializes as TRL stores it: a string, or a list of `{"role", "content"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Text {
    Plain(String),
    Chat(Vec<Message>),
}

impl Text {
    pub fn is_chat(&self) -> bool {
        matches!(self, Text::Chat(_))
    }
    /// "plain text" or "conversational", for messages.
    pub fn kind(&self) -> &'static str {
        if self.is_chat() {
            "conversational"
        } else {
            "plain text"
        }
    }
}

/// Where a record came from: a JSONL line or a Parquet row, both 1-based. Displays as `file:line`,
/// or `file: row N` when the file's extension is `.parquet`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if Format::of(&self.file) == Some(Format::Parquet) {
            write!(f, "{}: row {}", self.file.display(), self.line)
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// One preference pair. `prompt` is `None` for TRL's implicit-prompt format (the prompt is then
/// part of `chosen` and `rejected`). Plain and conversational fields are never mixed.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceExample {
    pub prompt: Option<Text>,
    pub chosen: Text,
    pub rejected: Text,
    pub origin: Origin,
}

/// One RL prompt, with the record's other columns (e.g. a testbed's topic or constraints) as read.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptExample {
    pub prompt: Text,
    pub origin: Origin,
    /// Every column other than `prompt`, as JSON (Parquet values converted; see `parquet.rs`).
    pub meta: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// List malformed records in [`Loaded::skipped`] instead of failing on the first one. Default false.
    pub skip_invalid: bool,
}

/// What a load gave: the valid records in file order, and the malformed ones skipped (only with
/// `skip_invalid`), each with its reason (`"chosen: empty string"`).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub items: Vec<T>,
    pub skipped: Vec<(Origin, String)>,
}

/// A file's records before validation: a JSON object, or why the line is not one.
pub(crate) type RawRecord = (Origin, std::result::Result<Map<String, Value>, String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    Parquet,
}

const SUPPORTED: &str = ".jsonl, .json (JSON Lines), .parquet";

impl Format {
    fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "json" => Some(Format::Jsonl),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

fn read_records(path: &Path) -> Result<Vec<RawRecord>> {
    match Format::of(path) {
        Some(Format::Jsonl) => jsonl::read_records(path),
        Some(Format::Parquet) => parquet::read_records(path),
        None => Err(Error::Unsupported {
            path: path.to_path_buf(),
            what: "dataset file extension".into(),
            value: path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default(),
            supported: SUPPORTED.into(),
        }),
    }
}

/// Loads preference pairs (TRL preference format, standard or conversational, explicit or
/// implicit prompt) from `.jsonl`/`.json` (JSON Lines) or `.parquet`.
pub fn load_preferences(path: &Path, opts: &LoadOptions) -> Result<Loaded<PreferenceExample>> {
    load_with(path, opts, "chosen", parse_preference, |p| p.chosen.is_chat())
}

/// Loads prompts (TRL prompt-only format, standard or conversational); other columns go to `meta`.
pub fn load_prompts(path: &Path, opts: &LoadOptions) -> Result<Loaded<PromptExample>> {
    load_with(path, opts, "prompt", parse_prompt, |p| p.prompt.is_chat())
}

fn load_with<T>(
    path: &Path,
    opts: &LoadOptions,
    kind_field: &str,
    parse: fn(Map<String, Value>, Origin) -> std::result::Result<T, String>,
    is_chat: fn(&T) -> bool,
) -> Result<Loaded<T>> {
    let records = read_records(path)?;
    if records.is_empty() {
        return Err(Error::parse(path, "no records (empty file)"));
    }
    let n = records.len();
    let mut items = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    // The first valid record fixes the file's kind: TRL decides plain vs conversational once per
    // dataset (`is_conversational(first_example)` in RewardTrainer), so a mixed file is malformed.
    let mut first: Option<(bool, Origin)> = None;
    for (origin, rec) in records {
        let res = rec.and_then(|obj| parse(obj, origin.clone())).and_then(|item| {
            let chat = is_chat(&item);
            match &first {
                None => first = Some((chat, origin.clone())),
                Some((c, o)) if *c != chat => {
                    let kind = |c: bool| if c { "conversational" } else { "plain text" };
                    return Err(format!(
                        "{kind_field}: {} but the file's first record ({o}) is {}: a dataset is all plain text or all conversational",
                        kind(chat),
                        kind(*c)
                    ));
                }
                _ => {}
            }
            Ok(item)
        });
        match res {
            Ok(item) => items.push(item),
            Err(msg) => skipped.push((origin, msg)),
        }
    }
    if !skipped.is_empty() && !opts.skip_invalid {
        let (o, m) = &skipped[0];
        let more = match skipped.len() - 1 {
            0 => String::new(),
            k => format!(" ({k} more invalid record{}; skip_invalid skips them)", if k == 1 { "" } else { "s" }),
        };
        return Err(Error::Input(format!("{o}: {m}{more}")));
    }
    if items.is_empty() {
        let (o, m) = &skipped[0];
        return Err(Error::parse(path, format!("no valid records: all {n} are invalid (first: {o}: {m})")));
    }
    Ok(Loaded { items, skipped })
}

/// JSON type names for messages: "got number".
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

pub(crate) fn parse_text(field: &str, v: Value) -> std::result::Result<Text, String> {
    match v {
        Value::String(s) if s.is_empty() => Err(format!("{field}: empty string")),
        Value::String(s) if s.trim().is_empty() => Err(format!("{field}: whitespace-only string")),
        Value::String(s) => Ok(Text::Plain(s)),
        Value::Array(a) if a.is_empty() => Err(format!("{field}: empty list of messages")),
        Value::Array(a) => a.into_iter().enumerate().map(|(i, m)| parse_message(field, i, m)).collect::<Result<_, _>>().map(Text::Chat),
        other => Err(format!("{field}: expected a string or a list of messages, got {}", type_name(&other))),
    }
}

fn parse_message(field: &str, i: usize, v: Value) -> std::result::Result<Message, String> {
    let Value::Object(mut m) = v else {
        return Err(format!("{field}[{i}]: expected a message {{\"role\", \"content\"}}, got {}", type_name(&v)));
    };
    let mut get = |key: &str| match m.remove(key) {
        None => Err(format!("{field}[{i}]: message without \"{key}\"")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{field}[{i}].{key}: expected a string, got {}", type_name(&other))),
    };
    let role = get("role")?;
    let content = get("content")?;
    if !ROLES.contains(&role.as_str()) {
        return Err(format!("{field}[{i}].role: unknown role \"{role}\" (allowed: {})", ROLES.join(", ")));
    }
    Ok(Message { role, content })
}

fn take_required(obj: &mut Map<String, Value>, field: &str, needs: &str) -> std::result::Result<Value, String> {
    obj.remove(field).ok_or_else(|| format!("{field}: missing field ({needs})"))
}

fn parse_preference(mut obj: Map<String, Value>, origin: Origin) -> std::result::Result<PreferenceExample, String> {
    const NEEDS: &str = "a preference record has \"chosen\", \"rejected\" and optionally \"prompt\"";
    let chosen = parse_text("chosen", take_required(&mut obj, "chosen", NEEDS)?)?;
    let rejected = parse_text("rejected", take_required(&mut obj, "rejected", NEEDS)?)?;
    let prompt = match obj.remove("prompt") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_text("prompt", v)?),
    };
    let mix = |field: &str, t: &Text| {
        format!("{field}: {} but chosen is {}: one record can't mix plain text and messages", t.kind(), chosen.kind())
    };
    if rejected.is_chat() != chosen.is_chat() {
        return Err(mix("rejected", &rejected));
    }
    if let Some(p) = &prompt {
        if p.is_chat() != chosen.is_chat() {
            return Err(mix("prompt", p));
        }
    }
    if chosen == rejected {
        return Err("rejected: identical to chosen (the pair carries no preference)".into());
    }
    Ok(PreferenceExample { prompt, chosen, rejected, origin })
}

/// One (prompt, completion) record: TRL's prompt-completion format, for scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionExample {
    pub prompt: Text,
    pub completion: Text,
    pub origin: Origin,
}

/// Loads prompt-completion records (`{"prompt": .., "completion": ..}`, plain or conversational).
pub fn load_completions(path: &Path, opts: &LoadOptions) -> Result<Loaded<CompletionExample>> {
    load_with(path, opts, "completion", parse_completion, |p| p.completion.is_chat())
}

fn parse_completion(mut obj: Map<String, Value>, origin: Origin) -> std::result::Result<CompletionExample, String> {
    const NEEDS: &str = "a prompt-completion record has \"prompt\" and \"completion\"";
    let prompt = parse_text("prompt", take_required(&mut obj, "prompt", NEEDS)?)?;
    let completion = parse_text("completion", take_required(&mut obj, "completion", NEEDS)?)?;
    if prompt.is_chat() != completion.is_chat() {
        return Err(format!(
            "completion: {} but prompt is {}: one record can't mix plain text and messages",
            completion.kind(),
            prompt.kind()
        ));
    }
    Ok(CompletionExample { prompt, completion, origin })
}

fn parse_prompt(mut obj: Map<String, Value>, origin: Origin) -> std::result::Result<PromptExample, String> {
    let prompt = parse_text("prompt", take_required(&mut obj, "prompt", "a prompt record has \"prompt\"")?)?;
    Ok(PromptExample { prompt, origin, meta: obj })
}

/// Splits `items` into (rest, holdout), deterministically for a given `seed`: the holdout is the
/// first `ceil(frac * n)` indices of a seeded permutation (HF datasets' `train_test_split` rounds
/// the test size up too); both parts keep file order. `frac` is clamped to [0, 1] (NaN gives 0).
/// The permutation is [`epoch_order`]'s algorithm on ChaCha8 stream `u64::MAX`, so it never
/// coincides with an epoch's order.
pub fn split_holdout<T>(items: Vec<T>, frac: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let frac = if frac.is_nan() { 0.0 } else { frac.clamp(0.0, 1.0) };
    let k = ((frac * n as f64).ceil() as usize).min(n);
    let mut held = vec![false; n];
    for &i in &batch::permutation(n, seed, u64::MAX)[..k] {
        held[i] = true;
    }
    let (mut rest, mut holdout) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (item, h) in items.into_iter().zip(held) {
        if h {
            holdout.push(item);
        } else {
            rest.push(item);
        }
    }
    (rest, holdout)
}

#[derive(Serialize)]
struct PreferenceLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a Text>,
    chosen: &'a Text,
    rejected: &'a Text,
}

#[derive(Serialize)]
struct PromptLine<'a> {
    prompt: &'a Text,
    #[serde(flatten)]
    meta: &'a Map<String, Value>,
}

/// Writes pairs as JSON Lines in the format they hold (standard or conversational, `prompt` left
/// out when `None`), atomically (a temporary file renamed over `path`). `load_preferences` reads it back.
pub fn write_preferences_jsonl(path: &Path, examples: &[PreferenceExample]) -> Result<()> {
    let lines = examples.iter().map(|e| {
        let line = PreferenceLine { prompt: e.prompt.as_ref(), chosen: &e.chosen, rejected: &e.rejected };
        serde_json::to_string(&line).map_err(|err| Error::parse(path, format!("{}: {err}", e.origin)))
    });
    jsonl::write_lines_atomic(path, lines)
}

/// Writes prompts as JSON Lines, `{"prompt": .., <meta columns>}`, atomically. A `meta` key named
/// `prompt` is an error (it would shadow the prompt).
pub fn write_prompts_jsonl(path: &Path, examples: &[PromptExample]) -> Result<()> {
    let lines = examples.iter().map(|e| {
        if e.meta.contains_key("prompt") {
            return Err(Error::Input(format!("{}: meta has a \"prompt\" key, which would shadow the prompt", e.origin)));
        }
        serde_json::to_string(&PromptLine { prompt: &e.prompt, meta: &e.meta })
            .map_err(|err| Error::parse(path, format!("{}: {err}", e.origin)))
    });
    jsonl::write_lines_atomic(path, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, body: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().write_all(body.as_bytes()).unwrap();
        p
    }

    /// The error of loading `body` as preferences (or prompts), as a string.
    fn pref_err(body: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "d.jsonl", body);
        let e = load_preferences(&p, &LoadOptions::default()).unwrap_err().to_string();
        e.replace(&dir.path().display().to_string(), "DIR")
    }
    fn prompt_err(body: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "d.jsonl", body);
        let e = load_prompts(&p, &LoadOptions::default()).unwrap_err().to_string();
        e.replace(&dir.path().display().to_string(), "DIR")
    }
    fn has(e: &str, want: &str) {
        assert!(e.contains(want), "error {e:?} lacks {want:?}");
    }
    const OK: &str = r#"{"prompt": "Hi", "chosen": " a", "rejected": " b"}"#;

    #[test]
    fn parses_each_preference_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "std.jsonl",
            "{\"prompt\": \"Q: 1+1?\", \"chosen\": \" 2\", \"rejected\": \" 3\"}\n\n{\"chosen\": \"x 2\", \"rejected\": \"x 3\", \"score\": 1}\r\n",
        );
        let l = load_preferences(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.items.len(), 2);
        assert!(l.skipped.is_empty());
        let a = &l.items[0];
        assert_eq!(a.prompt, Some(Text::Plain("Q: 1+1?".into())));
        assert_eq!(a.chosen, Text::Plain(" 2".into()));
        assert_eq!(a.origin, Origin { file: p.clone(), line: 1 });
        let b = &l.items[1];
        assert_eq!(b.prompt, None);
        assert_eq!(b.origin.line, 3, "blank lines count in line numbers but are not records");

        let p = write(
            &dir,
            "conv.json",
            concat!(
                r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Green."}]}"#,
                "\n",
                r#"{"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}], "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green.", "name": "x"}]}"#,
                "\n"
            ),
        );
        let l = load_preferences(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.items[0].prompt, Some(Text::Chat(vec![Message::system("Be brief."), Message::user("Sky?")])));
        assert_eq!(l.items[0].chosen, Text::Chat(vec![Message::assistant("Blue.")]));
        assert_eq!(l.items[1].prompt, None);
        assert_eq!(l.items[1].rejected, Text::Chat(vec![Message::user("Sky?"), Message::assistant("Green.")]));
    }

    #[test]
    fn parses_prompts_with_meta() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "p.jsonl",
            concat!(
                r#"{"prompt": "Write a haiku.", "topic": "haiku", "max_words": 17}"#,
                "\n",
                r#"{"prompt": "Name a color.", "topic": "color", "max_words": 1}"#,
                "\n"
            ),
        );
        let l = load_prompts(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.items[0].prompt, Text::Plain("Write a haiku.".into()));
        assert_eq!(l.items[0].meta["topic"], "haiku");
        assert_eq!(l.items[0].meta["max_words"], 17);
        let p = write(&dir, "c.jsonl", r#"{"prompt": [{"role": "user", "content": "Hi"}]}"#);
        let l = load_prompts(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.items[0].prompt, Text::Chat(vec![Message::user("Hi")]));
        assert!(l.items[0].meta.is_empty());
    }

    #[test]
    fn malformed_records_name_file_line_and_field() {
        let two = |bad: &str| format!("{OK}\n{bad}\n");
        has(&pref_err(&two("{\"chosen\": \"a\", ")), "DIR/d.jsonl:2: invalid JSON at column 16: EOF while parsing a value");
        has(&pref_err(&two("[1, 2]")), "DIR/d.jsonl:2: expected a JSON object per line, got list");
        has(&pref_err(&two(r#"{"prompt": "p", "rejected": "b"}"#)), "d.jsonl:2: chosen: missing field");
        has(&pref_err(&two(r#"{"chosen": "a"}"#)), "d.jsonl:2: rejected: missing field");
        has(&pref_err(&two(r#"{"chosen": 3, "rejected": "b"}"#)), "d.jsonl:2: chosen: expected a string or a list of messages, got number");
        has(
            &pref_err(&two(r#"{"chosen": "a", "rejected": {"x": 1}}"#)),
            "d.jsonl:2: rejected: expected a string or a list of messages, got object",
        );
        has(&pref_err(&two(r#"{"prompt": "", "chosen": "a", "rejected": "b"}"#)), "d.jsonl:2: prompt: empty string");
        has(&pref_err(&two(r#"{"chosen": " \n", "rejected": "b"}"#)), "d.jsonl:2: chosen: whitespace-only string");
        has(&pref_err(&two(r#"{"chosen": "a", "rejected": "a"}"#)), "d.jsonl:2: rejected: identical to chosen");
        has(
            &pref_err(&two(r#"{"prompt": "p", "chosen": null, "rejected": "a"}"#)),
            "d.jsonl:2: chosen: expected a string or a list of messages, got null",
        );

        let conv = |c: &str, r: &str| format!("{{\"chosen\": {c}, \"rejected\": {r}}}\n");
        let a = r#"[{"role": "assistant", "content": "A"}]"#;
        has(&pref_err(&conv("[]", a)), "d.jsonl:1: chosen: empty list of messages");
        has(&pref_err(&conv(r#"[{"content": "A"}]"#, a)), "d.jsonl:1: chosen[0]: message without \"role\"");
        has(
            &pref_err(&conv(a, r#"[{"role": "user", "content": "Q"}, {"role": "assistant"}]"#)),
            "d.jsonl:1: rejected[1]: message without \"content\"",
        );
        has(
            &pref_err(&conv(r#"[{"role": "bot", "content": "A"}]"#, a)),
            "d.jsonl:1: chosen[0].role: unknown role \"bot\" (allowed: system, user, assistant, tool)",
        );
        has(&pref_err(&conv(r#"[{"role": 1, "content": "A"}]"#, a)), "d.jsonl:1: chosen[0].role: expected a string, got number");
        has(
            &pref_err(&conv(r#"[{"role": "assistant", "content": null}]"#, a)),
            "d.jsonl:1: chosen[0].content: expected a string, got null",
        );
        has(&pref_err(&conv(r#"["hi"]"#, a)), "d.jsonl:1: chosen[0]: expected a message {\"role\", \"content\"}, got string");
        has(&pref_err(&conv(a, a)), "d.jsonl:1: rejected: identical to chosen");
        has(
            &pref_err(&conv(a, "\"B\"")),
            "d.jsonl:1: rejected: plain text but chosen is conversational: one record can't mix plain text and messages",
        );
        has(
            &pref_err(&format!("{{\"prompt\": \"Q\", \"chosen\": {a}, \"rejected\": [{{\"role\": \"assistant\", \"content\": \"B\"}}]}}")),
            "d.jsonl:1: prompt: plain text but chosen is conversational",
        );
        has(
            &pref_err(&format!("{OK}\n{}", conv(a, r#"[{"role": "assistant", "content": "B"}]"#))),
            "d.jsonl:2: chosen: conversational but the file's first record (DIR/d.jsonl:1) is plain text",
        );

        has(&prompt_err("{\"text\": \"hi\"}\n"), "d.jsonl:1: prompt: missing field (a prompt record has \"prompt\")");
        has(&prompt_err("{\"prompt\": 7}\n"), "d.jsonl:1: prompt: expected a string or a list of messages, got number");
        has(&prompt_err("{\"prompt\": \"\"}\n"), "d.jsonl:1: prompt: empty string");
        has(
            &prompt_err("{\"prompt\": [{\"role\": \"narrator\", \"content\": \"x\"}]}\n"),
            "d.jsonl:1: prompt[0].role: unknown role \"narrator\"",
        );
    }

    #[test]
    fn whole_file_errors() {
        has(&pref_err(""), "DIR/d.jsonl: no records (empty file)");
        has(&pref_err("\n  \n"), "DIR/d.jsonl: no records (empty file)");
        has(
            &pref_err(&format!("{OK}\n{{\"chosen\": 1}}\n{{\"chosen\": 2}}\n")),
            "d.jsonl:2: chosen: expected a string or a list of messages, got number (1 more invalid record; skip_invalid skips them)",
        );
        has(&pref_err("[\n{\"chosen\": \"a\", \"rejected\": \"b\"}\n]\n"), "DIR/d.jsonl: line 1 starts a JSON array");
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "d.csv", "chosen,rejected\n");
        let e = load_preferences(&p, &LoadOptions::default()).unwrap_err().to_string();
        has(&e, "d.csv: unsupported dataset file extension '.csv' (supported: .jsonl, .json (JSON Lines), .parquet)");
        let e = load_prompts(&dir.path().join("missing.jsonl"), &LoadOptions::default()).unwrap_err().to_string();
        has(&e, "missing.jsonl: file not found");
    }

    #[test]
    fn skip_invalid_counts_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let body = format!("{OK}\nnot json\n\n{{\"chosen\": \"a\", \"rejected\": \"a\"}}\n{OK}\n{{\"prompt\": 1, \"chosen\": \"a\", \"rejected\": \"b\"}}\n");
        let p = write(&dir, "d.jsonl", &body);
        let opts = LoadOptions { skip_invalid: true };
        let l = load_preferences(&p, &opts).unwrap();
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.items[1].origin.line, 5);
        let lines: Vec<usize> = l.skipped.iter().map(|(o, _)| o.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert!(l.skipped[0].1.starts_with("invalid JSON at column 2: expected ident"), "{}", l.skipped[0].1);
        assert_eq!(l.skipped[1].1, "rejected: identical to chosen (the pair carries no preference)");
        assert_eq!(l.skipped[2].1, "prompt: expected a string or a list of messages, got number");
        // All invalid: still an error, naming the first reason.
        let p = write(&dir, "bad.jsonl", "{\"chosen\": 1}\n{}\n");
        let e = load_preferences(&p, &opts).unwrap_err().to_string();
        has(&e, "bad.jsonl: no valid records: all 2 are invalid (first: ");
        has(&e, "bad.jsonl:1: chosen: expected a string or a list of messages, got number)");
    }

    #[test]
    fn origin_display() {
        assert_eq!(Origin { file: "a/b.jsonl".into(), line: 3 }.to_string(), "a/b.jsonl:3");
        assert_eq!(Origin { file: "a/b.parquet".into(), line: 3 }.to_string(), "a/b.parquet: row 3");
    }

    #[test]
    fn write_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let src = write(
            &dir,
            "src.jsonl",
            concat!(
                r#"{"prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue \"x\"\n"}], "rejected": [{"role": "assistant", "content": "Green."}]}"#,
                "\n",
                r#"{"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}], "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Red."}]}"#,
                "\n"
            ),
        );
        let a = load_preferences(&src, &LoadOptions::default()).unwrap().items;
        let out = dir.path().join("sub/out.jsonl");
        write_preferences_jsonl(&out, &a).unwrap();
        let b = load_preferences(&out, &LoadOptions::default()).unwrap().items;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.prompt, &x.chosen, &x.rejected), (&y.prompt, &y.chosen, &y.rejected));
        }
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.lines().nth(1).unwrap().starts_with("{\"chosen\":"), "no prompt key when None: {text}");
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1, "no temporary file left");

        let p = write(&dir, "p.jsonl", "{\"prompt\": \"Hi\", \"topic\": \"x\", \"n\": 2.5}\n");
        let a = load_prompts(&p, &LoadOptions::default()).unwrap().items;
        let out = dir.path().join("p2.jsonl");
        write_prompts_jsonl(&out, &a).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"prompt\":\"Hi\",\"n\":2.5,\"topic\":\"x\"}\n");
        let mut bad = a.clone();
        bad[0].meta.insert("prompt".into(), Value::from("x"));
        has(&write_prompts_jsonl(&out, &bad).unwrap_err().to_string(), "p.jsonl:1: meta has a \"prompt\" key");
    }

    #[test]
    fn split_holdout_is_deterministic_and_partitions() {
        let items: Vec<usize> = (0..100).collect();
        let (rest, held) = split_holdout(items.clone(), 0.1, 7);
        assert_eq!((rest.len(), held.len()), (90, 10));
        assert_eq!(split_holdout(items.clone(), 0.1, 7), (rest.clone(), held.clone()));
        assert_ne!(split_holdout(items.clone(), 0.1, 8).1, held);
        let mut all: Vec<usize> = rest.iter().chain(&held).copied().collect();
        all.sort();
        assert_eq!(all, items);
        assert!(held.windows(2).all(|w| w[0] < w[1]), "holdout keeps file order");
        assert_eq!(split_holdout(items.clone(), 0.015, 1).1.len(), 2, "ceil, as HF datasets");
        assert_eq!(split_holdout(items.clone(), 0.0, 1).1.len(), 0);
        assert_eq!(split_holdout(items.clone(), 2.0, 1).0.len(), 0);
        assert_eq!(split_holdout(Vec::<u8>::new(), 0.5, 1), (vec![], vec![]));
    }
}
