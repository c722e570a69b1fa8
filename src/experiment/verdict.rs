//! The report's verdict in words: the overoptimization test of each cell ([`Overopt::describe`]),
//! each comparison as a sentence ([`Comparison::describe`]), and the verdict lines ([`verdicts`]):
//! whether vanilla overoptimizes on the testbed, whether R2M beats vanilla under each algorithm,
//! the other arms and the ablations, and how many tests came out significant.
use super::aggregate::{Aggregate, Comparison, Overopt};
use super::arm::{algo_label, Arm, ABLATIONS, BASELINE, FULL};
use super::format::{fmt_p, metric_format, pm};
use super::stats::Summary;
use crate::r2m::Method;
use crate::rl::config::Algo;

impl Overopt {
    /// A sentence for the report.
    pub fn describe(&self) -> String {
        // The drop with the interval its test uses (widened for picking the peak with one seed).
        let drop = pm(&Summary { ci95: self.drop_ci, ..self.drop }, 3);
        let rise = pm(&self.proxy_rise, 3);
        let (whose, changes) = match self.over_prompts {
            None => ("seed-mean gold", format!("per seed, gold fell {drop} from the peak and the proxy changed by {rise} after it")),
            Some(n) => (
                "gold",
                format!(
                    "over the {n} held-out prompts (one seed, each prompt's peak-step score against its last-step score, \
                     the interval widened for picking the peak), gold fell {drop} and the proxy changed by {rise}"
                ),
            ),
        };
        let head = format!(
            "{whose} peaks at step {} ({:.3}) and ends at {:.3} at step {}; {changes}",
            self.peak_step, self.peak_gold, self.final_gold, self.last_step
        );
        let one_seed = self.over_prompts.is_some();
        let verdict = match self.overoptimized {
            Some(true) if one_seed => {
                "overoptimization: YES in this seed (gold fell by more than its CI over the prompts while the proxy rose; another seed may differ)"
            }
            Some(true) => "overoptimization: YES (gold fell from its peak by more than the CI while the proxy kept rising)",
            Some(false) if self.peak_step >= self.last_step => "overoptimization: no (gold is highest at the last step)",
            Some(false) if one_seed => {
                "overoptimization: not shown in this seed (the drop is within the CI over the prompts, or the proxy did not rise)"
            }
            Some(false) => "overoptimization: not shown (the drop is within the CI, or the proxy did not rise after the peak)",
            None if self.proxy_rise.mean > 0.0 && self.drop.mean > 0.0 => {
                "overoptimization: as the curves show it for one seed (gold fell from its peak while the proxy rose), untested: a test needs 2 seeds or more"
            }
            None => "overoptimization: undetermined (fewer than 2 seeds)",
        };
        match self.per_seed_words() {
            Some(each) if !one_seed => format!("{head}. {verdict}. {each}"),
            _ => format!("{head}. {verdict}"),
        }
    }

    /// Each seed's own test in a sentence; None without seeds.
    pub fn per_seed_words(&self) -> Option<String> {
        if self.per_seed.is_empty() {
            return None;
        }
        let (k, n) = self.seeds_shown();
        let each: Vec<String> = self
            .per_seed
            .iter()
            .map(|s| {
                let v = match s.overoptimized {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "untested",
                };
                format!(
                    "seed {} peaks at step {}, gold falls {:.3} ± {:.3} over {} prompts, proxy {:+.3}: {v}",
                    s.seed, s.peak_step, s.drop.mean, s.drop_ci, s.drop.n, s.proxy_rise.mean
                )
            })
            .collect();
        Some(format!(
            "Each seed on its own (its own peak, its held-out prompts paired, the interval widened for picking the peak): \
             overoptimized in {k} of {n} ({})",
            each.join("; ")
        ))
    }
}

