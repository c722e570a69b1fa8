//! Tokenizers (HF `tokenizers` crate) from an HF folder (tokenizer.json + tokenizer_config.json) or
//! from GGUF metadata, with HF chat templates rendered by minijinja.
//!
//! Ids match Python `transformers` (checked in tests/it/tokenizer.rs): an HF folder is used exactly as
//! its tokenizer.json says (padding and truncation stored there are switched off, as transformers
//! does per call); a GGUF `gpt2` tokenizer is rebuilt as the byte-level BPE that transformers'
//! GGUF converter builds (GPT-2 pre-tokenizer regex, no prefix space, byte-level decoder).
//! Where transformers' GGUF loader contradicts the file's own metadata (it ignores
//! `tokenizer.ggml.add_bos_token` and names `bos_token_id`'s token as EOS), r2m follows the file.
mod chat;
mod gguf;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;

/// One chat message, as in HF's `apply_chat_template(messages)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Markers that chat templates use to close a turn. When one of them is a special token of the vocab
/// and appears in the model's chat template, generation must stop on it too: see `eos_ids`.
const END_OF_TURN_TOKENS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>", "<|endofturn|>"];

/// An HF tokenizer plus what `tokenizer_config.json` adds: special tokens, BOS policy, chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from (folder or GGUF file), for error messages.
    pub source: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
    /// Extra stop ids beyond `eos_token` (GGUF `tokenizer.ggml.eot_token_id`/`eom_token_id`).
    extra_eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    model_max_length: Option<usize>,
    /// The folder's tokenizer_config.json as read, written back (updated) by `save_hf`.
    config_json: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("pad_token", &self.pad_token)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tk_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::parse(path, format!("tokenizer: {e}"))
}

