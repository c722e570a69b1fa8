//! The report's tables: the CSV files (`results.csv`, `runs.csv`, `comparisons.csv`, every number
//! in full) and the tables of `report.md` (numbers as "mean ± CI" in each metric's format).
use crate::experiment::aggregate::{Aggregate, Cell, Comparison};
use crate::experiment::arm::{algo_key, algo_label, parse_run_name};
use crate::experiment::format::{fmt_p, label, metric_format, pm, scaled, show};
use crate::experiment::run_stats::METRICS;
use crate::experiment::runs::Grid;
use crate::experiment::stats::Summary;
use crate::report::{csv_num, Table};
use std::collections::BTreeSet;

/// "1 run", "3 runs".
fn runs(n: usize) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

/// The overoptimization test's outcome in a word.
pub(super) fn overopt_cell(c: &Cell) -> String {
    match &c.overopt {
        None => "n/a".into(),
        Some(o) => match o.overoptimized {
            Some(true) if o.over_prompts.is_some() => "yes (1 seed)".into(),
            Some(true) => "yes".into(),
            Some(false) if o.per_seed.len() >= 2 => {
                let (k, n) = o.seeds_shown();
                if k == n {
                    format!("each seed ({k}/{n})")
                } else {
                    format!("no ({k}/{n} seeds)")
                }
            }
            Some(false) => "no".into(),
            None => "undetermined".into(),
        },
    }
}

/// The main table: one row per algo x arm. `full` adds proxy, gap, length columns.
pub(super) fn main_table(agg: &Aggregate, full: bool) -> Table {
    let mut cols =
        vec!["algo", "method", "seeds", "gold (final)", "gold @ d", "peak gold", "peak step (per run)", "win rate (%)", "LC win rate (%)"];
    if full {
        cols.extend(["proxy (final)", "proxy - gold", "std. gap", "sqrt KL", "length"]);
    } else {
        cols.push("sqrt KL");
    }
    cols.push("overopt.");
    let mut t = Table::new(cols);
    for c in &agg.cells {
        let mut row = vec![
            algo_label(c.algo).to_string(),
            c.arm.name(),
            c.seeds.len().to_string(),
            show(c, "gold_final"),
            show(c, "gold_at_d"),
            show(c, "peak_gold"),
            show(c, "peak_step"),
            show(c, "win_rate"),
            show(c, "lc_win_rate"),
        ];
        if full {
            row.extend([
                show(c, "proxy_final"),
                show(c, "gap_final"),
                show(c, "gap_std_final"),
                show(c, "sqrt_kl_final"),
                show(c, "length_final"),
            ]);
        } else {
            row.push(show(c, "sqrt_kl_final"));
        }
        row.push(overopt_cell(c));
        // Invariant: one cell per header, built above from the same list.
        let _ = t.push(row);
    }
    t
}

/// The phases in the order of a step (Algorithm 1), then any others alphabetically, the total last.
const PHASE_ORDER: [&str; 9] =
    ["time/generate", "time/logprobs", "time/reference", "time/reward", "time/r2m", "time/policy", "time/gold", "time/eval", "time/step"];

pub(super) fn all_phases(agg: &Aggregate) -> Vec<String> {
    let s: BTreeSet<String> = agg.cells.iter().flat_map(|c| c.times.iter().map(|(p, _)| p.clone())).collect();
    let mut v: Vec<String> = s.into_iter().collect();
    v.sort_by_key(|p| {
        let i = PHASE_ORDER.iter().position(|q| q == p).unwrap_or(PHASE_ORDER.len() - 1);
        (i, p.clone())
    });
    // The total last.
    if let Some(i) = v.iter().position(|p| p == "time/step") {
        let t = v.remove(i);
        v.push(t);
    }
    v
}

