//! Advantage estimators as pure functions on tensors (docs/rl-conventions.md; one peer per algorithm).
//!
//! Shapes: n = prompts, K = group size (samples per prompt), B = n * K sequences ordered
//! group-major (prompt 0's K samples first), T = response tokens, m = response mask (B, T).
use crate::model::precision::Widen;
use tch::{Kind, Tensor};

/// RLOO (TRL RLOOTrainer; R2M Eq. 1-2): A_i = R_i - (sum_j R_j - R_i) / (K - 1), with R the
/// KL-shaped sequence reward (`kl_shaped_reward`). rewards (B) -> (B). Needs K >= 2.
pub fn rloo(rewards: &Tensor, k: i64) -> Tensor {
    let kd = rewards.compute_kind();
    let g = rewards.view([-1, k]); // (n, K)
    let sum = g.sum_dim_intlist([1i64].as_slice(), true, kd);
    let baseline = (&sum - &g) / (k - 1) as f64;
    (g - baseline).view([-1])
}

/// R_i = r_i - beta * sum_t (lo_t - lr_t) m_t: k1 on the rollout's log-probs, summed into the
/// reward (RLOO; TRL rloo_trainer.py). old_lp, ref_lp, mask (B, T) -> (B).
pub fn kl_shaped_reward(scores: &Tensor, old_lp: &Tensor, ref_lp: &Tensor, mask: &Tensor, beta: f64) -> Tensor {
    let kd = old_lp.compute_kind();
    let kl = ((old_lp - ref_lp) * mask.to_kind(kd)).sum_dim_intlist([1i64].as_slice(), false, kd);
    scores - kl * beta
}

/// Optional RLOO advantage normalisation: (A - mean) / (std_bessel + 1e-4) over the batch.
pub fn normalize(a: &Tensor) -> Tensor {
    (a - a.mean(a.compute_kind())) / (a.std(true) + 1e-4)
}

/// How GRPO scales the centred rewards (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's std (Bessel) + 1e-4 (TRL's default).
    Group,
    /// Divide by the batch's std (Bessel) + 1e-4.
    Batch,
    /// Only centre (Dr. GRPO).
    None,
}

/// GRPO (TRL GRPOTrainer): A_i = (r_i - mean_g) / (std + 1e-4). rewards (B) -> (B).
pub fn grpo(rewards: &Tensor, k: i64, scale: ScaleRewards) -> Tensor {
    let g = rewards.view([-1, k]); // (n, K)
    let centred = &g - g.mean_dim(1, true, rewards.compute_kind());
    let a = match scale {
        ScaleRewards::Group => centred / (g.std_dim(1, true, true) + 1e-4),
        ScaleRewards::Batch => centred / (rewards.std(true) + 1e-4),
        ScaleRewards::None => centred,
    };
    a.view([-1])
}

/// Token rewards for REINFORCE++ and ReMax (OpenRLHF / verl): rw_t = -beta * k1_t on response
/// tokens, plus clip(r_i, -clip, clip) at the last response token. (B, T).
pub fn token_rewards(scores: &Tensor, old_lp: &Tensor, ref_lp: &Tensor, mask: &Tensor, beta: f64, clip: f64) -> Tensor {
    let kd = old_lp.compute_kind();
    let m = mask.to_kind(kd);
    let mut rw = -(old_lp - ref_lp) * beta * &m;
    // Index of the last response token of each row (rows with no token get nothing).
    let t = m.size()[1];
    let idx = ((Tensor::arange(t, (Kind::Int64, m.device())).unsqueeze(0) + 1) * mask.to_kind(Kind::Int64)).argmax(-1, true); // (B, 1)
    let has = m.sum_dim_intlist([1i64].as_slice(), true, kd).gt(0.0).to_kind(kd);
    let add = scores.clamp(-clip, clip).unsqueeze(-1) * has;
    rw = rw.scatter_add(1, &idx, &add);
    rw
}

/// Returns G_t = sum_{u >= t} gamma^{u - t} rw_u over response tokens (gamma = 1 in the peers).
pub fn returns(rw: &Tensor, mask: &Tensor, gamma: f64) -> Tensor {
    let kd = rw.compute_kind();
    let m = mask.to_kind(kd);
    let r = rw * &m;
    if gamma == 1.0 {
        // Reverse cumulative sum.
        return r.flip([1]).cumsum(1, kd).flip([1]) * m;
    }
    let t = r.size()[1];
    let mut out = Vec::with_capacity(t as usize);
    let mut acc = Tensor::zeros([r.size()[0]], (kd, r.device()));
    for i in (0..t).rev() {
        acc = r.select(1, i) + acc * gamma;
        out.push(acc.shallow_clone());
    }
    out.reverse();
    Tensor::stack(&out, 1) * m
}

