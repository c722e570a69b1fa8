//! The decoder's small layers: a linear layer with an optional LoRA adapter, the norms, and the
//! rotary embedding (with Llama 3, linear and LongRoPE scaling, and partial rotation).
use crate::error::Result;
use crate::ffi;
use crate::model::arch::{Act, NormKind, RopeScaling, RopeSpec};
use crate::model::kernels;
use crate::model::lora::LoraAdapter;
use crate::model::params::{Init, Params, Source};
use crate::model::precision::Widen;
use tch::{Device, Kind, Tensor};

pub const INIT_STD: f64 = 0.02; // HF initializer_range

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

    /// `forward` of the same `x` through several layers (q, k and v; gate and up): one call of
    /// the batch-1 matrix-vector kernel for all of them where it applies and none has an adapter
    /// ([`crate::model::packed::linear_many`]); the same values as one `forward` each.
    pub fn forward_many(layers: &[&Linear], x: &Tensor) -> Vec<Tensor> {
        if layers.iter().any(|l| l.lora.is_some()) {
            return layers.iter().map(|l| l.forward(x)).collect();
        }
        let ws: Vec<_> = layers.iter().map(|l| (&l.weight, l.bias.as_ref())).collect();
        crate::model::packed::linear_many(x, &ws)
    }

    /// The last path component of the name (`q_proj`, `gate_up_proj`, ...): what LoRA targets name.
    pub fn kind(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// Wraps this layer with a fresh LoRA adapter whose tensors are registered in `p` as
    /// `{name}.lora_A.weight` / `{name}.lora_B.weight` (PEFT's names without the adapter name).
    pub fn add_lora(&mut self, p: &mut Params, rank: i64, alpha: f64) {
        let (out_dim, in_dim) = (self.weight.size()[0], self.weight.size()[1]);
        let (a, b) = LoraAdapter::init(in_dim, out_dim, rank);
        let (dev, kind) = (self.weight.device(), self.weight.kind());
        let a = p.add(&format!("{}.lora_A.weight", self.name), a.to_device(dev).to_kind(kind));
        let b = p.add(&format!("{}.lora_B.weight", self.name), b.to_device(dev).to_kind(kind));
        self.lora = Some(LoraAdapter { a, b, scale: alpha / rank as f64 });
    }

    /// A copy sharing every tensor (storage and gradient) with this layer.
    pub fn shallow(&self) -> Linear {
        Linear {
            name: self.name.clone(),
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: self.lora.as_ref().map(|l| LoraAdapter { a: l.a.shallow_clone(), b: l.b.shallow_clone(), scale: l.scale }),
        }
    }

    /// The layer's tensors, adapter included.
    pub fn tensors(&self) -> Vec<&Tensor> {
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

/// RMSNorm (Llama's or Gemma's) or LayerNorm with bias.
pub struct Norm {
    pub name: String,
    pub weight: Tensor, // (D)
    pub bias: Option<Tensor>,
    kind: NormKind,
    eps: f64,
}

impl Norm {
    pub fn new(p: &mut Params, src: &mut Source, name: &str, dim: i64, kind: NormKind, eps: f64, dev: Device) -> Result<Self> {
        // Gemma stores w - 1 (its norm scales by 1 + w): the neutral value is 0.
        let init = if kind == NormKind::RmsOffset { Init::Zeros } else { Init::Ones };
        let weight = p.get(src, &format!("{name}.weight"), &[dim], init, dev)?;
        let bias = if kind == NormKind::Layer { Some(p.get(src, &format!("{name}.bias"), &[dim], Init::Zeros, dev)?) } else { None };
        Ok(Norm { name: name.to_string(), weight, bias, kind, eps })
    }

    pub fn shallow(&self) -> Norm {
        Norm {
            name: self.name.clone(),
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            kind: self.kind,
            eps: self.eps,
        }
    }

    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.weight];
        v.extend(self.bias.as_ref());
        v
    }

    /// As transformers computes each: Llama's RMSNorm in f32, cast back, then scaled; Gemma's
    /// scaled by (1 + w) in f32 before the cast; LayerNorm by torch's kernel.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        match self.kind {
            NormKind::Layer => {
                let d = x.size()[x.dim() - 1];
                x.layer_norm([d].as_slice(), Some(&self.weight), self.bias.as_ref(), self.eps, false)
            }
            NormKind::Rms | NormKind::RmsOffset if kernels::apply_to(x) && self.weight.kind() == Kind::Float => {
                let add_one = self.kind == NormKind::RmsOffset;
                ffi::rms_norm(x, &self.weight, self.eps, add_one, ffi::KernelBuild::Best).unwrap_or_else(|e| panic!("{}: {e}", self.name))
            }
            NormKind::Rms | NormKind::RmsOffset => {
                let xf = x.widen();
                let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, xf.kind());
                let normed = &xf * (var + self.eps).rsqrt();
                if self.kind == NormKind::Rms {
                    normed.to_kind(kind) * &self.weight
                } else {
                    (normed * (self.weight.to_kind(xf.kind()) + 1.0)).to_kind(kind)
                }
            }
        }
    }
}