/// `results.csv`: one row per arm x algo.
pub(super) fn results_table(agg: &Aggregate) -> Table {
    let phases = all_phases(agg);
    let mut cols: Vec<String> = ["method", "algo", "n_seeds", "seeds", "matched_d"].iter().map(|s| s.to_string()).collect();
    for (k, _) in METRICS {
        cols.push(format!("{k}_mean"));
        cols.push(format!("{k}_ci95"));
    }
    cols.extend(
        ["overopt_peak_step", "overopt_drop_mean", "overopt_drop_ci95", "overopt_proxy_rise_mean", "overoptimized", "overopt_seeds"]
            .map(String::from),
    );
    for p in &phases {
        cols.push(format!("{p}_mean"));
        cols.push(format!("{p}_ci95"));
    }
    let mut t = Table::new(cols);
    for c in &agg.cells {
        let mut row = vec![
            c.arm.name(),
            algo_key(c.algo).to_string(),
            c.seeds.len().to_string(),
            c.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
            csv_num(c.matched_d),
        ];
        for (k, _) in METRICS {
            let s = c.get(k);
            row.push(csv_num(s.mean));
            row.push(csv_num(s.ci95));
        }
        match &c.overopt {
            Some(o) => row.extend([
                o.peak_step.to_string(),
                csv_num(o.drop.mean),
                csv_num(o.drop_ci),
                csv_num(o.proxy_rise.mean),
                overopt_cell(c),
                {
                    let (k, n) = o.seeds_shown();
                    format!("{k}/{n}")
                },
            ]),
            None => row.extend(["", "", "", "", "n/a", ""].map(String::from)),
        }
        for p in &phases {
            let s = c.times.iter().find(|(q, _)| q == p).map(|(_, s)| *s).unwrap_or(Summary::EMPTY);
            row.push(csv_num(s.mean));
            row.push(csv_num(s.ci95));
        }
        let _ = t.push(row);
    }
    t
}

/// `runs.csv`: one row per run folder.
pub(super) fn runs_table(grid: &Grid, agg: &Aggregate) -> Table {
    let phases = all_phases(agg);
    let mut cols: Vec<String> =
        ["run", "method", "algo", "seed", "status", "last_step", "steps_planned", "last_eval_step"].iter().map(|s| s.to_string()).collect();
    cols.extend(METRICS.iter().map(|(k, _)| k.to_string()));
    cols.extend(phases.iter().cloned());
    let mut t = Table::new(cols.clone());
    for c in &agg.cells {
        for (&i, rs) in c.runs.iter().zip(&c.run_stats) {
            let r = &grid.runs[i];
            let partial = grid.incomplete.iter().any(|x| x.name == r.name);
            let mut row = vec![
                r.name.clone(),
                r.arm.name(),
                algo_key(r.algo).to_string(),
                r.seed.to_string(),
                if partial { "partial".into() } else { "complete".into() },
                rs.last_step.map(|s| s.to_string()).unwrap_or_default(),
                r.steps_planned.map(|s| s.to_string()).unwrap_or_default(),
                rs.last_eval_step.map(|s| s.to_string()).unwrap_or_default(),
            ];
            row.extend(rs.values().iter().map(|(_, v)| csv_num(*v)));
            row.extend(phases.iter().map(|p| rs.times.get(p).map(|v| csv_num(*v)).unwrap_or_default()));
            let _ = t.push(row);
        }
    }
    let aggregated: BTreeSet<&str> = grid.runs.iter().map(|r| r.name.as_str()).collect();
    for x in grid.incomplete.iter().filter(|x| !aggregated.contains(x.name.as_str())) {
        let (m, a, s) =
            parse_run_name(&x.name).map(|(m, a, s)| (m.to_string(), algo_key(a).to_string(), s.to_string())).unwrap_or_default();
        let mut row = vec![x.name.clone(), m, a, s, format!("incomplete: {}", x.reason)];
        row.resize(cols.len(), String::new());
        let _ = t.push(row);
    }
    t
}

