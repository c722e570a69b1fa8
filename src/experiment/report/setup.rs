//! The report's setup table: each setting of the runs' configs (every distinct value where runs
//! differ, per algorithm where an algorithm's own settings make them differ), and from `done.json`
//! where the runs ran and the RM they trained against.
use crate::experiment::arm::algo_label;
use crate::experiment::runs::{toml_get, Grid};
use crate::report::Table;
use crate::rl::config::{Algo, AlgoConfig};
use std::collections::{BTreeMap, BTreeSet};

const DEFAULT_THREADS: &str = "libtorch's default (one per core)";

/// The setup, from the runs' configs: each value, or every distinct value when runs differ.
pub(super) fn setup_table(grid: &Grid) -> Table {
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
    let algos: BTreeSet<Algo> = grid.runs.iter().map(|r| r.algo).collect();
    let arms: BTreeSet<_> = grid.runs.iter().map(|r| &r.arm).collect();
    let seeds: BTreeSet<u64> = grid.runs.iter().map(|r| r.seed).collect();
    let _ = t.push(vec!["methods".into(), arms.into_iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")]);
    let _ = t.push(vec!["algorithms".into(), algos.into_iter().map(algo_label).collect::<Vec<_>>().join(", ")]);
    let _ = t.push(vec!["seeds".into(), seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")]);
    for (name, key) in KEYS {
        // Each run's value, with its algorithm (a setting of `algo_set` differs by algorithm).
        let mut vals: Vec<String> = vec![];
        let mut by_algo: BTreeMap<Algo, Vec<String>> = BTreeMap::new();
        let mut any_cfg = false;
        for r in &grid.runs {
            let Some(c) = &r.config else { continue };
            any_cfg = true;
            if key.starts_with("r2m.") && c.get("r2m").is_none() {
                continue;
            }
            let v = match toml_get(c, key) {
                Some(v) => toml_text(v),
                None if key == "rl.beta" => format!("{} ({}'s default)", default_beta(r.algo), algo_label(r.algo)),
                None if key == "threads" => DEFAULT_THREADS.into(),
                None => continue,
            };
            let v = if key == "threads" && v == "0" { DEFAULT_THREADS.into() } else { v };
            if !vals.contains(&v) {
                vals.push(v.clone());
            }
            let a = by_algo.entry(r.algo).or_default();
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
                by_algo.iter().map(|(a, v)| format!("{}: {}", algo_label(*a), v[0])).collect::<Vec<_>>().join("; ")
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
fn default_beta(algo: Algo) -> f64 {
    AlgoConfig { algo, beta: None, ..Default::default() }.beta()
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => t.iter().map(|(k, v)| format!("{k}={}", toml_text(v))).collect::<Vec<_>>().join(" "),
        toml::Value::Array(a) => format!("[{}]", a.iter().map(toml_text).collect::<Vec<_>>().join(", ")),
        v => v.to_string(),
    }
}
