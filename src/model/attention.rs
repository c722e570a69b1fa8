//! Self-attention with GQA, optional q/k norms, partial RoPE, a custom scale, soft-capping and a
//! sliding window; and the masks: which keys each query attends, per layer type.
//!
//! Shapes: B = batch, T = tokens in this call, S = key slots, D = hidden size, nh / nkv = query /
//! key-value heads, hd = head dim.
use crate::error::Result;
use crate::ffi;
use crate::model::arch::{LayerType, QkNorm, QkvKind};
use crate::model::config::DecoderConfig;
use crate::model::kernels;
use crate::model::kv_cache::LayerCache;
use crate::model::layers::{apply_rope, Linear, Norm};
use crate::model::params::{Params, Source};
use crate::model::precision::compute_kind;
use crate::profile::span;
use tch::{Device, Kind, Tensor};

/// How q, k and v come out of the input.
pub enum Qkv {
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    /// One projection; `per_head`: rows are [q_h; k_h; v_h] per head (GPT-NeoX), else [q; k; v].
    Fused {
        qkv_proj: Linear,
        per_head: bool,
    },
}

pub struct Attention {
    pub qkv: Qkv,
    pub o_proj: Linear,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    qk_norm: QkNorm,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
    scale: Option<f64>,
    softcap: Option<f64>,
    pub layer_type: LayerType,
}