impl Comparison {
    /// "+0.120 ± 0.300, p = 0.41: not significant".
    pub fn describe(&self, digits: usize, scale: f64) -> String {
        let d = self.welch.diff * scale;
        let ci = self.welch.ci95 * scale;
        let diff = if ci.is_finite() { format!("{d:+.digits$} ± {ci:.digits$}") } else { format!("{d:+.digits$}") };
        let p = match self.welch.p {
            p if !p.is_finite() => "p undefined (< 2 seeds)".into(),
            p if p < 0.001 => "p < 0.001".into(),
            p => format!("p = {}", fmt_p(p)),
        };
        let verdict = if !self.welch.p.is_finite() {
            "cannot tell"
        } else if self.significant() {
            if self.welch.diff > 0.0 {
                "significantly higher"
            } else {
                "significantly lower"
            }
        } else {
            "not significant"
        };
        format!("{diff}, {p}: {verdict}")
    }
}

/// "R2M" for the full method (as the paper writes it), the config name otherwise.
fn arm_label(a: &Arm) -> String {
    if a.is(FULL) {
        "R2M".into()
    } else {
        a.name()
    }
}

fn find<'a>(cs: &'a [Comparison], algo: Algo, arm: Method, baseline: Method, metric: &str) -> Option<&'a Comparison> {
    cs.iter().find(|c| c.algo == algo && c.arm.is(arm) && c.baseline.is(baseline) && c.metric == metric)
}

/// A metric in words, for the verdict.
fn metric_words(m: &str) -> &str {
    match m {
        "gold_final" => "gold at the last step",
        "gold_at_d" => "gold at matched sqrt(KL)",
        "lc_win_rate" => "LC win rate vs pi_init",
        "win_rate" => "win rate vs pi_init",
        "peak_gold" => "peak gold",
        "gap_std_final" => "standardized proxy-gold gap",
        "rm_acc_after" => "RM accuracy after RL",
        m => m,
    }
}

fn comparison_line(c: &Comparison) -> String {
    let (d, k) = metric_format(c.metric);
    let unit = if k == 100.0 { " points" } else { "" };
    let what = metric_words(c.metric);
    let desc = c.describe(d, k);
    let desc = match desc.split_once(',') {
        Some((diff, rest)) => format!("{diff}{unit},{rest}"),
        None => desc,
    };
    if c.algo == c.baseline_algo {
        format!("{} vs {} ({}): {what} {desc}", arm_label(&c.arm), c.baseline, algo_label(c.algo))
    } else {
        format!("{} ({}) vs {} ({}): {what} {desc}", arm_label(&c.arm), algo_label(c.algo), c.baseline, algo_label(c.baseline_algo))
    }
}

