//! The decoder architectures r2m runs, and how each one's `config.json` maps onto the one decoder
//! (`model::decoder`): which norms and where they sit, which projections are fused, the rotary
//! embeddings, the attention's scale, window and soft-capping, the activation, the tensor names.
//!
//! Each architecture is a file that reads exactly the config fields it implements, with its own
//! defaults (transformers' `*Config` defaults for that `model_type`). A field no file reads and that
//! is not plain metadata is an error naming it ([`Fields::finish`]): r2m never runs a model with a
//! setting it skipped.
pub mod gemma2;
pub mod gemma3;
pub mod gpt_neox;
pub mod llama;
pub mod olmo2;
pub mod phi3;
pub mod qwen3;

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

/// A decoder architecture (HF `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Olmo2,
    Phi3,
    GptNeox,
}

pub const MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, olmo2, phi3, gpt_neox";

impl Arch {
    pub fn from_model_type(t: &str) -> Option<Arch> {
        Some(match t {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma2" => Arch::Gemma2,
            "gemma3_text" => Arch::Gemma3,
            "olmo2" => Arch::Olmo2,
            "phi3" => Arch::Phi3,
            "gpt_neox" => Arch::GptNeox,
            _ => return None,
        })
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
            Arch::Olmo2 => "olmo2",
            Arch::Phi3 => "phi3",
            Arch::GptNeox => "gpt_neox",
        }
    }

    /// The transformers class name prefix (`{prefix}ForCausalLM`, `{prefix}ForSequenceClassification`).
    pub fn class_prefix(self) -> &'static str {
        match self {
            Arch::Llama => "Llama",
            Arch::Mistral => "Mistral",
            Arch::Qwen2 => "Qwen2",
            Arch::Qwen3 => "Qwen3",
            Arch::Gemma2 => "Gemma2",
            Arch::Gemma3 => "Gemma3Text",
            Arch::Olmo2 => "Olmo2",
            Arch::Phi3 => "Phi3",
            Arch::GptNeox => "GPTNeoX",
        }
    }

    pub fn causal_lm_class(self) -> String {
        match self {
            // transformers registers Gemma3ForCausalLM for gemma3_text.
            Arch::Gemma3 => "Gemma3ForCausalLM".into(),
            a => format!("{}ForCausalLM", a.class_prefix()),
        }
    }

    /// transformers has no `Olmo2ForSequenceClassification`: an OLMo 2 reward model is written
    /// under that name all the same (r2m loads it; transformers does not).
    pub fn seq_cls_class(self) -> String {
        format!("{}ForSequenceClassification", self.class_prefix())
    }

    /// The tensor name r2m uses for an HF checkpoint's name (the Llama layout's names; only
    /// GPT-NeoX names its tensors differently).
    pub fn internal_name(self, hf: &str) -> String {
        match self {
            Arch::GptNeox => gpt_neox::internal_name(hf),
            _ => hf.to_string(),
        }
    }

    /// The inverse of [`Arch::internal_name`] (export).
    pub fn hf_name(self, internal: &str) -> String {
        match self {
            Arch::GptNeox => gpt_neox::hf_name(internal),
            _ => internal.to_string(),
        }
    }

    /// Reads this architecture's fields (defaults as transformers' config class has them).
    fn resolve(self, f: &Fields) -> Result<Layout> {
        match self {
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => llama::resolve(self, f),
            Arch::Qwen3 => qwen3::resolve(f),
            Arch::Gemma2 => gemma2::resolve(f),
            Arch::Gemma3 => gemma3::resolve(f),
            Arch::Olmo2 => olmo2::resolve(f),
            Arch::Phi3 => phi3::resolve(f),
            Arch::GptNeox => gpt_neox::resolve(f),
        }
    }
}

/// Normalisation layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// RMSNorm, x / rms(x) * w (Llama).
    Rms,
    /// Gemma's RMSNorm, x / rms(x) * (1 + w), scaled in f32 before the cast back.
    RmsOffset,
    /// LayerNorm with bias (GPT-NeoX).
    Layer,
}

