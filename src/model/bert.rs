//! BERT encoder (HF `BertModel` without its pooler), for all-MiniLM-L6-v2 as an embedder
//! (`super::sentence` adds the sentence-transformers pooling). Modelled on candle's `models/bert.rs`: the config mirrors
//! `config.json`, one struct per layer, weights under their HF names.
//!
//! Shapes: B = batch, T = tokens, D = hidden_size, I = intermediate_size, nh = heads, hd = D / nh.
//! Dropout is not applied (HF eval mode): r2m runs BERT as a frozen embedder or a reward body.
use crate::error::{Error, Result};
use crate::model::load::{safetensors as st, WeightMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

// ------------------------------------------------------------------------------------------------
// Config

fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

/// `hidden_act` of the feed-forward (HF `ACT2FN` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// Exact erf GELU, HF "gelu".
    Gelu,
    /// tanh approximation: HF "gelu_new" and "gelu_pytorch_tanh".
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
    Relu,
}

impl HiddenAct {
    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            HiddenAct::Gelu => x.gelu("none"),
            HiddenAct::GeluNew => x.gelu("tanh"),
            HiddenAct::Relu => x.relu(),
        }
    }
}

/// Mirrors HF `BertConfig` (`config.json`); defaults are HF's for the fields older files lack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: HiddenAct,
    /// Read for completeness; not applied (see the module doc).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Read for completeness; not applied.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// Std of the N(0, σ) init of `Bert::new_random` (HF `_init_weights`).
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: i64,
    /// Only "absolute" is supported.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::parse(path, msg));
        if self.model_type != "bert" {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "model_type".into(),
                value: self.model_type.clone(),
                supported: "bert".into(),
            });
        }
        if self.position_embedding_type != "absolute" {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "position_embedding_type".into(),
                value: self.position_embedding_type.clone(),
                supported: "absolute".into(),
            });
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v <= 0 {
                return bad(format!("{name} = {v} must be positive"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size = {} is not divisible by num_attention_heads = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(0..self.vocab_size).contains(&self.pad_token_id) {
            return bad(format!("pad_token_id = {} is outside the vocabulary (0..{})", self.pad_token_id, self.vocab_size));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}

// ------------------------------------------------------------------------------------------------
// Layers. Each is built under its HF path; `init` is the N(0, initializer_range) weight init.

fn linear(p: nn::Path, d_in: i64, d_out: i64, init: nn::Init) -> nn::Linear {
    nn::linear(p, d_in, d_out, nn::LinearConfig { ws_init: init, bs_init: Some(nn::Init::Const(0.)), bias: true })
}

fn layer_norm(p: nn::Path, cfg: &BertConfig) -> nn::LayerNorm {
    nn::layer_norm(p, vec![cfg.hidden_size], nn::LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() })
}

fn embedding(p: nn::Path, n: i64, d: i64, init: nn::Init, padding_idx: i64) -> nn::Embedding {
    nn::embedding(p, n, d, nn::EmbeddingConfig { ws_init: init, padding_idx, ..Default::default() })
}

/// `embeddings.*`: word + token type + absolute position, then LayerNorm.
#[derive(Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: nn::Embedding,
    pub position_embeddings: nn::Embedding,
    pub token_type_embeddings: nn::Embedding,
    pub layer_norm: nn::LayerNorm,
}

impl BertEmbeddings {
    fn new(p: nn::Path, cfg: &BertConfig, init: nn::Init) -> Self {
        let d = cfg.hidden_size;
        BertEmbeddings {
            // padding_idx as HF: the pad row gets no gradient.
            word_embeddings: embedding(&p / "word_embeddings", cfg.vocab_size, d, init, cfg.pad_token_id),
            position_embeddings: embedding(&p / "position_embeddings", cfg.max_position_embeddings, d, init, -1),
            token_type_embeddings: embedding(&p / "token_type_embeddings", cfg.type_vocab_size, d, init, -1),
            layer_norm: layer_norm(&p / "LayerNorm", cfg),
        }
    }

    /// (B, T) ids and token types -> (B, T, D).
    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Tensor {
        // T is checked against max_position_embeddings in `Bert::forward`.
        let t = input_ids.size()[1];
        let pos = Tensor::arange(t, (Kind::Int64, input_ids.device())).unsqueeze(0); // (1, T)
                                                                                     // HF order: (word + token_type) + position.
        let x = self.word_embeddings.forward(input_ids) + self.token_type_embeddings.forward(token_type_ids);
        let x = x + self.position_embeddings.forward(&pos); // (B, T, D)
        self.layer_norm.forward(&x)
    }
}

/// `attention.self.{query,key,value}`.
#[derive(Debug)]
pub struct BertSelfAttention {
    pub query: nn::Linear,
    pub key: nn::Linear,
    pub value: nn::Linear,
    n_heads: i64,
    head_dim: i64,
}

impl BertSelfAttention {
    fn new(p: nn::Path, cfg: &BertConfig, init: nn::Init) -> Self {
        let d = cfg.hidden_size;
        BertSelfAttention {
            query: linear(&p / "query", d, d, init),
            key: linear(&p / "key", d, d, init),
            value: linear(&p / "value", d, d, init),
            n_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        }
    }

    /// x (B, T, D), additive mask (B, 1, 1, T) -> (B, T, D).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let heads = |y: Tensor| y.view([b, t, self.n_heads, self.head_dim]).transpose(1, 2); // (B, nh, T, hd)
        let q = heads(self.query.forward(x));
        let k = heads(self.key.forward(x));
        let v = heads(self.value.forward(x));
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false); // (B, nh, T, hd)
        y.transpose(1, 2).reshape([b, t, self.n_heads * self.head_dim]) // (B, T, D)
    }
}