/// A special token in tokenizer_config.json: a string or an AddedToken dict `{"content": ..}`.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, plus `dir/tokenizer_config.json` when present (special tokens,
    /// `chat_template`, `model_max_length`) and `dir/chat_template.jinja` (newer transformers).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(Error::NotFound { path: tj, hint: " (r2m needs the fast-tokenizer file tokenizer.json of an HF folder)".into() });
        }
        // The tokenizers crate panics on some malformed files (found by fuzzing): a panic while
        // reading is a malformed file.
        let mut inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(&tj))
            .map_err(|p| {
                let msg = crate::error::panic_message(&*p, "").to_string();
                Error::parse(&tj, format!("malformed tokenizer.json: {msg}"))
            })?
            .map_err(|e| tk_err(&tj, e))?;
        // transformers re-sets padding/truncation on every call (none by default).
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| tk_err(&tj, e))?;

        let cj = dir.join("tokenizer_config.json");
        let config_json: serde_json::Map<String, serde_json::Value> = if cj.is_file() {
            let text = std::fs::read_to_string(&cj).map_err(|e| Error::io(&cj, e))?;
            serde_json::from_str(&text).map_err(|e| Error::parse(&cj, e))?
        } else {
            Default::default()
        };
        let stm = dir.join("special_tokens_map.json");
        let special_map: serde_json::Map<String, serde_json::Value> = if stm.is_file() {
            let text = std::fs::read_to_string(&stm).map_err(|e| Error::io(&stm, e))?;
            serde_json::from_str(&text).map_err(|e| Error::parse(&stm, e))?
        } else {
            Default::default()
        };
        let special = |key: &str| token_str(config_json.get(key)).or_else(|| token_str(special_map.get(key)));

        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        } else {
            match config_json.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: HF uses the one named "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(String::from)),
                _ => None,
            }
        };
        // transformers writes 1e30 as "no limit".
        let model_max_length =
            config_json.get("model_max_length").and_then(|v| v.as_f64()).filter(|v| *v > 0.0 && *v < 1e18).map(|v| v as usize);

        let mut tok = Tokenizer {
            inner,
            source: dir.to_path_buf(),
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
            pad_token: special("pad_token"),
            unk_token: special("unk_token"),
            extra_eos: vec![],
            add_bos: false,
            chat_template,
            model_max_length,
            config_json,
        };
        // What `encode(.., true)` does is decided by tokenizer.json's post-processor, as for
        // transformers' PreTrainedTokenizerFast; `add_bos` reports it.
        tok.add_bos = match tok.bos_id() {
            Some(b) => tok.encode("", true)?.first() == Some(&b),
            None => false,
        };
        Ok(tok)
    }

    /// Sets whether `encode(.., true)` prepends BOS, by rebuilding the post-processor (as
    /// transformers' `LlamaTokenizerFast.update_post_processor`). Errors if there is no BOS token.
    pub fn set_add_bos(&mut self, add_bos: bool) -> Result<()> {
        if add_bos {
            let (bos, id) = match (&self.bos_token, self.bos_id()) {
                (Some(b), Some(id)) => (b.clone(), id),
                _ => return Err(tk_err(&self.source, "add_bos_token is set but there is no BOS token")),
            };
            let err = |e: String| tk_err(&self.source, e);
            let mut b = TemplateProcessing::builder();
            b.try_single(format!("{bos}:0 $A:0")).map_err(err)?;
            b.try_pair(format!("{bos}:0 $A:0 {bos}:1 $B:1")).map_err(err)?;
            b.special_tokens(vec![(bos, id)]);
            let tp = b.build().map_err(|e| tk_err(&self.source, e))?;
            self.inner.with_post_processor(Some(tp));
        } else {
            self.inner.with_post_processor(Some(ByteLevel::new(false, false, true)));
        }
        self.add_bos = add_bos;
        Ok(())
    }

    /// The wrapped HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.inner.token_to_id(t))
    }
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    /// The ids that end a generation: the configured EOS first, then GGUF's `eot`/`eom` ids, then
    /// the chat template's end-of-turn token when it is a distinct special token that the template
    /// uses (one of `<|im_end|>`, `<|eot_id|>`, `<|eom_id|>`, `<|end|>`, `<end_of_turn>`, ...).
    /// Chat models often set EOS to a document end (`<|endoftext|>`) while their turns end with
    /// `<|im_end|>`; stopping only on EOS would run past the end of the reply.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.eos_token.as_deref().and_then(|t| self.inner.token_to_id(t)).into_iter().collect();
        ids.extend(&self.extra_eos);
        if let Some(tpl) = &self.chat_template {
            let special = self.inner.get_added_tokens_decoder();
            for t in END_OF_TURN_TOKENS {
                if !tpl.contains(t) {
                    continue;
                }
                if let Some((id, _)) = special.iter().find(|(_, a)| a.special && a.content == *t) {
                    ids.push(*id);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        ids.retain(|i| seen.insert(*i));
        ids
    }

    /// The pad token's id, else the first of `eos_ids`, else 0 (padding is masked out anyway).
    pub fn pad_id(&self) -> u32 {
        self.pad_token.as_deref().and_then(|t| self.inner.token_to_id(t)).or_else(|| self.eos_ids().first().copied()).unwrap_or(0)
    }

    /// Whether `encode(text, true)` prepends the BOS token.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Vocabulary size including added tokens (the number of ids `decode` knows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Ids of `text`; with `add_special_tokens`, what the post-processor adds (BOS, or BERT's
    /// [CLS] .. [SEP]). Special-token strings in `text` (e.g. `<|im_start|>`) map to their ids, as in HF.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| tk_err(&self.source, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts (in parallel inside `tokenizers`), without padding.
    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        let encs = self.inner.encode_batch(texts.to_vec(), add_special_tokens).map_err(|e| tk_err(&self.source, e))?;
        Ok(encs.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`. Unlike transformers' Python `decode`, no `clean_up_tokenization_spaces`
    /// pass: `decode(encode(s))` gives `s` back for byte-level tokenizers.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        // id_to_token is a map lookup; vocab_size() rebuilds the whole vocabulary map on each call.
        if let Some(bad) = ids.iter().find(|&&i| self.inner.id_to_token(i).is_none()) {
            return Err(Error::Input(format!(
                "{}: token id {bad} is out of the vocabulary (size {})",
                self.source.display(),
                self.vocab_size()
            )));
        }
        self.inner.decode(ids, skip_special_tokens).map_err(|e| tk_err(&self.source, e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Renders the model's chat template as transformers' `apply_chat_template(messages,
    /// add_generation_prompt=.., tokenize=False)`: Jinja with `trim_blocks` and `lstrip_blocks`, the
    /// variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `pad_token`,
    /// `unk_token`, and HF's `raise_exception`, `tojson` and `strftime_now`.
    /// Tokenize the result with `encode(&text, false)`: the template already holds its special tokens.
    /// Replaces (or gives, for a base model's tokenizer) the chat template; `save_hf` writes it.
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
    }

    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            Error::Input(format!(
                "{}: this tokenizer has no chat template (no tokenizer.chat_template in GGUF metadata, \
                 no chat_template in tokenizer_config.json nor chat_template.jinja); a base model's reward \
                 model can be given one with train-rm's data.chat_template",
                self.source.display()
            ))
        })?;
        chat::render(
            tpl,
            messages,
            add_generation_prompt,
            [
                ("bos_token", self.bos_token.as_deref()),
                ("eos_token", self.eos_token.as_deref()),
                ("pad_token", self.pad_token.as_deref()),
                ("unk_token", self.unk_token.as_deref()),
            ],
        )
        .map_err(|e| Error::Input(format!("{}: chat template: {e}", self.source.display())))
    }

    /// Writes an HF tokenizer folder: tokenizer.json, tokenizer_config.json (this tokenizer's
    /// config as read, updated with the chat template, special tokens, `add_bos_token` and
    /// `model_max_length`; `PreTrainedTokenizerFast` for a GGUF tokenizer) and special_tokens_map.json.
    /// `AutoTokenizer.from_pretrained(dir)` then gives the same ids and chat rendering.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tj = dir.join("tokenizer.json");
        let json = self.inner.to_string(true).map_err(|e| tk_err(&tj, e))?;
        std::fs::write(&tj, json).map_err(|e| Error::io(&tj, e))?;

        use serde_json::Value as J;
        let mut cfg = self.config_json.clone();
        cfg.entry("tokenizer_class").or_insert_with(|| J::String("PreTrainedTokenizerFast".into()));
        let mut map = serde_json::Map::new();
        for (key, tok) in
            [("bos_token", &self.bos_token), ("eos_token", &self.eos_token), ("pad_token", &self.pad_token), ("unk_token", &self.unk_token)]
        {
            if let Some(t) = tok {
                cfg.insert(key.into(), J::String(t.clone()));
                map.insert(key.into(), J::String(t.clone()));
            }
        }
        // Keep the other special tokens of an HF folder (BERT's cls/sep/mask) in the map.
        for key in ["cls_token", "sep_token", "mask_token"] {
            if let Some(t) = token_str(cfg.get(key)) {
                map.insert(key.into(), J::String(t));
            }
        }
        cfg.insert("add_bos_token".into(), J::Bool(self.add_bos));
        cfg.entry("add_eos_token").or_insert(J::Bool(false));
        cfg.entry("clean_up_tokenization_spaces").or_insert(J::Bool(false));
        match &self.chat_template {
            Some(t) => {
                cfg.insert("chat_template".into(), J::String(t.clone()));
            }
            None => {
                cfg.remove("chat_template");
            }
        }
        if let Some(n) = self.model_max_length {
            cfg.insert("model_max_length".into(), J::from(n));
        }
        let write = |name: &str, v: &serde_json::Map<String, J>| -> Result<()> {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v).map_err(|e| Error::parse(&p, e))?;
            std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
        };
        write("tokenizer_config.json", &cfg)?;
        write("special_tokens_map.json", &map)?;
        // A stale chat_template.jinja would override tokenizer_config's template in transformers.
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            std::fs::remove_file(&jinja).map_err(|e| Error::io(&jinja, e))?;
        }
        Ok(())
    }
}
