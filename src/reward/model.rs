//! `RewardModel`: a backbone + a linear scoring head -> one scalar per (prompt, response).
//!
//! - Decoder backbone (any `model::arch` architecture): the final hidden state (after the final norm) of the last
//!   non-pad token, as HF `LlamaForSequenceClassification` does; sequences are RIGHT-padded, as TRL's
//!   preference collator does, so positions equal HF's.
//! - Encoder backbone (BERT, e.g. all-MiniLM-L6-v2): the pooling the model was trained with
//!   (sentence-transformers' modules.json: mean pooling, then normalisation).
//!
//! The pooled vector is H_last, the "reward token embedding" R2M reads; `score_embedding` applies the
//! head to it, so R2M can score a blended embedding with the same head.
//!
//! On disk: decoder RMs are HF `*ForSequenceClassification` folders of their architecture
//! (`LlamaForSequenceClassification`, `Gemma3TextForSequenceClassification`, ...: `score.weight`,
//! no bias). Encoder RMs are the sentence-transformers folder plus
//! `score.safetensors` and `r2m_reward.json` (HF has no mean-pooled BERT classifier).
use crate::error::{Error, Result};
use crate::model::config::DecoderConfig;
use crate::model::decoder::{positions_from_mask, Decoder};
use crate::model::export::write_json;
use crate::model::load::{gguf, safetensors, ModelSource, WeightMap};
use crate::model::params::{Init, Params, Source};
use crate::model::precision::{Autocast, Precision, Widen};
use crate::model::sentence::SentenceEncoder;
use crate::tokenizer::Tokenizer;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub enum Backbone {
    Decoder { body: Decoder, config: DecoderConfig, tokenizer: Tokenizer },
    Encoder { enc: SentenceEncoder, dir: std::path::PathBuf },
}

pub struct RewardModel {
    pub backbone: Backbone,
    /// Scoring head phi: (1, D), no bias (HF `score = nn.Linear(D, num_labels, bias=False)`).
    pub head: Tensor,
    /// Decoder parameters (HF names) and `score.weight`; for encoders only `score.weight`
    /// (the encoder's own parameters live in its VarStore: see `trainable`).
    pub params: Params,
    pub device: Device,
    /// f32, bf16 autocast in the backbone, or f64 throughout (`model::precision`); embeddings and
    /// scores are f32, or f64 under f64. Set with [`RewardModel::set_precision`].
    pub precision: Precision,
}

/// A tokenized batch: ids and mask (B, T), int64.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
}

impl RewardModel {
    /// Loads a reward model: an HF `*ForSequenceClassification` folder or an r2m encoder RM folder
    /// (with their trained heads), or any causal LM folder / GGUF / sentence-transformers folder
    /// with a fresh head N(0, 0.02) seeded by `seed`.
    pub fn load(spec: &str, seed: i64, device: Device) -> Result<Self> {
        let src = ModelSource::resolve(spec)?;
        match &src {
            ModelSource::HfDir(dir) if dir.join("modules.json").exists() => Self::load_encoder(dir, seed, device),
            ModelSource::HfDir(dir) => {
                let cfg_path = dir.join("config.json");
                let cfg = DecoderConfig::from_file(&cfg_path)?;
                let w = WeightMap::new(dir.clone(), cfg.internal_names(safetensors::read_dir(dir)?));
                let tok = Tokenizer::from_hf_dir(dir)?;
                Self::decoder(cfg, w, tok, seed, device)
            }
            ModelSource::Gguf(path) => {
                let g = gguf::load(path)?;
                let w = WeightMap::new(path.clone(), g.tensors);
                Self::decoder(g.config, w, g.tokenizer, seed, device)
            }
        }
    }