/// Where a block's norms sit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockKind {
    /// h = x + attn(norm1(x)); y = h + mlp(norm2(h)) (Llama).
    PreNorm,
    /// y = x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX `use_parallel_residual`).
    Parallel,
    /// h = x + norm2(attn(norm1(x))); y = h + norm4(mlp(norm3(h))) (Gemma 2 and 3).
    Sandwich,
    /// h = x + norm2(attn(x)); y = h + norm4(mlp(h)) (OLMo 2).
    PostNorm,
}

/// RMSNorm on queries and keys before the rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QkNorm {
    None,
    /// Over each head's `head_dim` (Qwen3, Gemma 3).
    PerHead,
    /// Over the whole projection, before the split into heads (OLMo 2).
    Whole,
}

/// How q, k and v are projected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QkvKind {
    /// q_proj, k_proj, v_proj.
    Separate,
    /// One `qkv_proj` whose rows are [q; k; v] (Phi-3).
    Fused,
    /// One projection whose rows are, per head, [q_h; k_h; v_h] (GPT-NeoX `query_key_value`).
    FusedPerHead,
}

/// The feed-forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MlpKind {
    /// down(act(gate(x)) * up(x)).
    Gated,
    /// One `gate_up_proj` whose rows are [gate; up] (Phi-3).
    GatedFused,
    /// down(act(up(x))) (GPT-NeoX's dense_h_to_4h / dense_4h_to_h).
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Silu,
    /// gelu with the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// exact gelu.
    Gelu,
}

impl Act {
    pub fn parse(f: &Fields, key: &str, default: &str) -> Result<Act> {
        let v = f.str(key)?.unwrap_or_else(|| default.to_string());
        match v.as_str() {
            "silu" | "swish" => Ok(Act::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Act::GeluTanh),
            "gelu" => Ok(Act::Gelu),
            _ => Err(Error::Unsupported {
                path: f.path.into(),
                what: key.into(),
                value: v,
                supported: "silu, gelu, gelu_pytorch_tanh, gelu_new".into(),
            }),
        }
    }
}

/// Rotary-embedding scaling (`rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// Positions divided by `factor` (Gemma 3's global layers).
    Linear { factor: f64 },
    /// Phi-3's LongRoPE: per-frequency factors, `long` once a sequence passes the original
    /// context, and cos/sin scaled by `attention_factor`.
    LongRope { short: Vec<f64>, long: Vec<f64>, original_max_position_embeddings: i64, attention_factor: f64 },
}

/// One rotary embedding: base, scaling, and how many leading dims of each head it rotates.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
    pub rotary_dim: i64,
}

/// A layer's attention span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LayerType {
    Full,
    /// Keys within the last `sliding_window` positions (query included).
    Sliding,
}

/// What an architecture resolves its config to: everything the decoder needs beyond the sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub norm: NormKind,
    pub norm_eps: f64,
    pub block: BlockKind,
    pub qk_norm: QkNorm,
    pub qkv: QkvKind,
    pub mlp: MlpKind,
    pub act: Act,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Embeddings multiplied by this (Gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f64>,
    /// Attention scores multiplied by this instead of 1/sqrt(head_dim).
    pub attn_scale: Option<f64>,
    /// Scores soft-capped as cap * tanh(s / cap) before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Logits soft-capped the same way (Gemma 2, optionally 3).
    pub final_softcap: Option<f64>,
    /// The rotary embedding of full-attention layers.
    pub rope: RopeSpec,
    /// The rotary embedding of sliding layers where it differs (Gemma 3's local base).
    pub rope_local: Option<RopeSpec>,
    pub sliding_window: Option<i64>,
    /// One per layer; empty = all `Full`.
    pub layer_types: Vec<LayerType>,
    /// Whether a missing `tie_word_embeddings` means tied (the class default).
    pub tie_default: bool,
    /// The head dim where the class default is not hidden_size / num_attention_heads (Qwen3: 128,
    /// Gemma: 256).
    pub head_dim: Option<i64>,
}

