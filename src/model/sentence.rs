//! sentence-transformers on the BERT encoder: pooling (`models/Pooling.py`), optional
//! normalisation, and loading a sentence-transformers folder (all-MiniLM-L6-v2) as an embedder.
use crate::error::{Error, Result};
use crate::model::bert::{Bert, BertConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

// ------------------------------------------------------------------------------------------------
// Pooling (sentence-transformers `models/Pooling.py`)

/// Masked mean over tokens: (B, T, D), (B, T) -> (B, D). Padding counts 0; an all-padding row
/// gives 0 (the count is clamped to 1e-9 as in sentence-transformers).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(hidden.kind()).unsqueeze(-1); // (B, T, 1)
    let sum = (hidden * &m).sum_dim_intlist(1, false, hidden.kind()); // (B, D)
    sum / m.sum_dim_intlist(1, false, hidden.kind()).clamp_min(1e-9)
}

/// Masked max over tokens: padding is set to -1e9 first, as sentence-transformers does.
pub fn max_pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let pad = mask.eq(0).unsqueeze(-1); // (B, T, 1)
    hidden.masked_fill(&pad, -1e9).amax(1, false) // (B, D)
}

/// The first token ([CLS]): (B, T, D) -> (B, D).
pub fn cls_pool(hidden: &Tensor) -> Tensor {
    hidden.select(1, 0)
}

/// Rows scaled to unit L2 norm (torch `F.normalize(x, p=2, dim=1)`, eps 1e-12): (N, D) -> (N, D).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, -1, true).clamp_min(1e-12)
}

/// The pooling mode of `1_Pooling/config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