/// REINFORCE++ (OpenRLHF "reinforce"): A_t = whiten(G_t) over all response tokens of the batch:
/// (G - mean) * rsqrt(max(var_pop, 1e-8)); 0 off the mask.
pub fn reinforce_pp(token_rw: &Tensor, mask: &Tensor, gamma: f64) -> Tensor {
    let kd = token_rw.compute_kind();
    let g = returns(token_rw, mask, gamma);
    let m = mask.to_kind(kd);
    let n = m.sum(kd).clamp_min(1.0);
    let mean = (&g * &m).sum(kd) / &n;
    let var = ((&g - &mean).square() * &m).sum(kd) / &n;
    (g - mean) * var.clamp_min(1e-8).rsqrt() * m
}

/// ReMax (verl compute_remax_outcome_advantage): A_t = (sum_{u >= t} rw_u) - b_i, with b_i the
/// RM score of the prompt's greedy response. token_rw, mask (B, T), baseline (B) -> (B, T).
pub fn remax(token_rw: &Tensor, mask: &Tensor, baseline: &Tensor) -> Tensor {
    let g = returns(token_rw, mask, 1.0);
    (g - baseline.unsqueeze(-1)) * mask.to_kind(token_rw.compute_kind())
}

/// How far two rewards on the same groups agree on what a group-relative estimator (GRPO, RLOO)
/// sees: the order and the spread of each group's K samples, not their level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupAgreement {
    /// Mean over groups of the Pearson correlation of a and b inside the group. It equals the
    /// correlation of the GRPO advantages the two rewards give. NaN if no group has spread in both.
    pub corr: f64,
    /// Share of the within-group pairs (i < j) that a and b put in the same order; a pair tied in
    /// one of them counts 1/2. 1 = same ranking in every group, 0 = every group reversed.
    pub concordance: f64,
}

