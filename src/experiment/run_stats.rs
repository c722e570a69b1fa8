//! What one run's files say, as numbers: its held-out eval curve ([`eval_curve`]; steps follow the
//! files: an eval at step t is taken after update t, step -1 is pi_init, the baseline of win rates
//! and of the standardized gap, its KL 0), its training-rollout curve, and per run ([`RunStats`]):
//! gold and proxy at the last eval step, KL and d = sqrt(KL), gold at a matched d, peak gold and its
//! step, the proxy-gold gap (raw and standardized), win rate and length-controlled win rate vs
//! pi_init, response length, RM accuracy, R2M's feedback term, mean time per phase.
use super::arm::parse_method;
use super::runs::{f64_of, EvalRow, Run};
use super::stats;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One point of a run's held-out eval curve (means over the eval prompts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalPoint {
    /// -1 = pi_init.
    pub step: i64,
    pub gold: f64,
    pub proxy: f64,
    pub kl: f64,
    pub length: f64,
}

impl EvalPoint {
    /// d = sqrt(KL), with a (noisy) negative k1 mean clamped to 0.
    pub fn sqrt_kl(&self) -> f64 {
        self.kl.max(0.0).sqrt()
    }
}

/// A run's eval curve in step order: from `eval.jsonl` (means per step) when it has rows, else
/// from the `eval/*` entries of metrics.jsonl (which then has no pi_init point).
pub fn eval_curve(run: &Run) -> Vec<EvalPoint> {
    if !run.eval.is_empty() {
        let mut by: BTreeMap<i64, Vec<&EvalRow>> = BTreeMap::new();
        for r in &run.eval {
            by.entry(r.step).or_default().push(r);
        }
        return by
            .into_iter()
            .map(|(step, rows)| {
                let m = |f: fn(&EvalRow) -> f64| stats::mean(&rows.iter().map(|r| f(r)).collect::<Vec<_>>());
                EvalPoint { step, gold: m(|r| r.gold), proxy: m(EvalRow::proxy), kl: m(|r| r.kl), length: m(|r| r.length) }
            })
            .collect();
    }
    let mut pts: Vec<EvalPoint> = run
        .metrics
        .iter()
        .filter(|m| m.contains_key("eval/gold") || m.contains_key("eval/reward"))
        .filter_map(|m| {
            Some(EvalPoint {
                step: m.get("step")?.as_i64()?,
                gold: f64_of(m.get("eval/gold")),
                proxy: f64_of(m.get("eval/reward_frozen_rm").or_else(|| m.get("eval/reward"))),
                kl: f64_of(m.get("eval/kl")),
                length: f64_of(m.get("eval/mean_length")),
            })
        })
        .collect();
    pts.sort_by_key(|p| p.step);
    pts
}

/// A run's training-rollout curve: (step, proxy, `gold/reward`, `kl`) every step; the proxy is the
/// frozen RM's score (`reward_frozen_rm`) where logged, else the run's `reward`.
pub fn rollout_curve(run: &Run) -> Vec<(i64, f64, f64, f64)> {
    let mut v: Vec<_> = run
        .metrics
        .iter()
        .filter_map(|m| {
            let proxy = f64_of(m.get("reward_frozen_rm").or_else(|| m.get("reward")));
            Some((m.get("step")?.as_i64()?, proxy, f64_of(m.get("gold/reward")), f64_of(m.get("kl"))))
        })
        .collect();
    v.sort_by_key(|p| p.0);
    v
}