    fn decoder(cfg: DecoderConfig, w: WeightMap, tokenizer: Tokenizer, seed: i64, device: Device) -> Result<Self> {
        let d = cfg.hidden_size;
        let mut p = Params::default();
        let mut src = Source::Load(w);
        let body = Decoder::new(&mut p, &mut src, &cfg, device)?;
        let mut rest = match src {
            Source::Load(w) => w,
            Source::Random => return Err(Error::Input("reward model: expected loaded weights".into())),
        };
        let head = match rest.take_opt("score.weight", &[1, d])? {
            Some(t) => p.add("score.weight", t.to_device(device)),
            None => {
                tch::manual_seed(seed);
                p.add("score.weight", (Tensor::randn([1, d], (Kind::Float, Device::Cpu)) * 0.02).to_device(device))
            }
        };
        // A causal LM's head is not part of a reward model.
        let extra: Vec<String> = rest.names().filter(|n| *n == "lm_head.weight" || n.ends_with("rotary_emb.inv_freq")).cloned().collect();
        let allow: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
        rest.finish(&allow)?;
        let mut config = cfg;
        config.num_labels = Some(1);
        Ok(RewardModel { backbone: Backbone::Decoder { body, config, tokenizer }, head, params: p, device, precision: Precision::F32 })
    }

    fn load_encoder(dir: &Path, seed: i64, device: Device) -> Result<Self> {
        let enc = SentenceEncoder::from_dir(dir, device)?;
        let d = enc.embed_dim();
        let mut p = Params::default();
        let score = dir.join("score.safetensors");
        let head = if score.exists() {
            let mut w = WeightMap::new(&score, safetensors::read_file(&score)?);
            let t = w.take("score.weight", &[1, d])?;
            w.finish(&[])?;
            t
        } else {
            tch::manual_seed(seed);
            Tensor::randn([1, d], (Kind::Float, Device::Cpu)) * 0.02
        };
        let head = p.add("score.weight", head.to_device(device));
        Ok(RewardModel { backbone: Backbone::Encoder { enc, dir: dir.to_path_buf() }, head, params: p, device, precision: Precision::F32 })
    }

    /// A seeded random decoder RM (tests).
    pub fn random_decoder(cfg: &DecoderConfig, tokenizer: Tokenizer, seed: i64, device: Device) -> Result<Self> {
        tch::manual_seed(seed);
        let mut p = Params::default();
        let body = Decoder::new(&mut p, &mut Source::Random, cfg, device)?;
        let head = p.get(&mut Source::Random, "score.weight", &[1, cfg.hidden_size], Init::Normal(0.02), device)?;
        let mut config = cfg.clone();
        config.num_labels = Some(1);
        Ok(RewardModel { backbone: Backbone::Decoder { body, config, tokenizer }, head, params: p, device, precision: Precision::F32 })
    }

    /// D_rm, the size of H_last.
    pub fn embed_dim(&self) -> i64 {
        self.head.size()[1]
    }

    /// Gives a decoder RM's tokenizer the chat template `template` (saved with the model).
    pub fn set_chat_template(&mut self, template: String) -> Result<()> {
        match &mut self.backbone {
            Backbone::Decoder { tokenizer, .. } => {
                tokenizer.set_chat_template(template);
                Ok(())
            }
            Backbone::Encoder { .. } => Err(Error::Input("a chat template applies to decoder reward models, not to encoders".into())),
        }
    }

    /// Tokenizes full texts (prompt + response, already rendered) into a right-padded batch,
    /// truncated to `max_length` tokens keeping the start (TRL). `add_special`: the tokenizer's
    /// BOS/EOS rules (false for chat-template renderings, which carry their own).
    pub fn tokenize(&self, texts: &[String], add_special: bool, max_length: usize) -> Result<Batch> {
        match &self.backbone {
            Backbone::Decoder { tokenizer, .. } => {
                let mut seqs = Vec::with_capacity(texts.len());
                for (i, t) in texts.iter().enumerate() {
                    let mut ids: Vec<i64> = tokenizer.encode(t, add_special)?.into_iter().map(i64::from).collect();
                    if ids.is_empty() {
                        return Err(Error::Input(format!("text {i} is empty after tokenization")));
                    }
                    ids.truncate(max_length);
                    seqs.push(ids);
                }
                Ok(right_pad(&seqs, tokenizer.pad_id() as i64))
            }
            Backbone::Encoder { enc, .. } => {
                let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
                let (ids, mask) = enc.tokenize(&refs)?;
                Ok(Batch { ids, mask })
            }
        }
    }

