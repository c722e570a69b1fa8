//! `DecoderConfig`: an HF `config.json` of a decoder r2m runs, read through its architecture
//! (`model::arch`): the sizes every decoder has, the layout that architecture resolves to, and the
//! JSON as read, which export writes back.
use crate::error::{Error, Result};
use crate::model::arch::{self, Arch, Layout};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// `eos_token_id` is an int in most configs and a list in Llama 3's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub arch: Arch,
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<i64>,
    /// Number of labels of a `*ForSequenceClassification` head (reward models: 1).
    pub num_labels: Option<i64>,
    /// Norms, projections, rotary embeddings, windows: what the architecture resolved.
    pub layout: Layout,
    /// The config.json object as read.
    pub raw: Map<String, Value>,
}

impl DecoderConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
        Self::from_json(v, path)
    }

    /// Reads a config object; `path` names it in errors.
    pub fn from_json(v: Value, path: &Path) -> Result<Self> {
        let Value::Object(raw) = v else { return Err(Error::parse(path, "expected a JSON object")) };
        let (arch, layout) = arch::resolve(&raw, path)?;
        let int = |k: &str| raw.get(k).and_then(Value::as_i64);
        let req = |k: &str| int(k).ok_or_else(|| Error::parse(path, format!("missing field {k}")));
        let ids = |k: &str| raw.get(k).and_then(|v| serde_json::from_value::<TokenIds>(v.clone()).ok());
        let heads = req("num_attention_heads")?;
        let hidden = req("hidden_size")?;
        let num_labels = int("num_labels").or_else(|| raw.get("id2label").and_then(Value::as_object).map(|o| o.len() as i64));
        let cfg = DecoderConfig {
            arch,
            architectures: raw
                .get("architectures")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            vocab_size: req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: int("num_key_value_heads").unwrap_or(heads),
            head_dim: int("head_dim").or(layout.head_dim).unwrap_or(if heads > 0 { hidden / heads } else { 0 }),
            max_position_embeddings: int("max_position_embeddings").unwrap_or(2048),
            tie_word_embeddings: raw.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(layout.tie_default),
            bos_token_id: ids("bos_token_id"),
            eos_token_id: ids("eos_token_id"),
            pad_token_id: int("pad_token_id"),
            num_labels,
            layout,
            raw,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::parse(path, msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v <= 0 {
                return bad(format!("{name} = {v} must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.raw.contains_key("head_dim") && self.layout.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size = {} is not divisible by num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        let rot = self.layout.rope.rotary_dim;
        if rot <= 0 || rot > self.head_dim || rot % 2 != 0 {
            return bad(format!("the rotary dimension {rot} must be even and in (0, head_dim = {}]", self.head_dim));
        }
        if let Some(w) = self.layout.sliding_window.filter(|w| *w < 1) {
            return bad(format!("sliding_window = {w} must be >= 1"));
        }
        Ok(())
    }

    pub fn n_kv_heads(&self) -> i64 {
        self.num_key_value_heads
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim
    }
    pub fn eos_ids(&self) -> Vec<i64> {
        self.eos_token_id.as_ref().map(|t| t.to_vec()).unwrap_or_default()
    }
    pub fn norm_eps(&self) -> f64 {
        self.layout.norm_eps
    }
    /// The attention span of layer `i`.
    pub fn layer_type(&self, i: usize) -> arch::LayerType {
        self.layout.layer_types.get(i).copied().unwrap_or(arch::LayerType::Full)
    }

    /// A checkpoint's tensors under the names r2m uses (`Arch::internal_name`).
    pub fn internal_names(&self, tensors: Vec<(String, tch::Tensor)>) -> Vec<(String, tch::Tensor)> {
        tensors.into_iter().map(|(n, t)| (self.arch.internal_name(&n), t)).collect()
    }

    /// The config.json object to write: as read, with the sizes, ids and flags this config holds.
    pub fn to_hf_json(&self) -> Value {
        let mut o = self.raw.clone();
        let mut set = |k: &str, v: Value| {
            o.insert(k.to_string(), v);
        };
        set("model_type", self.arch.model_type().into());
        if !self.architectures.is_empty() {
            set("architectures", self.architectures.clone().into());
        }
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            set(k, v.into());
        }
        if self.arch != Arch::GptNeox {
            set("num_key_value_heads", self.num_key_value_heads.into());
            if self.raw.contains_key("head_dim")
                || self.head_dim * self.num_attention_heads != self.hidden_size
                || self.layout.head_dim.is_some()
            {
                set("head_dim", self.head_dim.into());
            }
        }
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        let ids = |t: &Option<TokenIds>| serde_json::to_value(t).unwrap_or(Value::Null);
        if self.bos_token_id.is_some() {
            set("bos_token_id", ids(&self.bos_token_id));
        }
        if self.eos_token_id.is_some() {
            set("eos_token_id", ids(&self.eos_token_id));
        }
        if let Some(p) = self.pad_token_id {
            set("pad_token_id", p.into());
        }
        if let Some(n) = self.num_labels {
            set("num_labels", n.into());
        }
        Value::Object(o)
    }
}

impl Serialize for DecoderConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_hf_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for DecoderConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        DecoderConfig::from_json(v, Path::new("config.json")).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch::{BlockKind, LayerType, NormKind, QkNorm};

    fn cfg(extra: &str) -> Result<DecoderConfig> {
        let v: Value = serde_json::from_str(&format!(
            r#"{{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":4,"num_attention_heads":2{extra}}}"#
        ))
        .unwrap();
        DecoderConfig::from_json(v, Path::new("m/config.json"))
    }

    #[test]
    fn parses_llama3_and_qwen2_configs() {
        let l3: DecoderConfig = serde_json::from_str(
            r#"{"vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
            "num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"eos_token_id":[128001,128008,128009]}"#,
        )
        .unwrap();
        assert_eq!(l3.n_kv_heads(), 8);
        assert_eq!(l3.head_dim(), 128);
        assert_eq!(l3.eos_ids(), vec![128001, 128008, 128009]);
        assert!(!l3.layout.qkv_bias);
        let q = cfg(r#","model_type":"qwen2","eos_token_id":3"#).unwrap();
        assert!(q.layout.qkv_bias && !q.layout.o_bias);
        assert_eq!(q.layout.rope.theta, 10_000.0);
    }

    #[test]
    fn refuses_bad_configs_naming_the_field() {
        let e = cfg(r#","num_key_value_heads":3"#).unwrap_err().to_string();
        assert!(e.contains("m/config.json") && e.contains("num_key_value_heads"), "{e}");
        let e = cfg(r#","model_type":"gpt2""#).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("gpt2") && e.contains("gemma3_text"), "{e}");
    }

    #[test]
    fn fields_that_change_the_computation_are_refused_not_ignored() {
        let check = |extra: &str| cfg(extra).map_err(|e| e.to_string());
        for (extra, field) in [
            (r#","mlp_bias":true"#, "mlp_bias = true"),
            (r#","attention_dropout":0.1"#, "attention_dropout = 0.1"),
            (r#","quantization_config":{"bits":4}"#, "quantization_config"),
            (r#","some_new_switch":true"#, "some_new_switch = true"),
            (r#","rope_scaling":{"rope_type":"yarn","factor":4.0}"#, "yarn"),
            (r#","model_type":"gemma3_text","use_bidirectional_attention":true"#, "use_bidirectional_attention"),
            (r#","model_type":"phi3","resid_pdrop":0.1"#, "resid_pdrop"),
            (r#","model_type":"mistral","layer_types":["full_attention"]"#, "layer_types"),
            (
                r#","model_type":"qwen2","layer_types":["full_attention","full_attention","full_attention","sliding_attention"]"#,
                "no window",
            ),
        ] {
            let e = check(extra).unwrap_err();
            assert!(e.contains("m/config.json") && e.contains(field), "{extra}: {e}");
        }
        // Metadata and neutral values pass.
        assert!(check(r#","mlp_bias":false,"attention_dropout":0.0,"use_cache":true,"torch_dtype":"bfloat16""#).is_ok());
    }

    #[test]
    fn sliding_windows_as_transformers_assigns_them() {
        let m = cfg(r#","model_type":"mistral","sliding_window":4"#).unwrap();
        assert_eq!(m.layout.sliding_window, Some(4));
        assert!((0..4).all(|i| m.layer_type(i) == LayerType::Sliding));
        assert!(cfg(r#","model_type":"mistral","sliding_window":null"#).unwrap().layout.layer_types.is_empty());
        // Qwen2: only with use_sliding_window, from max_window_layers on.
        let q = cfg(r#","model_type":"qwen2","use_sliding_window":true,"sliding_window":3,"max_window_layers":2"#).unwrap();
        assert_eq!(
            (0..4).map(|i| q.layer_type(i)).collect::<Vec<_>>(),
            [LayerType::Full, LayerType::Full, LayerType::Sliding, LayerType::Sliding]
        );
        let q = cfg(r#","model_type":"qwen2","use_sliding_window":false,"sliding_window":3"#).unwrap();
        assert_eq!(q.layout.sliding_window, None);
        // Gemma 2 alternates from layer 0; Gemma 3 makes every 6th layer global (here every 2nd).
        let g2 = cfg(r#","model_type":"gemma2""#).unwrap();
        assert_eq!(g2.layer_type(0), LayerType::Sliding);
        assert_eq!(g2.layer_type(1), LayerType::Full);
        assert_eq!(
            (g2.layout.norm, g2.layout.block, g2.tie_word_embeddings, g2.head_dim),
            (NormKind::RmsOffset, BlockKind::Sandwich, true, 256)
        );
        assert_eq!((g2.layout.attn_softcap, g2.layout.final_softcap), (Some(50.0), Some(30.0)));
        let g3 = cfg(r#","model_type":"gemma3_text","sliding_window_pattern":2,"final_logit_softcapping":null"#).unwrap();
        assert_eq!((g3.layer_type(0), g3.layer_type(1)), (LayerType::Sliding, LayerType::Full));
        assert_eq!((g3.layout.qk_norm, g3.layout.final_softcap, g3.layout.rope.theta), (QkNorm::PerHead, None, 1e6));
    }

    #[test]
    fn written_back_as_read() {
        let c = cfg(r#","model_type":"qwen2","use_sliding_window":false,"sliding_window":32768,"rope_theta":1e6"#).unwrap();
        let back: DecoderConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!((back.to_hf_json(), &back.layout), (c.to_hf_json(), &c.layout));
        assert_eq!(back.raw["sliding_window"], 32768);
    }
}