impl Pooling {
    /// Reads a sentence-transformers pooling config: exactly one of `pooling_mode_mean_tokens`,
    /// `pooling_mode_cls_token`, `pooling_mode_max_tokens` must be set; other modes (weighted mean,
    /// last token, sqrt-len) and combinations are refused naming the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
        let obj = v.as_object().ok_or_else(|| Error::parse(path, "expected a JSON object"))?;
        let on: Vec<&str> =
            obj.iter().filter(|(k, v)| k.starts_with("pooling_mode") && v.as_bool() == Some(true)).map(|(k, _)| k.as_str()).collect();
        let unsupported = |value: String| Error::Unsupported {
            path: path.into(),
            what: "pooling mode".into(),
            value,
            supported: "exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_max_tokens".into(),
        };
        match on.as_slice() {
            ["pooling_mode_mean_tokens"] => Ok(Pooling::Mean),
            ["pooling_mode_cls_token"] => Ok(Pooling::Cls),
            ["pooling_mode_max_tokens"] => Ok(Pooling::Max),
            [] => Err(unsupported("none set".into())),
            _ => Err(unsupported(on.join(" + "))),
        }
    }

    /// (B, T, D), (B, T) -> (B, D).
    pub fn apply(self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        match self {
            Pooling::Mean => mean_pool(hidden, mask),
            Pooling::Cls => cls_pool(hidden),
            Pooling::Max => max_pool(hidden, mask),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// sentence-transformers folder

#[derive(Debug, Deserialize)]
struct StModule {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// A sentence-transformers model (Transformer -> Pooling -> optional Normalize), as
/// `SentenceTransformer(dir).encode(texts)`.
pub struct SentenceEncoder {
    pub bert: Bert,
    /// Truncates to `max_seq_length` and pads to the longest in the batch.
    pub tokenizer: tokenizers::Tokenizer,
    pub pooling: Pooling,
    /// Whether modules.json has a `Normalize` module (unit-norm embeddings).
    pub normalize: bool,
    /// `sentence_bert_config.json`'s max_seq_length (tokens, specials included).
    pub max_seq_length: usize,
    /// `sentence_bert_config.json`'s do_lower_case: texts are lowercased before tokenizing.
    pub do_lower_case: bool,
    /// Texts per forward in `encode` (sentence-transformers' default 32).
    pub batch_size: usize,
}

impl SentenceEncoder {
    /// Loads a sentence-transformers folder: modules.json, the Transformer module's folder
    /// (config.json, model.safetensors, tokenizer.json, sentence_bert_config.json) and the pooling
    /// config. Every missing or unsupported piece is an error naming its file.
    pub fn from_dir(dir: &Path, device: Device) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        let text = std::fs::read_to_string(&modules_path).map_err(|e| Error::io(&modules_path, e))?;
        let modules: Vec<StModule> = serde_json::from_str(&text).map_err(|e| Error::parse(&modules_path, e))?;
        let (mut transformer, mut pooling, mut normalize) = (None::<PathBuf>, None::<PathBuf>, false);
        for m in &modules {
            match m.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" if transformer.is_none() => transformer = Some(dir.join(&m.path)),
                "Pooling" if pooling.is_none() => pooling = Some(dir.join(&m.path).join("config.json")),
                "Normalize" => normalize = true,
                _ => {
                    return Err(Error::Unsupported {
                        path: modules_path,
                        what: "module".into(),
                        value: m.kind.clone(),
                        supported: "one Transformer, one Pooling, Normalize".into(),
                    })
                }
            }
        }
        let missing = |what: &str| Error::parse(&modules_path, format!("no {what} module"));
        let tdir = transformer.ok_or_else(|| missing("Transformer"))?;
        let pooling_path = pooling.ok_or_else(|| missing("Pooling"))?;

        // The small files first, so that a broken folder fails before 90 MB of weights are read.
        let cfg = BertConfig::from_file(&tdir.join("config.json"))?;
        let pooling = Pooling::from_file(&pooling_path)?;
        let sb_path = tdir.join("sentence_bert_config.json");
        let sb = if sb_path.exists() {
            let text = std::fs::read_to_string(&sb_path).map_err(|e| Error::io(&sb_path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::parse(&sb_path, e))?
        } else {
            SentenceBertConfig { max_seq_length: None, do_lower_case: false }
        };
        let max_pos = usize::try_from(cfg.max_position_embeddings).unwrap_or(usize::MAX);
        let max_seq_length = sb.max_seq_length.unwrap_or(max_pos);
        if max_seq_length < 2 || max_seq_length > max_pos {
            return Err(Error::parse(
                &sb_path,
                format!("max_seq_length = {max_seq_length} outside 2..={max_pos} (max_position_embeddings)"),
            ));
        }
        let tokenizer = load_tokenizer(&tdir.join("tokenizer.json"), max_seq_length)?;
        let bert = Bert::load(&tdir, device)?;
        // After the weights, so that a wrong hidden_size is reported as the tensor it breaks.
        check_pooling_dim(&pooling_path, bert.cfg.hidden_size)?;
        Ok(SentenceEncoder { bert, tokenizer, pooling, normalize, max_seq_length, do_lower_case: sb.do_lower_case, batch_size: 32 })
    }

    pub fn embed_dim(&self) -> i64 {
        self.bert.cfg.hidden_size
    }

    pub fn device(&self) -> Device {
        self.bert.device()
    }

    /// Embeddings (N, D), f32, on the model's device, in the order of `texts`. As
    /// sentence-transformers: each text is stripped (and lowercased if `do_lower_case`), texts are
    /// batched longest first, padded and truncated to `max_seq_length`. No gradient.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        if texts.is_empty() {
            return Ok(Tensor::zeros([0, self.embed_dim()], (Kind::Float, self.device())));
        }
        // Longest first, by characters, as `SentenceTransformer.encode`, so batches pad little.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].chars().count()));
        let mut out = Vec::with_capacity(order.len().div_ceil(self.batch_size.max(1)));
        for chunk in order.chunks(self.batch_size.max(1)) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let (ids, mask) = self.tokenize(&batch)?;
            out.push(self.embed(&ids, &mask)?);
        }
        let sorted = Tensor::f_cat(&out, 0)?; // (N, D), row j is texts[order[j]]
        let mut inv = vec![0i64; order.len()];
        for (j, &i) in order.iter().enumerate() {
            inv[i] = j as i64;
        }
        Ok(sorted.index_select(0, &Tensor::from_slice(&inv).to_device(self.device())))
    }

    /// `input_ids` and `attention_mask`, both (B, T) i64 on the model's device, T = the longest
    /// text of the batch (at most `max_seq_length`). Texts are stripped and lowercased as `encode` does.
    pub fn tokenize(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        if texts.is_empty() {
            return Err(Error::Input("SentenceEncoder::tokenize: no texts".into()));
        }
        let prepared: Vec<String> =
            texts.iter().map(|t| if self.do_lower_case { t.trim().to_lowercase() } else { t.trim().to_string() }).collect();
        let enc =
            self.tokenizer.encode_batch(prepared, true).map_err(|e| Error::Input(format!("tokenizing {} texts: {e}", texts.len())))?;
        let (b, t) = (enc.len(), enc[0].len()); // non-empty: checked above; padded to one length
        let mut ids = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for e in &enc {
            ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
        }
        let shape = [b as i64, t as i64];
        let dev = self.device();
        Ok((Tensor::f_from_slice(&ids)?.f_view(shape)?.to_device(dev), Tensor::f_from_slice(&mask)?.f_view(shape)?.to_device(dev)))
    }

    /// Last hidden state (B, T, D) of the BERT body.
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.bert.forward(input_ids, attention_mask, None)
    }

    /// The configured pooling, without normalisation: (B, T, D), (B, T) -> (B, D).
    pub fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        self.pooling.apply(hidden, &mask.to_device(hidden.device()))
    }

    /// forward + pool (+ normalize): (B, T) ids and mask -> (B, D). Keeps the graph (for training).
    pub fn embed(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask)?; // (B, T, D)
        let e = self.pool(&h, attention_mask); // (B, D)
        Ok(if self.normalize { l2_normalize(&e) } else { e })
    }
}