/// `attention.output.{dense,LayerNorm}` and `output.{dense,LayerNorm}`: project, add the residual, norm.
#[derive(Debug)]
pub struct BertResidualOut {
    pub dense: nn::Linear,
    pub layer_norm: nn::LayerNorm,
}

impl BertResidualOut {
    fn new(p: nn::Path, cfg: &BertConfig, d_in: i64, init: nn::Init) -> Self {
        BertResidualOut { dense: linear(&p / "dense", d_in, cfg.hidden_size, init), layer_norm: layer_norm(&p / "LayerNorm", cfg) }
    }

    /// h (B, T, d_in), residual (B, T, D) -> (B, T, D).
    fn forward(&self, h: &Tensor, residual: &Tensor) -> Tensor {
        self.layer_norm.forward(&(self.dense.forward(h) + residual))
    }
}

/// `attention.*`: self-attention then its output projection.
#[derive(Debug)]
pub struct BertAttention {
    pub attn: BertSelfAttention,
    pub output: BertResidualOut,
}

impl BertAttention {
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        self.output.forward(&self.attn.forward(x, mask), x)
    }
}

/// `intermediate.dense` + activation: (B, T, D) -> (B, T, I).
#[derive(Debug)]
pub struct BertIntermediate {
    pub dense: nn::Linear,
    act: HiddenAct,
}

impl BertIntermediate {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.act.forward(&self.dense.forward(x))
    }
}

/// `encoder.layer.{i}`.
#[derive(Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertResidualOut,
}

impl BertLayer {
    fn new(p: nn::Path, cfg: &BertConfig, init: nn::Init) -> Self {
        let pa = &p / "attention";
        BertLayer {
            attention: BertAttention {
                attn: BertSelfAttention::new(&pa / "self", cfg, init),
                output: BertResidualOut::new(&pa / "output", cfg, cfg.hidden_size, init),
            },
            intermediate: BertIntermediate {
                dense: linear(&p / "intermediate" / "dense", cfg.hidden_size, cfg.intermediate_size, init),
                act: cfg.hidden_act,
            },
            output: BertResidualOut::new(&p / "output", cfg, cfg.intermediate_size, init),
        }
    }

    /// (B, T, D) -> (B, T, D).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let a = self.attention.forward(x, mask); // (B, T, D)
        let i = self.intermediate.forward(&a); // (B, T, I)
        self.output.forward(&i, &a)
    }
}

// ------------------------------------------------------------------------------------------------
// The encoder

/// `n` draws of N(0, std) by Box-Muller.
fn normal_f32(n: usize, std: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let (u1, u2) = (1.0 - rng.gen::<f64>(), rng.gen::<f64>()); // u1 in (0, 1]
        let (r, a) = ((-2.0 * u1.ln()).sqrt() * std, std::f64::consts::TAU * u2);
        v.push((r * a.cos()) as f32);
        v.push((r * a.sin()) as f32);
    }
    v.truncate(n);
    v
}

/// HF names that a BERT checkpoint may hold and the encoder does not use.
const UNUSED: [&str; 3] = ["pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"];

