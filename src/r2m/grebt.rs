//! GREBT (docs/method.md, "The update: GREBT"): per group i of K responses,
//! winner w = argmax_j a_ij, loser l = argmin_j a_ij by the ANNOTATION rewards a;
//! with the recomputed rewards r:
//! L_BT(i) = -log sigmoid(r_iw - r_il);
//! L_GRE(i) = -sum_j p_ij log p_ij, p_i = softmax_j(z_ij), z_ij = (r_ij - mean_j r_ij) / std_j r_ij
//! (population std); a group whose std < 1e-6 contributes no GRE term;
//! L = mean_i [(1 - alpha) L_BT(i) + alpha L_GRE(i)].
use tch::Tensor;

/// r: recomputed rewards (B) with grad; annotation: the step's annotation rewards (B); K: group
/// size. Returns (L, mean L_BT, mean L_GRE) — the last two detached, for metrics.
pub fn grebt(r: &Tensor, annotation: &Tensor, k: i64, alpha: f64) -> (Tensor, Tensor, Tensor) {
    let kind = r.kind(); // f32 in training; f64 under the f64 precision and in the finite-difference test
    let r = r.view([-1, k]); // (n, K)
    let a = annotation.to_device(r.device()).to_kind(kind).view([-1, k]);
    let win = a.argmax(1, true); // (n, 1)
    let lose = a.argmin(1, true);
    let bt = -(r.gather(1, &win, false) - r.gather(1, &lose, false)).squeeze_dim(1).log_sigmoid(); // (n)
    let mean = r.mean_dim(1, true, kind);
    let std = r.std_dim(1, false, true); // population std, (n, 1)
    let ok = std.gt(1e-6).squeeze_dim(1).to_kind(kind); // (n)
                                                        // Zero-variance groups: divide by 1 instead (their term is then masked out), so no NaN
                                                        // reaches the graph.
    let safe = std.where_self(&std.gt(1e-6), &std.ones_like());
    let z = (&r - mean) / safe;
    let logp = z.log_softmax(1, kind);
    let gre = -(logp.exp() * &logp).sum_dim_intlist([1i64].as_slice(), false, kind) * &ok; // (n)
    let loss = (&bt * (1.0 - alpha) + &gre * alpha).mean(kind);
    (loss, bt.mean(kind).detach(), gre.mean(kind).detach())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entropy_of(z: &[f64]) -> f64 {
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - mx).exp()).collect();
        let s: f64 = e.iter().sum();
        -e.iter().map(|v| (v / s) * (v / s).ln()).sum::<f64>()
    }

    #[test]
    fn value_against_the_formula_with_a_zero_variance_group() {
        // Group 0: r = [1, 2, 4], annotations rank index 1 best, index 0 worst.
        // Group 1: r = [3, 3, 3] (zero variance: BT only, log 2 since w and l tie... they differ
        // in index but have equal r).
        let r = Tensor::from_slice(&[1.0f64, 2.0, 4.0, 3.0, 3.0, 3.0]).set_requires_grad(true);
        let a = Tensor::from_slice(&[0.0f32, 5.0, 1.0, 1.0, 0.0, 2.0]);
        let alpha = 0.3;
        let (loss, bt, gre) = grebt(&r, &a, 3, alpha);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let bt0 = -sig(2.0 - 1.0).ln();
        let bt1 = -sig(0.0).ln();
        let m = 7.0 / 3.0;
        let sd = (((1.0 - m) * (1.0f64 - m) + (2.0 - m) * (2.0 - m) + (4.0 - m) * (4.0 - m)) / 3.0).sqrt();
        let gre0 = entropy_of(&[(1.0 - m) / sd, (2.0 - m) / sd, (4.0 - m) / sd]);
        let want = ((1.0 - alpha) * bt0 + alpha * gre0 + (1.0 - alpha) * bt1) / 2.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-6, "{} vs {want}", loss.double_value(&[]));
        assert!((bt.double_value(&[]) - (bt0 + bt1) / 2.0).abs() < 1e-6);
        assert!((gre.double_value(&[]) - gre0 / 2.0).abs() < 1e-6);
        loss.backward();
        let g = Vec::<f64>::try_from(r.grad()).unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
        // The zero-variance group's gradient is BT's only: d/dr_w = -(1 - sig(0)) (1 - alpha) / 2 on
        // the winner (index 5), the opposite on the loser (index 4), 0 on the third.
        assert!((g[5] + 0.5 * (1.0 - alpha) / 2.0).abs() < 1e-6, "{g:?}");
        assert!((g[4] - 0.5 * (1.0 - alpha) / 2.0).abs() < 1e-6, "{g:?}");
        assert_eq!(g[3], 0.0);
    }

    #[test]
    fn gradient_matches_finite_differences_and_k2() {
        let base = [0.3f64, -0.2, 1.1, 0.5];
        let a = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]);
        let f = |v: &[f64]| grebt(&Tensor::from_slice(v), &a, 2, 0.3).0.double_value(&[]);
        let r = Tensor::from_slice(&base).set_requires_grad(true);
        grebt(&r, &a, 2, 0.3).0.backward();
        let g = Vec::<f64>::try_from(r.grad()).unwrap();
        for i in 0..4 {
            let (mut up, mut dn) = (base, base);
            up[i] += 1e-6;
            dn[i] -= 1e-6;
            let fd = (f(&up) - f(&dn)) / 2e-6;
            assert!((fd - g[i]).abs() < 1e-5, "coordinate {i}: {fd} vs {}", g[i]);
        }
        // K = 2: z = [+1, -1] always, so GRE is the constant entropy of softmax([1, -1]).
        let (_, _, gre) = grebt(&Tensor::from_slice(&base), &a, 2, 0.3);
        assert!((gre.double_value(&[]) - entropy_of(&[1.0, -1.0])).abs() < 1e-9);
    }
}
