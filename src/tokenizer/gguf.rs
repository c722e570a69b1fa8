//! A tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`), rebuilt as the
//! byte-level BPE that transformers' GGUF converter builds, or (Gemma) as SentencePiece BPE.
use super::{tk_err, Tokenizer};
use crate::error::{Error, Result};
use crate::gguf_meta::{meta_int, meta_str};
use candle_core::quantized::gguf_file;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GPT-2's pre-tokenizer regex, the one `ByteLevel(use_regex=true)` applies. transformers' GGUF
/// converter uses it for every `gpt2` tokenizer of a `llama` GGUF (SmolLM2's `smollm` included).
const GPT2_PRE: &[&str] = &["gpt2", "smollm", "default"];
/// Llama 3's split regex (its tokenizer.json), for GGUF `tokenizer.ggml.pre = "llama-bpe"`.
const LLAMA3_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (transformers' `Qwen2Converter`), for `tokenizer.ggml.pre = "qwen2"`.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Builds the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    /// `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizers
    /// `gpt2`/`smollm`/`default` (GPT-2 regex, as transformers' GGUF converter), `llama-bpe` and
    /// `qwen2` (the regexes of those models' own tokenizer.json); and Gemma's SentencePiece
    /// (`llama` in a `gemma2`/`gemma3` file). Control tokens (token_type 3) become special added
    /// tokens, user-defined ones (4) plain added tokens.
    pub fn from_gguf(path: &Path, md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let get = |key: &str| md.get(key);
        let missing = |key: &str| Error::parse(path, format!("GGUF metadata has no '{key}'"));
        let model = get("tokenizer.ggml.model").ok_or_else(|| missing("tokenizer.ggml.model"))?;
        let model = meta_str(path, "tokenizer.ggml.model", model)?;
        let arch = get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let tokens =
            meta_str_array(path, "tokenizer.ggml.tokens", get("tokenizer.ggml.tokens"))?.ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
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
        let (mut inner, spm) = match model {
            "gpt2" => (byte_level_bpe(path, md, &tokens)?, false),
            "llama" if arch.starts_with("gemma") => (gemma_spm_bpe(path, md, &tokens, unk)?, true),
            _ => {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: format!("GGUF tokenizer model (tokenizer.ggml.model) of architecture '{arch}'"),
                    value: model.into(),
                    supported: "gpt2 (byte-level BPE), llama (SentencePiece) for gemma2/gemma3".into(),
                })
            }
        };
        let add_bos = match get("tokenizer.ggml.add_bos_token") {
            Some(gguf_file::Value::Bool(b)) => *b,
            Some(v) => meta_int(path, "tokenizer.ggml.add_bos_token", v)? != 0,
            // llama.cpp's default: SentencePiece vocabularies and Llama 3 add BOS, other BPE ones not.
            None => spm || matches!(get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str), Some("llama-bpe")),
        };

        let special: Vec<AddedToken> =
            types.iter().enumerate().filter(|(_, t)| **t == 3).map(|(i, _)| AddedToken::from(tokens[i].clone(), true)).collect();
        inner.add_special_tokens(&special);
        // User-defined pieces (Gemma's runs of newlines, tabs and spaces among them) match the raw
        // text before anything else, as in SentencePiece and llama.cpp.
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
}

/// The byte-level BPE of a `gpt2` GGUF tokenizer, as transformers' GGUF converter builds it.
fn byte_level_bpe(path: &Path, md: &HashMap<String, gguf_file::Value>, tokens: &[String]) -> Result<tokenizers::Tokenizer> {
    let get = |key: &str| md.get(key);
    let missing = |key: &str| Error::parse(path, format!("GGUF metadata has no '{key}'"));
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
    let pre = match get("tokenizer.ggml.pre") {
        Some(v) => meta_str(path, "tokenizer.ggml.pre", v)?.to_string(),
        None => "default".into(),
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
    Ok(inner)
}

/// A Gemma GGUF's SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: pieces with scores),
/// tokenized as SentencePiece BPE does and llama.cpp reads it: user-defined pieces match the raw
/// text first (added tokens, see the caller), spaces become "▁", then adjacent pieces merge while
/// their concatenation is a piece, the highest-scoring first, with byte fallback (`<0xNN>`) for
/// what no piece covers. Built as an HF BPE whose merges are every split of every piece into two
/// pieces, ranked by the piece's score.
///
/// transformers' GGUF converter builds a Unigram over the same scores instead; as Gemma 3's scores
/// are BPE merge ranks, that splits common words into letters ("▁c ap it al") that the model
/// rarely saw, so r2m does not follow it here.
fn gemma_spm_bpe(
    path: &Path,
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
    unk: Option<u32>,
) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence, strip::Strip};
    use tokenizers::normalizers::replace::Replace;
    let key = "tokenizer.ggml.scores";
    let v = md.get(key).ok_or_else(|| Error::parse(path, format!("GGUF metadata has no '{key}'")))?;
    let arr = v.to_vec().map_err(|_| Error::parse(path, format!("GGUF metadata '{key}' is not an array")))?;
    let scores: Vec<f32> = arr
        .iter()
        .map(|x| match x {
            gguf_file::Value::F32(f) => Ok(*f),
            gguf_file::Value::F64(f) => Ok(*f as f32),
            _ => Err(Error::parse(path, format!("GGUF metadata '{key}' holds a non-float"))),
        })
        .collect::<Result<_>>()?;
    if scores.len() != tokens.len() {
        return Err(Error::parse(path, format!("{key} has {} entries for {} tokens", scores.len(), tokens.len())));
    }
    let pieces = tokens;
    // Later duplicates win, as in a dict built from the list.
    let vocab: tokenizers::models::bpe::Vocab = pieces.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut merges: Vec<(f32, u32, String, String)> = vec![];
    for (i, piece) in pieces.iter().enumerate() {
        if vocab.get(piece) != Some(&(i as u32)) {
            continue;
        }
        let cuts: Vec<usize> = piece.char_indices().map(|(b, _)| b).skip(1).collect();
        for b in cuts {
            let (l, r) = piece.split_at(b);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((scores[i], li.min(ri), l.to_string(), r.to_string()));
            }
        }
    }
    // Highest score first; among the splits of one piece, the one with the more frequent halves.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(pieces[u as usize].clone());
    }
    let model = builder.build().map_err(|e| tk_err(path, format!("building BPE: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(model);
    inner.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(|e| tk_err(path, e))?));
    let add_prefix_space = match md.get("tokenizer.ggml.add_space_prefix") {
        Some(gguf_file::Value::Bool(b)) => *b,
        Some(v) => meta_int(path, "tokenizer.ggml.add_space_prefix", v)? != 0,
        None => true,
    };
    if add_prefix_space {
        inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::metaspace::Metaspace::new(
            '\u{2581}',
            tokenizers::pre_tokenizers::metaspace::PrependScheme::First,
            false,
        )));
    }
    let mut decoders: Vec<tokenizers::DecoderWrapper> =
        vec![Replace::new("\u{2581}", " ").map_err(|e| tk_err(path, e))?.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(Sequence::new(decoders)));
    Ok(inner)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Message;
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