pub fn activation(act: Act, x: &Tensor) -> Tensor {
    match act {
        Act::Silu => x.silu(),
        Act::GeluTanh => x.gelu("tanh"),
        Act::Gelu => x.gelu("none"),
    }
}

/// Rotary embedding: inverse frequencies over the first `rotary_dim` dims of each head.
pub struct Rope {
    inv_freq: Tensor, // (rotary_dim/2) f32
    /// LongRoPE's frequencies for sequences past the original context, and that context.
    long: Option<(Tensor, i64)>,
    /// cos and sin multiplied by this (LongRoPE's attention factor; 1 otherwise).
    scale: f64,
    pub rotary_dim: i64,
}

impl Rope {
    pub fn new(spec: &RopeSpec, dev: Device) -> Self {
        let dim = spec.rotary_dim;
        let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / dim as f64;
        let base = Tensor::from(spec.theta as f32).pow(&exps); // theta^(2i/dim)
        let mut inv_freq = base.reciprocal();
        let (mut long, mut scale) = (None, 1.0);
        match &spec.scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq = inv_freq / *factor,
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                // transformers modeling_rope_utils._compute_llama3_parameters
                let old = *original_max_position_embeddings;
                let (lo_wl, hi_wl) = (old / low_freq_factor, old / high_freq_factor);
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = inv_freq.where_self(&wavelen.le(lo_wl), &(&inv_freq / *factor));
                let smooth = (old / &wavelen - *low_freq_factor) / (high_freq_factor - low_freq_factor);
                let smoothed: Tensor = (1.0 - &smooth) * &scaled / *factor + &smooth * &scaled;
                let medium = wavelen.ge(hi_wl).logical_and(&wavelen.le(lo_wl));
                inv_freq = smoothed.where_self(&medium, &scaled);
            }
            Some(RopeScaling::LongRope { short, long: l, original_max_position_embeddings, attention_factor }) => {
                // transformers _compute_longrope_parameters: 1 / (factor_i * theta^(2i/dim))
                let f = |v: &[f64]| Tensor::from_slice(&v.iter().map(|x| *x as f32).collect::<Vec<f32>>());
                inv_freq = (f(short) * &base).reciprocal();
                long = Some(((f(l) * &base).reciprocal().to_device(dev), *original_max_position_embeddings));
                scale = *attention_factor;
            }
        }
        Rope { inv_freq: inv_freq.to_device(dev), long, scale, rotary_dim: dim }
    }

    /// cos, sin for `positions` (B, T): each (B, 1, T, rotary_dim), in f32. LongRoPE switches to its
    /// long factors when the largest position reaches the original context, as transformers does
    /// per forward call.
    pub fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let inv_freq = match &self.long {
            Some((long, original)) if positions.numel() > 0 && positions.max().int64_value(&[]) + 1 > *original => long,
            _ => &self.inv_freq,
        };
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq; // (B, T, rot/2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // (B, 1, T, rot)
        if self.scale == 1.0 {
            (emb.cos(), emb.sin())
        } else {
            (emb.cos() * self.scale, emb.sin() * self.scale)
        }
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], 3)
}

/// RoPE on x (B, h, T, hd) in the tables' precision (f32): under bf16 autocast q and k come out of
/// their projections in bf16 and leave in f32, as in transformers (whose rotary tables take the
/// dtype of the f32 residual stream); attention then casts them back to bf16. With partial
/// rotation only the first `rotary_dim` dims turn; the rest pass through.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    if kernels::apply_to(x) && cos.kind() == Kind::Float {
        // One pass, the same bits (`ffi::rope`).
        return ffi::rope(x, cos, sin, ffi::KernelBuild::Best).unwrap_or_else(|e| panic!("{e}"));
    }
    // f64 activations turn by f64 copies of the (f32) tables.
    let (cos, sin) = if x.kind() == Kind::Double {
        (cos.to_kind(Kind::Double), sin.to_kind(Kind::Double))
    } else {
        (cos.shallow_clone(), sin.shallow_clone())
    };
    let (cos, sin) = (&cos, &sin);
    let rot = cos.size()[3];
    let hd = x.size()[3];
    if rot == hd {
        return (x * cos) + rotate_half(x) * sin;
    }
    let (xr, xp) = (x.narrow(3, 0, rot), x.narrow(3, rot, hd - rot));
    let turned = (&xr * cos) + rotate_half(&xr) * sin;
    Tensor::cat(&[turned, xp.to_kind(cos.kind())], 3)
}