/// A `config.json` object being read: typed getters that remember what was read, so that
/// [`Fields::finish`] can refuse what nobody read.
pub struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a Path,
    used: RefCell<BTreeSet<String>>,
}

/// Fields that describe a checkpoint or generation defaults and never change the forward pass.
const METADATA: &[&str] = &[
    "_name_or_path",
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "task_specific_params",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "return_dict_in_generate",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "chunk_size_feed_forward",
    "is_decoder",
    "tie_encoder_decoder",
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "_attn_implementation_autoset",
    "attn_implementation",
    "auto_map",
    "cache_implementation",
    "classifier_dropout",
    "pretraining_tp",
    "rope_interleaved",
    "is_llama_config",
    "transformers.js_config",
];

/// Fields that change the computation in ways r2m does not implement, refused when not at their
/// neutral value.
fn refuse_generic(f: &Fields) -> Result<()> {
    for (k, neutral) in [
        ("pruned_heads", |v: &Value| v.as_object().is_some_and(|o| o.is_empty()) || v.is_null()),
        ("add_cross_attention", |v: &Value| v == &Value::Bool(false)),
        ("is_encoder_decoder", |v: &Value| v == &Value::Bool(false)),
        ("cross_attention_hidden_size", |v: &Value| v.is_null()),
        ("quantization_config", |v: &Value| v.is_null()),
        ("mlp_bias", |v: &Value| v == &Value::Bool(false)),
    ] as [(&str, fn(&Value) -> bool); 6]
    {
        if let Some(v) = f.take(k) {
            if !neutral(v) {
                return Err(f.refuse(k, v, "not implemented"));
            }
        }
    }
    Ok(())
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>, path: &'a Path) -> Self {
        Fields { map, path, used: RefCell::new(BTreeSet::new()) }
    }

    /// The raw value (null counts as absent), marked as read.
    pub fn take(&self, k: &str) -> Option<&'a Value> {
        self.used.borrow_mut().insert(k.to_string());
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn bad(&self, k: &str, v: &Value, want: &str) -> Error {
        Error::parse(self.path, format!("field {k} = {v}: expected {want}"))
    }

    /// An error naming a field whose value r2m does not implement.
    pub fn refuse(&self, k: &str, v: &Value, why: &str) -> Error {
        Error::parse(self.path, format!("field {k} = {v}: {why}"))
    }

    pub fn int(&self, k: &str) -> Result<Option<i64>> {
        self.take(k).map(|v| v.as_i64().ok_or_else(|| self.bad(k, v, "an integer"))).transpose()
    }

    pub fn req_int(&self, k: &str) -> Result<i64> {
        self.int(k)?.ok_or_else(|| Error::parse(self.path, format!("missing field {k}")))
    }

    pub fn float(&self, k: &str) -> Result<Option<f64>> {
        self.take(k).map(|v| v.as_f64().ok_or_else(|| self.bad(k, v, "a number"))).transpose()
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        self.take(k).map(|v| v.as_bool().ok_or_else(|| self.bad(k, v, "true or false"))).transpose()
    }

    pub fn str(&self, k: &str) -> Result<Option<String>> {
        self.take(k).map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.bad(k, v, "a string"))).transpose()
    }

    /// A dropout probability: r2m trains and evaluates without dropout, so only 0 is accepted.
    pub fn no_dropout(&self, k: &str) -> Result<()> {
        match self.float(k)? {
            Some(p) if p != 0.0 => {
                Err(self.refuse(k, &Value::from(p), "dropout is not implemented (r2m runs without dropout); set it to 0.0"))
            }
            _ => Ok(()),
        }
    }

    /// Per-layer `layer_types` when given, else `default(i)` for each of `n` layers.
    pub fn layer_types(&self, n: i64, default: impl Fn(i64) -> LayerType) -> Result<Vec<LayerType>> {
        match self.take("layer_types") {
            None => Ok((0..n).map(default).collect()),
            Some(v) => {
                let list = v.as_array().ok_or_else(|| self.bad("layer_types", v, "a list"))?;
                if list.len() as i64 != n {
                    return Err(self.refuse("layer_types", v, &format!("has {} entries for {n} layers", list.len())));
                }
                list.iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(LayerType::Full),
                        Some("sliding_attention") => Ok(LayerType::Sliding),
                        _ => Err(self.refuse("layer_types", t, "supported: full_attention, sliding_attention")),
                    })
                    .collect()
            }
        }
    }

    /// `rope_scaling`: none, "default", "llama3" or "linear"; others refused naming their type.
    pub fn rope_scaling(&self) -> Result<Option<RopeScaling>> {
        let Some(v) = self.take("rope_scaling") else { return Ok(None) };
        let o = v.as_object().ok_or_else(|| self.bad("rope_scaling", v, "an object"))?;
        let ty = o.get("rope_type").or_else(|| o.get("type")).and_then(Value::as_str).unwrap_or("");
        let num = |k: &str| -> Result<f64> {
            o.get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::parse(self.path, format!("field rope_scaling.{k} is missing or not a number")))
        };
        match ty {
            "default" => Ok(None),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            })),
            "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
            _ => Err(Error::Unsupported {
                path: self.path.into(),
                what: "rope_scaling.rope_type".into(),
                value: ty.into(),
                supported: "default, llama3, linear (longrope: Phi-3)".into(),
            }),
        }
    }

    /// Every field neither read nor metadata is an error naming it.
    pub fn finish(&self, model_type: &str) -> Result<()> {
        refuse_generic(self)?;
        let used = self.used.borrow();
        for (k, v) in self.map {
            if !used.contains(k) && !METADATA.contains(&k.as_str()) {
                return Err(self.refuse(
                    k,
                    v,
                    &format!("not a field r2m implements for model_type {model_type} (it may change the computation, so it is refused)"),
                ));
            }
        }
        Ok(())
    }
}

