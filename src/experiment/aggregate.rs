//! Reading a grid folder and aggregating its runs over seeds.
//!
//! A grid folder holds run folders (`{method}-{algo}-s{seed}`, each written by `r2m rl`:
//! `config.toml`, `metrics.jsonl`, `eval.jsonl`) and optionally `rm_accuracy.json` files, per run or
//! for the grid (`{"method": .., "before": acc, "after": acc}`, one object or a list).
//!
//! Per run ([`RunStats`], from the held-out evaluation): gold and proxy at the last eval step, KL
//! and d = sqrt(KL), gold at a matched d, peak gold and its step, the proxy-gold gap (raw and
//! standardized), win rate and length-controlled win rate vs pi_init, response length, RM accuracy,
//! mean time per phase. Per method x algo ([`Cell`]): mean and 95% CI over seeds of each, the mean
//! eval curve, and the overoptimization test ([`Overopt`]). Then every method against vanilla under
//! the same algorithm, and R2M against its ablations ([`Comparison`]: Welch t-test).
//!
//! Steps follow the files: an eval at step t is taken after update t; step -1 is pi_init (the
//! baseline of win rates and of the standardized gap; its KL is 0).
//!
//! Missing methods or algorithms are simply absent. A run folder without metrics, with unreadable
//! files, or stopped before `rl.steps` is listed in [`Grid::incomplete`] and left out of the
//! aggregates (a partial run's "last step" is not comparable), unless
//! [`AggregateOptions::include_partial`].
use super::stats::{self, summarize, Summary, TTest};
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The methods in the order tables list them (r2m-method.md "Baselines and ablations"); others
/// follow alphabetically.
pub const METHOD_ORDER: [&str; 8] =
    ["vanilla", "pretrained-rm", "iterative-head", "r2m-no-train", "r2m-noise", "r2m-no-bt", "r2m-no-gre", "r2m"];
/// The algorithms in table order.
pub const ALGO_ORDER: [&str; 4] = ["rloo", "grpo", "reinforce_pp", "remax"];
/// The ablations R2M is compared with (r2m-method.md).
pub const ABLATIONS: [&str; 4] = ["r2m-no-bt", "r2m-no-gre", "r2m-noise", "r2m-no-train"];
/// Algorithms the paper runs only as vanilla baselines (R2M under RLOO/GRPO is compared with them).
pub const OTHER_BASELINES: [&str; 2] = ["reinforce_pp", "remax"];
/// The baseline every method is compared with.
pub const BASELINE: &str = "vanilla";
/// The full method.
pub const FULL: &str = "r2m";

/// A display name for an algorithm key: `rloo` -> `RLOO`.
pub fn algo_label(algo: &str) -> String {
    match algo {
        "rloo" => "RLOO".into(),
        "grpo" => "GRPO".into(),
        "reinforce_pp" => "REINFORCE++".into(),
        "remax" => "ReMax".into(),
        a => a.to_string(),
    }
}

fn rank(order: &[&str], key: &str) -> (usize, String) {
    (order.iter().position(|m| *m == key).unwrap_or(order.len()), key.to_string())
}

/// Sort key of a method (paper order, then alphabetical).
pub fn method_rank(m: &str) -> (usize, String) {
    rank(&METHOD_ORDER, m)
}

/// Sort key of an algorithm.
pub fn algo_rank(a: &str) -> (usize, String) {
    rank(&ALGO_ORDER, a)
}

/// One row of `eval.jsonl`: one held-out prompt at one eval step.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub step: i64,
    pub prompt: i64,
    pub id: Option<String>,
    /// The reward source's score (the proxy, or R2M's reward at that step).
    pub reward: f64,
    /// The frozen proxy RM's score of the same response, logged where the run's reward is
    /// something else (R2M's methods: `reward_frozen_rm`); NaN otherwise.
    pub frozen: f64,
    /// Gold; NaN when the run had no gold.
    pub gold: f64,
    pub length: f64,
    pub kl: f64,
    pub finished: Option<bool>,
}

impl EvalRow {
    /// The proxy's score: the frozen RM's, the same for every method (for R2M's methods not the
    /// reward they trained on; runs logged before `reward_frozen_rm` existed give their reward).
    pub fn proxy(&self) -> f64 {
        if self.frozen.is_finite() {
            self.frozen
        } else {
            self.reward
        }
    }
}