/// [`GroupAgreement`] of a and b (B = n * K, group-major as everywhere here). Needs K >= 2.
pub fn group_agreement(a: &[f64], b: &[f64], k: usize) -> GroupAgreement {
    assert!(k >= 2 && a.len() == b.len() && a.len() % k == 0, "group_agreement: {} and {} values in groups of {k}", a.len(), b.len());
    let (mut corr, mut n_corr, mut conc, mut n_pairs) = (0.0, 0usize, 0.0, 0usize);
    for (ga, gb) in a.chunks(k).zip(b.chunks(k)) {
        let (ma, mb) = (ga.iter().sum::<f64>() / k as f64, gb.iter().sum::<f64>() / k as f64);
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (x, y) in ga.iter().zip(gb) {
            sab += (x - ma) * (y - mb);
            saa += (x - ma) * (x - ma);
            sbb += (y - mb) * (y - mb);
        }
        if saa > 0.0 && sbb > 0.0 {
            corr += sab / (saa * sbb).sqrt();
            n_corr += 1;
        }
        for i in 0..k {
            for j in i + 1..k {
                let s = (ga[i] - ga[j]).signum() * (gb[i] - gb[j]).signum();
                conc += if ga[i] == ga[j] || gb[i] == gb[j] {
                    0.5
                } else if s > 0.0 {
                    1.0
                } else {
                    0.0
                };
                n_pairs += 1;
            }
        }
    }
    GroupAgreement { corr: if n_corr > 0 { corr / n_corr as f64 } else { f64::NAN }, concordance: conc / n_pairs.max(1) as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).view([-1])).unwrap()
    }
    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn rloo_leave_one_out() {
        // group [1, 2, 6]: baselines (2+6)/2=4, (1+6)/2=3.5, (1+2)/2=1.5
        let r = Tensor::from_slice(&[1.0f32, 2.0, 6.0, 0.0, 0.0, 0.0]);
        close(&v(&rloo(&r, 3)), &[-3.0, -1.5, 4.5, 0.0, 0.0, 0.0], 1e-6);
        // K = 2: A = (r_i - r_j)
        close(&v(&rloo(&Tensor::from_slice(&[3.0f32, 1.0]), 2)), &[2.0, -2.0], 1e-6);
    }

    #[test]
    fn kl_shaping_sums_k1_on_old_logprobs() {
        let s = Tensor::from_slice(&[1.0f32, 1.0]);
        let lo = Tensor::from_slice(&[-1.0f32, -2.0, -3.0, -1.0, -1.0, -1.0]).view([2, 3]);
        let lr = Tensor::from_slice(&[-1.5f32, -2.0, -1.0, -1.0, -2.0, -1.0]).view([2, 3]);
        let m = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 1]).view([2, 3]);
        // row 0: k1 = 0.5 + 0 (third masked) -> 1 - 0.1 * 0.5; row 1: 0 + 1 + 0 -> 1 - 0.1
        close(&v(&kl_shaped_reward(&s, &lo, &lr, &m, 0.1)), &[0.95, 0.9], 1e-6);
    }

    #[test]
    fn grpo_scales_and_identical_groups() {
        let r = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 5.0, 5.0]);
        // group 0: mean 2, std_bessel 1 -> [-1, 0, 1] / 1.0001; group 1 identical -> 0, no NaN
        let a = v(&grpo(&r, 3, ScaleRewards::Group));
        close(&a, &[-1.0 / 1.0001, 0.0, 1.0 / 1.0001, 0.0, 0.0, 0.0], 1e-6);
        let a = v(&grpo(&r, 3, ScaleRewards::None));
        close(&a, &[-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], 1e-6);
        let sb: f64 = {
            let x = [1.0f64, 2.0, 3.0, 5.0, 5.0, 5.0];
            let m = x.iter().sum::<f64>() / 6.0;
            (x.iter().map(|y| (y - m).powi(2)).sum::<f64>() / 5.0).sqrt()
        };
        let a = v(&grpo(&r, 3, ScaleRewards::Batch));
        close(&a, &[-1.0 / (sb + 1e-4), 0.0, 1.0 / (sb + 1e-4), 0.0, 0.0, 0.0], 1e-6);
        // K = 2
        let a = v(&grpo(&Tensor::from_slice(&[0.0f32, 1.0]), 2, ScaleRewards::Group));
        let s = (0.5f64).sqrt();
        close(&a, &[-0.5 / (s + 1e-4), 0.5 / (s + 1e-4)], 1e-6);
    }

    #[test]
    fn token_rewards_and_returns() {
        let s = Tensor::from_slice(&[2.0f32, 20.0, 1.0]);
        let lo = Tensor::from_slice(&[-1.0f32, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]).view([3, 3]);
        let lr = Tensor::from_slice(&[-2.0f32, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]).view([3, 3]);
        // row 0 truncated (no EOS, full length); row 1 ends at t=1; row 2 all padding
        let m = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 0, 0, 0]).view([3, 3]);
        let rw = token_rewards(&s, &lo, &lr, &m, 0.5, 10.0);
        // row 0: k1 = [1, 0, 0] -> [-0.5, 0, 0 + 2]; row 1: reward clipped to 10 at t=1; row 2: nothing
        close(&v(&rw), &[-0.5, 0.0, 2.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0], 1e-6);
        close(&v(&returns(&rw, &m, 1.0)), &[1.5, 2.0, 2.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0], 1e-6);
        close(&v(&returns(&rw, &m, 0.5)), &[-0.5 + 0.5 * 0.0 + 0.25 * 2.0, 1.0, 2.0, 5.0, 10.0, 0.0, 0.0, 0.0, 0.0], 1e-6);
    }

    #[test]
    fn reinforce_pp_whitens_over_response_tokens() {
        let rw = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 3.0]).view([2, 2]);
        let m = Tensor::from_slice(&[1i64, 1, 0, 1]).view([2, 2]);
        // returns: row0 [1, 1], row1 [_, 3]; tokens {1, 1, 3}: mean 5/3, var_pop = 8/9
        let a = v(&reinforce_pp(&rw, &m, 1.0));
        let (mu, sd) = (5.0 / 3.0, (8.0f64 / 9.0).sqrt());
        close(&a, &[(1.0 - mu) / sd, (1.0 - mu) / sd, 0.0, (3.0 - mu) / sd], 1e-5);
    }

    #[test]
    fn remax_subtracts_the_greedy_baseline() {
        let rw = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 3.0]).view([2, 2]);
        let m = Tensor::from_slice(&[1i64, 1, 0, 1]).view([2, 2]);
        let b = Tensor::from_slice(&[0.5f32, 1.0]);
        close(&v(&remax(&rw, &m, &b)), &[0.5, 0.5, 0.0, 2.0], 1e-6);
    }

    #[test]
    fn group_agreement_reads_order_and_spread_within_groups_only() {
        // Same ranking inside both groups although the levels differ between groups and rewards.
        let a = [1.0, 2.0, 3.0, 10.0, 20.0, 40.0];
        let b = [5.0, 6.0, 7.0, -3.0, -2.0, -1.0];
        let g = group_agreement(&a, &b, 3);
        assert_eq!(g.concordance, 1.0);
        assert!((g.corr - (1.0 + 0.9819805060619657) / 2.0).abs() < 1e-12, "{g:?}");
        // Reversed in every group.
        let r: Vec<f64> = a.iter().map(|x| -x).collect();
        let g = group_agreement(&a, &r, 3);
        assert_eq!(g.concordance, 0.0);
        assert!((g.corr + (1.0 + 1.0) / 2.0).abs() < 1e-12, "{g:?}");
        // One group agrees, one is reversed; a tie counts half; a flat group has no correlation.
        let a = [1.0, 2.0, 1.0, 2.0, 0.0, 0.0];
        let b = [1.0, 2.0, 2.0, 1.0, 3.0, 4.0];
        let g = group_agreement(&a, &b, 2);
        assert_eq!(g.concordance, (1.0 + 0.0 + 0.5) / 3.0);
        assert_eq!(g.corr, (1.0 - 1.0) / 2.0);
        assert!(group_agreement(&[1.0, 1.0], &[2.0, 3.0], 2).corr.is_nan());
    }
}
