//! Tokenizers (HF `tokenizers` crate) from an HF folder (tokenizer.json + tokenizer_config.json) or
//! from GGUF metadata, with HF chat templates rendered by minijinja.
//!
//! Ids match Python `transformers` (checked in tests/it/tokenizer.rs): an HF folder is used exactly as
//! its tokenizer.json says (padding and truncation stored there are switched off, as transformers
//! does per call); a GGUF `gpt2` tokenizer is rebuilt as the byte-level BPE that transformers'
//! GGUF converter builds (GPT-2 pre-tokenizer regex, no prefix space, byte-level decoder).
//! Where transformers' GGUF loader contradicts the file's own metadata (it ignores
//! `tokenizer.ggml.add_bos_token` and names `bos_token_id`'s token as EOS), r2m follows the file.
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

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

/// GPT-2's pre-tokenizer regex, the one `ByteLevel(use_regex=true)` applies. transformers' GGUF
/// converter uses it for every `gpt2` tokenizer of a `llama` GGUF (SmolLM2's `smollm` included).
const GPT2_PRE: &[&str] = &["gpt2", "smollm", "default"];
/// Llama 3's split regex (its tokenizer.json), for GGUF `tokenizer.ggml.pre = "llama-bpe"`.
const LLAMA3_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (transformers' `Qwen2Converter`), for `tokenizer.ggml.pre = "qwen2"`.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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
        let mut inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| tk_err(&tj, e))?;
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

    /// Reads only the GGUF header of `path` and builds its tokenizer (see `from_gguf`).
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
        let content = gguf_file::Content::read(&mut f).map_err(|e| crate::model::load::gguf::candle_err(path, e))?;
        Self::from_gguf(path, &content.metadata)
    }

    /// Builds the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    /// Only `tokenizer.ggml.model = "gpt2"` (byte-level BPE) is supported, with the pre-tokenizers
    /// `gpt2`/`smollm`/`default` (GPT-2 regex, as transformers' GGUF converter), `llama-bpe` and
    /// `qwen2` (the regexes of those models' own tokenizer.json). Control tokens (token_type 3)
    /// become special added tokens, user-defined ones (4) plain added tokens.
    pub fn from_gguf(path: &Path, md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let get = |key: &str| md.get(key);
        let missing = |key: &str| Error::parse(path, format!("GGUF metadata has no '{key}'"));
        let model = get("tokenizer.ggml.model").ok_or_else(|| missing("tokenizer.ggml.model"))?;
        let model = meta_str(path, "tokenizer.ggml.model", model)?;
        if model != "gpt2" {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "GGUF tokenizer model (tokenizer.ggml.model)".into(),
                value: model.into(),
                supported: "gpt2 (byte-level BPE)".into(),
            });
        }
        let tokens =
            meta_str_array(path, "tokenizer.ggml.tokens", get("tokenizer.ggml.tokens"))?.ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges =
            meta_str_array(path, "tokenizer.ggml.merges", get("tokenizer.ggml.merges"))?.ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::parse(path, format!("tokenizer.ggml.merges: bad entry {m:?}")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<i64> = match get("tokenizer.ggml.token_type") {
            Some(v) => meta_int_array(path, "tokenizer.ggml.token_type", v)?,
            None => vec![],
        };
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(Error::parse(path, format!("tokenizer.ggml.token_type has {} entries for {} tokens", types.len(), tokens.len())));
        }
        let id_of = |key: &str| -> Result<Option<u32>> {
            match get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = meta_int(path, key, v)?;
                    if id < 0 || id as usize >= tokens.len() {
                        // llama.cpp writes -1 (as u32::MAX) for "none".
                        return Ok(None);
                    }
                    Ok(Some(id as u32))
                }
            }
        };
        let bos = id_of("tokenizer.ggml.bos_token_id")?;
        let eos = id_of("tokenizer.ggml.eos_token_id")?;
        let pad = id_of("tokenizer.ggml.padding_token_id")?;
        let unk = id_of("tokenizer.ggml.unknown_token_id")?;
        let mut extra_eos = vec![];
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = id_of(key)? {
                extra_eos.push(id);
            }
        }
        let pre = match get("tokenizer.ggml.pre") {
            Some(v) => meta_str(path, "tokenizer.ggml.pre", v)?.to_string(),
            None => "default".into(),
        };
        let add_bos = match get("tokenizer.ggml.add_bos_token") {
            Some(gguf_file::Value::Bool(b)) => *b,
            Some(v) => meta_int(path, "tokenizer.ggml.add_bos_token", v)? != 0,
            // llama.cpp's default: Llama 3 adds <|begin_of_text|>, the other BPE vocabularies nothing.
            None => pre == "llama-bpe",
        };

        // Vocab: later duplicates win, as in transformers' `{word: i for i, word in enumerate(tokens)}`.
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tk_err(path, format!("building BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let bytelevel = |use_regex: bool| ByteLevel::new(false, false, use_regex);
        let split = |re: &str| -> Result<PreTokenizerWrapper> {
            let s = Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false).map_err(|e| tk_err(path, e))?;
            Ok(PreSequence::new(vec![s.into(), bytelevel(false).into()]).into())
        };
        let pre_tok: PreTokenizerWrapper = match pre.as_str() {
            p if GPT2_PRE.contains(&p) => bytelevel(true).into(),
            "llama-bpe" => split(LLAMA3_REGEX)?,
            "qwen2" => {
                inner.with_normalizer(Some(NFC));
                split(QWEN2_REGEX)?
            }
            other => {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "GGUF pre-tokenizer (tokenizer.ggml.pre)".into(),
                    value: other.into(),
                    supported: "gpt2, smollm, default, llama-bpe, qwen2".into(),
                })
            }
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let special: Vec<AddedToken> =
            types.iter().enumerate().filter(|(_, t)| **t == 3).map(|(i, _)| AddedToken::from(tokens[i].clone(), true)).collect();
        inner.add_special_tokens(&special);
        let user: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 4)
            .map(|(i, _)| AddedToken::from(tokens[i].clone(), false).normalized(false))
            .collect();
        inner.add_tokens(&user);

        let name = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
        let chat_template = match get("tokenizer.chat_template") {
            Some(v) => Some(meta_str(path, "tokenizer.chat_template", v)?.to_string()),
            None => None,
        };
        let arch = get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
        let model_max_length = arch
            .and_then(|a| get(&format!("{a}.context_length")).map(|v| meta_int(path, "context_length", v)))
            .transpose()?
            .map(|v| v as usize);
        let mut tok = Tokenizer {
            inner,
            source: path.to_path_buf(),
            bos_token: name(bos),
            eos_token: name(eos),
            pad_token: name(pad),
            unk_token: name(unk),
            extra_eos,
            add_bos: false,
            chat_template,
            model_max_length,
            config_json: Default::default(),
        };
        tok.set_add_bos(add_bos)?;
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
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            Error::Input(format!(
                "{}: this tokenizer has no chat template (no tokenizer.chat_template in GGUF metadata, \
                 no chat_template in tokenizer_config.json nor chat_template.jinja)",
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
        .map_err(|e| Error::Input(format!("{}: chat template: {e:#}", self.source.display())))
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

// ---- GGUF metadata readers -------------------------------------------------------------------

pub(crate) fn meta_int(path: &Path, key: &str, v: &gguf_file::Value) -> Result<i64> {
    use gguf_file::Value as V;
    Ok(match v {
        V::U8(x) => *x as i64,
        V::I8(x) => *x as i64,
        V::U16(x) => *x as i64,
        V::I16(x) => *x as i64,
        V::U32(x) => *x as i64,
        V::I32(x) => *x as i64,
        V::U64(x) => *x as i64,
        V::I64(x) => *x,
        V::Bool(b) => *b as i64,
        other => return Err(Error::parse(path, format!("GGUF metadata '{key}' is {other:?}, expected an integer"))),
    })
}

pub(crate) fn meta_str<'a>(path: &Path, key: &str, v: &'a gguf_file::Value) -> Result<&'a str> {
    match v {
        gguf_file::Value::String(s) => Ok(s),
        other => Err(Error::parse(path, format!("GGUF metadata '{key}' is {:?}, expected a string", other.value_type()))),
    }
}

