//! The experiment report: CSVs, plots and a Markdown + self-contained HTML report, written into
//! the grid folder by [`write_report`].
//!
//! Files (all in the grid folder):
//! - `results.csv`: one row per method x algo, every aggregate as mean and 95% CI half-width.
//! - `runs.csv`: one row per run folder (incomplete ones too, with their reason).
//! - `comparisons.csv`: each method vs vanilla and R2M vs each ablation (Welch and paired tests).
//! - `plots/`: gold and proxy vs step, gold vs sqrt(KL) (one figure per algo), RM accuracy, time
//!   per phase; PNG and SVG.
//! - `report.md` (plots linked) and `report.html` (plots embedded as base64 PNG; no external
//!   references), with the setup, every number with its CI, the comparisons and a plain verdict.
use super::aggregate::{
    self, algo_label, fmt_p, pm, Aggregate, AggregateOptions, Cell, Comparison, Grid, Incomplete, ABLATIONS, BASELINE, FULL, METRICS,
};
use super::stats::Summary;
use crate::error::Result;
use crate::report::plot::{BarChart, BarSeries, LineChart, Series};
use crate::report::{csv_num, Table};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What [`write_report`] wrote, and the main table for printing.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub grid_dir: PathBuf,
    pub results_csv: PathBuf,
    pub runs_csv: PathBuf,
    pub comparisons_csv: PathBuf,
    pub report_md: PathBuf,
    pub report_html: PathBuf,
    /// Every plot file (PNG and SVG).
    pub plots: Vec<PathBuf>,
    /// The main results table, aligned for the terminal.
    pub table: String,
    /// The plain-language verdict lines.
    pub verdicts: Vec<String>,
    /// Run folders left out of the aggregates.
    pub incomplete: Vec<Incomplete>,
    /// Runs aggregated.
    pub n_runs: usize,
}

/// Reads the grid folder, aggregates it with the default options (matched d = the smallest final
/// sqrt(KL) per algorithm) and writes every report file into it.
pub fn write_report(grid_dir: &Path) -> Result<ReportSummary> {
    write_report_with(grid_dir, &AggregateOptions::default())
}

/// [`write_report`] with options.
pub fn write_report_with(grid_dir: &Path, opts: &AggregateOptions) -> Result<ReportSummary> {
    let grid = aggregate::load_grid(grid_dir, opts)?;
    let agg = aggregate::aggregate(&grid, opts);

    let results_csv = grid_dir.join("results.csv");
    results_table(&agg).write_csv(&results_csv)?;
    let runs_csv = grid_dir.join("runs.csv");
    runs_table(&grid, &agg).write_csv(&runs_csv)?;
    let comparisons_csv = grid_dir.join("comparisons.csv");
    comparisons_table(&agg).write_csv(&comparisons_csv)?;

    let figures = plots(&grid_dir.join("plots"), &agg)?;
    let verdicts = verdicts(&agg);
    let blocks = document(&grid, &agg, &verdicts, &figures);
    let report_md = grid_dir.join("report.md");
    crate::checkpoint::write_atomic(&report_md, to_markdown(&blocks).as_bytes())?;
    let report_html = grid_dir.join("report.html");
    let title = format!("R2M experiment report: {}", dir_name(grid_dir));
    crate::checkpoint::write_atomic(&report_html, to_html(&title, &blocks, grid_dir)?.as_bytes())?;

    Ok(ReportSummary {
        grid_dir: grid_dir.to_path_buf(),
        results_csv,
        runs_csv,
        comparisons_csv,
        report_md,
        report_html,
        plots: figures.iter().flat_map(|f| [f.png.clone(), f.svg.clone()]).collect(),
        table: main_table(&agg, false).to_text(),
        verdicts,
        incomplete: grid.incomplete.clone(),
        n_runs: grid.runs.len(),
    })
}

fn dir_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// Number formats

/// How a metric is shown: decimals and a scale (win rates and accuracies in percent).
fn metric_format(key: &str) -> (usize, f64) {
    match key {
        "win_rate" | "lc_win_rate" => (1, 100.0),
        "rm_acc_before" | "rm_acc_after" => (1, 100.0),
        "peak_step" => (1, 1.0),
        "length_final" | "length_init" => (1, 1.0),
        "kl_final" => (2, 1.0),
        "time_step" => (2, 1.0),
        _ => (3, 1.0),
    }
}

fn scaled(s: &Summary, scale: f64) -> Summary {
    Summary { n: s.n, mean: s.mean * scale, std: s.std * scale, ci95: s.ci95 * scale }
}