/// Per-run values (NaN where the run lacks the data).
#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    /// The last eval step (None: no eval).
    pub last_eval_step: Option<i64>,
    /// The last training step in metrics.jsonl.
    pub last_step: Option<i64>,
    /// pi_init's gold and proxy means (step -1).
    pub gold_init: f64,
    pub proxy_init: f64,
    pub gold_final: f64,
    pub proxy_final: f64,
    pub kl_final: f64,
    pub sqrt_kl_final: f64,
    /// Gold at the matched d (first crossing, see [`stats::interp_first_crossing`]).
    pub gold_at_d: f64,
    /// The highest eval gold (pi_init included) and its step (-1 = pi_init).
    pub peak_gold: f64,
    pub peak_step: f64,
    /// proxy_final - gold_final, as is (different scales: read it within one method only).
    pub gap_final: f64,
    /// (proxy_final - proxy_init) / sd_init(proxy) - (gold_final - gold_init) / sd_init(gold):
    /// how many pi_init standard deviations the proxy rose beyond what gold rose. Unit-free and 0
    /// at pi_init; > 0 means the proxy credits more improvement than gold confirms.
    pub gap_std_final: f64,
    /// Gold win rate of the last eval step vs pi_init, per prompt (ties half).
    pub win_rate: f64,
    /// Its length-controlled version ([`stats::lc_win_rate`]).
    pub lc_win_rate: f64,
    /// Mean response length (tokens) at the last eval step.
    pub length_final: f64,
    /// pi_init's mean length.
    pub length_init: f64,
    pub rm_acc_before: f64,
    pub rm_acc_after: f64,
    /// R2M's attention entropy after RL (normalised, 1 = uniform; [`super::runs::RmAccuracy::attn_entropy`]).
    pub attn_entropy_after: f64,
    /// R2M: the mean over the second half of the training steps of `r2m/group_corr_no_hhat`, the
    /// correlation inside each group of R2M's reward with the same head on H_last alone, i.e. of
    /// the GRPO advantages with and without the H_hat term (1 = H_hat changes no ranking).
    pub hhat_group_corr: f64,
    /// R2M with feedback: how much R2M's feedback term on the held-out responses moved over the run,
    /// [`FeedbackPoint::mean`] at the last eval step minus at the first with w < 1 (> 0: the policy
    /// climbed it).
    pub hhat_rise: f64,
    /// R2M with feedback: the correlation over the held-out responses of the feedback term with gold
    /// at the last eval step ([`FeedbackPoint::gold_corr`]; < 0: climbing it costs gold).
    pub hhat_gold_corr: f64,
    /// Mean seconds per step of each `time/*` metric (total over the run / steps logged; a phase
    /// absent at a step, like `time/eval`, counts 0 there: the amortized cost).
    pub times: BTreeMap<String, f64>,
    /// R2M's regime at the start and the end of the run ([`REGIME`]; NaN where not logged).
    pub regime: BTreeMap<&'static str, f64>,
}

/// The regime R2M runs in, from metrics.jsonl: (key, metric, whether it is averaged over the
/// first tenth of the logged steps (the initial policy) or the last tenth (the end)). The
/// cross-attention's normalised entropy (1 = uniform), the mean norms of H_last and H_hat and
/// their ratio, the blend weight w(t), and the correlation inside each group of R2M's reward with
/// the same head on H_last alone (1 = the H_hat term reorders nothing). And for every method the
/// pairwise accuracy against gold, inside each group of the policy's own rollouts, of the reward
/// it trains on (`own_acc`) and of the frozen proxy where that differs (`own_acc_frozen`).
pub const REGIME: [(&str, &str, bool); 15] = [
    ("attn_entropy_start", "r2m/attn_entropy", true),
    ("attn_entropy_end", "r2m/attn_entropy", false),
    ("hlast_norm_start", "r2m/hlast_norm", true),
    ("hlast_norm_end", "r2m/hlast_norm", false),
    ("hhat_norm_start", "r2m/hhat_norm", true),
    ("hhat_norm_end", "r2m/hhat_norm", false),
    ("hhat_ratio_start", "r2m/hhat_norm_ratio", true),
    ("hhat_ratio_end", "r2m/hhat_norm_ratio", false),
    ("w_end", "r2m/w", false),
    ("group_corr_start", "r2m/group_corr_no_hhat", true),
    ("group_corr_end", "r2m/group_corr_no_hhat", false),
    ("own_acc_start", "gold/group_agree", true),
    ("own_acc_end", "gold/group_agree", false),
    ("own_acc_frozen_start", "gold/group_agree_frozen_rm", true),
    ("own_acc_frozen_end", "gold/group_agree_frozen_rm", false),
];