/// RM accuracy on held-out gold pairs before and after RL (`rm_accuracy.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct RmAccuracy {
    pub method: String,
    /// Set when the file names them (grid-level lists may) or it sits in a run folder.
    pub algo: Option<String>,
    pub seed: Option<u64>,
    pub before: f64,
    pub after: f64,
    /// R2M's cross-attention after RL on the same pairs: its normalised entropy (1 = uniform over
    /// the tokens; `attention.attn_entropy`, NaN where the method has none or the file predates it).
    pub attn_entropy: f64,
}

/// A run folder that was read.
#[derive(Debug, Clone)]
pub struct Run {
    /// The folder name.
    pub name: String,
    pub dir: PathBuf,
    pub method: String,
    pub algo: String,
    pub seed: u64,
    /// `rl.steps` from the config (T).
    pub steps_planned: Option<i64>,
    /// The resolved config, as TOML (read leniently: older or newer configs still load).
    pub config: Option<toml::Table>,
    pub metrics: Vec<Map<String, Value>>,
    pub eval: Vec<EvalRow>,
    pub rm_accuracy: Option<RmAccuracy>,
    /// `done.json` of a finished grid run (wall time, machine, the RM's SHA-256).
    pub done: Option<Value>,
}

impl Run {
    /// The last `step` in metrics.jsonl.
    pub fn last_step(&self) -> Option<i64> {
        self.metrics.iter().filter_map(|m| m.get("step").and_then(Value::as_i64)).max()
    }
}

/// A run folder left out of the aggregates, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Incomplete {
    pub name: String,
    pub dir: PathBuf,
    pub reason: String,
}

/// A grid folder, read.
#[derive(Debug, Clone)]
pub struct Grid {
    pub dir: PathBuf,
    /// Runs that count, sorted by method, algo, seed.
    pub runs: Vec<Run>,
    pub incomplete: Vec<Incomplete>,
    /// Grid-level RM accuracies (`grid/rm_accuracy.json`).
    pub rm_accuracy: Vec<RmAccuracy>,
}

/// Options of [`aggregate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateOptions {
    /// The d = sqrt(KL) at which gold is compared; `None`: per algorithm, the smallest final
    /// sqrt(KL) over its runs (every run reaches it, so no extrapolation).
    pub matched_d: Option<f64>,
    /// Aggregate runs stopped before `rl.steps` too (they stay listed as incomplete).
    pub include_partial: bool,
}

/// Splits `{method}-{algo}-s{seed}`; algorithms have no '-' (rloo, grpo, reinforce_pp, remax).
pub fn parse_run_name(name: &str) -> Option<(String, String, u64)> {
    let (rest, seed) = name.rsplit_once("-s")?;
    let seed = seed.parse().ok()?;
    let (method, algo) = rest.rsplit_once('-')?;
    if method.is_empty() || algo.is_empty() {
        return None;
    }
    Some((method.to_string(), algo.to_string(), seed))
}

/// Looks up a dotted path in a TOML table.
pub fn toml_get<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut cur = t.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn f64_of(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn parse_eval_row(m: &Map<String, Value>) -> Option<EvalRow> {
    Some(EvalRow {
        step: m.get("step")?.as_i64()?,
        prompt: m.get("prompt").and_then(Value::as_i64).unwrap_or(-1),
        id: m.get("id").and_then(|v| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        }),
        reward: f64_of(m.get("reward")),
        frozen: f64_of(m.get("reward_frozen_rm")),
        gold: f64_of(m.get("gold")),
        length: f64_of(m.get("length")),
        kl: f64_of(m.get("kl")),
        finished: m.get("finished").and_then(Value::as_bool),
    })
}

