//! The whole Llama-family decoder (Llama 2/3, SmolLM2, Qwen2): RoPE (with Llama 3 scaling), GQA,
//! RMSNorm, SwiGLU, optional q/k/v biases, tied or untied embeddings. HF weight names throughout.
//!
//! Shapes: B = batch, T = tokens in this call, S = cached slots, D = hidden size,
//! nh / nkv = query / key-value heads, hd = head dim, V = vocab.
//!
//! Padding: sequences are left-padded with an attention mask; positions are `cumsum(mask) - 1`, as
//! HF's `generate` does, so a padded row computes exactly what the unpadded sequence computes.
use crate::error::Result;
use crate::model::config::LlamaConfig;
use crate::model::kv_cache::KvCache;
use crate::model::lora::LoraAdapter;
use crate::model::params::{Init, Params, Source};
use tch::{Device, Kind, Tensor};

const INIT_STD: f64 = 0.02; // HF LlamaConfig.initializer_range

/// A linear layer y = x W^T + b, with an optional LoRA adapter.
pub struct Linear {
    pub name: String,
    pub weight: Tensor, // (out, in)
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub(crate) fn new(p: &mut Params, src: &mut Source, name: &str, in_dim: i64, out_dim: i64, bias: bool, dev: Device) -> Result<Self> {
        let weight = p.get(src, &format!("{name}.weight"), &[out_dim, in_dim], Init::Normal(INIT_STD), dev)?;
        let bias = if bias { Some(p.get(src, &format!("{name}.bias"), &[out_dim], Init::Zeros, dev)?) } else { None };
        Ok(Linear { name: name.to_string(), weight, bias, lora: None })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = crate::model::packed::linear(x, &self.weight, self.bias.as_ref());
        match &self.lora {
            Some(l) => y + l.forward(x),
            None => y,
        }
    }

    /// Wraps this layer with a fresh LoRA adapter whose tensors are registered in `p` as
    /// `{name}.lora_A.weight` / `{name}.lora_B.weight` (PEFT's names without the adapter name).
    pub fn add_lora(&mut self, p: &mut Params, rank: i64, alpha: f64) {
        let (out_dim, in_dim) = (self.weight.size()[0], self.weight.size()[1]);
        let (a, b) = LoraAdapter::init(in_dim, out_dim, rank);
        let dev = self.weight.device();
        let a = p.add(&format!("{}.lora_A.weight", self.name), a.to_device(dev));
        let b = p.add(&format!("{}.lora_B.weight", self.name), b.to_device(dev));
        self.lora = Some(LoraAdapter { a, b, scale: alpha / rank as f64 });
    }

    /// A copy sharing every tensor (storage and gradient) with this layer.
    fn shallow(&self) -> Linear {
        Linear {
            name: self.name.clone(),
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: self.lora.as_ref().map(|l| LoraAdapter { a: l.a.shallow_clone(), b: l.b.shallow_clone(), scale: l.scale }),
        }
    }

    /// The layer's tensors, adapter included.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.weight];
        v.extend(self.bias.as_ref());
        if let Some(l) = &self.lora {
            v.extend([&l.a, &l.b]);
        }
        v
    }

    /// The weight with any adapter folded in (export).
    pub fn merged_weight(&self) -> Tensor {
        match &self.lora {
            Some(l) => self.weight.detach() + l.delta(),
            None => self.weight.detach(),
        }
    }
}

pub struct RmsNorm {
    pub weight: Tensor, // (D)
    eps: f64,
}

impl RmsNorm {
    fn new(p: &mut Params, src: &mut Source, name: &str, dim: i64, eps: f64, dev: Device) -> Result<Self> {
        Ok(RmsNorm { weight: p.get(src, &format!("{name}.weight"), &[dim], Init::Ones, dev)?, eps })
    }

    fn shallow(&self) -> RmsNorm {
        RmsNorm { weight: self.weight.shallow_clone(), eps: self.eps }
    }

    /// HF LlamaRMSNorm: computed in f32, cast back, then scaled.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        (xf * (var + self.eps).rsqrt()).to_kind(kind) * &self.weight
    }
}