impl Attention {
    pub fn new(p: &mut Params, src: &mut Source, name: &str, cfg: &DecoderConfig, i: usize, dev: Device) -> Result<Self> {
        let (d, nh, nkv, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
        let l = &cfg.layout;
        let lin = |p: &mut Params, src: &mut Source, n: &str, i, o, b| Linear::new(p, src, &format!("{name}.{n}"), i, o, b, dev);
        let qkv = match l.qkv {
            QkvKind::Separate => Qkv::Separate {
                q_proj: lin(p, src, "q_proj", d, nh * hd, l.qkv_bias)?,
                k_proj: lin(p, src, "k_proj", d, nkv * hd, l.qkv_bias)?,
                v_proj: lin(p, src, "v_proj", d, nkv * hd, l.qkv_bias)?,
            },
            QkvKind::Fused | QkvKind::FusedPerHead => Qkv::Fused {
                qkv_proj: lin(p, src, "qkv_proj", d, (nh + 2 * nkv) * hd, l.qkv_bias)?,
                per_head: l.qkv == QkvKind::FusedPerHead,
            },
        };
        let o_proj = lin(p, src, "o_proj", nh * hd, d, l.o_bias)?;
        let (qd, kd) = match l.qk_norm {
            QkNorm::PerHead => (hd, hd),
            _ => (nh * hd, nkv * hd),
        };
        let norm = |p: &mut Params, src: &mut Source, n: &str, dim| Norm::new(p, src, &format!("{name}.{n}"), dim, l.norm, l.norm_eps, dev);
        let (q_norm, k_norm) = match l.qk_norm {
            QkNorm::None => (None, None),
            _ => (Some(norm(p, src, "q_norm", qd)?), Some(norm(p, src, "k_norm", kd)?)),
        };
        Ok(Attention {
            qkv,
            o_proj,
            q_norm,
            k_norm,
            qk_norm: l.qk_norm,
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
            scale: l.attn_scale,
            softcap: l.attn_softcap,
            layer_type: cfg.layer_type(i),
        })
    }

    pub fn shallow(&self) -> Attention {
        Attention {
            qkv: match &self.qkv {
                Qkv::Separate { q_proj, k_proj, v_proj } => {
                    Qkv::Separate { q_proj: q_proj.shallow(), k_proj: k_proj.shallow(), v_proj: v_proj.shallow() }
                }
                Qkv::Fused { qkv_proj, per_head } => Qkv::Fused { qkv_proj: qkv_proj.shallow(), per_head: *per_head },
            },
            o_proj: self.o_proj.shallow(),
            q_norm: self.q_norm.as_ref().map(Norm::shallow),
            k_norm: self.k_norm.as_ref().map(Norm::shallow),
            qk_norm: self.qk_norm,
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
            scale: self.scale,
            softcap: self.softcap,
            layer_type: self.layer_type,
        }
    }

    pub fn linears(&self) -> Vec<&Linear> {
        let mut v = match &self.qkv {
            Qkv::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            Qkv::Fused { qkv_proj, .. } => vec![qkv_proj],
        };
        v.push(&self.o_proj);
        v
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = match &mut self.qkv {
            Qkv::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            Qkv::Fused { qkv_proj, .. } => vec![qkv_proj],
        };
        v.push(&mut self.o_proj);
        v
    }

    pub fn norms(&self) -> Vec<&Norm> {
        self.q_norm.iter().chain(self.k_norm.iter()).collect()
    }

    /// q (B, nh, T, hd), k and v (B, nkv, T, hd), before the q/k norms and RoPE.
    fn project(&self, x: &Tensor, b: i64, t: i64) -> (Tensor, Tensor, Tensor) {
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        match &self.qkv {
            Qkv::Separate { q_proj, k_proj, v_proj } => {
                let mut y = Linear::forward_many(&[q_proj, k_proj, v_proj], x).into_iter();
                let mut next = || y.next().expect("one output per projection");
                (next(), next(), next())
            }
            Qkv::Fused { qkv_proj, per_head: false } => {
                let y = qkv_proj.forward(x);
                (y.narrow(-1, 0, nh * hd), y.narrow(-1, nh * hd, nkv * hd), y.narrow(-1, (nh + nkv) * hd, nkv * hd))
            }
            Qkv::Fused { qkv_proj, per_head: true } => {
                // (B, T, nh, 3 hd): each head's q, k, v side by side (MHA only).
                let y = qkv_proj.forward(x).view([b, t, nh, 3 * hd]);
                let flat = |i: i64| y.narrow(-1, i * hd, hd).reshape([b, t, nh * hd]);
                (flat(0), flat(1), flat(2))
            }
        }
    }

    /// x (B, T, D); `masks`: which keys each query attends; cache slots [start, start + T) get written.
    pub fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), masks: &Masks, cache: Option<(&mut LayerCache, i64)>) -> Tensor {
        let (b, t, _) = x.size3().expect("(B, T, D) checked at the model entry");
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let (mut q, mut k, v) = {
            let _s = span("attn: q, k, v projections");
            self.project(x, b, t)
        };
        let rope_span = span("attn: heads, q/k norms, RoPE");
        if self.qk_norm == QkNorm::Whole {
            q = self.q_norm.as_ref().expect("q_norm").forward(&q);
            k = self.k_norm.as_ref().expect("k_norm").forward(&k);
        }
        let heads = |y: Tensor, n: i64| y.view([b, t, n, hd]).transpose(1, 2);
        let (mut q, mut k, v) = (heads(q, nh), heads(k, nkv), heads(v, nkv));
        if self.qk_norm == QkNorm::PerHead {
            q = self.q_norm.as_ref().expect("q_norm").forward(&q);
            k = self.k_norm.as_ref().expect("k_norm").forward(&k);
        }
        let q = apply_rope(&q, &rope.0, &rope.1);
        let k = apply_rope(&k, &rope.0, &rope.1);
        drop(rope_span);
        let (k, v) = match cache {
            Some((c, start)) => {
                let _s = span("attn: KV cache write");
                c.append(start, &k, &v) // (B, nkv, S, hd)
            }
            None => (k, v),
        };
        let mask = masks.get(self.layer_type);
        let attn_span = span("attn: softmax(q k^T) v");
        let y = match (self.softcap, mask) {
            // One decode token over the cache, in r2m's kernel: (B, 1, nh*hd) as it comes.
            (None, AttnMask::Explicit(m)) if t == 1 && kernels::apply_to(&q) => {
                let scale = self.scale.unwrap_or((hd as f64).powf(-0.5));
                ffi::decode_attention(&q, &k, &v, m, scale, ffi::KernelBuild::Best)
                    .unwrap_or_else(|e| panic!("decode attention over the KV cache: {e}"))
            }
            (None, _) => {
                let gqa = nkv != nh;
                let y = match mask {
                    AttnMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, self.scale, gqa),
                    AttnMask::Explicit(m) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, self.scale, gqa),
                };
                y.transpose(1, 2).reshape([b, t, nh * hd]) // (B, T, nh*hd)
            }
            (Some(cap), _) => self.capped_attention(&q, &k, &v, mask, cap).transpose(1, 2).reshape([b, t, nh * hd]),
        };
        drop(attn_span);
        let _s = span("attn: o projection");
        self.o_proj.forward(&y)
    }

    /// Eager attention with soft-capped scores, as transformers' `eager_attention_forward`:
    /// scores * scale, cap * tanh(scores / cap), the mask, softmax in f32.
    fn capped_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, cap: f64) -> Tensor {
        let rep = self.n_heads / self.n_kv;
        let (k, v) = if rep > 1 {
            (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None))
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        let (q, k, v) = (q.to_kind(v.kind()), k.to_kind(v.kind()), v);
        let scale = self.scale.unwrap_or((self.head_dim as f64).powf(-0.5));
        let scores = q.matmul(&k.transpose(-2, -1)) * scale;
        let scores = (scores / cap).tanh() * cap;
        let (tq, s) = (q.size()[2], k.size()[2]);
        let allowed = match mask {
            AttnMask::Causal => Tensor::ones([tq, s], (Kind::Bool, q.device())).tril(s - tq),
            AttnMask::Explicit(m) => m.shallow_clone(),
        };
        let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        scores.softmax(-1, compute_kind(scores.kind())).to_kind(v.kind()).matmul(&v)
    }
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
    pub fn shallow(&self) -> AttnMask {
        match self {
            AttnMask::Causal => AttnMask::Causal,
            AttnMask::Explicit(m) => AttnMask::Explicit(m.shallow_clone()),
        }
    }
}