/// Reads `rm_accuracy.json`: one object or a list of objects with `method`, `before`, `after`
/// (optional `algo`, `seed`). `default` fills in what a run-level file leaves out.
fn read_rm_accuracy(path: &Path, default: Option<(&str, &str, u64)>) -> Result<Vec<RmAccuracy>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
    let items = match v {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        _ => return Err(Error::parse(path, "expected an object or a list of objects")),
    };
    let mut out = vec![];
    for (i, it) in items.iter().enumerate() {
        let method = it
            .get("method")
            .and_then(Value::as_str)
            .map(String::from)
            .or(default.map(|d| d.0.to_string()))
            .ok_or_else(|| Error::parse(path, format!("entry {i}: no \"method\"")))?;
        out.push(RmAccuracy {
            method,
            algo: it.get("algo").and_then(Value::as_str).map(String::from).or(default.map(|d| d.1.to_string())),
            seed: it.get("seed").and_then(Value::as_u64).or(default.map(|d| d.2)),
            before: f64_of(it.get("before")),
            after: f64_of(it.get("after")),
            attn_entropy: f64_of(it.get("attention").and_then(|a| a.get("attn_entropy"))),
        });
    }
    Ok(out)
}

/// Reads one run folder; `Err(reason)` makes it incomplete.
fn read_run(dir: &Path, name: &str) -> std::result::Result<Run, String> {
    let cfg_path = dir.join("config.toml");
    let config = if cfg_path.exists() {
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| format!("config.toml: {e}"))?;
        Some(toml::from_str::<toml::Table>(&text).map_err(|e| format!("config.toml: invalid TOML: {e}"))?)
    } else {
        None
    };
    let from_name = parse_run_name(name);
    let (method, algo, seed) = match &config {
        Some(c) => {
            let method =
                toml_get(c, "label").or_else(|| toml_get(c, "r2m.method")).and_then(|v| v.as_str()).unwrap_or(BASELINE).to_string();
            let algo = toml_get(c, "rl.algo").and_then(|v| v.as_str()).map(String::from);
            let seed = toml_get(c, "seed").and_then(|v| v.as_integer()).map(|s| s as u64);
            match (algo, seed, &from_name) {
                (Some(a), Some(s), _) => (method, a, s),
                (a, s, Some(f)) => (method, a.unwrap_or(f.1.clone()), s.unwrap_or(f.2)),
                _ => return Err("config.toml names no rl.algo / seed and the folder name is not {method}-{algo}-s{seed}".into()),
            }
        }
        None => from_name.ok_or("no config.toml, and the folder name is not {method}-{algo}-s{seed}")?,
    };
    let steps_planned = config.as_ref().and_then(|c| toml_get(c, "rl.steps")).and_then(|v| v.as_integer());
    let mpath = dir.join("metrics.jsonl");
    if !mpath.exists() {
        return Err("no metrics.jsonl (not started?)".into());
    }
    let metrics = crate::metrics::read_jsonl(&mpath).map_err(|e| format!("{e}"))?;
    if metrics.is_empty() {
        return Err("metrics.jsonl is empty (not started?)".into());
    }
    let epath = dir.join("eval.jsonl");
    let eval = if epath.exists() {
        crate::metrics::read_jsonl(&epath).map_err(|e| format!("{e}"))?.iter().filter_map(parse_eval_row).collect()
    } else {
        vec![]
    };
    let rpath = dir.join("rm_accuracy.json");
    let rm_accuracy = if rpath.exists() {
        read_rm_accuracy(&rpath, Some((&method, &algo, seed))).map_err(|e| format!("{e}"))?.into_iter().next()
    } else {
        None
    };
    let dpath = dir.join("done.json");
    let done = match std::fs::read_to_string(&dpath) {
        Ok(s) => Some(serde_json::from_str(&s).map_err(|e| format!("done.json: invalid JSON: {e}"))?),
        Err(_) => None,
    };
    Ok(Run { name: name.to_string(), dir: dir.to_path_buf(), method, algo, seed, steps_planned, config, metrics, eval, rm_accuracy, done })
}