/// The plain-language verdict lines.
pub fn verdicts(agg: &Aggregate) -> Vec<String> {
    let mut out = vec![];
    // 1. Does the testbed show overoptimization under vanilla?
    let mut any_vanilla = false;
    let (mut shown, mut not_shown, mut undetermined) = (vec![], vec![], vec![]);
    for algo in agg.algos() {
        if let Some(c) = agg.cell(BASELINE, algo) {
            any_vanilla = true;
            if let Some(o) = &c.overopt {
                out.push(format!("Vanilla {}: {}", algo_label(algo), o.describe()));
                match o.overoptimized {
                    Some(true) if o.over_prompts.is_some() => {
                        shown.push(format!("{} (in one seed, over its held-out prompts)", algo_label(algo)))
                    }
                    Some(true) => shown.push(algo_label(algo).to_string()),
                    Some(false) if o.in_every_seed() => shown.push(format!(
                        "{} (in each of its {} seeds, each over its held-out prompts; the test over seeds does not show it)",
                        algo_label(algo),
                        o.per_seed.len()
                    )),
                    Some(false) => not_shown.push(algo_label(algo)),
                    None => undetermined.push(algo_label(algo)),
                }
            }
        }
    }
    if any_vanilla {
        out.push(if !shown.is_empty() {
            format!("The testbed shows overoptimization under vanilla {}.", shown.join(", "))
        } else if not_shown.is_empty() {
            "Cannot tell yet whether the testbed overoptimizes under vanilla RL here: every vanilla algorithm has fewer than 2 seeds."
                .to_string()
        } else if !undetermined.is_empty() {
            // One algorithm's "no" does not settle it while another cannot be tested yet.
            format!(
                "Cannot tell yet whether the testbed overoptimizes under vanilla RL here: not under vanilla {}, and vanilla {} cannot be tested yet (see above).",
                not_shown.join(", "),
                undetermined.join(", ")
            )
        } else {
            "The testbed does NOT show overoptimization under vanilla RL here: by docs/testbed.md it cannot yet tell methods apart \
             (change the gold, the proxy's data size or the budget until it does)."
                .to_string()
        });
    } else {
        out.push("No vanilla runs: overoptimization under vanilla and every comparison with vanilla are untested.".into());
    }
    // 2. R2M vs vanilla.
    for algo in agg.algos() {
        if agg.cell(FULL, algo).is_none() || agg.cell(BASELINE, algo).is_none() {
            continue;
        }
        let mut sig_up = vec![];
        let mut sig_down = vec![];
        let mut tested = 0;
        for m in ["gold_final", "gold_at_d", "lc_win_rate", "win_rate"] {
            if let Some(c) = find(&agg.vs_vanilla, algo, FULL, BASELINE, m) {
                out.push(comparison_line(c));
                tested += c.welch.p.is_finite() as usize;
                if c.significant() {
                    if c.welch.diff > 0.0 {
                        sig_up.push(m);
                    } else {
                        sig_down.push(m);
                    }
                }
            }
        }
        let a = algo_label(algo);
        let sig_up: Vec<&str> = sig_up.into_iter().map(metric_words).collect();
        let sig_down: Vec<&str> = sig_down.into_iter().map(metric_words).collect();
        out.push(match (sig_up.is_empty(), sig_down.is_empty()) {
            (true, true) if tested == 0 => {
                format!("Verdict ({a}): cannot tell yet: R2M or vanilla {a} has fewer than 2 seeds, so no difference can be tested.")
            }
            (true, true) => format!(
                "Verdict ({a}): R2M does NOT beat vanilla {a} here: no difference in gold or win rate is significant at 0.05 \
                 (the intervals overlap: at this number of seeds a difference of their width would go unseen)."
            ),
            (false, true) => format!("Verdict ({a}): R2M beats vanilla {a} on {} (p < 0.05).", sig_up.join(", ")),
            (true, false) => format!("Verdict ({a}): R2M is WORSE than vanilla {a} on {} (p < 0.05).", sig_down.join(", ")),
            (false, false) => {
                format!("Verdict ({a}): mixed: R2M is better on {} and worse on {} (p < 0.05).", sig_up.join(", "), sig_down.join(", "))
            }
        });
    }
    // 3. Other methods vs vanilla (gold at the last step), R2M vs ablations (LC win rate and gold).
    for c in agg.vs_vanilla.iter().filter(|c| !c.arm.is(FULL) && c.metric == "gold_final") {
        out.push(comparison_line(c));
    }
    for algo in agg.algos() {
        for ab in ABLATIONS {
            for m in ["gold_final", "lc_win_rate"] {
                if let Some(c) = find(&agg.ablations, algo, FULL, ab, m) {
                    out.push(format!("Ablation: {}", comparison_line(c)));
                }
            }
        }
    }
    for c in agg.vs_baselines.iter().filter(|c| c.metric == "gold_final" || c.metric == "lc_win_rate") {
        out.push(comparison_line(c));
    }
    let all = || agg.vs_vanilla.iter().chain(&agg.ablations).chain(&agg.vs_baselines);
    let k = all().filter(|c| c.welch.p.is_finite()).count();
    if k > 0 {
        let sig = all().filter(|c| c.significant()).count();
        out.push(format!(
            "{sig} of {k} tests are significant at 0.05, uncorrected for multiple comparisons: about {:.1} would be by chance alone if no method differed.",
            k as f64 * 0.05
        ));
    }
    out
}