/// A cell's metric as "mean ± ci" in its display format.
fn show(c: &Cell, key: &str) -> String {
    let (d, k) = metric_format(key);
    pm(&scaled(&c.get(key), k), d)
}

fn label(key: &str) -> String {
    let base = METRICS.iter().find(|(k, _)| *k == key).map(|(_, l)| l.to_string()).unwrap_or_else(|| key.to_string());
    match key {
        "win_rate" | "lc_win_rate" | "rm_acc_before" | "rm_acc_after" => format!("{base} (%)"),
        _ => base,
    }
}

fn overopt_cell(c: &Cell) -> String {
    match &c.overopt {
        None => "n/a".into(),
        Some(o) => match o.overoptimized {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => "undetermined".into(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Tables

/// The main table: one row per algo x method. `full` adds proxy, gap, length columns.
fn main_table(agg: &Aggregate, full: bool) -> Table {
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
            algo_label(&c.algo),
            c.method.clone(),
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

fn all_phases(agg: &Aggregate) -> Vec<String> {
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

/// `results.csv`: one row per method x algo.
fn results_table(agg: &Aggregate) -> Table {
    let phases = all_phases(agg);
    let mut cols: Vec<String> = ["method", "algo", "n_seeds", "seeds", "matched_d"].iter().map(|s| s.to_string()).collect();
    for (k, _) in METRICS {
        cols.push(format!("{k}_mean"));
        cols.push(format!("{k}_ci95"));
    }
    cols.extend(
        ["overopt_peak_step", "overopt_drop_mean", "overopt_drop_ci95", "overopt_proxy_rise_mean", "overoptimized"].map(String::from),
    );
    for p in &phases {
        cols.push(format!("{p}_mean"));
        cols.push(format!("{p}_ci95"));
    }
    let mut t = Table::new(cols);
    for c in &agg.cells {
        let mut row = vec![
            c.method.clone(),
            c.algo.clone(),
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
                csv_num(o.drop.ci95),
                csv_num(o.proxy_rise.mean),
                overopt_cell(c),
            ]),
            None => row.extend(["", "", "", "", "n/a"].map(String::from)),
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
fn runs_table(grid: &Grid, agg: &Aggregate) -> Table {
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
                r.method.clone(),
                r.algo.clone(),
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
        let (m, a, s) = aggregate::parse_run_name(&x.name).map(|(m, a, s)| (m, a, s.to_string())).unwrap_or_default();
        let mut row = vec![x.name.clone(), m, a, s, format!("incomplete: {}", x.reason)];
        row.resize(cols.len(), String::new());
        let _ = t.push(row);
    }
    t
}

fn comparisons_table(agg: &Aggregate) -> Table {
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
            c.algo.clone(),
            c.method.clone(),
            c.baseline.clone(),
            c.baseline_algo.clone(),
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
fn comparison_md_table(cs: &[&Comparison], a_title: &str, b_title: &str) -> Table {
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
            algo_label(&c.algo),
            c.method.clone(),
            if c.baseline_algo == c.algo { c.baseline.clone() } else { format!("{} ({})", c.baseline, algo_label(&c.baseline_algo)) },
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

fn rm_table(agg: &Aggregate) -> Table {
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
        let src = if c.rm_grid.is_some() { "grid rm_accuracy.json".to_string() } else { format!("{} runs", a.n.max(b.n)) };
        let mut row = vec![algo_label(&c.algo), c.method.clone(), pct(&b), pct(&a)];
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
fn feedback_table(agg: &Aggregate) -> Table {
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
        let mut row = vec![algo_label(&c.algo), c.method.clone()];
        // The rise is in reward units (the proxy's scores spread ~0.02-0.2 here): 3 digits.
        row.extend(s.iter().zip([2, 3, 2]).map(|(s, d)| if s.n == 0 { "—".to_string() } else { pm(s, d) }));
        row.push(format!("{} runs", s.iter().map(|s| s.n).max().unwrap_or(0)));
        let _ = t.push(row);
    }
    t
}

fn time_table(agg: &Aggregate) -> Table {
    let phases = all_phases(agg);
    let mut cols = vec!["algo".to_string(), "method".to_string()];
    cols.extend(phases.iter().map(|p| format!("{} (s)", p.trim_start_matches("time/"))));
    let mut t = Table::new(cols);
    for c in &agg.cells {
        let mut row = vec![algo_label(&c.algo), c.method.clone()];
        for p in &phases {
            let s = c.times.iter().find(|(q, _)| q == p).map(|(_, s)| *s).unwrap_or(Summary::EMPTY);
            row.push(pm(&s, 2));
        }
        let _ = t.push(row);
    }
    t
}

const DEFAULT_THREADS: &str = "libtorch's default (one per core)";

/// The setup, from the runs' configs: each value, or every distinct value when runs differ.
fn setup_table(grid: &Grid) -> Table {
    const KEYS: [(&str, &str); 24] = [
        ("device", "device"),
        ("CPU threads per run", "threads"),
        ("policy (pi_init)", "policy.model"),
        ("trainable", "policy.trainable"),
        ("policy lr", "policy.lr"),
        ("reward source", "reward.kind"),
        ("proxy RM", "reward.model"),
        ("RL steps T", "rl.steps"),
        ("prompts per step n", "rl.prompts_per_step"),
        ("samples per prompt K", "rl.group_size"),
        ("policy epochs k", "rl.epochs"),
        ("KL coefficient beta", "rl.beta"),
        ("temperature", "rl.temperature"),
        ("max new tokens", "rl.max_new_tokens"),
        ("eval every", "rl.eval_every"),
        ("eval prompts", "rl.eval_prompts"),
        ("eval temperature", "rl.eval_temperature"),
        ("prompts", "data.prompts"),
        ("R2M lr", "r2m.lr"),
        ("R2M alpha", "r2m.alpha"),
        ("R2M omega", "r2m.omega"),
        ("R2M d", "r2m.d"),
        ("R2M heads", "r2m.heads"),
        ("pretrained RM", "r2m.pretrained_rm"),
    ];
    let mut t = Table::new(["setting", "value"]);
    let algos: BTreeSet<(usize, String)> = grid.runs.iter().map(|r| aggregate::algo_rank(&r.algo)).collect();
    let methods: BTreeSet<(usize, String)> = grid.runs.iter().map(|r| aggregate::method_rank(&r.method)).collect();
    let seeds: BTreeSet<u64> = grid.runs.iter().map(|r| r.seed).collect();
    let _ = t.push(vec!["methods".into(), methods.into_iter().map(|m| m.1).collect::<Vec<_>>().join(", ")]);
    let _ = t.push(vec!["algorithms".into(), algos.into_iter().map(|a| algo_label(&a.1)).collect::<Vec<_>>().join(", ")]);
    let _ = t.push(vec!["seeds".into(), seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")]);
    for (name, key) in KEYS {
        // Each run's value, with its algorithm (a setting of `algo_set` differs by algorithm).
        let mut vals: Vec<String> = vec![];
        let mut by_algo: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
        let mut any_cfg = false;
        for r in &grid.runs {
            let Some(c) = &r.config else { continue };
            any_cfg = true;
            if key.starts_with("r2m.") && c.get("r2m").is_none() {
                continue;
            }
            let v = match aggregate::toml_get(c, key) {
                Some(v) => toml_text(v),
                None if key == "rl.beta" => match default_beta(&r.algo) {
                    Some(b) => format!("{b} ({}'s default)", algo_label(&r.algo)),
                    None => "default per algorithm (RLOO 0.05, GRPO 0.04, REINFORCE++/ReMax 0.01)".into(),
                },
                None if key == "threads" => DEFAULT_THREADS.into(),
                None => continue,
            };
            let v = if key == "threads" && v == "0" { DEFAULT_THREADS.into() } else { v };
            if !vals.contains(&v) {
                vals.push(v.clone());
            }
            let a = by_algo.entry(aggregate::algo_rank(&r.algo)).or_default();
            if !a.contains(&v) {
                a.push(v);
            }
        }
        if key == "threads" && vals == [DEFAULT_THREADS] {
            continue; // nothing to say
        }
        if any_cfg && !vals.is_empty() {
            let text = if vals.len() == 1 {
                vals.remove(0)
            } else if by_algo.len() > 1 && by_algo.values().all(|v| v.len() == 1) {
                by_algo.iter().map(|((_, a), v)| format!("{}: {}", algo_label(a), v[0])).collect::<Vec<_>>().join("; ")
            } else {
                format!("{} (differs between runs)", vals.join(" | "))
            };
            let _ = t.push(vec![name.into(), text]);
        }
    }
    // From done.json: where each run ran, and the RM it trained against by content (a grid
    // resumed on other machines from its archive shows whether every run shared one RM).
    for (name, key, short) in [("machine", "machine", false), ("RM trained against (SHA-256)", "rm_sha256", true)] {
        if let Some(text) = done_values(grid, key, short) {
            let _ = t.push(vec![name.into(), text]);
        }
    }
    t
}

/// The distinct values of `done.json`'s `key` over the runs, each with the runs that have it
/// ("v (all 4 runs)", or "v1 (3 runs: a, b, c) | v2 (1 run: d)"); `short` keeps 12 characters.
fn done_values(grid: &Grid, key: &str, short: bool) -> Option<String> {
    let mut groups: Vec<(String, Vec<&str>)> = vec![];
    for r in &grid.runs {
        let Some(v) = r.done.as_ref().and_then(|d| d.get(key)).and_then(|v| v.as_str()) else { continue };
        let v = if short { v.chars().take(12).collect() } else { v.to_string() };
        match groups.iter_mut().find(|g| g.0 == v) {
            Some(g) => g.1.push(&r.name),
            None => groups.push((v, vec![&r.name])),
        }
    }
    let n = |k: usize| if k == 1 { "1 run".to_string() } else { format!("{k} runs") };
    match groups.len() {
        0 => None,
        1 if groups[0].1.len() == grid.runs.len() => Some(format!("{} (all {})", groups[0].0, n(grid.runs.len()))),
        _ => Some(groups.iter().map(|(v, rs)| format!("{v} ({}: {})", n(rs.len()), rs.join(", "))).collect::<Vec<_>>().join(" | ")),
    }
}

/// The KL coefficient an algorithm uses when `rl.beta` is not set (`AlgoConfig::beta`).
fn default_beta(algo: &str) -> Option<f64> {
    let algo: crate::rl::config::Algo = serde_json::from_value(serde_json::Value::String(algo.into())).ok()?;
    let cfg = crate::rl::config::AlgoConfig { algo, beta: None, ..Default::default() };
    Some(cfg.beta())
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => t.iter().map(|(k, v)| format!("{k}={}", toml_text(v))).collect::<Vec<_>>().join(" "),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(toml_text).collect::<Vec<_>>().join(", ")),
        v => v.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/// "R2M" for the full method (as the paper writes it), the config name otherwise.
fn method_label(m: &str) -> String {
    if m == FULL {
        "R2M".into()
    } else {
        m.to_string()
    }
}

fn find<'a>(cs: &'a [Comparison], algo: &str, method: &str, baseline: &str, metric: &str) -> Option<&'a Comparison> {
    cs.iter().find(|c| c.algo == algo && c.method == method && c.baseline == baseline && c.metric == metric)
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
        format!("{} vs {} ({}): {what} {desc}", method_label(&c.method), c.baseline, algo_label(&c.algo))
    } else {
        format!("{} ({}) vs {} ({}): {what} {desc}", method_label(&c.method), algo_label(&c.algo), c.baseline, algo_label(&c.baseline_algo))
    }
}

/// The plain-language verdict lines.
fn verdicts(agg: &Aggregate) -> Vec<String> {
    let mut out = vec![];
    // 1. Does the testbed show overoptimization under vanilla?
    let mut any_vanilla = false;
    let (mut shown, mut not_shown, mut undetermined) = (vec![], vec![], vec![]);
    for algo in agg.algos() {
        if let Some(c) = agg.cell(BASELINE, &algo) {
            any_vanilla = true;
            if let Some(o) = &c.overopt {
                out.push(format!("Vanilla {}: {}", algo_label(&algo), o.describe()));
                match o.overoptimized {
                    Some(true) => shown.push(algo_label(&algo)),
                    Some(false) => not_shown.push(algo_label(&algo)),
                    None => undetermined.push(algo_label(&algo)),
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
            "The testbed does NOT show overoptimization under vanilla RL here: by testbed.md it cannot yet tell methods apart \
             (change the gold, the proxy's data size or the budget until it does)."
                .to_string()
        });
    } else {
        out.push("No vanilla runs: overoptimization under vanilla and every comparison with vanilla are untested.".into());
    }
    // 2. R2M vs vanilla.
    for algo in agg.algos() {
        if agg.cell(FULL, &algo).is_none() || agg.cell(BASELINE, &algo).is_none() {
            continue;
        }
        let mut sig_up = vec![];
        let mut sig_down = vec![];
        let mut tested = 0;
        for m in ["gold_final", "gold_at_d", "lc_win_rate", "win_rate"] {
            if let Some(c) = find(&agg.vs_vanilla, &algo, FULL, BASELINE, m) {
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
        let a = algo_label(&algo);
        let sig_up: Vec<&str> = sig_up.into_iter().map(metric_words).collect();
        let sig_down: Vec<&str> = sig_down.into_iter().map(metric_words).collect();
        out.push(match (sig_up.is_empty(), sig_down.is_empty()) {
            (true, true) if tested == 0 => {
                format!("Verdict ({a}): cannot tell yet: R2M or vanilla {a} has fewer than 2 seeds, so no difference can be tested.")
            }
            (true, true) => {
                format!("Verdict ({a}): R2M does NOT beat vanilla {a}: no difference in gold or win rate is significant at 0.05.")
            }
            (false, true) => format!("Verdict ({a}): R2M beats vanilla {a} on {} (p < 0.05).", sig_up.join(", ")),
            (true, false) => format!("Verdict ({a}): R2M is WORSE than vanilla {a} on {} (p < 0.05).", sig_down.join(", ")),
            (false, false) => {
                format!("Verdict ({a}): mixed: R2M is better on {} and worse on {} (p < 0.05).", sig_up.join(", "), sig_down.join(", "))
            }
        });
    }
    // 3. Other methods vs vanilla (gold at the last step), R2M vs ablations (LC win rate and gold).
    for c in agg.vs_vanilla.iter().filter(|c| c.method != FULL && c.metric == "gold_final") {
        out.push(comparison_line(c));
    }
    for algo in agg.algos() {
        for ab in ABLATIONS {
            for m in ["gold_final", "lc_win_rate"] {
                if let Some(c) = find(&agg.ablations, &algo, FULL, ab, m) {
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

// ---------------------------------------------------------------------------------------------
// Plots

/// One figure written (PNG + SVG).
#[derive(Debug, Clone)]
struct Figure {
    title: String,
    caption: String,
    png: PathBuf,
    svg: PathBuf,
}

fn plots(dir: &Path, agg: &Aggregate) -> Result<Vec<Figure>> {
    let mut out = vec![];
    let mut push =
        |title: &str, caption: String, r: (PathBuf, PathBuf)| out.push(Figure { title: title.to_string(), caption, png: r.0, svg: r.1 });
    for algo in agg.algos() {
        let cells: Vec<&Cell> = agg.cells.iter().filter(|c| c.algo == algo).collect();
        let a = algo_label(&algo);
        let band = |f: fn(&aggregate::CurvePoint) -> Summary, c: &Cell| -> Vec<(f64, f64, f64)> {
            c.curve.iter().map(|p| (p.step as f64, f(p).mean, f(p).ci95)).collect()
        };
        let gold: Vec<Series> = cells.iter().map(|c| Series::mean_ci(c.method.clone(), &band(|p| p.gold, c))).collect();
        let proxy: Vec<Series> = cells.iter().map(|c| Series::mean_ci(c.method.clone(), &band(|p| p.proxy, c))).collect();
        let t = format!("Gold reward vs step ({a}, held-out prompts)");
        let r = LineChart::new(&t, "RL step (-1 = pi_init)", "gold reward (mean over prompts)")
            .draw(&dir.join(format!("gold_vs_step_{algo}")), &gold)?;
        push(&t, "Mean over seeds, band = 95% CI. An eval at step t follows update t.".into(), r);
        let t = format!("Proxy reward vs step ({a}, held-out prompts)");
        let r = LineChart::new(&t, "RL step (-1 = pi_init)", "proxy RM score").draw(&dir.join(format!("proxy_vs_step_{algo}")), &proxy)?;
        push(
            &t,
            "The frozen proxy RM's score (for online methods not the reward they trained on; older runs without it show that reward)."
                .into(),
            r,
        );
        let kl: Vec<Series> = cells
            .iter()
            .map(|c| {
                let rows: Vec<(f64, f64, f64)> = c.curve.iter().map(|p| (p.sqrt_kl.mean, p.gold.mean, p.gold.ci95)).collect();
                Series::mean_ci(c.method.clone(), &rows)
            })
            .collect();
        let t = format!("Gold vs sqrt(KL) ({a})");
        let r = LineChart::new(&t, "d = sqrt(KL to pi_init)", "gold reward").draw(&dir.join(format!("gold_vs_sqrt_kl_{algo}")), &kl)?;
        let d = agg.matched_d.get(&algo).copied().unwrap_or(f64::NAN);
        push(&t, format!("Gao et al.'s picture: each point is one eval step, x = seed-mean sqrt(KL), y = seed-mean gold ± 95% CI. Matched d = {d:.3}."), r);

        let phases: Vec<String> = all_phases(agg).into_iter().filter(|p| p != "time/step").collect();
        if !phases.is_empty() {
            let cats: Vec<String> = phases.iter().map(|p| p.trim_start_matches("time/").to_string()).collect();
            let series: Vec<BarSeries> = cells
                .iter()
                .map(|c| {
                    let s: Vec<Summary> =
                        phases.iter().map(|p| c.times.iter().find(|(q, _)| q == p).map(|(_, s)| *s).unwrap_or(Summary::EMPTY)).collect();
                    BarSeries::new(c.method.clone(), s.iter().map(|s| s.mean).collect())
                        .with_intervals(s.iter().map(|s| s.interval()).collect())
                })
                .collect();
            let t = format!("Time per phase ({a})");
            let r = BarChart::new(&t, "phase", "seconds per step").draw(&dir.join(format!("time_per_phase_{algo}")), &cats, &series)?;
            push(&t, "Mean seconds per RL step (total over the run / steps; eval amortized), ± 95% CI over seeds.".into(), r);
        }
    }
    let rm: Vec<&Cell> = agg.cells.iter().filter(|c| c.get("rm_acc_before").n + c.get("rm_acc_after").n > 0).collect();
    if !rm.is_empty() {
        let cats: Vec<String> = rm.iter().map(|c| format!("{} ({})", c.method, algo_label(&c.algo))).collect();
        let pct = |s: Summary| scaled(&s, if s.mean <= 1.0 { 100.0 } else { 1.0 });
        let mk = |name: &str, key: &str| {
            let s: Vec<Summary> = rm.iter().map(|c| pct(c.get(key))).collect();
            BarSeries::new(name, s.iter().map(|s| s.mean).collect()).with_intervals(s.iter().map(|s| s.interval()).collect())
        };
        let t = "RM accuracy on held-out gold pairs";
        let r = BarChart::new(t, "", "accuracy (%)").draw(
            &dir.join("rm_accuracy"),
            &cats,
            &[mk("before RL", "rm_acc_before"), mk("after RL", "rm_acc_after")],
        )?;
        push(t, "Before and after RL (for R2M: with the policy's feedback and w(T)); ± 95% CI where several runs report it.".into(), r);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The document, rendered to Markdown and HTML

enum Block {
    H(usize, String),
    P(String),
    List(Vec<String>),
    Table(Table),
    Figure(Figure),
}

fn document(grid: &Grid, agg: &Aggregate, verdicts: &[String], figures: &[Figure]) -> Vec<Block> {
    use Block::*;
    let mut b = vec![H(1, format!("R2M experiment report: {}", dir_name(&grid.dir)))];
    b.push(P(format!(
        "{} runs aggregated from {}. Every number is the mean over seeds ± the half-width of its 95% confidence interval \
         (Student t); \"(n=1)\" marks a single seed, where no interval exists. The gold reward plays the human \
         (testbed.md); the proxy is the frozen proxy RM's score of the responses, the same judge for every method \
         (R2M's methods train on their own reward, logged beside it; runs from before that was logged show their own reward).",
        grid.runs.len(),
        grid.dir.display()
    )));
    if !grid.incomplete.is_empty() {
        b.push(P("Incomplete run folders (left out of every number below):".into()));
        b.push(List(grid.incomplete.iter().map(|x| format!("{}: {}", x.name, x.reason)).collect()));
    }
    if grid.runs.is_empty() {
        b.push(P("No complete runs: nothing to report yet.".into()));
        return b;
    }

    b.push(H(2, "Verdict".into()));
    b.push(List(verdicts.to_vec()));

    b.push(H(2, "Setup".into()));
    b.push(Table(setup_table(grid)));
    let ds: Vec<String> =
        agg.algos().iter().filter_map(|a| agg.matched_d.get(a).map(|d| format!("{} d = {d:.3}", algo_label(a)))).collect();
    b.push(P(format!(
        "Matched KL: gold @ d is each run's eval gold interpolated at d = sqrt(KL) on its curve from pi_init (d = 0), at \
         the first crossing; d per algorithm is the smallest final sqrt(KL) over its runs: {}.",
        ds.join(", ")
    )));

    b.push(H(2, "Results".into()));
    b.push(Table(main_table(agg, true)));
    b.push(P("gold (final): held-out gold at the last eval step. peak gold / peak step: the highest eval gold (pi_init included, \
         step -1) and its step. win rate: share of held-out prompts where the policy's response at the last eval step has \
         higher gold than pi_init's (ties half). LC win rate: length-controlled, sigmoid(intercept) of a logistic regression \
         of those wins on tanh(length difference / its sd) (AlpacaEval 2 LC style). proxy - gold: raw difference at the end \
         (different scales: compare it within a column, not as a level). std. gap: the proxy's rise from pi_init minus \
         gold's rise, each in pi_init standard deviations over the prompts (0 at pi_init; > 0: the proxy credits more \
         than gold confirms). overopt.: the test under Verdict (gold's seed-mean peak is above the final gold by more \
         than the 95% CI of the per-seed drop, while the proxy rose after the peak)."
        .into()));
    let over: Vec<String> = agg
        .cells
        .iter()
        .filter_map(|c| c.overopt.as_ref().map(|o| format!("{} {}: {}", c.method, algo_label(&c.algo), o.describe())))
        .collect();
    if !over.is_empty() {
        b.push(H(3, "Overoptimization test, every method".into()));
        b.push(List(over));
    }

    b.push(H(2, "Each method vs vanilla (same algorithm)".into()));
    if agg.vs_vanilla.is_empty() {
        b.push(P("No method has a vanilla run under the same algorithm.".into()));
    } else {
        let cs: Vec<&Comparison> = agg.vs_vanilla.iter().collect();
        b.push(Table(comparison_md_table(&cs, "method", "vanilla")));
        b.push(P("Difference = method - vanilla with the 95% CI of the difference (Welch). The decision uses Welch's two-sided \
             t-test (unequal variances); the paired t-test over shared seeds (same seed: same prompts order and init) is shown \
             beside it."
            .into()));
    }

    b.push(H(2, "Ablations (R2M vs each)".into()));
    if agg.ablations.is_empty() {
        b.push(P("No ablation runs next to an R2M run under the same algorithm.".into()));
    } else {
        let cs: Vec<&Comparison> = agg.ablations.iter().collect();
        b.push(Table(comparison_md_table(&cs, "r2m", "ablation")));
        b.push(P("Difference = r2m - ablation: positive means the full method does better.".into()));
    }

    if !agg.vs_baselines.is_empty() {
        b.push(H(2, "R2M vs the other RL baselines (vanilla REINFORCE++ / ReMax)".into()));
        let cs: Vec<&Comparison> = agg.vs_baselines.iter().collect();
        b.push(Table(comparison_md_table(&cs, "r2m", "baseline")));
        b.push(P("As in the paper's tables, R2M under RLOO / GRPO against vanilla runs of the other algorithms. Gold @ d is not compared: d differs between algorithms.".into()));
    }

    b.push(H(2, "RM accuracy".into()));
    let rm = rm_table(agg);
    if rm.rows.is_empty() {
        b.push(P("No rm_accuracy.json in the grid or its runs.".into()));
    } else {
        let attention = rm.headers.iter().any(|h| h.starts_with("attention entropy"));
        b.push(Table(rm));
        if attention {
            b.push(P("Attention entropy: how R2M's cross-attention spreads over the policy's tokens on these pairs after RL, entropy / ln(tokens) averaged over responses (1 = uniform: H_hat is a linear map of the mean hidden state; near 0: it reads a few tokens). `r2m eval-rm --feedback-from RUN` prints it with the norms and score spreads of H_hat and H_last.".into()));
        }
    }

    let fb = feedback_table(agg);
    if !fb.rows.is_empty() {
        b.push(H(2, "R2M's feedback term".into()));
        b.push(Table(fb));
        b.push(P("R2M's reward is phi((1 - w) H_hat + w H_last) with a linear phi, so beside the frozen proxy's score of the same response it carries a feedback term, (r - w r_frozen) / (1 - w) = phi(H_hat) plus what the head's drift gives on H_last; H_hat is read from the policy's own hidden states (noise for r2m-noise).".into()));
        b.push(P("Group corr.: at each RL step, the correlation inside each prompt's group of R2M's reward with what the same head gives on H_last alone (`r2m/group_corr_no_hhat` in metrics.jsonl), averaged over groups and over the second half of the steps. It is the correlation of the GRPO advantages with and without the H_hat term: near 1, the policy's feedback changes no ranking; near 0, the H_hat term decides which samples are reinforced.".into()));
        b.push(P("Rise: the feedback term's mean over the held-out responses (eval.jsonl) at the last eval step minus at the first with w < 1; above 0, the policy has climbed it. Corr. with gold: over the held-out responses of the last eval step; below 0, the responses the feedback term favours are the worse ones by gold.".into()));
    }

    b.push(H(2, "Time per phase".into()));
    b.push(Table(time_table(agg)));
    b.push(P("Mean seconds per RL step: each time/* total over the run divided by the steps logged (so eval is amortized); step = the whole step.".into()));

    b.push(H(2, "Plots".into()));
    for f in figures {
        b.push(Figure(f.clone()));
    }
    b
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Whether every non-empty cell of column `c` reads as a number ("0.5 ± 0.1", "+3", "n/a", "< 0.001").
fn numeric_column(t: &Table, c: usize) -> bool {
    t.rows
        .iter()
        .map(|r| r[c].trim())
        .filter(|v| !v.is_empty())
        .all(|v| v == "n/a" || v.starts_with("< ") || v.starts_with(|ch: char| ch.is_ascii_digit() || ch == '+' || ch == '-' || ch == '.'))
}

fn md_table(t: &Table) -> String {
    let mut s = format!("| {} |\n", t.headers.iter().map(|h| md_escape(h)).collect::<Vec<_>>().join(" | "));
    let align: Vec<&str> = (0..t.headers.len()).map(|c| if numeric_column(t, c) { "---:" } else { "---" }).collect();
    s.push_str(&format!("|{}|\n", align.join("|")));
    for r in &t.rows {
        s.push_str(&format!("| {} |\n", r.iter().map(|c| md_escape(c)).collect::<Vec<_>>().join(" | ")));
    }
    s
}

fn to_markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::H(l, t) => s.push_str(&format!("{} {t}\n\n", "#".repeat(*l))),
            Block::P(t) => s.push_str(&format!("{t}\n\n")),
            Block::List(items) => {
                for i in items {
                    s.push_str(&format!("- {i}\n"));
                }
                s.push('\n');
            }
            Block::Table(t) => {
                s.push_str(&md_table(t));
                s.push('\n');
            }
            Block::Figure(f) => {
                let rel = |p: &Path| format!("plots/{}", p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
                s.push_str(&format!("### {}\n\n![{}]({})\n\n{} ([SVG]({}))\n\n", f.title, f.title, rel(&f.png), f.caption, rel(&f.svg)));
            }
        }
    }
    s
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html_table(t: &Table) -> String {
    let numeric: Vec<bool> = (0..t.headers.len()).map(|c| numeric_column(t, c)).collect();
    let mut s = String::from("<table>\n<thead><tr>");
    for h in &t.headers {
        s.push_str(&format!("<th>{}</th>", html_escape(h)));
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        s.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let class = if numeric[i] { " class=\"n\"" } else { "" };
            s.push_str(&format!("<td{class}>{}</td>", html_escape(c)));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n</table>\n");
    s
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if ch.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if ch.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{font-size:0.9em;color:#555}";

fn to_html(title: &str, blocks: &[Block], _grid_dir: &Path) -> Result<String> {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        html_escape(title)
    );
    for b in blocks {
        match b {
            Block::H(l, t) => s.push_str(&format!("<h{l}>{}</h{l}>\n", html_escape(t))),
            Block::P(t) => s.push_str(&format!("<p>{}</p>\n", html_escape(t))),
            Block::List(items) => {
                s.push_str("<ul>\n");
                for i in items {
                    s.push_str(&format!("<li>{}</li>\n", html_escape(i)));
                }
                s.push_str("</ul>\n");
            }
            Block::Table(t) => s.push_str(&html_table(t)),
            Block::Figure(f) => {
                let png = std::fs::read(&f.png).map_err(|e| crate::error::Error::io(&f.png, e))?;
                s.push_str(&format!(
                    "<figure>\n<h3>{}</h3>\n<img alt=\"{}\" src=\"data:image/png;base64,{}\">\n<figcaption>{}</figcaption>\n</figure>\n",
                    html_escape(&f.title),
                    html_escape(&f.title),
                    base64(&png),
                    html_escape(&f.caption)
                ));
            }
        }
    }
    s.push_str("</body>\n</html>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn markdown_and_html_tables_escape() {
        let mut t = Table::new(["a", "b"]);
        t.push(vec!["x|y".into(), "<1>".into()]).unwrap();
        assert!(md_table(&t).contains("x\\|y"));
        assert!(html_table(&t).contains("&lt;1&gt;"));
    }
}