fn meta_str_array(path: &Path, key: &str, v: Option<&gguf_file::Value>) -> Result<Option<Vec<String>>> {
    let Some(v) = v else { return Ok(None) };
    let arr = v.to_vec().map_err(|_| Error::parse(path, format!("GGUF metadata '{key}' is not an array")))?;
    arr.iter().map(|x| meta_str(path, key, x).map(String::from)).collect::<Result<Vec<_>>>().map(Some)
}

fn meta_int_array(path: &Path, key: &str, v: &gguf_file::Value) -> Result<Vec<i64>> {
    let arr = v.to_vec().map_err(|_| Error::parse(path, format!("GGUF metadata '{key}' is not an array")))?;
    arr.iter().map(|x| meta_int(path, key, x)).collect()
}

// ---- chat templates ----------------------------------------------------------------------------

mod chat {
    use super::Message;
    use minijinja::value::{Kwargs, Value, ValueKind};
    use minijinja::{Environment, Error as JError, ErrorKind};

    /// HF's `_compile_jinja_template`: trim_blocks, lstrip_blocks, loop controls, Python string
    /// methods (minijinja-contrib pycompat), `raise_exception`, `strftime_now`, and a `tojson` that
    /// prints like Python's `json.dumps(x, ensure_ascii=False)`.
    pub(super) fn render<'a>(
        tpl: &str,
        messages: &[Message],
        add_generation_prompt: bool,
        specials: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<String, JError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, JError> {
            Err(JError::new(ErrorKind::InvalidOperation, format!("raise_exception: {msg}")))
        });
        env.add_function("strftime_now", |fmt: String| -> Result<Value, JError> { Ok(Value::from(strftime_now(&fmt))) });
        env.add_filter("tojson", tojson);
        let t = env.template_from_str(tpl)?;
        let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        for (k, v) in specials {
            if let Some(v) = v {
                ctx.insert(k, Value::from(v));
            }
        }
        t.render(ctx)
    }

    /// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
    fn tojson(v: Value, kwargs: Kwargs) -> Result<Value, JError> {
        let indent: Option<usize> = kwargs.get("indent")?;
        let _: Option<bool> = kwargs.get("ensure_ascii")?;
        let _: Option<bool> = kwargs.get("sort_keys")?;
        kwargs.assert_all_used()?;
        let mut out = String::new();
        write_json(&v, indent, 0, &mut out)?;
        Ok(Value::from_safe_string(out))
    }

    fn write_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), JError> {
        let nl = |out: &mut String, d: usize| {
            if let Some(n) = indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * d));
            }
        };
        let item_sep = if indent.is_some() { "," } else { ", " };
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if let Some(i) = v.as_i64() {
                    out.push_str(&i.to_string());
                } else {
                    let f = f64::try_from(v.clone())?;
                    out.push_str(&py_float(f));
                }
            }
            ValueKind::String => {
                let s = v.as_str().unwrap_or_default();
                out.push_str(&serde_json::to_string(s).map_err(|e| JError::new(ErrorKind::BadSerialization, e.to_string()))?);
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    nl(out, depth + 1);
                    write_json(x, indent, depth + 1, out)?;
                }
                nl(out, depth);
                out.push(']');
            }
            ValueKind::Map => {
                let keys: Vec<Value> = v.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    nl(out, depth + 1);
                    write_json(&Value::from(k.to_string()), None, 0, out)?;
                    out.push_str(": ");
                    write_json(&v.get_item(k)?, indent, depth + 1, out)?;
                }
                nl(out, depth);
                out.push('}');
            }
            _ => {
                let s = v.to_string();
                out.push_str(&serde_json::to_string(&s).map_err(|e| JError::new(ErrorKind::BadSerialization, e.to_string()))?);
            }
        }
        Ok(())
    }

    /// Python's `repr(float)` for the common cases: `1.0`, `0.5`, `1e-05`, `inf` as `Infinity`.
    fn py_float(f: f64) -> String {
        if f.is_nan() {
            return "NaN".into();
        }
        if f.is_infinite() {
            return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
        }
        let a = f.abs();
        if a != 0.0 && !(1e-4..1e16).contains(&a) {
            // Python: 1e-05, 1.5e+20
            let s = format!("{f:e}");
            let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
            let e: i32 = e.parse().unwrap_or(0);
            return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
        }
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    }

    /// HF's `strftime_now(fmt)`: the current UTC date and time. Supports %Y %y %m %d %B %b %H %M %S %%.
    fn strftime_now(fmt: &str) -> String {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        const MONTHS: [&str; 12] =
            ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
        let month = MONTHS[(m - 1) as usize];
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('Y') => out.push_str(&y.to_string()),
                Some('y') => out.push_str(&format!("{:02}", y % 100)),
                Some('m') => out.push_str(&format!("{m:02}")),
                Some('d') => out.push_str(&format!("{d:02}")),
                Some('B') => out.push_str(month),
                Some('b') => out.push_str(&month[..3]),
                Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
                Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
                Some('S') => out.push_str(&format!("{:02}", rem % 60)),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tojson_prints_like_python_json_dumps() {
            let v = Value::from_serialize(serde_json::json!({"b": [1, 2.5, "é\n\"x\""], "a": null, "c": {}}));
            let mut s = String::new();
            write_json(&v, None, 0, &mut s).unwrap();
            // minijinja maps from serde_json are key-sorted; Python keeps insertion order.
            assert_eq!(s, r#"{"a": null, "b": [1, 2.5, "é\n\"x\""], "c": {}}"#);
            let mut s = String::new();
            write_json(&Value::from_serialize(serde_json::json!({"k": [1, true]})), Some(2), 0, &mut s).unwrap();
            assert_eq!(s, "{\n  \"k\": [\n    1,\n    true\n  ]\n}");
            assert_eq!(py_float(1e-5), "1e-05");
            assert_eq!(py_float(3.0), "3.0");
        }

        #[test]
        fn renders_python_style_templates() {
            let tpl =
                "{% for m in messages %}{{ m['role'].upper() }}:{{ m.content.strip() }}{% if not loop.last %}|{% endif %}{% endfor %}\n";
            let msgs = [Message::user("  hi "), Message::assistant("yo")];
            assert_eq!(render(tpl, &msgs, false, []).unwrap(), "USER:hi|ASSISTANT:yo");
            let err = render("{{ raise_exception('no system role') }}", &msgs, false, []).unwrap_err();
            assert!(format!("{err:#}").contains("no system role"), "{err:#}");
            let date = render("{{ strftime_now('%d %b %Y') }}", &msgs, false, []).unwrap();
            assert_eq!(date.len(), 11, "{date}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value as V;

    /// A tiny byte-level BPE vocabulary in GGUF form: the 256 byte symbols, a few merges, 2 controls.
    fn tiny_gguf_md() -> HashMap<String, V> {
        let bytes = bytes_to_unicode();
        let mut tokens = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
        tokens.extend(bytes.iter().map(|c| c.to_string()));
        tokens.extend(["Ġh", "Ġhi", "hi"].map(String::from));
        let mut types = vec![V::I32(3), V::I32(3)];
        types.extend(std::iter::repeat_with(|| V::I32(1)).take(tokens.len() - 2));
        let mut md = HashMap::new();
        md.insert("general.architecture".into(), V::String("llama".into()));
        md.insert("llama.context_length".into(), V::U32(64));
        md.insert("tokenizer.ggml.model".into(), V::String("gpt2".into()));
        md.insert("tokenizer.ggml.pre".into(), V::String("smollm".into()));
        md.insert("tokenizer.ggml.tokens".into(), V::Array(tokens.into_iter().map(V::String).collect()));
        md.insert("tokenizer.ggml.token_type".into(), V::Array(types));
        md.insert("tokenizer.ggml.merges".into(), V::Array(["Ġ h", "Ġh i", "h i"].iter().map(|s| V::String(s.to_string())).collect()));
        md.insert("tokenizer.ggml.bos_token_id".into(), V::U32(0));
        md.insert("tokenizer.ggml.eos_token_id".into(), V::U32(1));
        md.insert("tokenizer.ggml.add_bos_token".into(), V::Bool(false));
        md.insert(
            "tokenizer.chat_template".into(),
            V::String("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into()),
        );
        md
    }

    /// GPT-2's byte -> unicode table (the byte-level alphabet).
    fn bytes_to_unicode() -> Vec<char> {
        let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
        pairs.sort();
        pairs.into_iter().map(|(_, c)| char::from_u32(c).unwrap()).collect()
    }

    #[test]
    fn gguf_bpe_has_no_prefix_space_and_round_trips() {
        let tok = Tokenizer::from_gguf(Path::new("tiny.gguf"), &tiny_gguf_md()).unwrap();
        let hi = tok.token_to_id("hi").unwrap();
        let shi = tok.token_to_id("Ġhi").unwrap();
        // No leading space is added (candle's GGUF builder does add one for SmolLM2).
        assert_eq!(tok.encode("hi hi", false).unwrap(), vec![hi, shi]);
        assert_eq!(tok.encode("hi", true).unwrap(), vec![hi], "add_bos_token = false");
        let s = "<|im_start|>hi  \t\n é 漢 🙂";
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(ids[0], 0, "control tokens are special added tokens");
        assert_eq!(tok.decode(&ids, false).unwrap(), s);
        assert_eq!(tok.decode(&ids, true).unwrap(), &s["<|im_start|>".len()..]);
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_ids(), vec![1]);
        assert_eq!(tok.pad_id(), 1, "no pad token: falls back to EOS");
        assert_eq!(tok.model_max_length(), Some(64));
    }

    #[test]
    fn add_bos_prepends_bos() {
        let mut md = tiny_gguf_md();
        md.insert("tokenizer.ggml.add_bos_token".into(), V::Bool(true));
        let tok = Tokenizer::from_gguf(Path::new("tiny.gguf"), &md).unwrap();
        assert!(tok.add_bos());
        assert_eq!(tok.encode("hi", true).unwrap(), vec![0, tok.token_to_id("hi").unwrap()]);
        assert_eq!(tok.encode("hi", false).unwrap(), vec![tok.token_to_id("hi").unwrap()]);
    }

    #[test]
    fn eos_ids_include_the_templates_end_of_turn() {
        let mut md = tiny_gguf_md();
        // EOS = <|im_start|> (a document marker here); the template ends turns with <|im_end|>.
        md.insert("tokenizer.ggml.eos_token_id".into(), V::U32(0));
        let tok = Tokenizer::from_gguf(Path::new("tiny.gguf"), &md).unwrap();
        assert_eq!(tok.eos_ids(), vec![0, 1]);
        let text = tok.apply_chat_template(&[Message::user("hi")], false).unwrap();
        assert_eq!(text, "<|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn unsupported_tokenizer_model_names_file_and_value() {
        let mut md = tiny_gguf_md();
        md.insert("tokenizer.ggml.model".into(), V::String("llama".into()));
        let e = Tokenizer::from_gguf(Path::new("x/m.gguf"), &md).unwrap_err().to_string();
        assert!(e.contains("x/m.gguf") && e.contains("'llama'"), "{e}");
        md.insert("tokenizer.ggml.model".into(), V::String("gpt2".into()));
        md.insert("tokenizer.ggml.pre".into(), V::String("deepseek-coder".into()));
        let e = Tokenizer::from_gguf(Path::new("x/m.gguf"), &md).unwrap_err().to_string();
        assert!(e.contains("deepseek-coder"), "{e}");
    }

    #[test]
    fn no_chat_template_is_a_clear_error() {
        let mut md = tiny_gguf_md();
        md.remove("tokenizer.chat_template");
        let tok = Tokenizer::from_gguf(Path::new("x/m.gguf"), &md).unwrap();
        let e = tok.apply_chat_template(&[Message::user("hi")], true).unwrap_err().to_string();
        assert!(e.contains("x/m.gguf") && e.contains("no chat template"), "{e}");
    }

    #[test]
    fn missing_tokenizer_json_is_not_found() {
        let e = Tokenizer::from_hf_dir(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/dir/tokenizer.json"), "{e}");
    }

    #[test]
    fn save_hf_then_from_hf_dir_keeps_everything() {
        let tok = Tokenizer::from_gguf(Path::new("tiny.gguf"), &tiny_gguf_md()).unwrap();
        let dir = std::env::temp_dir().join(format!("r2m-tok-unit-{}", std::process::id()));
        tok.save_hf(&dir).unwrap();
        let back = Tokenizer::from_hf_dir(&dir).unwrap();
        let s = "<|im_start|>hi hi\n🙂";
        assert_eq!(back.encode(s, true).unwrap(), tok.encode(s, true).unwrap());
        assert_eq!(back.eos_ids(), tok.eos_ids());
        assert_eq!(back.add_bos(), tok.add_bos());
        assert_eq!(back.chat_template(), tok.chat_template());
        assert_eq!(back.model_max_length(), Some(64));
        std::fs::remove_dir_all(&dir).ok();
    }
}