/// The metrics of [`RunStats::values`] and their table labels, in table order.
pub const METRICS: [(&str, &str); 37] = [
    ("gold_final", "gold (final)"),
    ("gold_at_d", "gold @ matched d"),
    ("peak_gold", "peak gold"),
    ("peak_step", "peak step"),
    ("gold_init", "gold (pi_init)"),
    ("proxy_final", "proxy (final)"),
    ("gap_final", "proxy - gold"),
    ("gap_std_final", "std. gap"),
    ("kl_final", "KL"),
    ("sqrt_kl_final", "sqrt KL"),
    ("win_rate", "win rate"),
    ("lc_win_rate", "LC win rate"),
    ("length_final", "length"),
    ("length_init", "length (pi_init)"),
    ("rm_acc_before", "RM acc before"),
    ("rm_acc_after", "RM acc after"),
    ("time_step", "s/step"),
    ("proxy_init", "proxy (pi_init)"),
    ("attn_entropy_after", "attention entropy after"),
    ("hhat_group_corr", "group corr. with/without H_hat"),
    ("hhat_rise", "rise of the feedback term"),
    ("hhat_gold_corr", "corr. of the feedback term with gold"),
    ("attn_entropy_start", "attention entropy, start"),
    ("attn_entropy_end", "attention entropy, end"),
    ("hlast_norm_start", "|H_last|, start"),
    ("hlast_norm_end", "|H_last|, end"),
    ("hhat_norm_start", "|H_hat|, start"),
    ("hhat_norm_end", "|H_hat|, end"),
    ("hhat_ratio_start", "|H_hat| / |H_last|, start"),
    ("hhat_ratio_end", "|H_hat| / |H_last|, end"),
    ("w_end", "w, end"),
    ("group_corr_start", "group corr. with/without H_hat, start"),
    ("group_corr_end", "group corr. with/without H_hat, end"),
    ("own_acc_start", "reward accuracy on own rollouts, start"),
    ("own_acc_end", "reward accuracy on own rollouts, end"),
    ("own_acc_frozen_start", "frozen proxy accuracy on own rollouts, start"),
    ("own_acc_frozen_end", "frozen proxy accuracy on own rollouts, end"),
];

/// The metrics compared between methods, in table order.
pub const COMPARED: [&str; 6] = ["gold_final", "gold_at_d", "peak_gold", "win_rate", "lc_win_rate", "gap_std_final"];

impl RunStats {
    /// (key, value) for each of [`METRICS`].
    pub fn values(&self) -> Vec<(&'static str, f64)> {
        METRICS.iter().map(|(k, _)| (*k, self.get(k))).collect()
    }

    /// One metric of [`METRICS`] by key (NaN for an unknown key).
    pub fn get(&self, key: &str) -> f64 {
        match key {
            "gold_final" => self.gold_final,
            "gold_at_d" => self.gold_at_d,
            "peak_gold" => self.peak_gold,
            "peak_step" => self.peak_step,
            "gold_init" => self.gold_init,
            "proxy_init" => self.proxy_init,
            "proxy_final" => self.proxy_final,
            "gap_final" => self.gap_final,
            "gap_std_final" => self.gap_std_final,
            "kl_final" => self.kl_final,
            "sqrt_kl_final" => self.sqrt_kl_final,
            "win_rate" => self.win_rate,
            "lc_win_rate" => self.lc_win_rate,
            "length_final" => self.length_final,
            "length_init" => self.length_init,
            "rm_acc_before" => self.rm_acc_before,
            "rm_acc_after" => self.rm_acc_after,
            "attn_entropy_after" => self.attn_entropy_after,
            "hhat_group_corr" => self.hhat_group_corr,
            "hhat_rise" => self.hhat_rise,
            "hhat_gold_corr" => self.hhat_gold_corr,
            "time_step" => self.times.get("time/step").copied().unwrap_or(f64::NAN),
            k => self.regime.get(k).copied().unwrap_or(f64::NAN),
        }
    }
}