/// Reads every run folder under `dir` (sub-folders with `config.toml` or `metrics.jsonl`, or named
/// `{method}-{algo}-s{seed}`; others, like `plots/`, are ignored). Unreadable runs are listed in
/// `incomplete`; only an unreadable grid folder is an error.
pub fn load_grid(dir: &Path, opts: &AggregateOptions) -> Result<Grid> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut subdirs: Vec<(String, PathBuf)> = vec![];
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if p.is_dir() {
            subdirs.push((e.file_name().to_string_lossy().into_owned(), p));
        }
    }
    subdirs.sort();
    let mut runs = vec![];
    let mut incomplete = vec![];
    for (name, p) in subdirs {
        let looks_like_run = p.join("config.toml").exists() || p.join("metrics.jsonl").exists() || parse_run_name(&name).is_some();
        if !looks_like_run {
            continue;
        }
        match read_run(&p, &name) {
            Ok(run) => {
                let last = run.last_step();
                if let (Some(t), Some(last)) = (run.steps_planned, last) {
                    if last + 1 < t {
                        incomplete.push(Incomplete {
                            name: name.clone(),
                            dir: p.clone(),
                            reason: format!("stopped after {} of {t} steps", last + 1),
                        });
                        if !opts.include_partial {
                            continue;
                        }
                    }
                }
                runs.push(run);
            }
            Err(reason) => incomplete.push(Incomplete { name, dir: p, reason }),
        }
    }
    runs.sort_by(|a, b| (method_rank(&a.method), algo_rank(&a.algo), a.seed).cmp(&(method_rank(&b.method), algo_rank(&b.algo), b.seed)));
    let gpath = dir.join("rm_accuracy.json");
    let rm_accuracy = if gpath.exists() { read_rm_accuracy(&gpath, None)? } else { vec![] };
    Ok(Grid { dir: dir.to_path_buf(), runs, incomplete, rm_accuracy })
}

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
    /// R2M's attention entropy after RL (normalised, 1 = uniform; [`RmAccuracy::attn_entropy`]).
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
}

/// The metrics of [`RunStats::values`] and their table labels, in table order.
pub const METRICS: [(&str, &str); 22] = [
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
            _ => f64::NAN,
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
        serde_json::from_value::<crate::r2m::Method>(Value::String(name.into())).ok()
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

/// One step of a cell's mean eval curve: summaries over the seeds that have that step.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub step: i64,
    pub gold: Summary,
    pub proxy: Summary,
    pub sqrt_kl: Summary,
}

/// The overoptimization test of one cell (method x algo), on its eval curves.
///
/// t* = the step where the seed-mean gold peaks (pi_init included). Per seed: drop = gold(t*) -
/// gold(final), rise = proxy(final) - proxy(t*). Overoptimized when t* is before the last step, the
/// 95% CI of the mean drop lies above 0 (final gold is below the peak by more than its CI), and the
/// mean proxy rise is > 0 (the proxy still climbed after gold peaked). t* is chosen on the same
/// data, which favours a positive drop a little; with few eval points and seeds read it as a
/// screening test, next to the plots.
#[derive(Debug, Clone, PartialEq)]
pub struct Overopt {
    pub peak_step: i64,
    pub last_step: i64,
    pub peak_gold: f64,
    pub final_gold: f64,
    pub drop: Summary,
    pub proxy_rise: Summary,
    /// Some(true/false) when decidable; None with fewer than 2 seeds (no CI).
    pub overoptimized: Option<bool>,
}

impl Overopt {
    /// A sentence for the report.
    pub fn describe(&self) -> String {
        let head = format!(
            "seed-mean gold peaks at step {} ({:.3}) and ends at {:.3} at step {}; per seed, gold fell {} from the peak and the proxy changed by {} after it",
            self.peak_step,
            self.peak_gold,
            self.final_gold,
            self.last_step,
            pm(&self.drop, 3),
            pm(&self.proxy_rise, 3),
        );
        let verdict = match self.overoptimized {
            Some(true) => "overoptimization: YES (gold fell from its peak by more than the CI while the proxy kept rising)",
            Some(false) if self.peak_step >= self.last_step => "overoptimization: no (gold is highest at the last step)",
            Some(false) => "overoptimization: not shown (the drop is within the CI, or the proxy did not rise after the peak)",
            None => "overoptimization: undetermined (fewer than 2 seeds)",
        };
        format!("{head}. {verdict}")
    }
}

/// "mean ± ci" with `digits` decimals; "mean (n=1)" when there is no CI; "n/a" with no data.
pub fn pm(s: &Summary, digits: usize) -> String {
    if s.n == 0 || !s.mean.is_finite() {
        "n/a".into()
    } else if s.ci95.is_finite() {
        format!("{:.digits$} ± {:.digits$}", s.mean, s.ci95)
    } else {
        format!("{:.digits$} (n={})", s.mean, s.n)
    }
}

