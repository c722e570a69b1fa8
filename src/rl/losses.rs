//! Policy losses and KL estimators as pure functions (docs/rl-conventions.md).
//!
//! l = current log-probs, lo = rollout (old) log-probs, lr = reference log-probs, m = response
//! mask; all (B, T) f32 (f64 under the f64 precision). Losses return (scalar loss, `LossStats`).
use crate::model::precision::Widen;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Schulman's KL estimators of KL(pi || ref) per token, D = l - lr.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    K1,
    K2,
    K3,
}

pub fn kl(l: &Tensor, lr: &Tensor, est: KlEstimator, clamp: Option<f64>) -> Tensor {
    let d = l - lr;
    let d = match clamp {
        Some(c) => d.clamp(-c, c), // OpenRLHF's optional clamp of the log-ratio
        None => d,
    };
    match est {
        KlEstimator::K1 => d,
        KlEstimator::K2 => d.square() * 0.5,
        KlEstimator::K3 => (-&d).exp() - 1.0 + d,
    }
}

/// Loss aggregation over tokens (TRL `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Per sequence sum_t L_t m_t / sum_t m_t, then the mean over sequences (TRL "grpo").
    Grpo,
    /// Sum over all tokens / number of tokens (TRL "dapo", verl token-mean).
    TokenMean,
    /// Sum over all tokens / (B * max_completion_length) (TRL "dr_grpo").
    DrGrpo,
}

/// Aggregates per-token losses (B, T) with `mask`; `max_len` is the configured
/// max_new_tokens (Dr. GRPO's constant normaliser). Rows with no tokens contribute 0.
pub fn aggregate(per_token: &Tensor, mask: &Tensor, agg: Aggregation, max_len: i64) -> Tensor {
    let k = per_token.compute_kind();
    let m = mask.to_kind(k);
    let b = per_token.size()[0] as f64;
    match agg {
        Aggregation::Grpo => {
            let per_seq = (per_token * &m).sum_dim_intlist([1i64].as_slice(), false, k)
                / m.sum_dim_intlist([1i64].as_slice(), false, k).clamp_min(1.0);
            per_seq.mean(k)
        }
        Aggregation::TokenMean => (per_token * &m).sum(k) / m.sum(k).clamp_min(1.0),
        Aggregation::DrGrpo => (per_token * &m).sum(k) / (b * max_len as f64),
    }
}

/// Clip statistics (TRL's names: clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean).
pub struct LossStats {
    /// Fraction of (token or sequence) ratios clipped below, with a negative advantage.
    pub clip_low: Tensor,
    /// Fraction clipped above, with a positive advantage.
    pub clip_high: Tensor,
    /// Mean KL term (GRPO) or 0.
    pub kl: Tensor,
}

fn clipped(ratio: &Tensor, adv: &Tensor, eps_low: f64, eps_high: f64) -> (Tensor, Tensor, Tensor) {
    let k = ratio.compute_kind();
    let unclipped = ratio * adv;
    let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv;
    let loss = -unclipped.minimum(&clipped);
    let low = ratio.lt(1.0 - eps_low).logical_and(&adv.lt(0.0)).to_kind(k);
    let high = ratio.gt(1.0 + eps_high).logical_and(&adv.gt(0.0)).to_kind(k);
    (loss, low, high)
}

/// RLOO's sequence-level clipped loss (TRL RLOOTrainer): rho_i = exp(sum_t (l - lo) m),
/// loss = mean_i -min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i). adv (B).
pub fn sequence_clipped_loss(l: &Tensor, lo: &Tensor, mask: &Tensor, adv: &Tensor, eps: f64) -> (Tensor, LossStats) {
    let k = l.compute_kind();
    let m = mask.to_kind(k);
    let log_ratio = ((l - lo) * &m).sum_dim_intlist([1i64].as_slice(), false, k);
    let (loss, low, high) = clipped(&log_ratio.exp(), adv, eps, eps);
    let zero = Tensor::zeros([], (k, l.device()));
    (loss.mean(k), LossStats { clip_low: low.mean(k), clip_high: high.mean(k), kl: zero })
}

