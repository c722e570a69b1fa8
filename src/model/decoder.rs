//! The decoder: embeddings, blocks (attention and MLP with the norms where the architecture puts
//! them), final norm. One implementation serves every architecture in `model::arch`: Llama 2/3,
//! SmolLM2, Mistral, Qwen2/3, Gemma 2/3, OLMo 2, Phi-3, GPT-NeoX. Tensor names are the Llama
//! layout's (`model.layers.N.self_attn.q_proj.weight`), which are HF's for all but GPT-NeoX.
//!
//! Shapes: B = batch, T = tokens in this call, D = hidden size, V = vocab.
//!
//! Padding: sequences are left-padded with an attention mask; positions are `cumsum(mask) - 1`, as
//! HF's `generate` does, so a padded row computes exactly what the unpadded sequence computes.
use crate::error::Result;
use crate::ffi;
use crate::model::arch::{Act, BlockKind, MlpKind};
use crate::model::attention::{Attention, Masks};
use crate::model::config::DecoderConfig;
use crate::model::kernels;
use crate::model::kv_cache::{KvCache, LayerCache};
use crate::model::layers::{activation, Linear, Norm, Rope, INIT_STD};
use crate::model::params::{Init, Params, Source};
use crate::profile::span;
use tch::{Device, Kind, Tensor};

pub use crate::model::attention::{causal_mask, AttnMask};

pub struct Mlp {
    /// `gate_proj` (gated MLPs) or `gate_up_proj` (Phi-3's fused [gate; up]); none in a plain MLP.
    pub gate: Option<Linear>,
    pub up_proj: Option<Linear>,
    pub down_proj: Linear,
    kind: MlpKind,
    act: crate::model::arch::Act,
}

impl Mlp {
    fn new(p: &mut Params, src: &mut Source, name: &str, cfg: &DecoderConfig, dev: Device) -> Result<Self> {
        let (d, f, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.layout.mlp_bias);
        let lin = |p: &mut Params, src: &mut Source, n: &str, i, o| Linear::new(p, src, &format!("{name}.{n}"), i, o, b, dev);
        let kind = cfg.layout.mlp;
        let (gate, up_proj) = match kind {
            MlpKind::Gated => (Some(lin(p, src, "gate_proj", d, f)?), Some(lin(p, src, "up_proj", d, f)?)),
            MlpKind::GatedFused => (Some(lin(p, src, "gate_up_proj", d, 2 * f)?), None),
            MlpKind::Plain => (None, Some(lin(p, src, "up_proj", d, f)?)),
        };
        Ok(Mlp { gate, up_proj, down_proj: lin(p, src, "down_proj", f, d)?, kind, act: cfg.layout.act })
    }

    fn shallow(&self) -> Mlp {
        Mlp {
            gate: self.gate.as_ref().map(Linear::shallow),
            up_proj: self.up_proj.as_ref().map(Linear::shallow),
            down_proj: self.down_proj.shallow(),
            kind: self.kind,
            act: self.act,
        }
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.gate.iter().chain(self.up_proj.iter()).chain([&self.down_proj]).collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.gate.iter_mut().chain(self.up_proj.iter_mut()).chain([&mut self.down_proj]).collect()
    }

