//! `LlamaConfig` mirrors an HF `config.json` of the Llama family (Llama 2/3, SmolLM2, Qwen2):
//! same field names, serde defaults for fields older checkpoints lack, methods for derived values.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> i64 {
    2048
}
fn default_act() -> String {
    "silu".into()
}

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

/// `rope_scaling` of Llama 3.1+ (`rope_type = "llama3"`). Other types are refused at load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: f64,
    #[serde(default)]
    pub low_freq_factor: f64,
    #[serde(default)]
    pub high_freq_factor: f64,
    #[serde(default)]
    pub original_max_position_embeddings: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's switch for q/k/v/o biases. Qwen2 has q/k/v biases and no such field: see `qkv_bias`.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Number of labels of a `*ForSequenceClassification` head (reward models: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Sliding-window attention: Mistral's window (null: none), Qwen2's (used only with
    /// `use_sliding_window`). r2m attends over the whole sequence, so an active window is refused
    /// at load ([`LlamaConfig::validate`]) rather than computed wrongly past the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Llama's switch for biases in the MLP projections: not implemented, refused when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mlp_bias: bool,
}

fn default_model_type() -> String {
    "llama".into()
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::parse(path, msg));
        if !matches!(self.model_type.as_str(), "llama" | "qwen2" | "mistral") {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "model_type".into(),
                value: self.model_type.clone(),
                supported: "llama, qwen2, mistral".into(),
            });
        }
        if self.hidden_act != "silu" {
            return bad(format!("hidden_act = {:?}: only \"silu\" (SwiGLU) is supported", self.hidden_act));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if v <= 0 {
                return bad(format!("{name} = {v} must be positive"));
            }
        }
        if self.num_attention_heads % self.n_kv_heads() != 0 {
            return bad(format!(
                "num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                self.num_attention_heads,
                self.n_kv_heads()
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size = {} is not divisible by num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.mlp_bias {
            return bad("mlp_bias = true: biases in the MLP projections are not implemented".into());
        }
        let window = match self.model_type.as_str() {
            "mistral" => self.sliding_window.map(|w| format!("sliding_window = {w}")),
            "qwen2" if self.use_sliding_window == Some(true) => {
                Some(format!("use_sliding_window = true (sliding_window = {:?})", self.sliding_window))
            }
            _ => None,
        };
        if let Some(field) = window {
            return bad(format!(
                "{field}: sliding-window attention is not implemented (r2m would attend past the window); \
                 only where every sequence fits in the window is full attention the same, and then the window can be set to null"
            ));
        }
        if let Some(rs) = &self.rope_scaling {
            if !matches!(rs.rope_type.as_str(), "llama3" | "default") {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "rope_scaling.rope_type".into(),
                    value: rs.rope_type.clone(),
                    supported: "llama3, default".into(),
                });
            }
        }
        Ok(())
    }

    pub fn n_kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// Qwen2 always has q/k/v biases; Llama has them when `attention_bias` is set.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.model_type == "qwen2"
    }
    /// Llama's `attention_bias` also puts a bias on o_proj; Qwen2's o_proj has none.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }
    pub fn eos_ids(&self) -> Vec<i64> {
        self.eos_token_id.as_ref().map(|t| t.to_vec()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama3_and_qwen2_configs() {
        let l3: LlamaConfig = serde_json::from_str(
            r#"{"vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
            "num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"eos_token_id":[128001,128008,128009]}"#,
        )
        .unwrap();
        assert_eq!(l3.n_kv_heads(), 8);
        assert_eq!(l3.head_dim(), 128);
        assert_eq!(l3.eos_ids(), vec![128001, 128008, 128009]);
        assert!(!l3.qkv_bias());
        let q: LlamaConfig = serde_json::from_str(
            r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"eos_token_id":3}"#,
        )
        .unwrap();
        assert!(q.qkv_bias() && !q.o_bias());
        assert_eq!(q.rope_theta, 10_000.0);
    }

    #[test]
    fn refuses_bad_configs_naming_the_field() {
        let c: LlamaConfig = serde_json::from_str(
            r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":3,"num_key_value_heads":2}"#,
        )
        .unwrap();
        let e = c.validate(Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("num_key_value_heads"), "{e}");
    }

    #[test]
    fn fields_that_change_the_computation_are_refused_not_ignored() {
        let cfg = |extra: &str| -> LlamaConfig {
            serde_json::from_str(&format!(
                r#"{{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2{extra}}}"#
            ))
            .unwrap()
        };
        let check = |extra: &str| cfg(extra).validate(Path::new("m/config.json")).map_err(|e| e.to_string());
        assert!(check(r#","mlp_bias":true"#).unwrap_err().contains("mlp_bias = true"));
        let e = check(r#","model_type":"mistral","sliding_window":4096"#).unwrap_err();
        assert!(e.contains("m/config.json") && e.contains("sliding_window = 4096"), "{e}");
        assert!(check(r#","model_type":"mistral","sliding_window":null"#).is_ok());
        let e = check(r#","model_type":"qwen2","use_sliding_window":true,"sliding_window":32768"#).unwrap_err();
        assert!(e.contains("use_sliding_window = true"), "{e}");
        // Qwen2.5's own configs carry a window they do not use.
        assert!(check(r#","model_type":"qwen2","use_sliding_window":false,"sliding_window":32768"#).is_ok());
        // Written back as read (export keeps what transformers needs to compute the same).
        let c = cfg(r#","model_type":"qwen2","use_sliding_window":false,"sliding_window":32768"#);
        let back: LlamaConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!((back.sliding_window, back.use_sliding_window), (Some(32768), Some(false)));
    }
}