/// The per-run values; `matched_d` is the d of the run's algorithm (NaN: no gold @ d).
pub fn run_stats(run: &Run, matched_d: f64) -> RunStats {
    let curve = eval_curve(run);
    let init = curve.iter().find(|p| p.step == -1);
    let last = curve.iter().rfind(|p| p.step >= 0);
    let nan = f64::NAN;
    let (gold_init, proxy_init, length_init) = init.map(|p| (p.gold, p.proxy, p.length)).unwrap_or((nan, nan, nan));
    let (gold_final, proxy_final, kl_final, length_final) = last.map(|p| (p.gold, p.proxy, p.kl, p.length)).unwrap_or((nan, nan, nan, nan));
    let peak = curve.iter().filter(|p| p.gold.is_finite()).fold(None::<&EvalPoint>, |b, p| match b {
        Some(b) if b.gold >= p.gold => Some(b),
        _ => Some(p),
    });
    // The d curve starts at pi_init (KL 0) when there is one, so any d up to the final one is reached.
    let dcurve: Vec<(f64, f64)> = curve.iter().map(|p| (if p.step == -1 { 0.0 } else { p.sqrt_kl() }, p.gold)).collect();
    let gold_at_d = stats::interp_first_crossing(&dcurve, matched_d).unwrap_or(nan);

    // Per prompt: the last eval step's rows against pi_init's, matched by prompt index.
    let init_rows: BTreeMap<i64, &EvalRow> = run.eval.iter().filter(|r| r.step == -1).map(|r| (r.prompt, r)).collect();
    let sd = |f: fn(&EvalRow) -> f64| stats::std(&init_rows.values().map(|r| f(r)).filter(|v| v.is_finite()).collect::<Vec<_>>());
    let (sd_proxy, sd_gold) = (sd(EvalRow::proxy), sd(|r| r.gold));
    let gap_std_final =
        if sd_proxy > 0.0 && sd_gold > 0.0 { (proxy_final - proxy_init) / sd_proxy - (gold_final - gold_init) / sd_gold } else { nan };
    let (mut wins, mut dlen) = (vec![], vec![]);
    if let Some(last) = last {
        for r in run.eval.iter().filter(|r| r.step == last.step) {
            if let Some(b) = init_rows.get(&r.prompt) {
                wins.push(stats::win(r.gold, b.gold));
                dlen.push(r.length - b.length);
            }
        }
    }
    let lc = stats::lc_win_rate(&wins, &dlen);

    let mut times: BTreeMap<String, f64> = BTreeMap::new();
    for m in &run.metrics {
        // `time/<phase>` only: nested names (`time/eval/gold`) split a phase already counted.
        for (k, v) in m.iter().filter(|(k, _)| k.strip_prefix("time/").is_some_and(|p| !p.contains('/'))) {
            if let Some(x) = v.as_f64() {
                *times.entry(k.clone()).or_default() += x;
            }
        }
    }
    let nsteps = run.metrics.len().max(1) as f64;
    times.values_mut().for_each(|v| *v /= nsteps);

    let hhat_group_corr = second_half_mean(&run.metrics, "r2m/group_corr_no_hhat");
    let fb = feedback_term(run);
    let hhat_rise = match (fb.first(), fb.last()) {
        (Some(a), Some(b)) if b.step > a.step => b.mean - a.mean,
        _ => nan,
    };
    let hhat_gold_corr = fb.last().and_then(|p| p.gold_corr).unwrap_or(nan);
    let (rm_acc_before, rm_acc_after, attn_entropy_after) =
        run.rm_accuracy.as_ref().map(|r| (r.before, r.after, r.attn_entropy)).unwrap_or((nan, nan, nan));
    RunStats {
        last_eval_step: last.map(|p| p.step),
        last_step: run.last_step(),
        gold_init,
        proxy_init,
        gold_final,
        proxy_final,
        kl_final,
        sqrt_kl_final: if kl_final.is_finite() { kl_final.max(0.0).sqrt() } else { nan },
        gold_at_d,
        peak_gold: peak.map(|p| p.gold).unwrap_or(nan),
        peak_step: peak.map(|p| p.step as f64).unwrap_or(nan),
        gap_final: proxy_final - gold_final,
        gap_std_final,
        win_rate: lc.raw,
        lc_win_rate: lc.lc,
        length_final,
        length_init,
        rm_acc_before,
        rm_acc_after,
        attn_entropy_after,
        hhat_group_corr,
        hhat_rise,
        hhat_gold_corr,
        times,
        regime: REGIME.iter().map(|&(k, m, start)| (k, tenth_mean(&run.metrics, m, start))).collect(),
    }
}

/// R2M's feedback term on one eval step's held-out responses.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackPoint {
    pub step: i64,
    /// The blend's w(t) at that step (`r2m/w`).
    pub w: f64,
    /// The mean over the responses of (r - w r_frozen) / (1 - w), r = R2M's reward, r_frozen = the
    /// frozen proxy's score of the same response. R2M's head phi is linear without a bias, so
    /// r = (1 - w) phi(H_hat) + w phi(H_last), and this is phi(H_hat) plus w / (1 - w) times what
    /// the head's drift from the proxy's gives on H_last (small where R2M's lr is: 1e-5 here).
    pub mean: f64,
    /// Its Pearson correlation with gold over the responses (None: fewer than 2 or no spread).
    pub gold_corr: Option<f64>,
}