/// Rotary embedding: inverse frequencies, with Llama 3 scaling applied when configured.
pub struct Rope {
    inv_freq: Tensor, // (hd/2) f32
}

impl Rope {
    pub fn new(cfg: &LlamaConfig, dev: Device) -> Self {
        let hd = cfg.head_dim();
        let exps = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / hd as f64;
        let mut inv_freq = Tensor::from(cfg.rope_theta as f32).pow(&exps).reciprocal();
        if let Some(rs) = cfg.rope_scaling.as_ref().filter(|r| r.rope_type == "llama3") {
            // transformers modeling_rope_utils._compute_llama3_parameters
            let old = rs.original_max_position_embeddings as f64;
            let (lo_wl, hi_wl) = (old / rs.low_freq_factor, old / rs.high_freq_factor);
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = inv_freq.where_self(&wavelen.le(lo_wl), &(&inv_freq / rs.factor));
            let smooth = (old / &wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
            let smoothed: Tensor = (1.0 - &smooth) * &scaled / rs.factor + &smooth * &scaled;
            let medium = wavelen.ge(hi_wl).logical_and(&wavelen.le(lo_wl));
            inv_freq = smoothed.where_self(&medium, &scaled);
        }
        Rope { inv_freq: inv_freq.to_device(dev) }
    }

    /// cos, sin for `positions` (B, T): each (B, 1, T, hd), in f32.
    pub fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq; // (B, T, hd/2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // (B, 1, T, hd)
        (emb.cos(), emb.sin())
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

/// RoPE in the tables' precision (f32): under bf16 autocast q and k come out of their
/// projections in bf16 and leave in f32, as in transformers (whose rotary tables take the dtype
/// of the f32 residual stream); attention then casts them back to bf16.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    (x * cos) + rotate_half(x) * sin
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: &mut Params, src: &mut Source, name: &str, cfg: &LlamaConfig, dev: Device) -> Result<Self> {
        let (d, nh, nkv, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
        let qkv_b = cfg.qkv_bias();
        Ok(Attention {
            q_proj: Linear::new(p, src, &format!("{name}.q_proj"), d, nh * hd, qkv_b, dev)?,
            k_proj: Linear::new(p, src, &format!("{name}.k_proj"), d, nkv * hd, qkv_b, dev)?,
            v_proj: Linear::new(p, src, &format!("{name}.v_proj"), d, nkv * hd, qkv_b, dev)?,
            o_proj: Linear::new(p, src, &format!("{name}.o_proj"), nh * hd, d, cfg.o_bias(), dev)?,
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    fn shallow(&self) -> Attention {
        Attention {
            q_proj: self.q_proj.shallow(),
            k_proj: self.k_proj.shallow(),
            v_proj: self.v_proj.shallow(),
            o_proj: self.o_proj.shallow(),
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
        }
    }

    /// x (B, T, D); `mask`: which keys each query attends; cache slots [start, start + T) get written.
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &AttnMask,
        cache: Option<(&mut crate::model::kv_cache::LayerCache, i64)>,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("(B, T, D) checked at the model entry");
        let q = self.q_proj.forward(x).view([b, t, self.n_heads, self.head_dim]).transpose(1, 2); // (B, nh, T, hd)
        let k = self.k_proj.forward(x).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2); // (B, nkv, T, hd)
        let v = self.v_proj.forward(x).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let q = apply_rope(&q, &rope.0, &rope.1);
        let k = apply_rope(&k, &rope.0, &rope.1);
        let (k, v) = match cache {
            Some((c, start)) => c.append(start, &k, &v), // (B, nkv, S, hd)
            None => (k, v),
        };
        let gqa = self.n_kv != self.n_heads;
        let y = match mask {
            AttnMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, gqa),
            AttnMask::Explicit(m) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, None, gqa),
        };
        let y = y.transpose(1, 2).reshape([b, t, self.n_heads * self.head_dim]); // (B, T, nh*hd)
        self.o_proj.forward(&y)
    }
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn new(p: &mut Params, src: &mut Source, name: &str, cfg: &LlamaConfig, dev: Device) -> Result<Self> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: Linear::new(p, src, &format!("{name}.gate_proj"), d, f, false, dev)?,
            up_proj: Linear::new(p, src, &format!("{name}.up_proj"), d, f, false, dev)?,
            down_proj: Linear::new(p, src, &format!("{name}.down_proj"), f, d, false, dev)?,
        })
    }

    fn shallow(&self) -> Mlp {
        Mlp { gate_proj: self.gate_proj.shallow(), up_proj: self.up_proj.shallow(), down_proj: self.down_proj.shallow() }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

pub struct Block {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl Block {
    fn new(p: &mut Params, src: &mut Source, i: i64, cfg: &LlamaConfig, dev: Device) -> Result<Self> {
        let n = format!("model.layers.{i}");
        let eps = cfg.rms_norm_eps;
        Ok(Block {
            self_attn: Attention::new(p, src, &format!("{n}.self_attn"), cfg, dev)?,
            mlp: Mlp::new(p, src, &format!("{n}.mlp"), cfg, dev)?,
            input_layernorm: RmsNorm::new(p, src, &format!("{n}.input_layernorm"), cfg.hidden_size, eps, dev)?,
            post_attention_layernorm: RmsNorm::new(p, src, &format!("{n}.post_attention_layernorm"), cfg.hidden_size, eps, dev)?,
        })
    }

    fn shallow(&self) -> Block {
        Block {
            self_attn: self.self_attn.shallow(),
            mlp: self.mlp.shallow(),
            input_layernorm: self.input_layernorm.shallow(),
            post_attention_layernorm: self.post_attention_layernorm.shallow(),
        }
    }

    /// The block's tensors that require grad (what training updates).
    fn trained(&self) -> Vec<&Tensor> {
        let a = &self.self_attn;
        let m = &self.mlp;
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
            .into_iter()
            .flat_map(Linear::tensors)
            .chain([&self.input_layernorm.weight, &self.post_attention_layernorm.weight])
            .filter(|t| t.requires_grad())
            .collect()
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &AttnMask,
        cache: Option<(&mut crate::model::kv_cache::LayerCache, i64)>,
    ) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), rope, mask, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
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
pub struct Llama {
    pub embed_tokens: Tensor, // (V, D)
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    pub rope: Rope,
    /// Activation checkpointing (HF `gradient_checkpointing_enable()`): while autograd records,
    /// each block keeps only its input and is run again in backward (`ffi::checkpoint`). Less
    /// memory for training (one hidden state per block and token instead of every activation),
    /// one more forward of the trained blocks; gradients are the same.
    pub checkpointing: bool,
}

impl Llama {
    /// Builds the body's parameters (HF names `model.*`) from `src` into `p`.
    pub fn new(p: &mut Params, src: &mut Source, cfg: &LlamaConfig, dev: Device) -> Result<Self> {
        let embed_tokens = p.get(src, "model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size], Init::Normal(INIT_STD), dev)?;
        let layers = (0..cfg.num_hidden_layers).map(|i| Block::new(p, src, i, cfg, dev)).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(p, src, "model.norm", cfg.hidden_size, cfg.rms_norm_eps, dev)?;
        Ok(Llama { embed_tokens, layers, norm, rope: Rope::new(cfg, dev), checkpointing: false })
    }

    /// ids (B, T) int64, positions (B, T), mask (B, 1, T, S) bool. With a cache, slots
    /// [cache.len, cache.len + T) are written and `cache.len` advances.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &AttnMask, mut cache: Option<&mut KvCache>, all_hidden: bool) -> Hidden {
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false); // (B, T, D)
        let rope = self.rope.cos_sin(positions);
        let mut all = if all_hidden { Some(vec![]) } else { None };
        let start = cache.as_ref().map(|c| c.len).unwrap_or(0);
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(a) = all.as_mut() {
                a.push(x.shallow_clone());
            }
            x = match cache.as_mut() {
                Some(c) => layer.forward(&x, &rope, mask, Some((&mut c.layers[i], start))),
                None => self.block(layer, &x, &rope, mask),
            };
        }
        if let Some(c) = cache {
            c.len = start + ids.size()[1];
        }
        let last = self.norm.forward(&x);
        if let Some(a) = all.as_mut() {
            a.push(last.shallow_clone());
        }
        Hidden { last, all }
    }
}

