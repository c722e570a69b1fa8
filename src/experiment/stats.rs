//! Statistics for the experiment report: pure functions on `f64` slices, no dependencies.
//!
//! - [`Summary`] / [`summarize`]: mean, sample standard deviation, 95% CI half-width with the
//!   Student-t quantile (n = 1: std and CI are NaN, "undefined"; n = 0: everything NaN).
//! - [`t_quantile`], [`t_cdf`]: Student's t through the regularized incomplete beta function
//!   ([`betai`], Numerical Recipes' continued fraction), so non-integer degrees of freedom (Welch)
//!   are exact too, not only a table.
//! - [`welch`] (two-sided Welch t-test, unequal variances: "is A different from B") and
//!   [`paired`] (paired t-test, e.g. the same seeds under two methods).
//! - [`interp_first_crossing`]: y at a given x on a curve whose x need not be monotone (gold at a
//!   matched sqrt(KL)).
//! - [`lc_win_rate`]: the AlpacaEval-2-LC-style length-controlled win rate.
//! - [`wilson95`]: the 95% Wilson score interval of a proportion (an RM's accuracy on n pairs).
//!
//! Non-finite inputs are left out by [`summarize`] (a missing metric is NaN upstream); the tests and
//! the report rely on that.

/// Two-sided 95%: the quantile 0.975.
pub const Q95: f64 = 0.975;

