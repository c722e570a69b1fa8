//! Sequence-to-token cross-attention (docs/method.md, "The reward r(x, y, h)"):
//! q = H_last W_q (D_rm -> d); k = h W_k, v = h W_v (D_p -> d);
//! H_hat = softmax(q k^T / sqrt(d_head), padding masked) v W_o (d -> D_rm).
//! No biases; weights N(0, init_std), seeded by the caller; heads split d.
//!
//! Two testbed switches, off by default (the method as specified): the query's input H_last
//! rescaled to unit RMS per row before W_q only ([`QueryNorm::UnitRms`]), and a separate init std
//! for W_q and W_k (`qk_std`). They exist because the attention logits' scale at init,
//! init_std^2 |H_last| |h_t|, depends on the models: an L2-normalised encoder embedding as H_last
//! (|H_last| = 1, the testbed's MiniLM proxy) gives logits of std ~0.02 and uniform attention, while
//! an 8B decoder RM's H_last gives logits of std of order 1 (docs/method.md, "Testbed switches (not the paper's)").
use crate::model::params::Params;
use crate::model::precision::Widen;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// What the query reads: H_last as is (docs/method.md), or H_last / RMS(H_last) per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueryNorm {
    #[default]
    None,
    UnitRms,
}

pub struct CrossAttention {
    pub w_q: Tensor, // (d, D_rm)  (nn.Linear layout: out, in)
    pub w_k: Tensor, // (d, D_p)
    pub w_v: Tensor, // (d, D_p)
    pub w_o: Tensor, // (D_rm, d)
    pub heads: i64,
    pub query_norm: QueryNorm,
}

impl CrossAttention {
    /// Weights N(0, std), W_q and W_k N(0, qk_std) (the spec: qk_std = std), drawn in the order
    /// W_q, W_k, W_v, W_o from libtorch's generator (seeded by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn new(p: &mut Params, d_rm: i64, d_p: i64, d: i64, heads: i64, std: f64, qk_std: f64, query_norm: QueryNorm, dev: Device) -> Self {
        let mut init =
            |name: &str, shape: [i64; 2], s: f64| p.add(name, (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * s).to_device(dev));
        let w_q = init("xattn.w_q", [d, d_rm], qk_std);
        let w_k = init("xattn.w_k", [d, d_p], qk_std);
        let w_v = init("xattn.w_v", [d, d_p], std);
        let w_o = init("xattn.w_o", [d_rm, d], std);
        CrossAttention { w_q, w_k, w_v, w_o, heads, query_norm }
    }

    /// The query's input: `h_last` (B, D_rm), or rescaled to unit RMS per row.
    fn query_input(&self, h_last: &Tensor) -> Tensor {
        match self.query_norm {
            QueryNorm::None => h_last.shallow_clone(),
            QueryNorm::UnitRms => {
                let ms = h_last.square().mean_dim([-1i64].as_slice(), true, h_last.compute_kind());
                h_last * (ms + 1e-12).rsqrt()
            }
        }
    }

    /// h_last (B, D_rm), h (B, S, D_p), mask (B, S) -> H_hat (B, D_rm).
    pub fn forward(&self, h_last: &Tensor, h: &Tensor, mask: &Tensor) -> Tensor {
        self.forward_with_weights(h_last, h, mask).0
    }

    /// As [`Self::forward`], also returning the attention weights (B, heads, S) (0 at padding).
    pub fn forward_with_weights(&self, h_last: &Tensor, h: &Tensor, mask: &Tensor) -> (Tensor, Tensor) {
        let (b, s, _) = h.size3().expect("(B, S, D_p) feedback");
        let d = self.w_q.size()[0];
        let nh = self.heads;
        let hd = d / nh;
        let q = self.query_input(h_last).linear::<Tensor>(&self.w_q, None).view([b, nh, 1, hd]); // (B, nh, 1, hd)
        let k = h.linear::<Tensor>(&self.w_k, None).view([b, s, nh, hd]).transpose(1, 2); // (B, nh, S, hd)
        let v = h.linear::<Tensor>(&self.w_v, None).view([b, s, nh, hd]).transpose(1, 2);
        let att = q.matmul(&k.transpose(-2, -1)) / (hd as f64).sqrt(); // (B, nh, 1, S)
        let valid = mask.to_kind(Kind::Bool).view([b, 1, 1, s]);
        let att = att.masked_fill(&valid.logical_not(), f64::NEG_INFINITY).softmax(-1, att.compute_kind());
        let y = att.matmul(&v).view([b, d]); // (B, d)
        (y.linear::<Tensor>(&self.w_o, None), att.view([b, nh, s]))
    }
}

