//! A causal LM: the decoder body (`super::decoder`) with its LM head, loaded from an HF folder
//! or a GGUF file, and the passes RL needs: logits, token log-probs, hidden states, the frozen
//! trunk's output and the blocks above it.
use crate::error::{Error, Result};
use crate::model::config::DecoderConfig;
use crate::model::load::{gguf, safetensors, ModelSource, WeightMap};
use crate::model::params::{Params, Source};
use crate::model::precision::{Autocast, Precision, Widen};
use crate::tokenizer::Tokenizer;
use tch::{Device, Tensor};

use crate::model::decoder::*;
use crate::model::layers::Linear;

/// A causal LM: body + LM head (tied to the embeddings when `tie_word_embeddings`).
pub struct CausalLm {
    pub config: DecoderConfig,
    pub model: Decoder,
    pub lm_head: Option<Linear>,
    pub params: Params,
    pub device: Device,
    /// MKL-packed weight copies kept between `generate` calls (CPU decoding; `model::packed`).
    pub packs: crate::model::packed::Cache,
    /// f32, bf16 autocast over the f32 weights, or f64 weights and math (`model::precision`) in
    /// every forward pass: set with [`CausalLm::set_precision`].
    pub precision: Precision,
}

/// A model with its tokenizer, as loaded from a folder or a GGUF file.
pub struct Loaded {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
}

impl CausalLm {
    /// Builds the model from a weight source: loaded (every tensor shape-checked, every missing or
    /// unused tensor an error naming it) or random (seeded by `tch::manual_seed` beforehand).
    pub fn new(cfg: &DecoderConfig, mut src: Source, device: Device) -> Result<Self> {
        let mut p = Params::default();
        let model = Decoder::new(&mut p, &mut src, cfg, device)?;
        let tied = match &src {
            Source::Load(w) => cfg.tie_word_embeddings && !w.contains("lm_head.weight"),
            Source::Random => cfg.tie_word_embeddings,
        };
        let lm_head =
            if tied { None } else { Some(Linear::new(&mut p, &mut src, "lm_head", cfg.hidden_size, cfg.vocab_size, false, device)?) };
        if let Source::Load(w) = src {
            // HF ignores rotary inv_freq buffers some checkpoints carry.
            let extra: Vec<String> = w.names().filter(|n| n.ends_with("rotary_emb.inv_freq")).cloned().collect();
            let allow: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
            w.finish(&allow)?;
        }
        Ok(CausalLm { config: cfg.clone(), model, lm_head, params: p, device, packs: Default::default(), precision: Precision::F32 })
    }

    /// Computes in `p` from now on; f64 converts the weights to f64 (and back to f32 when it is
    /// left). Call it before trainable adapters and an optimiser are made over the weights.
    pub fn set_precision(&mut self, p: Precision) {
        let k = p.weight_kind();
        if p == Precision::F64 || self.precision == Precision::F64 {
            self.params.to_kind_(k);
            self.packs = Default::default();
        }
        self.precision = p;
    }

    /// A seeded random model (tests, benchmarks).
    pub fn random(cfg: &DecoderConfig, seed: i64, device: Device) -> Result<Self> {
        tch::manual_seed(seed);
        Self::new(cfg, Source::Random, device)
    }

    /// Loads an HF folder (config.json, safetensors, tokenizer) or a GGUF file.
    pub fn load(src: &ModelSource, device: Device) -> Result<Loaded> {
        match src {
            ModelSource::HfDir(dir) => {
                let cfg = DecoderConfig::from_file(&dir.join("config.json"))?;
                let weights = WeightMap::new(dir.clone(), cfg.internal_names(safetensors::read_dir(dir)?));
                let model = CausalLm::new(&cfg, Source::Load(weights), device)?;
                let tokenizer = Tokenizer::from_hf_dir(dir)?;
                Ok(Loaded { model, tokenizer })
            }
            ModelSource::Gguf(path) => {
                let g = gguf::load(path)?;
                let weights = WeightMap::new(path.clone(), g.tensors);
                let model = CausalLm::new(&g.config, Source::Load(weights), device)?;
                Ok(Loaded { model, tokenizer: g.tokenizer })
            }
        }
    }

    /// Loads from a path or alias (see `crate::paths`).
    pub fn load_path(spec: &str, device: Device) -> Result<Loaded> {
        Self::load(&ModelSource::resolve(spec)?, device)
    }