/// Mean of the values; NaN when empty.
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (divisor n - 1); NaN when n < 2.
pub fn std(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 2 {
        return f64::NAN;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// Half-width of the two-sided 95% CI of the mean, t_{0.975, n-1} s / sqrt(n). With n = 1 the
/// spread is unknown: NaN ("undefined"), not 0.
pub fn ci95(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 2 {
        return f64::NAN;
    }
    t_quantile(Q95, (n - 1) as f64) * std(xs) / (n as f64).sqrt()
}

/// Mean, spread and 95% CI of a sample (finite values only; `n` counts them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample std (n - 1); NaN for n < 2.
    pub std: f64,
    /// Half-width of the 95% CI of the mean; NaN for n < 2.
    pub ci95: f64,
}

impl Summary {
    /// No data.
    pub const EMPTY: Summary = Summary { n: 0, mean: f64::NAN, std: f64::NAN, ci95: f64::NAN };
    /// (mean - ci95, mean + ci95).
    pub fn interval(&self) -> (f64, f64) {
        (self.mean - self.ci95, self.mean + self.ci95)
    }
}

/// [`Summary`] of the finite values of `xs` (NaN and infinities are dropped).
pub fn summarize(xs: &[f64]) -> Summary {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Summary::EMPTY;
    }
    Summary { n: v.len(), mean: mean(&v), std: std(&v), ci95: ci95(&v) }
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b), a, b > 0, x in [0, 1] (Numerical Recipes
/// 3rd ed. §6.4: the continued fraction by modified Lentz, on the side where it converges fast).
pub fn betai(a: f64, b: f64, x: f64) -> f64 {
    if a.is_nan() || b.is_nan() || a <= 0.0 || b <= 0.0 || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if x == 0.0 || x == 1.0 {
        return x;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * betacf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * betacf(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of [`betai`] (modified Lentz).
fn betacf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// CDF of Student's t with `df` > 0 degrees of freedom (non-integer allowed):
/// P(T <= t) = 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, symmetric below.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 1.0 } else { 0.0 };
    }
    let tail = 0.5 * betai(df / 2.0, 0.5, df / (df + t * t));
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Two-sided p-value of a t statistic: P(|T| >= |t|).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    betai(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The quantile of Student's t: the t with P(T <= t) = p, for p in (0, 1) and df > 0 (non-integer
/// allowed). Bisection on [`t_cdf`] to ~1e-12 (t_{0.975, 2} = 4.302652729749464).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p.is_nan() || p <= 0.0 || p >= 1.0 || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if p == 0.5 {
        return 0.0;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    // Bracket: the quantile is positive; double the upper end until the CDF passes p.
    let (mut lo, mut hi) = (0.0, 1.0);
    while t_cdf(hi, df) < p {
        lo = hi;
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-13 * hi.max(1.0) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// A two-sample comparison of means: A - B.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTest {
    /// mean(A) - mean(B).
    pub diff: f64,
    /// Standard error of `diff`.
    pub se: f64,
    /// Degrees of freedom (Welch-Satterthwaite for [`welch`], n - 1 for [`paired`]).
    pub df: f64,
    pub t: f64,
    /// Two-sided p-value; NaN when undefined (a sample with fewer than 2 values).
    pub p: f64,
    /// Half-width of the 95% CI of `diff` (t_{0.975, df} se).
    pub ci95: f64,
}

impl TTest {
    fn undefined(diff: f64) -> Self {
        TTest { diff, se: f64::NAN, df: f64::NAN, t: f64::NAN, p: f64::NAN, ci95: f64::NAN }
    }
    /// p < alpha (false when p is undefined).
    pub fn significant(&self, alpha: f64) -> bool {
        self.p < alpha
    }
}

/// Welch's two-sided t-test of mean(A) != mean(B) without assuming equal variances (finite values
/// only). Needs n >= 2 in both samples, else p is NaN. When both samples have zero variance the
/// test degenerates: p = 1 if the means are equal, else 0 (the difference is exact).
pub fn welch(a: &[f64], b: &[f64]) -> TTest {
    let a: Vec<f64> = a.iter().copied().filter(|x| x.is_finite()).collect();
    let b: Vec<f64> = b.iter().copied().filter(|x| x.is_finite()).collect();
    let diff = mean(&a) - mean(&b);
    if a.len() < 2 || b.len() < 2 {
        return TTest::undefined(diff);
    }
    let (va, vb) = (std(&a).powi(2) / a.len() as f64, std(&b).powi(2) / b.len() as f64);
    let se2 = va + vb;
    if se2 == 0.0 {
        let p = if diff == 0.0 { 1.0 } else { 0.0 };
        return TTest { diff, se: 0.0, df: f64::INFINITY, t: diff.signum() * f64::INFINITY, p, ci95: 0.0 };
    }
    // Welch-Satterthwaite: df = (va + vb)^2 / (va^2 / (na - 1) + vb^2 / (nb - 1)).
    let df = se2 * se2 / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    let se = se2.sqrt();
    let t = diff / se;
    TTest { diff, se, df, t, p: t_two_sided_p(t, df), ci95: t_quantile(Q95, df) * se }
}

/// Paired two-sided t-test on the differences a_i - b_i (pairs where both are finite; a and b
/// must be aligned, e.g. by seed). n >= 2 pairs, else p is NaN; all differences equal: p = 1 if
/// they are 0, else 0.
pub fn paired(a: &[f64], b: &[f64]) -> TTest {
    let d: Vec<f64> = a.iter().zip(b).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| x - y).collect();
    let diff = mean(&d);
    if d.len() < 2 {
        return TTest::undefined(diff);
    }
    let s = std(&d);
    let df = (d.len() - 1) as f64;
    if s == 0.0 {
        let p = if diff == 0.0 { 1.0 } else { 0.0 };
        return TTest { diff, se: 0.0, df, t: diff.signum() * f64::INFINITY, p, ci95: 0.0 };
    }
    let se = s / (d.len() as f64).sqrt();
    let t = diff / se;
    TTest { diff, se, df, t, p: t_two_sided_p(t, df), ci95: t_quantile(Q95, df) * se }
}

/// y at `x` on the polyline `curve` (points in trajectory order, e.g. (sqrt(KL), gold) by step),
/// by linear interpolation on the FIRST segment that reaches `x`.
///
/// Why the first crossing: KL to pi_init is not monotone in the step (it is a noisy estimate, and a
/// policy can drift back), so "the gold at distance d" is ambiguous. The first time the policy
/// reaches d is the quantity Gao et al.'s curves describe (how much gold the optimisation had bought
/// when it had spent d of distance), it does not look ahead, and it does not reorder points from
/// different steps as sorting would. No extrapolation: `None` when no segment (or point) reaches x,
/// or the curve is empty. Non-finite points are skipped.
pub fn interp_first_crossing(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    if !x.is_finite() {
        return None;
    }
    let pts: Vec<(f64, f64)> = curve.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    if let Some(&(x0, y0)) = pts.first() {
        if x0 == x {
            return Some(y0);
        }
    }
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let (lo, hi) = if x0 <= x1 { (x0, x1) } else { (x1, x0) };
        if x >= lo && x <= hi {
            if x1 == x0 {
                return Some(y0);
            }
            return Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    None
}

/// A length-controlled win rate and the fit behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LcWinRate {
    /// sigmoid(intercept): the win rate predicted at zero length difference.
    pub lc: f64,
    /// The raw win rate (mean of the outcomes, ties 0.5).
    pub raw: f64,
    pub intercept: f64,
    /// Coefficient of the length feature tanh(d / sd(d)).
    pub slope: f64,
    /// sd(d) used to standardize (NaN or 0: the length feature is 0 and lc = raw, up to the guard).
    pub scale: f64,
    pub n: usize,
}

/// L2 penalty on the length coefficient (guards separation: wins explained exactly by length).
pub const LC_L2_SLOPE: f64 = 0.1;
/// Tiny L2 penalty on the intercept (guards all-wins / all-losses: keeps it finite).
pub const LC_L2_INTERCEPT: f64 = 1e-4;

/// AlpacaEval-2-LC-style length-controlled win rate (Dubois et al. 2024, alpaca_eval's
/// `length_controlled` GLM): a logistic regression of the per-prompt outcome `wins[i]` (1 win, 0
/// loss, 0.5 tie, vs pi_init) on the length feature z_i = tanh(d_i / sd(d)), with d_i = policy
/// length - pi_init length and sd the sample std of d; the LC win rate is sigmoid(intercept), the
/// win rate the model predicts when the two responses have the same length.
///
/// d is scaled but not centred, so z = 0 means "equal length" and the intercept keeps that meaning;
/// tanh (as in AlpacaEval) bounds the feature so one runaway response cannot dominate. AlpacaEval's
/// instruction-difficulty term needs many models per prompt and is left out. Fit: penalized
/// maximum likelihood by Newton's method (IRLS) with L2 penalties [`LC_L2_SLOPE`] on the slope and
/// [`LC_L2_INTERCEPT`] on the intercept, which keep it finite under separation. Fractional outcomes
/// are allowed (the Bernoulli likelihood extends to y in [0, 1]). Pairs with a non-finite value are
/// dropped; none left: all NaN.
pub fn lc_win_rate(wins: &[f64], len_diff: &[f64]) -> LcWinRate {
    let (y, d): (Vec<f64>, Vec<f64>) =
        wins.iter().zip(len_diff).filter(|(w, l)| w.is_finite() && l.is_finite()).map(|(w, l)| (w.clamp(0.0, 1.0), *l)).unzip();
    let n = y.len();
    let raw = mean(&y);
    if n == 0 {
        return LcWinRate { lc: f64::NAN, raw, intercept: f64::NAN, slope: f64::NAN, scale: f64::NAN, n };
    }
    let scale = std(&d);
    let z: Vec<f64> = if scale > 0.0 { d.iter().map(|d| (d / scale).tanh()).collect() } else { vec![0.0; n] };
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (mut b0, mut b1) = (0.0f64, 0.0f64);
    for _ in 0..100 {
        // Gradient and Hessian of the penalized log-likelihood
        // sum y log p + (1 - y) log(1 - p) - l0 b0^2 / 2 - l1 b1^2 / 2.
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (-LC_L2_INTERCEPT * b0, -LC_L2_SLOPE * b1, LC_L2_INTERCEPT, 0.0, LC_L2_SLOPE);
        for (yi, zi) in y.iter().zip(&z) {
            let p = sigmoid(b0 + b1 * zi);
            let w = p * (1.0 - p);
            g0 += yi - p;
            g1 += (yi - p) * zi;
            h00 += w;
            h01 += w * zi;
            h11 += w * zi * zi;
        }
        // Newton step: H^{-1} g for the 2x2 negative Hessian H (positive definite: penalties > 0).
        let det = h00 * h11 - h01 * h01;
        let (s0, s1) = ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det);
        // Damped: a step of at most 5 in logit units keeps early iterations under separation sane.
        let m = s0.abs().max(s1.abs());
        let k = if m > 5.0 { 5.0 / m } else { 1.0 };
        b0 += k * s0;
        b1 += k * s1;
        if m * k < 1e-12 {
            break;
        }
    }
    LcWinRate { lc: sigmoid(b0), raw, intercept: b0, slope: b1, scale, n }
}

/// The outcome of a vs b for a maximised score: 1 win, 0.5 tie, 0 loss; NaN if either is not finite.
pub fn win(a: f64, b: f64) -> f64 {
    if !(a.is_finite() && b.is_finite()) {
        f64::NAN
    } else if a > b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// The 95% Wilson score interval (low, high) of a proportion `p` measured on `n` trials: unlike
/// p +- 1.96 sqrt(p(1-p)/n) it stays inside [0, 1] and is right near 0 and 1. NaNs for n = 0.
pub fn wilson95(p: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let z = 1.959963984540054;
    let (n, z2) = (n as f64, z * z);
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (centre - half, centre + half)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn mean_std_ci_by_hand() {
        // [1, 2, 4]: mean 7/3, s^2 = ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3.
        let x = [1.0, 2.0, 4.0];
        assert!(close(mean(&x), 7.0 / 3.0, 1e-15));
        assert!(close(std(&x), (7.0f64 / 3.0).sqrt(), 1e-15));
        // scipy: t.ppf(0.975, 2) * s / sqrt(3) = 3.7945830335967594.
        assert!(close(ci95(&x), 3.7945830335967594, 1e-9));
        let s = summarize(&[1.0, f64::NAN, 2.0, 4.0]);
        assert_eq!(s.n, 3);
        // n = 1: mean defined, spread undefined.
        let one = summarize(&[0.3]);
        assert_eq!(one.mean, 0.3);
        assert!(one.std.is_nan() && one.ci95.is_nan());
        assert!(summarize(&[]).mean.is_nan());
    }

    #[test]
    fn gamma_and_beta() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-14));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-13));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13));
        // scipy.special.betainc(2.5, 0.5, 0.3) = 0.018927124071945658
        assert!(close(betai(2.5, 0.5, 0.3), 0.018927124071945658, 1e-12));
        // I_x(1, 1) = x.
        assert!(close(betai(1.0, 1.0, 0.37), 0.37, 1e-14));
    }

    #[test]
    fn t_distribution_matches_scipy() {
        // scipy 1.17.1 stats.t.ppf(0.975, df).
        for (df, q) in [
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (3.0, 3.1824463052837078),
            (5.0, 2.5705818356363146),
            (10.0, 2.228138851986274),
            (30.0, 2.0422724563012378),
            (100.0, 1.9839715185235518),
            (4.5, 2.6589123472044034),
        ] {
            assert!(close(t_quantile(0.975, df), q, 1e-9), "df {df}: {} vs {q}", t_quantile(0.975, df));
        }
        assert!(close(t_quantile(0.025, 2.0), -4.302652729749462, 1e-9));
        // scipy stats.t.cdf(-1.5, 3), stats.t.cdf(2.0, 7.3)
        assert!(close(t_cdf(-1.5, 3.0), 0.11529193262241147, 1e-12));
        assert!(close(t_cdf(2.0, 7.3), 0.9580294803329484, 1e-12));
        assert!(t_quantile(1.0, 3.0).is_nan() && t_quantile(0.9, 0.0).is_nan());
    }

    #[test]
    fn welch_and_paired_match_scipy() {
        // scipy 1.17.1: stats.ttest_ind([0.51,0.62,0.48], [0.30,0.41,0.35], equal_var=False)
        // -> statistic 3.451006928259871, pvalue 0.029429847426244157, df 3.702496413199426
        let r = welch(&[0.51, 0.62, 0.48], &[0.30, 0.41, 0.35]);
        assert!(close(r.t, 3.451006928259871, 1e-10));
        assert!(close(r.df, 3.702496413199426, 1e-10));
        assert!(close(r.p, 0.029429847426244157, 1e-10));
        assert!(r.significant(0.05));
        // Unequal sizes: ttest_ind([1.2,0.8,1.5,1.1,0.9], [1.0,0.7,1.3,1.4,0.6,0.9], equal_var=False)
        // -> 0.6527533657682199, p 0.530274402258432, df 8.977056747216944
        let r = welch(&[1.2, 0.8, 1.5, 1.1, 0.9], &[1.0, 0.7, 1.3, 1.4, 0.6, 0.9]);
        assert!(close(r.t, 0.6527533657682199, 1e-10) && close(r.p, 0.530274402258432, 1e-10));
        assert!(close(r.df, 8.977056747216944, 1e-10));
        assert!(!r.significant(0.05));
        // CI of the difference: t_{0.975, df} * se.
        assert!(close(r.ci95, t_quantile(0.975, r.df) * r.se, 1e-12));
        // scipy stats.ttest_rel([0.51,0.62,0.48], [0.45,0.60,0.40]) -> 3.0237157840738202, p 0.09417837268432327
        let r = paired(&[0.51, 0.62, 0.48], &[0.45, 0.60, 0.40]);
        assert!(close(r.t, 3.0237157840738202, 1e-10) && close(r.p, 0.09417837268432327, 1e-10));
        // Undefined with one value; degenerate zero variance.
        assert!(welch(&[1.0], &[0.0, 1.0]).p.is_nan());
        assert_eq!(welch(&[1.0, 1.0], &[1.0, 1.0]).p, 1.0);
        assert_eq!(welch(&[2.0, 2.0], &[1.0, 1.0]).p, 0.0);
    }

    #[test]
    fn interpolation_first_crossing() {
        let c = [(0.0, 0.0), (1.0, 1.0), (2.0, 0.0)];
        assert_eq!(interp_first_crossing(&c, 0.5), Some(0.5));
        assert_eq!(interp_first_crossing(&c, 1.5), Some(0.5));
        assert_eq!(interp_first_crossing(&c, 0.0), Some(0.0));
        assert_eq!(interp_first_crossing(&c, 2.5), None);
        // Non-monotone x: 0 -> 2 -> 1 -> 3; x = 1.5 is first reached on the first segment.
        let c = [(0.0, 0.0), (2.0, 2.0), (1.0, 10.0), (3.0, 30.0)];
        assert_eq!(interp_first_crossing(&c, 1.5), Some(1.5));
        assert_eq!(interp_first_crossing(&c, 2.5), Some(25.0));
        assert_eq!(interp_first_crossing(&[], 1.0), None);
        assert_eq!(interp_first_crossing(&[(1.0, 4.0)], 1.0), Some(4.0));
    }

    #[test]
    fn lc_win_rate_removes_a_pure_length_effect() {
        // Policy longer on 9 prompts (wins 6), shorter on 3 (wins 1): P(win | longer) = 2/3,
        // P(win | shorter) = 1/3, symmetric in logit around 0, so the length-free win rate is 1/2,
        // while the raw win rate is 7/12.
        let mut wins = vec![];
        let mut d = vec![];
        for i in 0..9 {
            wins.push(if i < 6 { 1.0 } else { 0.0 });
            d.push(20.0);
        }
        for i in 0..3 {
            wins.push(if i < 1 { 1.0 } else { 0.0 });
            d.push(-20.0);
        }
        let r = lc_win_rate(&wins, &d);
        assert!(close(r.raw, 7.0 / 12.0, 1e-12));
        assert!(close(r.lc, 0.5, 0.02), "{r:?}");
        assert!(r.slope > 0.0);
        // Separation (win iff longer) stays finite.
        let wins: Vec<f64> = (0..20).map(|i| if i < 15 { 1.0 } else { 0.0 }).collect();
        let d: Vec<f64> = (0..20).map(|i| if i < 15 { 10.0 + i as f64 } else { -5.0 - i as f64 }).collect();
        let r = lc_win_rate(&wins, &d);
        assert!(r.lc.is_finite() && r.slope.is_finite() && r.raw == 0.75);
        assert!(r.lc < r.raw, "{r:?}");
        // No length difference: LC = raw.
        let r = lc_win_rate(&[1.0, 1.0, 0.0, 0.5], &[0.0; 4]);
        assert!(close(r.lc, 0.625, 1e-3), "{r:?}");
        // All wins: finite and near 1.
        let r = lc_win_rate(&[1.0; 8], &[1.0, -1.0, 2.0, -2.0, 3.0, 0.0, 1.0, 2.0]);
        assert!(r.lc > 0.99 && r.lc.is_finite());
        assert!(lc_win_rate(&[], &[]).lc.is_nan());
    }

    #[test]
    fn lc_recovers_a_known_intercept() {
        // Fractional outcomes y = sigmoid(0.8 + 1.5 z) on a spread of z: the fit recovers b0 = 0.8
        // and slope 1.5 up to the small slope penalty (it shrinks the slope by a few percent here).
        let d: Vec<f64> = (0..40).map(|i| (i as f64 - 12.0) * 3.0).collect();
        let sd = std(&d);
        let y: Vec<f64> = d.iter().map(|x| 1.0 / (1.0 + (-(0.8 + 1.5 * (x / sd).tanh())).exp())).collect();
        let r = lc_win_rate(&y, &d);
        assert!(close(r.intercept, 0.8, 0.02) && close(r.slope, 1.5, 0.1), "{r:?}");
    }

    #[test]
    fn win_outcomes() {
        assert_eq!(win(1.0, 0.0), 1.0);
        assert_eq!(win(0.0, 0.0), 0.5);
        assert_eq!(win(-1.0, 0.0), 0.0);
        assert!(win(f64::NAN, 0.0).is_nan());
    }

    #[test]
    fn wilson_interval_matches_the_closed_form_values() {
        // statsmodels proportion_confint(70, 100, method="wilson") = (0.6041, 0.7810).
        let (lo, hi) = wilson95(0.7, 100);
        assert!((lo - 0.60415).abs() < 1e-4 && (hi - 0.78100).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson95(1.0, 10);
        assert!(hi == 1.0 || (hi - 1.0).abs() < 1e-12, "{hi}");
        assert!(lo > 0.69 && lo < 0.73, "{lo}");
        assert!(wilson95(0.5, 0).0.is_nan());
    }
}