impl Llama {
    /// Embeddings and blocks [0, k) of a full-sequence pass: the input of block k, (B, T, D).
    pub fn forward_prefix(&self, ids: &Tensor, positions: &Tensor, mask: &AttnMask, k: usize) -> Tensor {
        let rope = self.rope.cos_sin(positions);
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        for layer in &self.layers[..k] {
            x = self.block(layer, &x, &rope, mask);
        }
        x
    }

    /// Blocks [k, L) and the final norm from `x`, the input of block k: the final hidden states.
    pub fn forward_suffix(&self, x: &Tensor, positions: &Tensor, mask: &AttnMask, k: usize) -> Tensor {
        let rope = self.rope.cos_sin(positions);
        let mut x = x.shallow_clone();
        for layer in &self.layers[k..] {
            x = self.block(layer, &x, &rope, mask);
        }
        self.norm.forward(&x)
    }

    /// One block of a full-sequence pass, checkpointed when `checkpointing` is on, autograd
    /// records, and the block has something to differentiate (trained weights or an input that
    /// needs a gradient).
    fn block(&self, layer: &Block, x: &Tensor, rope: &(Tensor, Tensor), mask: &AttnMask) -> Tensor {
        if !self.checkpointing || !crate::ffi::grad_enabled() {
            return layer.forward(x, rope, mask, None);
        }
        let trained = layer.trained();
        if trained.is_empty() && !x.requires_grad() {
            return layer.forward(x, rope, mask, None);
        }
        let (b, rope, mask) = (layer.shallow(), (rope.0.shallow_clone(), rope.1.shallow_clone()), mask.shallow());
        crate::ffi::checkpoint(x, &trained, Box::new(move |x| b.forward(x, &rope, &mask, None)))
            .unwrap_or_else(|e| panic!("checkpointed block: {e}"))
    }
}