    /// act(g) * u; SiLU in one kernel where r2m's CPU kernels apply (`model::kernels`).
    fn gated(&self, g: &Tensor, u: &Tensor) -> Tensor {
        if self.act == Act::Silu && kernels::apply_to(g) {
            return ffi::silu_mul(g, u, ffi::KernelBuild::Best).unwrap_or_else(|e| panic!("{e}"));
        }
        activation(self.act, g) * u
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let up = |l: &Linear| {
            let _s = span("mlp: gate and up projections");
            l.forward(x)
        };
        let h = match (self.kind, &self.gate, &self.up_proj) {
            (MlpKind::Gated, Some(g), Some(u)) => {
                let (g, u) = {
                    let _s = span("mlp: gate and up projections");
                    let mut y = Linear::forward_many(&[g, u], x).into_iter();
                    (y.next().expect("gate"), y.next().expect("up"))
                };
                let _s = span("mlp: activation and product");
                self.gated(&g, &u)
            }
            (MlpKind::GatedFused, Some(gu), _) => {
                let y = up(gu);
                let f = y.size()[y.dim() - 1] / 2;
                let _s = span("mlp: activation and product");
                self.gated(&y.narrow(-1, 0, f), &y.narrow(-1, f, f))
            }
            (_, _, Some(u)) => {
                let y = up(u);
                let _s = span("mlp: activation and product");
                activation(self.act, &y)
            }
            _ => unreachable!("an MLP is built with the projections of its kind"),
        };
        let _s = span("mlp: down projection");
        self.down_proj.forward(&h)
    }
}

/// One decoder block. Which norms exist depends on the architecture (`BlockKind`):
/// `input_layernorm` before attention (pre-norm, parallel, sandwich), `post_attention_layernorm`
/// before the MLP (pre-norm, parallel) or on the attention's output (sandwich, post-norm),
/// `pre_feedforward_layernorm` and `post_feedforward_layernorm` around the MLP (sandwich; OLMo 2
/// only the latter).
pub struct Block {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: Option<Norm>,
    pub post_attention_layernorm: Option<Norm>,
    pub pre_feedforward_layernorm: Option<Norm>,
    pub post_feedforward_layernorm: Option<Norm>,
    kind: BlockKind,
    /// Index of this block's rotary embedding in `Decoder::ropes`.
    rope: usize,
}

impl Block {
    fn new(p: &mut Params, src: &mut Source, i: i64, cfg: &DecoderConfig, dev: Device) -> Result<Self> {
        let n = format!("model.layers.{i}");
        let l = &cfg.layout;
        // Registered in this order (attention, MLP, norms): the optimiser's parameter order.
        let self_attn = Attention::new(p, src, &format!("{n}.self_attn"), cfg, i as usize, dev)?;
        let mlp = Mlp::new(p, src, &format!("{n}.mlp"), cfg, dev)?;
        let mut norm = |name: &str, on: bool| -> Result<Option<Norm>> {
            if !on {
                return Ok(None);
            }
            Norm::new(p, src, &format!("{n}.{name}"), cfg.hidden_size, l.norm, l.norm_eps, dev).map(Some)
        };
        let k = l.block;
        let input_layernorm = norm("input_layernorm", k != BlockKind::PostNorm)?;
        let post_attention_layernorm = norm("post_attention_layernorm", true)?;
        let pre_feedforward_layernorm = norm("pre_feedforward_layernorm", k == BlockKind::Sandwich)?;
        let post_feedforward_layernorm = norm("post_feedforward_layernorm", matches!(k, BlockKind::Sandwich | BlockKind::PostNorm))?;
        let local = l.rope_local.is_some() && cfg.layer_type(i as usize) == crate::model::arch::LayerType::Sliding;
        Ok(Block {
            self_attn,
            mlp,
            input_layernorm,
            post_attention_layernorm,
            pre_feedforward_layernorm,
            post_feedforward_layernorm,
            kind: k,
            rope: local as usize,
        })
    }

    fn shallow(&self) -> Block {
        Block {
            self_attn: self.self_attn.shallow(),
            mlp: self.mlp.shallow(),
            input_layernorm: self.input_layernorm.as_ref().map(Norm::shallow),
            post_attention_layernorm: self.post_attention_layernorm.as_ref().map(Norm::shallow),
            pre_feedforward_layernorm: self.pre_feedforward_layernorm.as_ref().map(Norm::shallow),
            post_feedforward_layernorm: self.post_feedforward_layernorm.as_ref().map(Norm::shallow),
            kind: self.kind,
            rope: self.rope,
        }
    }