    /// H_last (B, D): the backbone's embedding of each sequence (graph kept for training).
    pub fn embed(&self, b: &Batch) -> Result<Tensor> {
        let ids = b.ids.to_device(self.device);
        let mask = b.mask.to_device(self.device);
        let _ac = Autocast::new(self.precision, self.device);
        let h = match &self.backbone {
            Backbone::Decoder { body, config, .. } => {
                let t = ids.size()[1];
                if t > config.max_position_embeddings {
                    return Err(Error::Input(format!(
                        "sequence of {t} tokens is longer than the model's context ({})",
                        config.max_position_embeddings
                    )));
                }
                let h = body.forward(&ids, &positions_from_mask(&mask), &body.masks(&mask), None, false).last; // (B, T, D)
                                                                                                               // Last non-pad token: argmax of (index + 1) * mask, as HF's sequence classifier.
                let idx = (Tensor::arange(t, (Kind::Int64, self.device)).unsqueeze(0) + 1) * &mask;
                let last = idx.argmax(-1, false); // (B)
                let d = h.size()[2];
                Ok(h.gather(1, &last.view([-1, 1, 1]).expand([-1, 1, d], false), false).squeeze_dim(1))
            }
            Backbone::Encoder { enc, .. } => enc.embed(&ids, &mask),
        }?;
        Ok(h.widen())
    }

    /// r = phi(h): (B) from embeddings (B, D).
    pub fn score_embedding(&self, h: &Tensor) -> Tensor {
        h.linear::<Tensor>(&self.head, None).squeeze_dim(-1)
    }

    /// Scores and H_last for a batch: ((B), (B, D)).
    pub fn score(&self, b: &Batch) -> Result<(Tensor, Tensor)> {
        let h = self.embed(b)?;
        Ok((self.score_embedding(&h), h))
    }

    /// Scores rendered texts in batches of `batch_size`, without gradients: (N) on the CPU.
    pub fn score_texts(&self, texts: &[String], add_special: bool, max_length: usize, batch_size: usize) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let mut out = vec![];
        for chunk in texts.chunks(batch_size.max(1)) {
            let b = self.tokenize(chunk, add_special, max_length)?;
            out.push(self.score(&b)?.0.to_device(Device::Cpu));
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([0], (Kind::Float, Device::Cpu)));
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// Computes in `p` from now on; f64 converts every parameter (backbone and head) to f64, and
    /// leaving f64 converts them back to f32. Call it before an optimiser is made over them.
    pub fn set_precision(&mut self, p: Precision) {
        if p == Precision::F64 || self.precision == Precision::F64 {
            crate::model::params::convert_(self.all_params().iter().map(|(_, t)| t), p.weight_kind());
        }
        self.precision = p;
    }