pub(super) fn comparisons_table(agg: &Aggregate) -> Table {
    let mut t = Table::new([
        "table",
        "algo",
        "method",
        "baseline",
        "baseline_algo",
        "metric",
        "a_mean",
        "a_ci95",
        "a_n",
        "b_mean",
        "b_ci95",
        "b_n",
        "diff",
        "diff_ci95",
        "df",
        "t",
        "p_welch",
        "significant",
        "p_paired",
        "n_paired",
    ]);
    let rows = agg
        .vs_vanilla
        .iter()
        .map(|c| ("vs_vanilla", c))
        .chain(agg.ablations.iter().map(|c| ("ablation", c)))
        .chain(agg.vs_baselines.iter().map(|c| ("vs_other_baselines", c)));
    for (table, c) in rows {
        let _ = t.push(vec![
            table.into(),
            algo_key(c.algo).into(),
            c.arm.name(),
            c.baseline.name(),
            algo_key(c.baseline_algo).into(),
            c.metric.into(),
            csv_num(c.a.mean),
            csv_num(c.a.ci95),
            c.a.n.to_string(),
            csv_num(c.b.mean),
            csv_num(c.b.ci95),
            c.b.n.to_string(),
            csv_num(c.welch.diff),
            csv_num(c.welch.ci95),
            csv_num(c.welch.df),
            csv_num(c.welch.t),
            csv_num(c.welch.p),
            if c.welch.p.is_finite() { (if c.significant() { "yes" } else { "no" }).into() } else { "n/a".into() },
            csv_num(c.paired.p),
            // n of the paired test = df + 1 when defined.
            if c.paired.df.is_finite() { format!("{}", c.paired.df as usize + 1) } else { String::new() },
        ]);
    }
    t
}

/// A comparison table for the report (Welch decides; the paired p is shown beside it).
pub(super) fn comparison_md_table(cs: &[&Comparison], a_title: &str, b_title: &str) -> Table {
    let mut t =
        Table::new(["algo", "method", "vs", "metric", a_title, b_title, "difference ± 95% CI", "p (Welch)", "p (paired)", "p < 0.05"]);
    for c in cs {
        let (d, k) = metric_format(c.metric);
        let diff = if c.welch.ci95.is_finite() {
            format!("{:+.d$} ± {:.d$}", c.welch.diff * k, c.welch.ci95 * k)
        } else {
            format!("{:+.d$}", c.welch.diff * k)
        };
        let _ = t.push(vec![
            algo_label(c.algo).to_string(),
            c.arm.name(),
            if c.baseline_algo == c.algo { c.baseline.name() } else { format!("{} ({})", c.baseline, algo_label(c.baseline_algo)) },
            label(c.metric),
            pm(&scaled(&c.a, k), d),
            pm(&scaled(&c.b, k), d),
            diff,
            fmt_p(c.welch.p),
            fmt_p(c.paired.p),
            if c.welch.p.is_finite() { (if c.significant() { "yes" } else { "no" }).into() } else { "n/a".into() },
        ]);
    }
    t
}

pub(super) fn rm_table(agg: &Aggregate) -> Table {
    let with_attention = agg.cells.iter().any(|c| c.get("attn_entropy_after").n > 0);
    let mut cols = vec!["algo", "method", "RM acc before (%)", "RM acc after (%)"];
    if with_attention {
        cols.push("attention entropy after (1 = uniform)");
    }
    cols.push("source");
    let mut t = Table::new(cols);
    for c in &agg.cells {
        let (b, a) = (c.get("rm_acc_before"), c.get("rm_acc_after"));
        if b.n == 0 && a.n == 0 {
            continue;
        }
        let pct = |s: &Summary| pm(&scaled(s, if s.mean <= 1.0 { 100.0 } else { 1.0 }), 1);
        let src = if c.rm_grid.is_some() { "grid rm_accuracy.json".to_string() } else { runs(a.n.max(b.n)) };
        let mut row = vec![algo_label(c.algo).to_string(), c.arm.name(), pct(&b), pct(&a)];
        if with_attention {
            let e = c.get("attn_entropy_after");
            row.push(if e.n == 0 { "—".into() } else { pm(&e, 4) });
        }
        row.push(src);
        let _ = t.push(row);
    }
    t
}

/// R2M's feedback term, per cell of a method that blends in H_hat: whether it reorders the groups,
/// whether the policy climbs it, and what climbing it does to gold. Empty when no cell has one.
pub(super) fn feedback_table(agg: &Aggregate) -> Table {
    let keys = ["hhat_group_corr", "hhat_rise", "hhat_gold_corr"];
    let mut t = Table::new(vec![
        "algo",
        "method",
        "group corr. of reward with/without H_hat, 2nd half (1 = H_hat ranks nothing)",
        "rise of the feedback term on held-out responses (first eval with w < 1 -> last)",
        "corr. of the feedback term with gold at the last eval",
        "source",
    ]);
    for c in &agg.cells {
        let s: Vec<Summary> = keys.iter().map(|k| c.get(k)).collect();
        if s.iter().all(|s| s.n == 0) {
            continue;
        }
        let mut row = vec![algo_label(c.algo).to_string(), c.arm.name()];
        // The rise is in reward units (the proxy's scores spread ~0.02-0.2 here): 3 digits.
        row.extend(s.iter().zip([2, 3, 2]).map(|(s, d)| if s.n == 0 { "—".to_string() } else { pm(s, d) }));
        row.push(runs(s.iter().map(|s| s.n).max().unwrap_or(0)));
        let _ = t.push(row);
    }
    t
}