    /// The block's linear layers (attention, then MLP).
    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = self.self_attn.linears();
        v.extend(self.mlp.linears());
        v
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = self.self_attn.linears_mut();
        v.extend(self.mlp.linears_mut());
        v
    }

    /// The block's norms (q/k norms included).
    pub fn norms(&self) -> Vec<&Norm> {
        let mut v: Vec<&Norm> =
            [&self.input_layernorm, &self.post_attention_layernorm, &self.pre_feedforward_layernorm, &self.post_feedforward_layernorm]
                .into_iter()
                .flatten()
                .collect();
        v.extend(self.self_attn.norms());
        v
    }

    /// The block's tensors that require grad (what training updates).
    fn trained(&self) -> Vec<&Tensor> {
        self.linears()
            .into_iter()
            .flat_map(Linear::tensors)
            .chain(self.norms().into_iter().flat_map(Norm::tensors))
            .filter(|t| t.requires_grad())
            .collect()
    }

    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), masks: &Masks, cache: Option<(&mut LayerCache, i64)>) -> Tensor {
        let _s = span("block: residual adds");
        let norm = |n: &Option<Norm>, x: &Tensor| {
            let _s = span("norms");
            n.as_ref().expect("the block kind's norms exist").forward(x)
        };
        let attn = |x: &Tensor, cache| self.self_attn.forward(x, rope, masks, cache);
        match self.kind {
            BlockKind::PreNorm => {
                let h = x + attn(&norm(&self.input_layernorm, x), cache);
                &h + self.mlp.forward(&norm(&self.post_attention_layernorm, &h))
            }
            BlockKind::Parallel => {
                let a = attn(&norm(&self.input_layernorm, x), cache);
                self.mlp.forward(&norm(&self.post_attention_layernorm, x)) + a + x
            }
            BlockKind::Sandwich => {
                let h = x + norm(&self.post_attention_layernorm, &attn(&norm(&self.input_layernorm, x), cache));
                let m = self.mlp.forward(&norm(&self.pre_feedforward_layernorm, &h));
                &h + norm(&self.post_feedforward_layernorm, &m)
            }
            BlockKind::PostNorm => {
                let h = x + norm(&self.post_attention_layernorm, &attn(x, cache));
                &h + norm(&self.post_feedforward_layernorm, &self.mlp.forward(&h))
            }
        }
    }
}

/// What one pass of the body returns.
pub struct Hidden {
    /// Final hidden states after the final norm (what feeds the LM head; HF `hidden_states[-1]`): (B, T, D).
    pub last: Tensor,
    /// On request, all L + 1 hidden states in HF order (embeddings, after each block, the last one normed).
    pub all: Option<Vec<Tensor>>,
}

/// The decoder body: embeddings, blocks, final norm. Returns hidden states.
pub struct Decoder {
    pub embed_tokens: Tensor, // (V, D)
    pub layers: Vec<Block>,
    pub norm: Norm,
    /// The rotary embeddings: [global] or [global, local] (Gemma 3).
    pub ropes: Vec<Rope>,
    /// Embeddings multiplied by this (Gemma).
    embed_scale: Option<f64>,
    /// The sliding layers' window, if any layer slides.
    pub window: Option<i64>,
    /// Activation checkpointing (HF `gradient_checkpointing_enable()`): while autograd records,
    /// each block keeps only its input and is run again in backward (`ffi::checkpoint`). Less
    /// memory for training (one hidden state per block and token instead of every activation),
    /// one more forward of the trained blocks; gradients are the same.
    pub checkpointing: bool,
}