/// How far the attention weights (B, heads, S) are from uniform over the valid tokens of `mask`
/// (B, S): the mean over rows and heads of entropy / ln(valid tokens), so 1 = uniform (the
/// attention reads the mean of h) and 0 = one token. Rows with one valid token count as 1.
pub fn normalized_entropy(att: &Tensor, mask: &Tensor) -> f64 {
    let a = att.to_kind(Kind::Double);
    let ent = -(&a * a.clamp_min(1e-300).log()).sum_dim_intlist([-1i64].as_slice(), false, Kind::Double); // (B, nh)
    let n = mask.to_kind(Kind::Double).sum_dim_intlist([-1i64].as_slice(), false, Kind::Double).unsqueeze(-1); // (B, 1)
    let denom = n.log();
    let single = n.le(1.0);
    let r = (ent / denom.clamp_min(1e-12)).masked_fill(&single, 1.0);
    r.mean(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_masked_and_shapes_hold() {
        tch::manual_seed(0);
        let mut p = Params::default();
        let x = CrossAttention::new(&mut p, 6, 5, 8, 2, 0.5, 0.5, QueryNorm::None, Device::Cpu);
        let hl = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
        let h = Tensor::randn([2, 4, 5], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 1, 1, 1]).view([2, 4]);
        let y = x.forward(&hl, &h, &mask);
        assert_eq!(y.size(), vec![2, 6]);
        // Changing a masked position changes nothing.
        let h2 = h.copy();
        let _ = h2.get(0).get(3).fill_(100.0);
        let _ = h2.get(1).get(0).fill_(-100.0);
        let d = (x.forward(&hl, &h2, &mask) - &y).abs().max().double_value(&[]);
        assert_eq!(d, 0.0);
        // One head, by hand: softmax(q k^T / sqrt(d)) v W_o for row 0.
        let mut p1 = Params::default();
        let x1 = CrossAttention::new(&mut p1, 6, 5, 8, 1, 0.5, 0.5, QueryNorm::None, Device::Cpu);
        let q = hl.get(0).matmul(&x1.w_q.tr()); // (8)
        let k = h.get(0).narrow(0, 0, 3).matmul(&x1.w_k.tr()); // (3, 8)
        let v = h.get(0).narrow(0, 0, 3).matmul(&x1.w_v.tr());
        let a = (k.matmul(&q) / 8f64.sqrt()).softmax(0, Kind::Float); // (3)
        let want = a.unsqueeze(0).matmul(&v).squeeze_dim(0).matmul(&x1.w_o.tr());
        let got = x1.forward(&hl, &h, &mask).get(0);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn testbed_switches_scale_the_logits_only_where_asked() {
        let hl = Tensor::randn([3, 6], (Kind::Float, Device::Cpu)) * 0.01;
        let h = Tensor::randn([3, 4, 5], (Kind::Float, Device::Cpu));
        let mask = Tensor::ones([3, 4], (Kind::Int64, Device::Cpu));
        let make = |qk: f64, qn: QueryNorm| {
            tch::manual_seed(7);
            CrossAttention::new(&mut Params::default(), 6, 5, 8, 2, 0.5, qk, qn, Device::Cpu)
        };
        // qk_std scales W_q and W_k only; W_v and W_o are the same draws. The generator is global:
        // a test on another thread can draw between the seed and the draws, which shifts the
        // weights, so a pair is drawn again (a few times at most) until one is free of that.
        let scaled = |a: &Tensor, b: &Tensor| (a - b * 3.0).abs().max().double_value(&[]) < 1e-6;
        let (spec, _wide) = (0..5)
            .map(|_| (make(0.5, QueryNorm::None), make(1.5, QueryNorm::None)))
            .find(|(s, w)| scaled(&w.w_q, &s.w_q) && scaled(&w.w_k, &s.w_k) && w.w_v.equal(&s.w_v) && w.w_o.equal(&s.w_o))
            .expect("qk_std = 1.5 gives 3x the W_q and W_k of qk_std = 0.5, the same W_v and W_o");
        // Unit RMS: the query reads H_last's direction only, so a rescaled H_last attends the same.
        let unit = make(0.5, QueryNorm::UnitRms);
        let (_, a1) = unit.forward_with_weights(&hl, &h, &mask);
        let (_, a2) = unit.forward_with_weights(&(&hl * 1000.0), &h, &mask);
        assert!((&a1 - &a2).abs().max().double_value(&[]) < 1e-5);
        // ... while as specified the small H_last gives near-uniform attention and the large one does not.
        let (_, s1) = spec.forward_with_weights(&hl, &h, &mask);
        let (_, s2) = spec.forward_with_weights(&(&hl * 1000.0), &h, &mask);
        assert!(normalized_entropy(&s1, &mask) > 0.999 && normalized_entropy(&s2, &mask) < 0.99);
        // By hand, row 0 head 0: q = (H_last / rms(H_last)) W_q^T.
        let x = hl.get(0);
        let xn = &x / x.square().mean(Kind::Float).sqrt();
        let q = xn.matmul(&unit.w_q.tr()).narrow(0, 0, 4);
        let k = h.get(0).matmul(&unit.w_k.tr()).narrow(1, 0, 4);
        let want = (k.matmul(&q) / 2.0).softmax(0, Kind::Float);
        assert!((a1.get(0).get(0) - want).abs().max().double_value(&[]) < 1e-5);
        // The output still reads the values through W_o: (B, D_rm).
        assert_eq!(unit.forward(&hl, &h, &mask).size(), vec![3, 6]);
    }

    #[test]
    fn normalized_entropy_is_one_for_uniform_attention_and_falls_as_it_sharpens() {
        tch::manual_seed(1);
        let mut p = Params::default();
        let mut x = CrossAttention::new(&mut p, 6, 5, 8, 2, 0.5, 0.5, QueryNorm::None, Device::Cpu);
        let hl = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
        let h = Tensor::randn([2, 4, 5], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 1, 1, 1]).view([2, 4]);
        let (_, att) = x.forward_with_weights(&hl, &h, &mask);
        assert_eq!(att.size(), vec![2, 2, 4]);
        assert_eq!(att.get(0).select(1, 3).abs().max().double_value(&[]), 0.0, "padding gets no weight");
        let ones = att.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
        assert!((ones - 1.0).abs().max().double_value(&[]) < 1e-6);
        let e = normalized_entropy(&att, &mask);
        assert!(e > 0.0 && e < 1.0, "{e}");
        // q = 0: every valid token weighs the same.
        let _ = tch::no_grad(|| x.w_q.zero_());
        let (_, flat) = x.forward_with_weights(&hl, &h, &mask);
        assert!((normalized_entropy(&flat, &mask) - 1.0).abs() < 1e-6);
        // A 100x larger query sharpens it.
        tch::no_grad(|| x.w_q.copy_(&(Tensor::randn([8, 6], (Kind::Float, Device::Cpu)) * 50.0)));
        let (_, sharp) = x.forward_with_weights(&hl, &h, &mask);
        assert!(normalized_entropy(&sharp, &mask) < e.min(0.5));
        // By hand: weights (0.5, 0.5, 0) over 3 valid tokens -> ln 2 / ln 3.
        let a = Tensor::from_slice(&[0.5f64, 0.5, 0.0, 0.0]).view([1, 1, 4]);
        let m = Tensor::from_slice(&[1i64, 1, 1, 0]).view([1, 4]);
        assert!((normalized_entropy(&a, &m) - 2f64.ln() / 3f64.ln()).abs() < 1e-12);
    }
}