/// Token-level clipped loss (GRPO, REINFORCE++, ReMax): rho_t = exp(l_t - lo_t),
/// L_t = -min(rho_t A_t, clip(rho_t) A_t) + beta * k3_t (GRPO's KL term when `ref_lp` is given),
/// aggregated by `agg`. adv is (B) (one advantage per sequence) or (B, T).
#[allow(clippy::too_many_arguments)]
pub fn token_clipped_loss(
    l: &Tensor,
    lo: &Tensor,
    mask: &Tensor,
    adv: &Tensor,
    eps_low: f64,
    eps_high: f64,
    kl_term: Option<(&Tensor, f64)>,
    agg: Aggregation,
    max_len: i64,
) -> (Tensor, LossStats) {
    let k = l.compute_kind();
    let adv = if adv.dim() == 1 { adv.unsqueeze(-1).expand_as(l) } else { adv.shallow_clone() };
    let (mut per_token, low, high) = clipped(&(l - lo).exp(), &adv, eps_low, eps_high);
    let m = mask.to_kind(k);
    let denom = m.sum(k).clamp_min(1.0);
    let mut kl_mean = Tensor::zeros([], (k, l.device()));
    if let Some((lr, beta)) = kl_term {
        let k3 = kl(l, lr, KlEstimator::K3, None);
        kl_mean = (&k3 * &m).sum(k).detach() / &denom;
        per_token = per_token + k3 * beta;
    }
    let loss = aggregate(&per_token, mask, agg, max_len);
    let stats = LossStats { clip_low: (low * &m).sum(k) / &denom, clip_high: (high * &m).sum(k) / &denom, kl: kl_mean };
    (loss, stats)
}