/// Aggregates of one method x algo over its seeds.
#[derive(Debug, Clone)]
pub struct Cell {
    pub method: String,
    pub algo: String,
    /// Indices into [`Grid::runs`], and their seeds, in seed order.
    pub runs: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Per-run values, aligned with `runs`.
    pub run_stats: Vec<RunStats>,
    /// Summary over seeds of each of [`METRICS`].
    pub summaries: Vec<(&'static str, Summary)>,
    /// Mean seconds per step of each phase, over seeds.
    pub times: Vec<(String, Summary)>,
    /// The d of gold @ d (per algorithm).
    pub matched_d: f64,
    /// RM accuracy from the grid-level file when the runs have none (n = 1: no CI).
    pub rm_grid: Option<RmAccuracy>,
    pub curve: Vec<CurvePoint>,
    pub overopt: Option<Overopt>,
}

impl Cell {
    /// The summary of one of [`METRICS`] (EMPTY for an unknown key).
    pub fn get(&self, key: &str) -> Summary {
        self.summaries.iter().find(|(k, _)| *k == key).map(|(_, s)| *s).unwrap_or(Summary::EMPTY)
    }
    /// The per-seed values of one metric, in seed order.
    pub fn values(&self, key: &str) -> Vec<f64> {
        self.run_stats.iter().map(|r| r.get(key)).collect()
    }
}

/// `a` (method) against `b` (baseline) on one metric; under one algorithm, except R2M against
/// the other algorithms' vanilla baselines ([`Aggregate::vs_baselines`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The method's algorithm.
    pub algo: String,
    pub method: String,
    pub baseline: String,
    /// The baseline's algorithm (= `algo` except in [`Aggregate::vs_baselines`]).
    pub baseline_algo: String,
    pub metric: &'static str,
    pub a: Summary,
    pub b: Summary,
    /// Welch two-sided t-test of a - b (the decision).
    pub welch: TTest,
    /// Paired t-test over the seeds both have (supplementary; same seed = same prompts and init).
    pub paired: TTest,
}

impl Comparison {
    /// p < 0.05 by Welch.
    pub fn significant(&self) -> bool {
        self.welch.significant(0.05)
    }
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

/// A p-value for text: 3 significant digits, "< 0.001" below.
pub fn fmt_p(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// Everything the report needs.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Sorted by algo, then method.
    pub cells: Vec<Cell>,
    /// Per algo: the matched d.
    pub matched_d: BTreeMap<String, f64>,
    /// Every method vs vanilla, same algo.
    pub vs_vanilla: Vec<Comparison>,
    /// r2m vs each ablation, same algo (a = r2m, b = the ablation).
    pub ablations: Vec<Comparison>,
    /// R2M under each algorithm vs vanilla ReMax and REINFORCE++ (a = r2m, b = that baseline).
    pub vs_baselines: Vec<Comparison>,
}

impl Aggregate {
    pub fn cell(&self, method: &str, algo: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.method == method && c.algo == algo)
    }
    /// The algorithms present, in table order.
    pub fn algos(&self) -> Vec<String> {
        let s: BTreeSet<(usize, String)> = self.cells.iter().map(|c| algo_rank(&c.algo)).collect();
        s.into_iter().map(|(_, a)| a).collect()
    }
    /// The methods present, in table order.
    pub fn methods(&self) -> Vec<String> {
        let s: BTreeSet<(usize, String)> = self.cells.iter().map(|c| method_rank(&c.method)).collect();
        s.into_iter().map(|(_, m)| m).collect()
    }
}

fn compare(a: &Cell, b: &Cell, metric: &'static str) -> Comparison {
    let (va, vb) = (a.values(metric), b.values(metric));
    // Pairs by seed.
    let (mut pa, mut pb) = (vec![], vec![]);
    for (i, s) in a.seeds.iter().enumerate() {
        if let Some(j) = b.seeds.iter().position(|t| t == s) {
            pa.push(va[i]);
            pb.push(vb[j]);
        }
    }
    Comparison {
        algo: a.algo.clone(),
        method: a.method.clone(),
        baseline: b.method.clone(),
        baseline_algo: b.algo.clone(),
        metric,
        a: summarize(&va),
        b: summarize(&vb),
        welch: stats::welch(&va, &vb),
        paired: stats::paired(&pa, &pb),
    }
}