impl Decoder {
    /// Builds the body's parameters (names `model.*`) from `src` into `p`.
    pub fn new(p: &mut Params, src: &mut Source, cfg: &DecoderConfig, dev: Device) -> Result<Self> {
        let embed_tokens = p.get(src, "model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size], Init::Normal(INIT_STD), dev)?;
        let layers = (0..cfg.num_hidden_layers).map(|i| Block::new(p, src, i, cfg, dev)).collect::<Result<Vec<_>>>()?;
        let l = &cfg.layout;
        let norm = Norm::new(p, src, "model.norm", cfg.hidden_size, l.norm, l.norm_eps, dev)?;
        let mut ropes = vec![Rope::new(&l.rope, dev)];
        ropes.extend(l.rope_local.as_ref().map(|r| Rope::new(r, dev)));
        let slides = (0..layers.len()).any(|i| cfg.layer_type(i) == crate::model::arch::LayerType::Sliding);
        let window = l.sliding_window.filter(|_| slides);
        Ok(Decoder { embed_tokens, layers, norm, ropes, embed_scale: l.embed_scale, window, checkpointing: false })
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false); // (B, T, D)
        match self.embed_scale {
            // transformers multiplies by sqrt(D) in the embeddings' dtype.
            Some(s) => x * Tensor::from(s).to_kind(self.embed_tokens.kind()).to_device(ids.device()),
            None => x,
        }
    }

    fn rope_tables(&self, positions: &Tensor) -> Vec<(Tensor, Tensor)> {
        self.ropes.iter().map(|r| r.cos_sin(positions)).collect()
    }

    /// The masks of a full-sequence pass over left-padded sequences with padding mask `mask` (B, T).
    pub fn masks(&self, mask: &Tensor) -> Masks {
        Masks::for_sequence(mask, self.window)
    }