/// The BERT encoder: ids -> last hidden state. Its parameters live in `vs` under their HF names
/// (unprefixed, as in sentence-transformers' model.safetensors), so a reward model can
/// `bert.vs.freeze()` it or hand `bert.vs` to an optimiser.
#[derive(Debug)]
pub struct Bert {
    pub vs: nn::VarStore,
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
    pub cfg: BertConfig,
}

impl Bert {
    /// Builds the layers in a new VarStore on `device`, every parameter 0 except the LayerNorm
    /// weights (1): `new_random` then draws the weights, `from_weights` copies them in.
    fn build(cfg: &BertConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let init = nn::Init::Const(0.);
        let root = vs.root();
        let embeddings = BertEmbeddings::new(&root / "embeddings", cfg, init);
        let layers = (0..cfg.num_hidden_layers).map(|i| BertLayer::new(&root / "encoder" / "layer" / i, cfg, init)).collect();
        Bert { vs, embeddings, layers, cfg: cfg.clone() }
    }

    /// A randomly initialised encoder with HF's `_init_weights`: Linear and Embedding weights
    /// N(0, initializer_range), biases 0, LayerNorm 1 and 0, the pad row of the word embeddings 0.
    /// The draws come from a ChaCha8 stream seeded with `seed` (not torch's global generator), in
    /// the sorted order of the HF names, so the same seed gives the same weights on any device.
    pub fn new_random(cfg: &BertConfig, seed: u64, device: Device) -> Result<Self> {
        cfg.validate(Path::new("<BertConfig>"))?;
        let bert = Self::build(cfg, device);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut vars: Vec<(String, Tensor)> = bert.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let _guard = tch::no_grad_guard();
        for (name, mut var) in vars {
            if name.ends_with(".weight") && !name.contains("LayerNorm") {
                let v = normal_f32(var.numel(), cfg.initializer_range, &mut rng);
                var.f_copy_(&Tensor::f_from_slice(&v)?.f_view(var.size().as_slice())?)?;
            }
        }
        let _ = bert.embeddings.word_embeddings.ws.f_get(cfg.pad_token_id)?.f_fill_(0.)?;
        Ok(bert)
    }