/// The Llama layout with silu, no biases, RMSNorm: each architecture starts here.
pub fn base_layout(norm_eps: f64, rope: RopeSpec) -> Layout {
    Layout {
        norm: NormKind::Rms,
        norm_eps,
        block: BlockKind::PreNorm,
        qk_norm: QkNorm::None,
        qkv: QkvKind::Separate,
        mlp: MlpKind::Gated,
        act: Act::Silu,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        embed_scale: None,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope,
        rope_local: None,
        sliding_window: None,
        layer_types: vec![],
        tie_default: false,
        head_dim: None,
    }
}

/// The head dim from `head_dim` or hidden_size / heads.
pub fn head_dim(f: &Fields) -> Result<i64> {
    let heads = f.req_int("num_attention_heads")?;
    let d = f.req_int("hidden_size")?;
    match f.int("head_dim")? {
        Some(h) => Ok(h),
        None if heads > 0 && d % heads == 0 => Ok(d / heads),
        None => Err(Error::parse(f.path, format!("hidden_size = {d} is not divisible by num_attention_heads = {heads}"))),
    }
}

/// Resolves `model_type` and the architecture's fields; every other field must be metadata.
pub fn resolve(map: &Map<String, Value>, path: &Path) -> Result<(Arch, Layout)> {
    let f = Fields::new(map, path);
    let model_type = f.str("model_type")?.unwrap_or_else(|| "llama".into());
    let arch = Arch::from_model_type(&model_type).ok_or_else(|| Error::Unsupported {
        path: path.into(),
        what: "model_type".into(),
        value: model_type.clone(),
        supported: MODEL_TYPES.into(),
    })?;
    let layout = arch.resolve(&f)?;
    // The sizes are read by `DecoderConfig`; mark them here so that `finish` sees them.
    for k in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "tie_word_embeddings",
    ] {
        f.take(k);
    }
    f.finish(&model_type)?;
    Ok((arch, layout))
}