/// Mean per-token entropy of the policy over response tokens, from logits (B, T, V) at temperature.
pub fn entropy(logits: &Tensor, mask: &Tensor) -> Tensor {
    let k = logits.compute_kind();
    let lp = logits.log_softmax(-1, k);
    let h = -(lp.exp() * &lp).sum_dim_intlist([-1i64].as_slice(), false, k);
    let m = mask.to_kind(k);
    (h * &m).sum(k) / m.sum(k).clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn t(v: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).to_kind(Kind::Float).view(shape)
    }

    #[test]
    fn kl_estimators() {
        let l = t(&[-1.0, -2.0], &[1, 2]);
        let lr = t(&[-1.5, -1.0], &[1, 2]);
        let d = [0.5f64, -1.0];
        let k = |e| Vec::<f64>::try_from(kl(&l, &lr, e, None).to_kind(Kind::Double).view([-1])).unwrap();
        assert!((k(KlEstimator::K1)[1] - d[1]).abs() < 1e-6);
        assert!((k(KlEstimator::K2)[0] - 0.125).abs() < 1e-6);
        let k3 = k(KlEstimator::K3);
        for i in 0..2 {
            assert!((k3[i] - ((-d[i]).exp() - 1.0 + d[i])).abs() < 1e-6);
        }
    }

    #[test]
    fn sequence_loss_value_gradient_and_clipping() {
        // Two sequences, two tokens each; second token of row 1 masked.
        let l = t(&[-1.0, -1.0, -0.5, -3.0], &[2, 2]).set_requires_grad(true);
        let lo = t(&[-1.1, -1.0, -1.0, -1.0], &[2, 2]);
        let m = Tensor::from_slice(&[1i64, 1, 1, 0]).view([2, 2]);
        let a = t(&[2.0, -1.0], &[2]);
        let (loss, st) = sequence_clipped_loss(&l, &lo, &m, &a, 0.2);
        // rho0 = exp(0.1) = 1.10517 (inside the clip range): term -rho0 * 2
        // rho1 = exp(0.5) = 1.6487 with A < 0: min(-1.6487, -1.2) = -1.6487 (unclipped), term +1.6487
        let (r0, r1) = (0.1f64.exp(), 0.5f64.exp());
        let want = (-r0 * 2.0 + r1) / 2.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-5, "{} vs {want}", loss.double_value(&[]));
        assert_eq!(st.clip_high.double_value(&[]), 0.0);
        loss.backward();
        // d/dl0t = -A0 rho0 / 2 for both tokens of row 0; row 1 token 0: -A1 rho1 / 2; masked: 0
        let g = Vec::<f64>::try_from(l.grad().to_kind(Kind::Double).view([-1])).unwrap();
        let want_g = [-2.0 * r0 / 2.0, -2.0 * r0 / 2.0, r1 / 2.0, 0.0];
        for (x, y) in g.iter().zip(want_g) {
            assert!((x - y).abs() < 1e-5, "{g:?} vs {want_g:?}");
        }
        // A positive advantage beyond 1 + eps is clipped: zero gradient, counted in clip_high.
        let l2 = t(&[0.0], &[1, 1]).set_requires_grad(true);
        let (loss2, st2) =
            sequence_clipped_loss(&l2, &t(&[-1.0], &[1, 1]), &Tensor::ones([1, 1], (Kind::Int64, tch::Device::Cpu)), &t(&[1.0], &[1]), 0.2);
        loss2.backward();
        assert!((loss2.double_value(&[]) + 1.2).abs() < 1e-6);
        assert_eq!(l2.grad().double_value(&[0, 0]), 0.0);
        assert_eq!(st2.clip_high.double_value(&[]), 1.0);
    }

    #[test]
    fn token_loss_with_k3_and_aggregations() {
        let l = t(&[-1.0, -2.0, -0.5, -9.0], &[2, 2]).set_requires_grad(true);
        let lo = l.detach().copy(); // ratio 1 (the first iteration)
        let lr = t(&[-1.5, -2.0, -0.5, -9.0], &[2, 2]);
        let m = Tensor::from_slice(&[1i64, 1, 1, 0]).view([2, 2]);
        let a = t(&[1.0, -2.0], &[2]);
        let beta = 0.1;
        let k3_00 = (-0.5f64).exp() - 1.0 + 0.5;
        // per-token: row 0: [-1 + beta k3_00, -1], row 1: [2, masked]
        let row0 = (-1.0 + beta * k3_00 - 1.0) / 2.0;
        let (g, _) = token_clipped_loss(&l, &lo, &m, &a, 0.2, 0.2, Some((&lr, beta)), Aggregation::Grpo, 4);
        assert!((g.double_value(&[]) - (row0 + 2.0) / 2.0).abs() < 1e-6);
        let (tm, st) = token_clipped_loss(&l, &lo, &m, &a, 0.2, 0.2, Some((&lr, beta)), Aggregation::TokenMean, 4);
        let sum = -1.0 + beta * k3_00 - 1.0 + 2.0;
        assert!((tm.double_value(&[]) - sum / 3.0).abs() < 1e-6);
        assert!((st.kl.double_value(&[]) - k3_00 / 3.0).abs() < 1e-6);
        let (dr, _) = token_clipped_loss(&l, &lo, &m, &a, 0.2, 0.2, Some((&lr, beta)), Aggregation::DrGrpo, 4);
        assert!((dr.double_value(&[]) - sum / 8.0).abs() < 1e-6);
        // Gradient of GRPO aggregation at ratio 1: dL/dl_t = (-A + beta (1 - exp(-(l - lr)))) / n_i / B
        g.backward();
        let gr = Vec::<f64>::try_from(l.grad().to_kind(Kind::Double).view([-1])).unwrap();
        let want = [(-1.0 + beta * (1.0 - (-0.5f64).exp())) / 4.0, -1.0 / 4.0, 2.0 / 2.0, 0.0];
        for (x, y) in gr.iter().zip(want) {
            assert!((x - y).abs() < 1e-6, "{gr:?} vs {want:?}");
        }
        // An all-padding row contributes nothing and no NaN.
        let m0 = Tensor::zeros([2, 2], (Kind::Int64, tch::Device::Cpu));
        let (z, _) = token_clipped_loss(&l, &lo, &m0, &a, 0.2, 0.2, None, Aggregation::Grpo, 4);
        assert_eq!(z.double_value(&[]), 0.0);
    }
}