/// The feedback term at each eval step where R2M blends in H_hat (w < 1, from `r2m/w` in
/// metrics.jsonl), from eval.jsonl's `reward` and `reward_frozen_rm`. Empty for every method
/// without feedback (config `r2m.method`: vanilla, pretrained-rm, iterative-head).
pub fn feedback_term(run: &Run) -> Vec<FeedbackPoint> {
    // iterative-head logs `r2m/w` too, but its reward is the head on H_last alone.
    let method = run.config.as_ref().and_then(|c| c.get("r2m")).and_then(|r| r.as_table()).map(|r| {
        let name = r.get("method").and_then(|m| m.as_str()).unwrap_or("r2m");
        parse_method(name)
    });
    if !matches!(method, Some(Some(m)) if m.uses_feedback()) {
        return vec![];
    }
    let w_at: BTreeMap<i64, f64> = run.metrics.iter().filter_map(|m| Some((m.get("step")?.as_i64()?, m.get("r2m/w")?.as_f64()?))).collect();
    let mut by_step: BTreeMap<i64, Vec<&EvalRow>> = BTreeMap::new();
    for r in run.eval.iter().filter(|r| r.step >= 0) {
        by_step.entry(r.step).or_default().push(r);
    }
    let mut out = vec![];
    for (step, rows) in by_step {
        let Some(&w) = w_at.get(&step) else { continue };
        if !(w < 1.0 - 1e-9) {
            continue;
        }
        let (phi, gold): (Vec<f64>, Vec<f64>) = rows
            .iter()
            .filter(|r| r.reward.is_finite() && r.frozen.is_finite())
            .map(|r| ((r.reward - w * r.frozen) / (1.0 - w), r.gold))
            .unzip();
        if phi.is_empty() {
            continue;
        }
        out.push(FeedbackPoint { step, w, mean: stats::mean(&phi), gold_corr: crate::analysis::pearson(&phi, &gold) });
    }
    out
}

/// The mean of the finite values of `key` over the metrics rows of the first tenth of the steps
/// logged (`start`; at least step 0) or of the last tenth (at least the last step); NaN when none.
pub fn tenth_mean(metrics: &[Map<String, Value>], key: &str, start: bool) -> f64 {
    let step = |m: &Map<String, Value>| m.get("step").and_then(Value::as_i64);
    let Some(last) = metrics.iter().filter_map(step).max() else { return f64::NAN };
    let span = ((last + 1) / 10).max(1);
    let inside = |s: i64| if start { s < span } else { s > last - span };
    let v: Vec<f64> = metrics
        .iter()
        .filter(|m| step(m).is_some_and(inside))
        .filter_map(|m| m.get(key).and_then(Value::as_f64))
        .filter(|x| x.is_finite())
        .collect();
    stats::mean(&v)
}

/// The mean of the finite values of `key` over the metrics rows whose `step` is in the second half
/// of the steps logged (step >= (last + 1) / 2); NaN when there are none.
pub fn second_half_mean(metrics: &[Map<String, Value>], key: &str) -> f64 {
    let step = |m: &Map<String, Value>| m.get("step").and_then(Value::as_i64);
    let Some(last) = metrics.iter().filter_map(step).max() else { return f64::NAN };
    let v: Vec<f64> = metrics
        .iter()
        .filter(|m| step(m).is_some_and(|s| s >= (last + 1) / 2))
        .filter_map(|m| m.get(key).and_then(Value::as_f64))
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(v: &[(i64, Option<f64>)]) -> Vec<Map<String, Value>> {
        v.iter()
            .map(|(s, x)| {
                let mut m = Map::new();
                m.insert("step".into(), json!(s));
                if let Some(x) = x {
                    m.insert("r2m/attn_entropy".into(), json!(x));
                }
                m
            })
            .collect()
    }

    #[test]
    fn tenth_means_average_the_first_and_last_tenth_of_the_steps() {
        // 20 steps: the first tenth is steps 0-1, the last tenth 18-19.
        let m = rows(&(0..20).map(|s| (s, Some(s as f64))).collect::<Vec<_>>());
        assert_eq!(tenth_mean(&m, "r2m/attn_entropy", true), 0.5);
        assert_eq!(tenth_mean(&m, "r2m/attn_entropy", false), 18.5);
        // Fewer than 10 steps: one step each; a missing value is skipped, none at all is NaN.
        let m = rows(&[(0, Some(0.9)), (1, None), (2, Some(0.7))]);
        assert_eq!((tenth_mean(&m, "r2m/attn_entropy", true), tenth_mean(&m, "r2m/attn_entropy", false)), (0.9, 0.7));
        assert!(tenth_mean(&m, "r2m/w", true).is_nan() && tenth_mean(&[], "r2m/w", false).is_nan());
    }
}