    /// ids (B, T) int64, positions (B, T), `masks` for this call. With a cache, slots
    /// [cache.len, cache.len + T) are written and `cache.len` advances.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, masks: &Masks, mut cache: Option<&mut KvCache>, all_hidden: bool) -> Hidden {
        let prep = span("embedding and RoPE tables");
        let mut x = self.embed(ids);
        let ropes = self.rope_tables(positions);
        drop(prep);
        let mut all = if all_hidden { Some(vec![]) } else { None };
        let start = cache.as_ref().map(|c| c.len).unwrap_or(0);
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(a) = all.as_mut() {
                a.push(x.shallow_clone());
            }
            let rope = &ropes[layer.rope];
            x = match cache.as_mut() {
                Some(c) => layer.forward(&x, rope, masks, Some((&mut c.layers[i], start))),
                None => self.block(layer, &x, rope, masks),
            };
        }
        if let Some(c) = cache {
            c.len = start + ids.size()[1];
        }
        let last = {
            let _s = span("norms");
            self.norm.forward(&x)
        };
        if let Some(a) = all.as_mut() {
            a.push(last.shallow_clone());
        }
        Hidden { last, all }
    }

    /// Embeddings and blocks [0, k) of a full-sequence pass: the input of block k, (B, T, D).
    pub fn forward_prefix(&self, ids: &Tensor, positions: &Tensor, masks: &Masks, k: usize) -> Tensor {
        let ropes = self.rope_tables(positions);
        let mut x = self.embed(ids);
        for layer in &self.layers[..k] {
            x = self.block(layer, &x, &ropes[layer.rope], masks);
        }
        x
    }

    /// Blocks [k, L) and the final norm from `x`, the input of block k: the final hidden states.
    pub fn forward_suffix(&self, x: &Tensor, positions: &Tensor, masks: &Masks, k: usize) -> Tensor {
        let ropes = self.rope_tables(positions);
        let mut x = x.shallow_clone();
        for layer in &self.layers[k..] {
            x = self.block(layer, &x, &ropes[layer.rope], masks);
        }
        self.norm.forward(&x)
    }

    /// One block of a full-sequence pass, checkpointed when `checkpointing` is on, autograd
    /// records, and the block has something to differentiate (trained weights or an input that
    /// needs a gradient).
    fn block(&self, layer: &Block, x: &Tensor, rope: &(Tensor, Tensor), masks: &Masks) -> Tensor {
        if !self.checkpointing || !crate::ffi::grad_enabled() {
            return layer.forward(x, rope, masks, None);
        }
        let trained = layer.trained();
        if trained.is_empty() && !x.requires_grad() {
            return layer.forward(x, rope, masks, None);
        }
        let (b, rope, masks) = (layer.shallow(), (rope.0.shallow_clone(), rope.1.shallow_clone()), masks.shallow());
        crate::ffi::checkpoint(x, &trained, Box::new(move |x| b.forward(x, &rope, &masks, None)))
            .unwrap_or_else(|e| panic!("checkpointed block: {e}"))
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// Positions `cumsum(mask) - 1`, clamped at 0 for the pads: (B, T) int64.
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::causal_lm::CausalLm;
    use crate::model::precision::Precision;

    pub fn tiny_config() -> DecoderConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "tie_word_embeddings": true, "rms_norm_eps": 1e-5
        }))
        .unwrap()
    }

    #[test]
    fn left_padding_does_not_change_the_result() {
        let m = CausalLm::random(&tiny_config(), 0, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[5i64, 6, 7, 8]).view([1, 4]);
        let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
        let a = m.forward(&ids, &mask).unwrap();
        let ids_p = Tensor::from_slice(&[0i64, 0, 5, 6, 7, 8]).view([1, 6]);
        let mask_p = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1]).view([1, 6]);
        let b = m.forward(&ids_p, &mask_p).unwrap().narrow(1, 2, 4);
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn token_logprobs_equal_log_softmax_gather() {
        let m = CausalLm::random(&tiny_config(), 1, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let mask = Tensor::ones([1, 6], (Kind::Int64, Device::Cpu));
        let (lp, _) = m.token_logprobs(&ids, &mask, 0.7, 2).unwrap();
        let naive = (m.forward(&ids, &mask).unwrap() / 0.7).log_softmax(-1, Kind::Float).narrow(1, 1, 4).gather(
            -1,
            &ids.narrow(1, 2, 4).unsqueeze(-1),
            false,
        );
        let d = (lp - naive.squeeze_dim(-1)).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn frozen_trunk_gives_the_same_logprobs_and_gradients() {
        use crate::train::{apply_trainable, Trainable};
        let mut cfg = tiny_config();
        cfg.num_hidden_layers = 4;
        // (Other tests reseed torch's global RNG concurrently: copy the values, do not reseed.)
        let mut m = CausalLm::random(&cfg, 3, Device::Cpu).unwrap();
        let reference = CausalLm::random(&cfg, 5, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for ((_, a), (_, b)) in reference.params.named().iter().zip(m.params.named()) {
                a.shallow_clone().copy_(b);
            }
        });
        apply_trainable(&mut m, &Trainable::Top { layers: 1, head: false }, 0).unwrap();
        assert_eq!(m.frozen_prefix(), 3);
        assert!(m.same_prefix(&reference, 3));
        // Left-padded batch: the trunk path equals the full pass, values and gradients.
        let ids = Tensor::from_slice(&[0i64, 0, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7, 8, 9]).view([2, 7]);
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 7]);
        let (a, _) = m.token_logprobs(&ids, &mask, 0.7, 3).unwrap();
        let trainable: Vec<Tensor> = m.params.trainable().into_iter().map(|(_, t)| t).collect();
        let ga = Tensor::run_backward(&[a.sum(Kind::Float)], &trainable, false, false);
        let x = m.trunk(&ids, &mask, 3).unwrap();
        assert!(!x.requires_grad());
        let (b, _) = m.token_logprobs_from_trunk(&x, 3, &ids, &mask, 0.7, 3).unwrap();
        let gb = Tensor::run_backward(&[b.sum(Kind::Float)], &trainable, false, false);
        assert!((&a - &b).abs().max().double_value(&[]) < 1e-5);
        for (u, v) in ga.iter().zip(&gb) {
            assert!((u - v).abs().max().double_value(&[]) < 1e-5);
        }
        // A different block 0, trained embeddings or LoRA everywhere: nothing shared.
        let other = CausalLm::random(&cfg, 4, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for ((n, a), (_, b)) in other.params.named().iter().zip(m.params.named()) {
                if !n.starts_with("model.layers.0.") {
                    a.shallow_clone().copy_(b);
                }
            }
        });
        assert!(!m.same_prefix(&other, 3) && !other.same_prefix(&m, 1));
        assert!(other.same_prefix(&m, 0), "the embeddings are the same");
        let mut e = CausalLm::random(&cfg, 3, Device::Cpu).unwrap();
        apply_trainable(&mut e, &Trainable::Top { layers: 1, head: true }, 0).unwrap();
        assert_eq!(e.frozen_prefix(), 0, "tied head = embeddings train");
        let mut l = CausalLm::random(&cfg, 3, Device::Cpu).unwrap();
        apply_trainable(&mut l, &Trainable::Lora { rank: 2, alpha: 4.0, targets: vec!["q_proj".into()] }, 0).unwrap();
        assert_eq!(l.frozen_prefix(), 0);
        assert!(m.token_logprobs_from_trunk(&x.narrow(1, 0, 5), 3, &ids, &mask, 0.7, 3).is_err());
    }

    /// Gradients of `token_logprobs(...).sum()` with respect to `m`'s trainable tensors (and the
    /// log-probs), with or without activation checkpointing.
    fn grads(m: &mut CausalLm, checkpointing: bool, ids: &Tensor, mask: &Tensor) -> (Tensor, Vec<Tensor>) {
        m.model.checkpointing = checkpointing;
        let (lp, _) = m.token_logprobs(ids, mask, 0.7, 2).unwrap();
        let trainable: Vec<Tensor> = m.params.trainable().into_iter().map(|(_, t)| t).collect();
        // `backward` (accumulating into .grad, as training does): the checkpointed blocks run
        // their own backward inside it.
        m.params.trainable().iter().for_each(|(_, t)| {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        });
        lp.sum(Kind::Float).backward();
        (lp.detach(), trainable.iter().map(|t| t.grad().copy()).collect())
    }

    #[test]
    fn checkpointing_gives_the_same_gradients() {
        use crate::train::{apply_trainable, Trainable};
        let mut cfg = tiny_config();
        cfg.num_hidden_layers = 3;
        let ids = Tensor::from_slice(&[0i64, 0, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7, 8, 9]).view([2, 7]);
        let padded = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 7]);
        let full = Tensor::ones([2, 7], (Kind::Int64, Device::Cpu));
        let setups = [
            Trainable::All,                            // every block, input needs grad (embeddings train)
            Trainable::Top { layers: 1, head: false }, // frozen blocks below: input without grad
            Trainable::Lora { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "down_proj".into()] },
        ];
        for (i, tr) in setups.iter().enumerate() {
            for mask in [&padded, &full] {
                let mut m = CausalLm::random(&cfg, 11, Device::Cpu).unwrap();
                apply_trainable(&mut m, tr, 0).unwrap();
                let (a, ga) = grads(&mut m, false, &ids, mask);
                let runs = crate::ffi::BLOCK_RUNS.load(std::sync::atomic::Ordering::Relaxed);
                let (b, gb) = grads(&mut m, true, &ids, mask);
                // Each block with something to train ran twice: forward, then again in backward.
                let trained = if i == 1 { 1 } else { 3 };
                let ran = crate::ffi::BLOCK_RUNS.load(std::sync::atomic::Ordering::Relaxed) - runs;
                assert_eq!(ran, 2 * trained, "setup {i}: checkpointed block runs");
                assert!((&a - &b).abs().max().double_value(&[]) < 1e-6, "setup {i}: log-probs differ");
                assert!(!ga.is_empty() && ga.len() == gb.len());
                let norm: f64 = ga.iter().map(|g| g.abs().sum(Kind::Double).double_value(&[])).sum();
                assert!(norm > 0.0, "setup {i}: no gradient at all");
                for (u, v) in ga.iter().zip(&gb) {
                    let d = (u - v).abs().max().double_value(&[]);
                    assert!(d < 1e-5, "setup {i}: gradients differ by {d}");
                }
            }
        }
        // Under bf16 autocast the recomputation runs under autocast too (backward runs outside the
        // caller's autocast scope): the same gradients as the plain bf16 pass.
        let mut m = CausalLm::random(&cfg, 11, Device::Cpu).unwrap();
        m.precision = Precision::Bf16;
        apply_trainable(&mut m, &Trainable::Top { layers: 2, head: false }, 0).unwrap();
        let (a, ga) = grads(&mut m, false, &ids, &padded);
        let (b, gb) = grads(&mut m, true, &ids, &padded);
        assert!((&a - &b).abs().max().double_value(&[]) < 1e-6);
        for (u, v) in ga.iter().zip(&gb) {
            let d = (u - v).abs().max().double_value(&[]);
            assert!(d < 1e-6, "bf16: gradients differ by {d}");
        }
        // Without grad (generation, reference passes) nothing is checkpointed: same values.
        let (c, _) = tch::no_grad(|| m.token_logprobs(&ids, &padded, 0.7, 2).unwrap());
        assert!((&a - &c).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn generation_in_calls_fits_together_like_one_call() {
        use crate::model::generate::{generate, generate_in_calls, GenerateConfig, Sampling};
        let mut cfg = tiny_config();
        cfg.num_hidden_layers = 2;
        let m = CausalLm::random(&cfg, 7, Device::Cpu).unwrap();
        // Prompts of different lengths, so the calls pad differently; no EOS, so lengths agree.
        let prompts: Vec<Vec<i64>> = vec![vec![5, 6, 7], vec![8], vec![9, 10, 11, 12, 13], vec![3, 4]];
        let greedy = GenerateConfig {
            max_new_tokens: 5,
            sampling: Sampling::Greedy,
            return_hidden: true,
            return_trunk: Some(1),
            ..Default::default()
        };
        let one = generate(&m, &prompts, &greedy).unwrap();
        let parts = generate_in_calls(&m, &prompts, &greedy, 2).unwrap();
        // Greedy tokens do not depend on the split; the merged prompts are left-padded to the longest.
        assert!(one.ids.equal(&parts.ids) && one.prompt_mask.equal(&parts.prompt_mask));
        assert!((&one.logprobs - &parts.logprobs).abs().max().double_value(&[]) < 1e-5);
        let keep = one.sequences().1.to_kind(Kind::Float).unsqueeze(-1);
        let (h1, h2) = (one.hidden.unwrap(), parts.hidden.unwrap());
        assert!(((&h1 - &h2) * &keep).abs().max().double_value(&[]) < 1e-4);
        assert_eq!(parts.trunk.unwrap().size(), h1.size());
        // Sampled, with EOS: responses end at different steps in each call; the merged log-probs
        // are still the trainer's on the merged sequences.
        let sampled = GenerateConfig { max_new_tokens: 6, eos_ids: vec![2], pad_id: 0, seed: 3, ..Default::default() };
        let g = generate_in_calls(&m, &prompts, &sampled, 3).unwrap();
        let (seq, seq_mask) = g.sequences();
        let (lp, _) = m.token_logprobs(&seq, &seq_mask, 0.7, g.prompt_ids.size()[1]).unwrap();
        let mf = g.mask.to_kind(Kind::Float);
        assert!(((lp * &mf) - &g.logprobs).abs().max().double_value(&[]) < 1e-4);
        assert_eq!(g.ids.size()[0], 4);
    }

    #[test]
    fn too_long_and_bad_from_are_errors() {
        let m = CausalLm::random(&tiny_config(), 1, Device::Cpu).unwrap();
        let ids = Tensor::zeros([1, 200], (Kind::Int64, Device::Cpu));
        let e = m.forward(&ids, &ids.ones_like()).err().unwrap().to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
        let ids = Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu));
        assert!(m.token_logprobs(&ids, &ids.ones_like(), 1.0, 4).is_err());
    }
}