/// The masks of one forward call: full attention, and the window's for sliding layers.
pub struct Masks {
    pub full: AttnMask,
    pub sliding: Option<AttnMask>,
}

impl Masks {
    pub fn get(&self, t: LayerType) -> &AttnMask {
        match (t, &self.sliding) {
            (LayerType::Sliding, Some(m)) => m,
            _ => &self.full,
        }
    }

    pub fn shallow(&self) -> Masks {
        Masks { full: self.full.shallow(), sliding: self.sliding.as_ref().map(AttnMask::shallow) }
    }

    /// Masks for full sequences with padding mask `mask` (B, T) (left padding): `Causal` when
    /// nothing is padded (one host sync) and the sequence fits the window, else explicit.
    pub fn for_sequence(mask: &Tensor, window: Option<i64>) -> Masks {
        let t = mask.size().get(1).copied().unwrap_or(0);
        let unpadded = mask.numel() == 0 || mask.to_kind(Kind::Bool).all().int64_value(&[]) == 1;
        let full = if unpadded { AttnMask::Causal } else { AttnMask::Explicit(causal_mask(mask)) };
        let sliding = window.map(|w| match &full {
            AttnMask::Causal if t <= w => AttnMask::Causal,
            AttnMask::Causal => AttnMask::Explicit(window_mask(&causal_mask(mask), w)),
            AttnMask::Explicit(m) => AttnMask::Explicit(window_mask(m, w)),
        });
        Masks { full, sliding }
    }

    /// Masks for one decode step whose query sits in the last slot of `valid` (B, S): the slots
    /// written so far that hold real tokens; the window keeps the last `w` slots (query included).
    pub fn for_step(valid: &Tensor, window: Option<i64>) -> Masks {
        let s = valid.size()[1];
        let full = valid.unsqueeze(1).unsqueeze(1); // (B, 1, 1, S)
        let sliding = window.map(|w| {
            let recent = Tensor::arange(s, (Kind::Int64, valid.device())).ge(s - w); // (S)
            AttnMask::Explicit(full.logical_and(&recent))
        });
        Masks { full: AttnMask::Explicit(full), sliding }
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

/// `m` (B, 1, T, T) restricted to keys j with i - j < w (transformers' sliding_window_overlay:
/// kv_idx > q_idx - w, on slot indices; left padding keeps real tokens' slots contiguous, so this
/// is the same as on positions).
pub fn window_mask(m: &Tensor, w: i64) -> Tensor {
    let t = m.size()[2];
    let band = Tensor::ones([t, t], (Kind::Bool, m.device())).triu(-(w - 1));
    m.logical_and(&band)
}