fn overopt(grid: &Grid, idx: &[usize]) -> Option<Overopt> {
    let curves: Vec<Vec<EvalPoint>> = idx.iter().map(|&i| eval_curve(&grid.runs[i])).collect();
    // Steps every seed has, with finite gold.
    let mut common: Option<BTreeSet<i64>> = None;
    for c in &curves {
        let s: BTreeSet<i64> = c.iter().filter(|p| p.gold.is_finite()).map(|p| p.step).collect();
        common = Some(match common {
            None => s,
            Some(prev) => prev.intersection(&s).copied().collect(),
        });
    }
    let common: Vec<i64> = common?.into_iter().collect();
    let last = *common.iter().filter(|s| **s >= 0).max()?;
    let at = |c: &[EvalPoint], s: i64| c.iter().find(|p| p.step == s).copied();
    let mean_gold = |s: i64| stats::mean(&curves.iter().filter_map(|c| at(c, s)).map(|p| p.gold).collect::<Vec<_>>());
    let peak = common.iter().copied().fold(None::<(i64, f64)>, |b, s| {
        let g = mean_gold(s);
        match b {
            Some(b) if b.1 >= g => Some(b),
            _ => Some((s, g)),
        }
    })?;
    let drop: Vec<f64> = curves.iter().filter_map(|c| Some(at(c, peak.0)?.gold - at(c, last)?.gold)).collect();
    let rise: Vec<f64> = curves.iter().filter_map(|c| Some(at(c, last)?.proxy - at(c, peak.0)?.proxy)).collect();
    let (drop, rise) = (summarize(&drop), summarize(&rise));
    let overoptimized = if peak.0 >= last {
        Some(false)
    } else if drop.n < 2 {
        None
    } else {
        Some(drop.mean - drop.ci95 > 0.0 && rise.mean > 0.0)
    };
    Some(Overopt {
        peak_step: peak.0,
        last_step: last,
        peak_gold: peak.1,
        final_gold: mean_gold(last),
        drop,
        proxy_rise: rise,
        overoptimized,
    })
}

fn mean_curve(grid: &Grid, idx: &[usize]) -> Vec<CurvePoint> {
    let mut by: BTreeMap<i64, Vec<EvalPoint>> = BTreeMap::new();
    for &i in idx {
        for p in eval_curve(&grid.runs[i]) {
            by.entry(p.step).or_default().push(p);
        }
    }
    by.into_iter()
        .map(|(step, ps)| CurvePoint {
            step,
            gold: summarize(&ps.iter().map(|p| p.gold).collect::<Vec<_>>()),
            proxy: summarize(&ps.iter().map(|p| p.proxy).collect::<Vec<_>>()),
            sqrt_kl: summarize(&ps.iter().map(|p| if p.step == -1 { 0.0 } else { p.sqrt_kl() }).collect::<Vec<_>>()),
        })
        .collect()
}

