//! Reading a grid folder: its run folders ([`Run`], [`load_grid`]), each written by `r2m rl`
//! (`config.toml`, `metrics.jsonl`, `eval.jsonl`) and the grid (`done.json`, `rm_accuracy.json`),
//! and the grid-level `rm_accuracy.json` (`{"method": .., "before": acc, "after": acc}`, one object
//! or a list).
//!
//! A run is filed under its arm and algorithm as its `config.toml` names them (`label`, else
//! `r2m.method`; `rl.algo`), else as its folder name `{arm}-{algo}-s{seed}` does. A run folder
//! without metrics, with unreadable files, or stopped before `rl.steps` is listed in
//! [`Grid::incomplete`] and left out of the aggregates (a partial run's "last step" is not
//! comparable), unless [`AggregateOptions::include_partial`].
use super::arm::{parse_algo, parse_method, parse_run_name, Arm, BASELINE};
use crate::error::{Error, Result};
use crate::r2m::Method;
use crate::rl::config::Algo;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

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
    pub method: Method,
    /// Set when the file names them (grid-level lists may) or it sits in a run folder.
    pub algo: Option<Algo>,
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
    pub arm: Arm,
    pub algo: Algo,
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
    /// Runs that count, sorted by arm, algo, seed.
    pub runs: Vec<Run>,
    pub incomplete: Vec<Incomplete>,
    /// Grid-level RM accuracies (`grid/rm_accuracy.json`).
    pub rm_accuracy: Vec<RmAccuracy>,
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

pub(super) fn f64_of(v: Option<&Value>) -> f64 {
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
fn read_rm_accuracy(path: &Path, default: Option<(Method, Algo, u64)>) -> Result<Vec<RmAccuracy>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::parse(path, e))?;
    let items = match v {
        Value::Array(a) => a,
        o @ Value::Object(_) => vec![o],
        _ => return Err(Error::parse(path, "expected an object or a list of objects")),
    };
    let mut out = vec![];
    for (i, it) in items.iter().enumerate() {
        let method = match (it.get("method").and_then(Value::as_str), default) {
            // A run's own file: the run's method (the file names its method, not a variant's name).
            (_, Some(d)) => d.0,
            (Some(m), None) => parse_method(m).ok_or_else(|| Error::parse(path, format!("entry {i}: method {m:?} is not a method")))?,
            (None, None) => return Err(Error::parse(path, format!("entry {i}: no \"method\""))),
        };
        let algo = match it.get("algo").and_then(Value::as_str) {
            Some(a) => Some(parse_algo(a).ok_or_else(|| Error::parse(path, format!("entry {i}: algo {a:?} is not an algorithm")))?),
            None => default.map(|d| d.1),
        };
        out.push(RmAccuracy {
            method,
            algo,
            seed: it.get("seed").and_then(Value::as_u64).or(default.map(|d| d.2)),
            before: f64_of(it.get("before")),
            after: f64_of(it.get("after")),
            attn_entropy: f64_of(it.get("attention").and_then(|a| a.get("attn_entropy"))),
        });
    }
    Ok(out)
}

/// The arm a run's config names: its `label` (a variant's name) over `r2m.method` (absent: vanilla).
fn config_arm(c: &toml::Table) -> std::result::Result<Arm, String> {
    let method = match toml_get(c, "r2m.method").and_then(|v| v.as_str()) {
        Some(m) => parse_method(m).ok_or_else(|| format!("config.toml: r2m.method = {m:?} is not a method"))?,
        None => BASELINE,
    };
    Ok(match toml_get(c, "label").and_then(|v| v.as_str()) {
        Some(l) => parse_method(l).map(Arm::Method).unwrap_or_else(|| Arm::variant(l, method)),
        None => Arm::Method(method),
    })
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
    let (arm, algo, seed) = match &config {
        Some(c) => {
            let arm = config_arm(c)?;
            let algo = match toml_get(c, "rl.algo").and_then(|v| v.as_str()) {
                Some(a) => Some(parse_algo(a).ok_or_else(|| format!("config.toml: rl.algo = {a:?} is not an algorithm"))?),
                None => None,
            };
            let seed = toml_get(c, "seed").and_then(|v| v.as_integer()).map(|s| s as u64);
            match (algo, seed, from_name) {
                (Some(a), Some(s), _) => (arm, a, s),
                (a, s, Some(f)) => (arm, a.unwrap_or(f.1), s.unwrap_or(f.2)),
                _ => return Err("config.toml names no rl.algo / seed and the folder name is not {method}-{algo}-s{seed}".into()),
            }
        }
        None => {
            let (m, a, s) = from_name.ok_or("no config.toml, and the folder name is not {method}-{algo}-s{seed}")?;
            let m = parse_method(m)
                .ok_or_else(|| format!("no config.toml, and {m:?} is no method (a variant's run is read from its config)"))?;
            (Arm::Method(m), a, s)
        }
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
        read_rm_accuracy(&rpath, Some((arm.method(), algo, seed))).map_err(|e| format!("{e}"))?.into_iter().next()
    } else {
        None
    };
    let dpath = dir.join("done.json");
    let done = match std::fs::read_to_string(&dpath) {
        Ok(s) => Some(serde_json::from_str(&s).map_err(|e| format!("done.json: invalid JSON: {e}"))?),
        Err(_) => None,
    };
    Ok(Run { name: name.to_string(), dir: dir.to_path_buf(), arm, algo, seed, steps_planned, config, metrics, eval, rm_accuracy, done })
}

