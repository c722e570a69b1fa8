//! Bradley-Terry reward-model loss (peer: TRL RewardTrainer; docs/rl-conventions.md):
//! L = -log sigmoid(r_c - r_r - margin).mean() + eta * mean((r_c + r_r)^2)
//! (the optional centering term of Eisenstein et al. 2023, TRL's `center_rewards_coefficient`).
use crate::model::precision::Widen;
use tch::{Kind, Tensor};

/// r_chosen, r_rejected: (B). Returns the scalar loss.
pub fn bt_loss(r_chosen: &Tensor, r_rejected: &Tensor, margin: f64, center_coef: f64) -> Tensor {
    let diff = (r_chosen - r_rejected - margin).widen();
    let mut loss = -diff.log_sigmoid().mean(diff.kind());
    if center_coef != 0.0 {
        loss += (r_chosen + r_rejected).widen().square().mean(diff.kind()) * center_coef;
    }
    loss
}

/// Fraction of pairs with r_chosen > r_rejected (ties count as wrong, as TRL's `accuracy`).
pub fn accuracy(r_chosen: &Tensor, r_rejected: &Tensor) -> f64 {
    if r_chosen.numel() == 0 {
        return f64::NAN;
    }
    r_chosen.gt_tensor(r_rejected).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt_value_and_gradient_against_the_formula() {
        // r_c = [1, 0.5, -2], r_r = [0, 1.5, -1], margin 0.2, eta 0.1 (numbers by hand):
        // d = r_c - r_r - m = [0.8, -1.2, -1.2]; L_bt = mean(softplus(-d));
        // center = 0.1 * mean((r_c + r_r)^2) = 0.1 * mean([1, 4, 9]) = 0.4666...
        let rc = Tensor::from_slice(&[1.0f64, 0.5, -2.0]).set_requires_grad(true);
        let rr = Tensor::from_slice(&[0.0f64, 1.5, -1.0]).set_requires_grad(true);
        let loss = bt_loss(&rc, &rr, 0.2, 0.1);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let want = (sp(-0.8) + sp(1.2) + sp(1.2)) / 3.0 + 0.1 * 14.0 / 3.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-6, "{} vs {want}", loss.double_value(&[]));
        loss.backward();
        // dL/dr_c_i = -(1 - sigmoid(d_i)) / 3 + 0.1 * 2 (r_c + r_r)_i / 3; dL/dr_r_i = +(1 - sigmoid(d_i)) / 3 + same.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let d = [0.8, -1.2, -1.2];
        let s = [1.0, 2.0, -3.0];
        for i in 0..3 {
            let gc = -(1.0 - sig(d[i])) / 3.0 + 0.2 * s[i] / 3.0;
            let gr = (1.0 - sig(d[i])) / 3.0 + 0.2 * s[i] / 3.0;
            assert!((rc.grad().double_value(&[i as i64]) - gc).abs() < 1e-6);
            assert!((rr.grad().double_value(&[i as i64]) - gr).abs() < 1e-6);
        }
    }

    #[test]
    fn accuracy_on_a_hand_made_set() {
        let rc = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0]);
        let rr = Tensor::from_slice(&[0.0f32, 2.5, 1.0, 0.0]);
        assert_eq!(accuracy(&rc, &rr), 0.5); // 1 > 0, 3 > 1; 2 < 2.5; tie is wrong
    }
}