/// Aggregates a grid: cells, matched d per algorithm, comparisons vs vanilla and the ablations.
pub fn aggregate(grid: &Grid, opts: &AggregateOptions) -> Aggregate {
    // Group run indices by (method, algo).
    // Keyed by (algo rank, method rank): cells come out in table order.
    type Key = ((usize, String), (usize, String));
    let mut groups: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    for (i, r) in grid.runs.iter().enumerate() {
        groups.entry((algo_rank(&r.algo), method_rank(&r.method))).or_default().push(i);
    }
    // Matched d per algorithm: the smallest final sqrt(KL) over its runs.
    let mut matched_d: BTreeMap<String, f64> = BTreeMap::new();
    for r in &grid.runs {
        let d = match opts.matched_d {
            Some(d) => d,
            None => eval_curve(r).iter().rfind(|p| p.step >= 0).map(|p| p.sqrt_kl()).unwrap_or(f64::NAN),
        };
        let e = matched_d.entry(r.algo.clone()).or_insert(f64::INFINITY);
        if d.is_finite() {
            *e = e.min(d);
        }
    }
    matched_d.values_mut().for_each(|d| {
        if !d.is_finite() {
            *d = f64::NAN;
        }
    });

    let mut cells = vec![];
    for (((_, algo), (_, method)), mut idx) in groups {
        idx.sort_by_key(|&i| grid.runs[i].seed);
        let d = matched_d.get(&algo).copied().unwrap_or(f64::NAN);
        let run_stats: Vec<RunStats> = idx.iter().map(|&i| run_stats(&grid.runs[i], d)).collect();
        let rm_grid = if run_stats.iter().all(|r| !r.rm_acc_after.is_finite() && !r.rm_acc_before.is_finite()) {
            // Grid-level: an entry for this method and algo, else one for the method with no algo.
            grid.rm_accuracy
                .iter()
                .find(|r| r.method == method && r.algo.as_deref() == Some(algo.as_str()))
                .or_else(|| grid.rm_accuracy.iter().find(|r| r.method == method && r.algo.is_none()))
                .cloned()
        } else {
            None
        };
        let mut summaries: Vec<(&'static str, Summary)> =
            METRICS.iter().map(|(k, _)| (*k, summarize(&run_stats.iter().map(|r| r.get(k)).collect::<Vec<_>>()))).collect();
        if let Some(g) = &rm_grid {
            for (k, s) in summaries.iter_mut() {
                if *k == "rm_acc_before" {
                    *s = summarize(&[g.before]);
                } else if *k == "rm_acc_after" {
                    *s = summarize(&[g.after]);
                } else if *k == "attn_entropy_after" {
                    *s = summarize(&[g.attn_entropy]);
                }
            }
        }
        let phases: BTreeSet<String> = run_stats.iter().flat_map(|r| r.times.keys().cloned()).collect();
        let times = phases
            .into_iter()
            .map(|p| {
                let v: Vec<f64> = run_stats.iter().map(|r| r.times.get(&p).copied().unwrap_or(0.0)).collect();
                (p, summarize(&v))
            })
            .collect();
        cells.push(Cell {
            seeds: idx.iter().map(|&i| grid.runs[i].seed).collect(),
            curve: mean_curve(grid, &idx),
            overopt: overopt(grid, &idx),
            method,
            algo,
            runs: idx,
            run_stats,
            summaries,
            times,
            matched_d: d,
            rm_grid,
        });
    }

    let mut vs_vanilla = vec![];
    let mut ablations = vec![];
    for c in &cells {
        if c.method != BASELINE {
            if let Some(base) = cells.iter().find(|b| b.method == BASELINE && b.algo == c.algo) {
                for m in COMPARED {
                    vs_vanilla.push(compare(c, base, m));
                }
                vs_vanilla.push(compare(c, base, "rm_acc_after"));
            }
        }
        if ABLATIONS.contains(&c.method.as_str()) {
            if let Some(full) = cells.iter().find(|f| f.method == FULL && f.algo == c.algo) {
                for m in COMPARED {
                    ablations.push(compare(full, c, m));
                }
            }
        }
    }
    // RM accuracy after RL is compared only where runs carry it (a grid-level single value has no spread).
    vs_vanilla.retain(|c| c.metric != "rm_acc_after" || (c.a.n >= 2 && c.b.n >= 2));
    // R2M (under each algorithm) against the vanilla runs of the other baselines (the paper's
    // ReMax and REINFORCE++ rows). Gold @ d is left out: d differs between algorithms.
    let mut vs_baselines = vec![];
    for c in cells.iter().filter(|c| c.method == FULL) {
        for b in cells.iter().filter(|b| b.method == BASELINE && b.algo != c.algo && OTHER_BASELINES.contains(&b.algo.as_str())) {
            for m in ["gold_final", "win_rate", "lc_win_rate"] {
                vs_baselines.push(compare(c, b, m));
            }
        }
    }
    Aggregate { cells, matched_d, vs_vanilla, ablations, vs_baselines }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names() {
        assert_eq!(parse_run_name("r2m-no-bt-rloo-s2"), Some(("r2m-no-bt".into(), "rloo".into(), 2)));
        assert_eq!(parse_run_name("vanilla-reinforce_pp-s10"), Some(("vanilla".into(), "reinforce_pp".into(), 10)));
        assert_eq!(parse_run_name("plots"), None);
        assert_eq!(parse_run_name("-rloo-s1"), None);
    }

    #[test]
    fn plus_minus() {
        assert_eq!(pm(&summarize(&[1.0, 2.0, 4.0]), 2), "2.33 ± 3.79");
        assert_eq!(pm(&summarize(&[0.5]), 2), "0.50 (n=1)");
        assert_eq!(pm(&Summary::EMPTY, 2), "n/a");
        assert_eq!(fmt_p(0.0004), "< 0.001");
        assert_eq!(fmt_p(0.41234), "0.412");
    }
}