    /// Every parameter that can train, in a fixed order: the decoder's (HF names) + `score.weight`,
    /// or the encoder's (VarStore names, sorted) + `score.weight`.
    pub fn all_params(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vec![];
        if let Backbone::Encoder { enc, .. } = &self.backbone {
            let mut e: Vec<(String, Tensor)> = enc.bert.vs.variables().into_iter().collect();
            e.sort_by(|a, b| a.0.cmp(&b.0));
            v.extend(e);
        }
        v.extend(self.params.named().iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
        v
    }

    /// Chooses what trains: the head always; plus the top `layers` blocks (and the final norm of a
    /// decoder), or the whole backbone when `layers` is None. Returns the trainable parameters.
    pub fn set_trainable(&self, layers: Option<usize>) -> Result<Vec<(String, Tensor)>> {
        let n_layers = match &self.backbone {
            Backbone::Decoder { config, .. } => config.num_hidden_layers as usize,
            Backbone::Encoder { enc, .. } => enc.bert.cfg.num_hidden_layers as usize,
        };
        let first = match layers {
            None => 0,
            Some(k) if k <= n_layers => n_layers - k,
            Some(k) => return Err(Error::Input(format!("trainable layers = {k} but the backbone has {n_layers}"))),
        };
        let layer_of = |n: &str| -> Option<usize> {
            let rest = n.strip_prefix("model.layers.").or_else(|| n.split("encoder.layer.").nth(1))?;
            rest.split('.').next()?.parse().ok()
        };
        let keep = |n: &str| {
            n == "score.weight"
                || layers.is_none()
                || layer_of(n).is_some_and(|i| i >= first)
                || (layers != Some(0) && n.starts_with("model.norm."))
        };
        let all = self.all_params();
        for (n, t) in &all {
            let _ = t.set_requires_grad(keep(n));
        }
        Ok(all.into_iter().filter(|(_, t)| t.requires_grad()).collect())
    }

    /// Saves the reward model: an HF `*ForSequenceClassification` folder (decoder) or the
    /// sentence-transformers folder + head (encoder). Atomic per file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match &self.backbone {
            Backbone::Decoder { config, tokenizer, .. } => {
                let mut cfg = config.clone();
                cfg.architectures = vec![cfg.arch.seq_cls_class()];
                cfg.raw.insert("torch_dtype".into(), "float32".into());
                cfg.num_labels = Some(1);
                cfg.pad_token_id = Some(tokenizer.pad_id() as i64);
                let mut json = serde_json::to_value(&cfg).map_err(|e| Error::parse(dir, e))?;
                // transformers reads num_labels from id2label.
                json["id2label"] = serde_json::json!({"0": "LABEL_0"});
                json["label2id"] = serde_json::json!({"LABEL_0": 0});
                json.as_object_mut().map(|o| o.remove("num_labels"));
                write_json(&dir.join("config.json"), &json)?;
                let tensors: Vec<(String, Tensor)> =
                    self.params.named().iter().map(|(n, t)| (cfg.arch.hf_name(n), t.detach().to_kind(Kind::Float))).collect();
                safetensors::write_file(&dir.join("model.safetensors"), &tensors)?;
                tokenizer.save_hf(dir)
            }
            Backbone::Encoder { enc, dir: src } => {
                copy_encoder_folder(src, dir)?;
                // The encoder weights as trained (sentence-transformers' unprefixed names).
                let mut w: Vec<(String, Tensor)> = enc.bert.vs.variables().into_iter().map(|(n, t)| (n, t.detach())).collect();
                w.sort_by(|a, b| a.0.cmp(&b.0));
                safetensors::write_file(&dir.join("model.safetensors"), &w)?;
                safetensors::write_file(&dir.join("score.safetensors"), &[("score.weight".into(), self.head.detach())])?;
                write_json(&dir.join("r2m_reward.json"), &serde_json::json!({"backbone": "encoder", "head": "score.weight"}))
            }
        }
    }
}

/// Copies a sentence-transformers folder's small files (configs, tokenizer, pooling) to `dst`.
fn copy_encoder_folder(src: &Path, dst: &Path) -> Result<()> {
    if src == dst {
        return Ok(());
    }
    for entry in walk(src)? {
        let rel = entry.strip_prefix(src).map_err(|e| Error::parse(&entry, e))?;
        let name = rel.to_string_lossy();
        if name.ends_with(".safetensors") || name.ends_with(".bin") || name.ends_with(".onnx") {
            continue;
        }
        let to = dst.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::copy(&entry, &to).map_err(|e| Error::io(&entry, e))?;
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Right-pads token sequences into a (B, T) batch.
pub fn right_pad(seqs: &[Vec<i64>], pad_id: i64) -> Batch {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut mask = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad_id, t - s.len())));
        mask.extend(std::iter::repeat_n(1i64, s.len()).chain(std::iter::repeat_n(0, t - s.len())));
    }
    let shape = [seqs.len() as i64, t as i64];
    Batch { ids: Tensor::from_slice(&ids).view(shape), mask: Tensor::from_slice(&mask).view(shape) }
}