    /// Loads `config.json` and the safetensors of an HF BERT folder (`bert.`-prefixed or not).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg = BertConfig::from_file(&dir.join("config.json"))?;
        let files = st::weight_files(dir)?;
        let source = if files.len() == 1 { files[0].clone() } else { dir.to_path_buf() };
        let mut tensors = vec![];
        for f in &files {
            tensors.extend(st::read_file(f)?);
        }
        Self::from_weights(&cfg, WeightMap::new(source, tensors), device)
    }

    /// Builds the encoder from HF-named tensors, checking every shape against `cfg`. Names may carry
    /// a `bert.` prefix (`BertModel` inside a task model); the pooler and `position_ids` are allowed
    /// and unused; any other missing or extra tensor is an error listing them.
    pub fn from_weights(cfg: &BertConfig, mut weights: WeightMap, device: Device) -> Result<Self> {
        cfg.validate(&weights.source.clone())?;
        let prefix = if weights.names().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
        let bert = Self::build(cfg, device);
        let mut vars: Vec<(String, Tensor)> = bert.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        {
            let _guard = tch::no_grad_guard();
            for (name, mut var) in vars {
                let t = weights.take(&format!("{prefix}{name}"), &var.size())?;
                var.f_copy_(&t)?;
            }
        }
        let allow: Vec<String> = UNUSED.iter().map(|n| format!("{prefix}{n}")).collect();
        weights.finish(&allow.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(bert)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Last hidden state (B, T, D) for `input_ids` (B, T) and `attention_mask` (B, T) (1 = token,
    /// 0 = padding, any integer or float kind); `token_type_ids` default to 0. Inputs are moved to
    /// the model's device.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, token_type_ids: Option<&Tensor>) -> Result<Tensor> {
        let (b, t) =
            input_ids.size2().map_err(|_| Error::Input(format!("BERT: input_ids must be (B, T), got shape {:?}", input_ids.size())))?;
        if attention_mask.size() != [b, t] {
            return Err(Error::Input(format!("BERT: attention_mask has shape {:?}, input_ids {:?}", attention_mask.size(), [b, t])));
        }
        if t == 0 || t > self.cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "BERT: sequence length {t} outside 1..={} (max_position_embeddings)",
                self.cfg.max_position_embeddings
            )));
        }
        let dev = self.device();
        let ids = input_ids.f_to_kind(Kind::Int64)?.to_device(dev);
        let types = match token_type_ids {
            Some(tt) if tt.size() != [b, t] => {
                return Err(Error::Input(format!("BERT: token_type_ids has shape {:?}, input_ids {:?}", tt.size(), [b, t])))
            }
            Some(tt) => tt.f_to_kind(Kind::Int64)?.to_device(dev),
            None => Tensor::zeros([b, t], (Kind::Int64, dev)),
        };
        // Additive mask as HF's SDPA path: 0 where attended, finfo(f32).min at padding.
        let keep = attention_mask.f_to_kind(Kind::Float)?.to_device(dev);
        let mask = ((keep - 1.0) * f64::from(f32::MAX)).view([b, 1, 1, t]); // (B, 1, 1, T)
        let mut x = self.embeddings.forward(&ids, &types); // (B, T, D)
        for layer in &self.layers {
            x = layer.forward(&x, &mask);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sentence::{cls_pool, l2_normalize, max_pool, mean_pool, Pooling};

    fn tiny_cfg() -> BertConfig {
        serde_json::from_str(
            r#"{"vocab_size":50,"hidden_size":16,"num_hidden_layers":2,"num_attention_heads":4,
            "intermediate_size":32,"max_position_embeddings":24}"#,
        )
        .unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.size() == b.size() && (a - b).abs().max().double_value(&[]) <= tol
    }

    #[test]
    fn config_defaults_are_hf_bert() {
        let c = tiny_cfg();
        assert_eq!(c.hidden_act, HiddenAct::Gelu);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.type_vocab_size, 2);
        assert_eq!(c.head_dim(), 4);
        c.validate(Path::new("c.json")).unwrap();
        let t: BertConfig = serde_json::from_str(
            r#"{"vocab_size":5,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,
            "intermediate_size":8,"hidden_act":"gelu_pytorch_tanh"}"#,
        )
        .unwrap();
        assert_eq!(t.hidden_act, HiddenAct::GeluNew);
    }

    #[test]
    fn bad_configs_name_file_and_field() {
        let mut c = tiny_cfg();
        c.num_attention_heads = 3;
        let e = c.validate(Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("num_attention_heads"), "{e}");
        let mut c = tiny_cfg();
        c.position_embedding_type = "relative_key".into();
        let e = c.validate(Path::new("x/config.json")).unwrap_err().to_string();
        assert!(e.contains("position_embedding_type") && e.contains("relative_key"), "{e}");
        let e = serde_json::from_str::<BertConfig>(
            r#"{"vocab_size":5,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":8,"hidden_act":"swish"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("swish"), "{e}");
    }

    #[test]
    fn masked_mean_max_cls_pooling_by_hand() {
        // Batch of 2, T = 3, D = 2; second row has one padding token holding a large value.
        let h = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6., 10., 20., 30., 40., 99., -99.]).view([2, 3, 2]);
        let m = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0]).view([2, 3]);
        let want_mean = Tensor::from_slice(&[3f32, 4., 20., 30.]).view([2, 2]);
        assert!(close(&mean_pool(&h, &m), &want_mean, 1e-6));
        let want_max = Tensor::from_slice(&[5f32, 6., 30., 40.]).view([2, 2]);
        assert!(close(&max_pool(&h, &m), &want_max, 0.0));
        let want_cls = Tensor::from_slice(&[1f32, 2., 10., 20.]).view([2, 2]);
        assert!(close(&cls_pool(&h), &want_cls, 0.0));
        // An all-padding row pools to zeros, not NaN.
        let z = mean_pool(&h, &Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu)));
        assert!(close(&z, &Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)), 0.0));
        let n = l2_normalize(&Tensor::from_slice(&[3f32, 4., 0., 0.]).view([2, 2]));
        assert!(close(&n, &Tensor::from_slice(&[0.6f32, 0.8, 0., 0.]).view([2, 2]), 1e-7));
    }

    #[test]
    fn pooling_config_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let write = |s: &str| std::fs::write(&p, s).unwrap();
        write(r#"{"word_embedding_dimension":4,"pooling_mode_cls_token":true,"pooling_mode_mean_tokens":false}"#);
        assert_eq!(Pooling::from_file(&p).unwrap(), Pooling::Cls);
        write(r#"{"pooling_mode_mean_tokens":true,"pooling_mode_max_tokens":false,"pooling_mode_lasttoken":false}"#);
        assert_eq!(Pooling::from_file(&p).unwrap(), Pooling::Mean);
        write(r#"{"pooling_mode_weightedmean_tokens":true}"#);
        let e = Pooling::from_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("weightedmean"), "{e}");
        write(r#"{"pooling_mode_mean_tokens":true,"pooling_mode_cls_token":true}"#);
        assert!(Pooling::from_file(&p).is_err());
    }

    #[test]
    fn random_init_is_seeded_and_hf_like() {
        let cfg = tiny_cfg();
        let a = Bert::new_random(&cfg, 7, Device::Cpu).unwrap();
        let b = Bert::new_random(&cfg, 7, Device::Cpu).unwrap();
        let w = &a.embeddings.word_embeddings.ws;
        assert!(close(w, &b.embeddings.word_embeddings.ws, 0.0));
        let c = Bert::new_random(&cfg, 8, Device::Cpu).unwrap();
        assert!(!close(w, &c.embeddings.word_embeddings.ws, 1e-3));
        assert_eq!(w.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0, "pad row is zero");
        let std = a.layers[0].intermediate.dense.ws.std(true).double_value(&[]);
        assert!((std - 0.02).abs() < 0.004, "std {std}");
        let ln = &a.layers[1].output.layer_norm;
        assert_eq!(ln.ws.as_ref().unwrap().mean(Kind::Float).double_value(&[]), 1.0);
        // HF names, 16 tensors per layer + 5 for the embeddings.
        let vars = a.vs.variables();
        assert_eq!(vars.len(), 5 + 16 * 2);
        assert!(vars.contains_key("encoder.layer.1.attention.self.query.weight"));
        assert!(vars.contains_key("embeddings.LayerNorm.bias"));
    }

    #[test]
    fn padding_does_not_change_valid_positions() {
        let bert = Bert::new_random(&tiny_cfg(), 1, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[3i64, 7, 9, 11]).view([1, 4]);
        let one = bert.forward(&ids, &Tensor::ones([1, 4], (Kind::Int64, Device::Cpu)), None).unwrap();
        assert_eq!(one.size(), [1, 4, 16]);
        let padded = Tensor::from_slice(&[3i64, 7, 9, 11, 0, 0, 5, 6, 0, 0, 0, 0]).view([2, 6]);
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0]).view([2, 6]);
        let two = bert.forward(&padded, &mask, None).unwrap();
        assert!(close(&two.get(0).narrow(0, 0, 4), &one.get(0), 1e-5));
        let bad = bert.forward(&ids, &Tensor::ones([1, 3], (Kind::Int64, Device::Cpu)), None).unwrap_err();
        assert!(bad.to_string().contains("attention_mask"), "{bad}");
        let long = Tensor::zeros([1, 25], (Kind::Int64, Device::Cpu));
        assert!(bert.forward(&long, &long.ones_like(), None).is_err());
    }

    #[test]
    fn from_weights_accepts_prefix_and_pooler_and_names_bad_shapes() {
        let cfg = tiny_cfg();
        let src = Bert::new_random(&cfg, 3, Device::Cpu).unwrap();
        let mut named: Vec<(String, Tensor)> =
            src.vs.variables().into_iter().map(|(n, t)| (format!("bert.{n}"), t.detach().copy())).collect();
        named.push(("bert.pooler.dense.weight".into(), Tensor::zeros([16, 16], (Kind::Float, Device::Cpu))));
        named.push(("bert.pooler.dense.bias".into(), Tensor::zeros([16], (Kind::Float, Device::Cpu))));
        let loaded = Bert::from_weights(&cfg, WeightMap::new("w.safetensors", named), Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
        let m = ids.ones_like();
        assert!(close(&loaded.forward(&ids, &m, None).unwrap(), &src.forward(&ids, &m, None).unwrap(), 0.0));

        let mut named: Vec<(String, Tensor)> = src.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        named.retain(|(n, _)| n != "encoder.layer.1.output.dense.weight");
        named.push(("encoder.layer.1.output.dense.weight".into(), Tensor::zeros([16, 31], (Kind::Float, Device::Cpu))));
        let e = Bert::from_weights(&cfg, WeightMap::new("w.safetensors", named), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("encoder.layer.1.output.dense.weight") && e.contains("[16, 31]") && e.contains("[16, 32]"), "{e}");

        let mut named: Vec<(String, Tensor)> = src.vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        named.retain(|(n, _)| n != "embeddings.LayerNorm.weight");
        named.push(("cls.predictions.bias".into(), Tensor::zeros([50], (Kind::Float, Device::Cpu))));
        let e = Bert::from_weights(&cfg, WeightMap::new("w.safetensors", named), Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("embeddings.LayerNorm.weight"), "{e}");
    }
}