/// Per cell, the pairwise accuracy against gold inside each group of the policy's own rollouts of
/// the reward trained on and of the frozen proxy, "start → end" (first and last tenth of the
/// steps). Empty when no run logged it.
pub(super) fn own_accuracy_table(agg: &Aggregate) -> Table {
    let mut t = Table::new(vec![
        "algo",
        "method",
        "reward trained on: accuracy vs gold in its groups (start → end)",
        "frozen proxy: the same (R2M's methods)",
        "runs",
    ]);
    for c in &agg.cells {
        let s = |k: &str| c.get(k);
        let (a, b, fa, fb) = (s("own_acc_start"), s("own_acc_end"), s("own_acc_frozen_start"), s("own_acc_frozen_end"));
        if a.n == 0 && b.n == 0 {
            continue;
        }
        let span =
            |x: &Summary, y: &Summary| if x.n == 0 && y.n == 0 { "—".to_string() } else { format!("{} → {}", pm(x, 3), pm(y, 3)) };
        let _ = t.push(vec![algo_label(c.algo).to_string(), c.arm.name(), span(&a, &b), span(&fa, &fb), runs(a.n.max(b.n))]);
    }
    t
}

/// R2M's regime per cell: each quantity at the start (first tenth of the steps) and at the end
/// (last tenth) of the runs, as "start → end" means over seeds (± their 95% CI). Empty when no
/// run logged any of it.
pub(super) fn regime_table(agg: &Aggregate) -> Table {
    let pairs = [("attn_entropy", 5), ("hlast_norm", 2), ("hhat_norm", 2), ("hhat_ratio", 3), ("group_corr", 2)];
    let mut t = Table::new(vec![
        "algo",
        "method",
        "attention entropy (1 = uniform)",
        "|H_last|",
        "|H_hat|",
        "|H_hat| / |H_last|",
        "w(t) at the end",
        "group corr. with/without H_hat (1 = no reordering)",
        "runs",
    ]);
    for c in &agg.cells {
        // w(t) alone (every R2M method logs it) is not a regime: a cell needs one of the others.
        let keys: Vec<String> = pairs.iter().flat_map(|(k, _)| [format!("{k}_start"), format!("{k}_end")]).collect();
        let n = keys.iter().map(|k| c.get(k).n).max().unwrap_or(0);
        if n == 0 {
            continue;
        }
        let span = |k: &str, d: usize| {
            let (a, b) = (c.get(&format!("{k}_start")), c.get(&format!("{k}_end")));
            if a.n == 0 && b.n == 0 {
                "—".to_string()
            } else {
                format!("{} → {}", pm(&a, d), pm(&b, d))
            }
        };
        let mut row = vec![algo_label(c.algo).to_string(), c.arm.name()];
        row.extend(pairs.iter().take(4).map(|(k, d)| span(k, *d)));
        let w = c.get("w_end");
        row.push(if w.n == 0 { "—".into() } else { pm(&w, 3) });
        row.push(span("group_corr", 2));
        row.push(runs(n));
        let _ = t.push(row);
    }
    t
}

pub(super) fn time_table(agg: &Aggregate) -> Table {
    let phases = all_phases(agg);
    let mut cols = vec!["algo".to_string(), "method".to_string()];
    cols.extend(phases.iter().map(|p| format!("{} (s)", p.trim_start_matches("time/"))));
    let mut t = Table::new(cols);
    for c in &agg.cells {
        let mut row = vec![algo_label(c.algo).to_string(), c.arm.name()];
        for p in &phases {
            let s = c.times.iter().find(|(q, _)| q == p).map(|(_, s)| *s).unwrap_or(Summary::EMPTY);
            row.push(pm(&s, 2));
        }
        let _ = t.push(row);
    }
    t
}