    /// The LM head's weight (the embeddings when tied): (V, D).
    pub fn head_weight(&self) -> &Tensor {
        match &self.lm_head {
            Some(l) => &l.weight,
            None => &self.model.embed_tokens,
        }
    }

    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let logits = match &self.lm_head {
            Some(l) => l.forward(hidden),
            None => crate::model::packed::linear(hidden, &self.model.embed_tokens, None),
        };
        match self.config.layout.final_softcap {
            // Gemma 2: cap * tanh(logits / cap).
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Every weight a decode step multiplies by (the blocks' projections and the LM head, tied or
    /// not), for `model::packed`.
    pub fn linear_weights(&self) -> Vec<&Tensor> {
        let mut w = vec![];
        for l in &self.model.layers {
            w.extend(l.linears().into_iter().map(|lin| &lin.weight));
        }
        w.push(self.head_weight());
        w
    }

    /// logits / temperature, f32 (f64 under f64). A bias-free, uncapped head is linear, so the division is applied to the
    /// hidden states (B, n, D) instead of the logits (B, n, V): one full-vocabulary tensor less,
    /// forward and backward (V / D = 85 for SmolLM2).
    pub fn scaled_logits(&self, hidden: &Tensor, temperature: f64) -> Tensor {
        let _ac = self.autocast();
        let linear_head = self.lm_head.as_ref().is_none_or(|l| l.bias.is_none()) && self.config.layout.final_softcap.is_none();
        if temperature == 1.0 {
            self.logits(hidden).widen()
        } else if linear_head {
            self.logits(&(hidden / temperature)).widen()
        } else {
            self.logits(hidden).widen() / temperature
        }
    }

    fn check_ids(&self, ids: &Tensor, mask: &Tensor) -> Result<()> {
        let s = ids.size();
        if s.len() != 2 || mask.size() != s {
            return Err(Error::Input(format!("ids {:?} and mask {:?} must both be (B, T)", s, mask.size())));
        }
        if s[1] > self.config.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence of {} tokens is longer than the model's context ({} = max_position_embeddings)",
                s[1], self.config.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Full-sequence forward over left-padded `ids` (B, T) with `mask` (B, T): final hidden states
    /// (B, T, D), and all of them in HF order when `all_hidden`.
    pub fn forward_hidden(&self, ids: &Tensor, mask: &Tensor, all_hidden: bool) -> Result<Hidden> {
        self.check_ids(ids, mask)?;
        let _ac = self.autocast();
        let ids = ids.to_device(self.device);
        let mask = mask.to_device(self.device);
        Ok(self.model.forward(&ids, &positions_from_mask(&mask), &self.model.masks(&mask), None, all_hidden))
    }

    /// Logits (B, T, V) of a full-sequence forward, f32 (f64 under f64).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let last = self.forward_hidden(ids, mask, false)?.last;
        let _ac = self.autocast();
        Ok(self.logits(&last).widen())
    }

    /// Autocast in this model's precision on its device until the guard drops (nothing for f32).
    pub fn autocast(&self) -> Autocast {
        Autocast::new(self.precision, self.device)
    }

    /// Per-token log-probs of the tokens `ids[:, from..]` under the model at `temperature`
    /// (log softmax(logits / T)), in f32: (B, T - from); plus the final hidden states (B, T, D),
    /// captured from the same pass (R2M's feedback h). `from >= 1`.
    ///
    /// `log_softmax(logits / T).gather(-1, next_ids)`, computed as `-cross_entropy` (libtorch's
    /// fused log-softmax and NLL kernels, forward and backward).
    pub fn token_logprobs(&self, ids: &Tensor, mask: &Tensor, temperature: f64, from: i64) -> Result<(Tensor, Tensor)> {
        let t = ids.size().get(1).copied().unwrap_or(0);
        if from < 1 || from >= t.max(1) {
            return Err(Error::Input(format!("token_logprobs: from = {from} must be in [1, {t})")));
        }
        if !(temperature > 0.0) {
            return Err(Error::Input(format!("token_logprobs: temperature = {temperature} must be > 0")));
        }
        let h = self.forward_hidden(ids, mask, false)?;
        Ok((self.logprobs_of(&h.last, ids, temperature, from), h.last))
    }

    /// Log-probs of `ids[:, from..]` given the final hidden states `last` (B, T, D) of `ids`.
    fn logprobs_of(&self, last: &Tensor, ids: &Tensor, temperature: f64, from: i64) -> Tensor {
        let n = ids.size()[1] - from;
        let hs = last.narrow(1, from - 1, n); // (B, n, D): states that predict ids[from..]
        let logits = self.scaled_logits(&hs, temperature); // (B, n, V)
        let (b, v) = (logits.size()[0], logits.size()[2]);
        let next = ids.to_device(self.device).narrow(1, from, n).reshape([-1]); // (B n)
                                                                                // -cross_entropy = log_softmax + nll_loss: libtorch's fused kernels both ways (what
                                                                                // PyTorch's `labels=` loss runs), with fewer (B, n, V) temporaries than
                                                                                // `gather - logsumexp` (whose backward adds two full-vocabulary gradients).
        -logits.reshape([-1, v]).cross_entropy_loss::<Tensor>(&next, None, tch::Reduction::None, -100, 0.0).view([b, n])
    }

    /// How many leading blocks are frozen together with the embeddings (0 when the embeddings
    /// train): the part of every forward pass that no optimiser step changes (the frozen trunk).
    pub fn frozen_prefix(&self) -> usize {
        let grad = |prefix: &str| self.params.named().iter().any(|(n, t)| n.starts_with(prefix) && t.requires_grad());
        if grad("model.embed_tokens.") {
            return 0;
        }
        (0..self.model.layers.len()).take_while(|i| !grad(&format!("model.layers.{i}."))).count()
    }

    /// True when this model's embeddings and first `k` blocks hold the same values as `other`'s,
    /// so that one trunk pass serves both.
    pub fn same_prefix(&self, other: &CausalLm, k: usize) -> bool {
        let in_prefix = |n: &str| {
            n.starts_with("model.embed_tokens.")
                || n.strip_prefix("model.layers.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i < k)
        };
        let mine: Vec<&(String, Tensor)> = self.params.named().iter().filter(|(n, _)| in_prefix(n)).collect();
        let theirs: Vec<&(String, Tensor)> = other.params.named().iter().filter(|(n, _)| in_prefix(n)).collect();
        self.config.hidden_size == other.config.hidden_size
            && mine.len() == theirs.len()
            && mine.iter().zip(&theirs).all(|(a, b)| a.0 == b.0 && a.1.size() == b.1.size() && a.1.kind() == b.1.kind() && a.1.equal(&b.1))
    }

    /// The frozen trunk of a full-sequence pass: embeddings and blocks [0, k), no gradient, (B, T, D).
    /// Feed it to `token_logprobs_from_trunk` as often as needed (policy epochs, the reference).
    pub fn trunk(&self, ids: &Tensor, mask: &Tensor, k: usize) -> Result<Tensor> {
        self.check_ids(ids, mask)?;
        let _g = tch::no_grad_guard();
        let _ac = self.autocast();
        let (ids, mask) = (ids.to_device(self.device), mask.to_device(self.device));
        Ok(self.model.forward_prefix(&ids, &positions_from_mask(&mask), &self.model.masks(&mask), k.min(self.model.layers.len())))
    }

    /// `token_logprobs` from a trunk (the input of block k, from `trunk`): blocks [k, L), the
    /// norm and the head only. Equal to `token_logprobs` up to float rounding.
    pub fn token_logprobs_from_trunk(
        &self,
        trunk: &Tensor,
        k: usize,
        ids: &Tensor,
        mask: &Tensor,
        temperature: f64,
        from: i64,
    ) -> Result<(Tensor, Tensor)> {
        let t = ids.size().get(1).copied().unwrap_or(0);
        if from < 1 || from >= t.max(1) || !(temperature > 0.0) {
            return Err(Error::Input(format!(
                "token_logprobs_from_trunk: from = {from} must be in [1, {t}) and temperature = {temperature} > 0"
            )));
        }
        self.check_ids(ids, mask)?;
        if trunk.size().get(..2) != Some(&ids.size()[..]) {
            return Err(Error::Input(format!("trunk {:?} does not match ids {:?}", trunk.size(), ids.size())));
        }
        let last = self.hidden_from_trunk(trunk, k, mask);
        Ok((self.logprobs_of(&last, ids, temperature, from), last))
    }

    /// The final hidden states (B, T, D) from a trunk (the input of block k) and the ids' mask.
    pub fn hidden_from_trunk(&self, trunk: &Tensor, k: usize, mask: &Tensor) -> Tensor {
        let _ac = self.autocast();
        let mask = mask.to_device(self.device);
        self.model.forward_suffix(trunk, &positions_from_mask(&mask), &self.model.masks(&mask), k.min(self.model.layers.len()))
    }
}