/// Options of reading a grid ([`load_grid`]) and of aggregating it ([`super::aggregate`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AggregateOptions {
    /// The d = sqrt(KL) at which gold is compared; `None`: per algorithm, the smallest final
    /// sqrt(KL) over its runs (every run reaches it, so no extrapolation).
    pub matched_d: Option<f64>,
    /// Aggregate runs stopped before `rl.steps` too (they stay listed as incomplete).
    pub include_partial: bool,
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
    runs.sort_by(|a, b| (&a.arm, a.algo, a.seed).cmp(&(&b.arm, b.algo, b.seed)));
    let gpath = dir.join("rm_accuracy.json");
    let rm_accuracy = if gpath.exists() { read_rm_accuracy(&gpath, None)? } else { vec![] };
    Ok(Grid { dir: dir.to_path_buf(), runs, incomplete, rm_accuracy })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_folder(dir: &Path, name: &str, config: Option<&str>) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        if let Some(c) = config {
            std::fs::write(d.join("config.toml"), c).unwrap();
        }
        std::fs::write(d.join("metrics.jsonl"), "{\"step\": 0}\n").unwrap();
    }

    #[test]
    fn runs_are_filed_under_their_arm_and_algorithm() {
        let d = tempfile::tempdir().unwrap();
        run_folder(d.path(), "r2m-grpo-s0", None);
        run_folder(d.path(), "x", Some("label = \"r2m-lr\"\nseed = 1\n[rl]\nalgo = \"rloo\"\n[r2m]\nmethod = \"r2m\"\n"));
        run_folder(d.path(), "y", Some("seed = 2\n[rl]\nalgo = \"remax\"\n"));
        // Not attributable: a variant's name without its config, a method or algorithm r2m does not know.
        run_folder(d.path(), "r2m-lr-grpo-s0", None);
        run_folder(d.path(), "z", Some("seed = 0\n[rl]\nalgo = \"ppo\"\n"));
        run_folder(d.path(), "w", Some("seed = 0\n[rl]\nalgo = \"rloo\"\n[r2m]\nmethod = \"r3m\"\n"));
        let g = load_grid(d.path(), &AggregateOptions::default()).unwrap();
        let got: Vec<(String, Algo, u64)> = g.runs.iter().map(|r| (r.arm.name(), r.algo, r.seed)).collect();
        assert_eq!(
            got,
            [("vanilla".into(), Algo::Remax, 2), ("r2m".into(), Algo::Grpo, 0), ("r2m-lr".into(), Algo::Rloo, 1)],
            "sorted by arm: methods first"
        );
        assert_eq!(g.runs[2].arm, Arm::variant("r2m-lr", Method::R2m));
        let why: Vec<(&str, &str)> = g.incomplete.iter().map(|x| (x.name.as_str(), x.reason.as_str())).collect();
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].0 == "r2m-lr-grpo-s0" && why[0].1.contains("no method"), "{why:?}");
        assert!(why[1].0 == "w" && why[1].1.contains("r3m"), "{why:?}");
        assert!(why[2].0 == "z" && why[2].1.contains("ppo"), "{why:?}");
    }
}