fn check_pooling_dim(path: &Path, hidden: i64) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
    match v.get("word_embedding_dimension").and_then(|d| d.as_i64()) {
        Some(d) if d != hidden => {
            Err(Error::parse(path, format!("word_embedding_dimension = {d}, but the model's hidden_size is {hidden}")))
        }
        _ => Ok(()),
    }
}

/// tokenizer.json with truncation to `max_len` (longest first) and padding to the batch's longest,
/// replacing the file's own settings (all-MiniLM-L6-v2's says 128 fixed; sentence-transformers
/// overrides it with max_seq_length = 256).
fn load_tokenizer(path: &Path, max_len: usize) -> Result<tokenizers::Tokenizer> {
    if !path.exists() {
        return Err(Error::NotFound { path: path.into(), hint: String::new() });
    }
    let mut tok = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::parse(path, e))?;
    let mut padding = tok.get_padding().cloned().unwrap_or_default();
    if tok.get_padding().is_none() {
        if let Some(id) = tok.token_to_id("[PAD]") {
            padding.pad_id = id;
            padding.pad_token = "[PAD]".into();
        }
    }
    padding.strategy = tokenizers::PaddingStrategy::BatchLongest;
    padding.direction = tokenizers::PaddingDirection::Right;
    padding.pad_to_multiple_of = None;
    tok.with_padding(Some(padding));
    let trunc = tokenizers::TruncationParams {
        max_length: max_len,
        strategy: tokenizers::TruncationStrategy::LongestFirst,
        stride: 0,
        direction: tokenizers::TruncationDirection::Right,
    };
    tok.with_truncation(Some(trunc)).map_err(|e| Error::parse(path, format!("truncation to {max_len}: {e}")))?;
    Ok(tok)
}