/// Positions `cumsum(mask) - 1`, clamped at 0 for the pads: (B, T) int64.
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

/// Which keys each query attends.
pub enum AttnMask {
    /// Plain causal attention over unpadded sequences, queries and keys aligned (SDPA's
    /// `is_causal`, whose kernels skip the masked half instead of reading a mask).
    Causal,
    /// An explicit (B, 1, T, S) bool mask, true = attend.
    Explicit(Tensor),
}

impl AttnMask {
    fn shallow(&self) -> AttnMask {
        match self {
            AttnMask::Causal => AttnMask::Causal,
            AttnMask::Explicit(m) => AttnMask::Explicit(m.shallow_clone()),
        }
    }
}

/// The attention mask for full sequences with padding mask `mask` (B, T): `Causal` when nothing
/// is padded (one host sync), else `causal_mask(mask)`.
pub fn attn_mask(mask: &Tensor) -> AttnMask {
    if mask.numel() == 0 || mask.to_kind(Kind::Bool).all().int64_value(&[]) == 1 {
        AttnMask::Causal
    } else {
        AttnMask::Explicit(causal_mask(mask))
    }
}

/// Causal mask over a full (left-padded) sequence, (B, 1, T, T) bool: query i attends key j <= i
/// when j is not padding; every query also attends itself, so pad rows stay finite (they are
/// masked out downstream).
pub fn causal_mask(mask: &Tensor) -> Tensor {
    let (_, t) = mask.size2().expect("(B, T) mask");
    let dev = mask.device();
    let causal = Tensor::ones([t, t], (Kind::Bool, dev)).tril(0);
    let eye = Tensor::eye(t, (Kind::Bool, dev));
    let valid = mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1); // (B, 1, 1, T)
    causal.logical_and(&valid).logical_or(&eye)
}

impl Llama {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::causal_lm::CausalLm;
    use crate::model::precision::Precision;

    pub fn tiny_config() -> LlamaConfig {
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
