//! The experiment report on a fixture grid (tests/fixtures/grid): 2 methods (vanilla, r2m) x 2
//! algorithms (RLOO, GRPO) x 3 seeds, 10 steps each, plus two folders the report must list as
//! incomplete (no metrics; stopped early). The fixture is synthetic and made by
//! [`write_fixture_grid`] below (regenerate: `cargo test --test it experiment::regenerate -- --ignored`):
//! vanilla's gold rises then falls while its proxy keeps rising (overoptimization by construction),
//! R2M's gold keeps rising; lengths grow more under vanilla.
use crate::common::tmpdir;
use r2m::experiment::run_stats::{feedback_term, run_stats};
use r2m::experiment::{aggregate, load_grid, stats, write_report, AggregateOptions, Arm};
use r2m::r2m::Method;
use r2m::rl::config::Algo;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grid")
}

/// splitmix64: a deterministic stream from a key, arithmetic only (no libm: the fixture is
/// bit-identical on every platform).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A roughly normal value with sd about `sd` (Irwin-Hall: sum of 4 uniforms, centred and scaled),
/// keyed by `parts`.
fn noise(parts: &[u64], sd: f64) -> f64 {
    let mut h = 0x5EED_u64;
    for p in parts {
        h = mix(h ^ p);
    }
    let mut s = 0.0;
    for _ in 0..4 {
        h = mix(h);
        s += (h >> 11) as f64 / (1u64 << 53) as f64;
    }
    // Sum of 4 U(0,1): mean 2, variance 4/12 = 1/3.
    (s - 2.0) * sd * 1.732_050_807_568_877_2
}

/// Rounded to 4 decimals (files stay short and exact).
fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

const STEPS: i64 = 10;
const EVAL_EVERY: i64 = 3;
const PROMPTS: usize = 16;

/// Writes one synthetic run folder.
fn write_run(grid: &Path, method: &str, algo: &str, seed: u64, stop_after: Option<i64>) {
    let name = format!("{method}-{algo}-s{seed}");
    let dir = grid.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let mi = if method == "r2m" { 1u64 } else { 0 };
    let ai = match algo {
        "rloo" => 0u64,
        "grpo" => 1,
        _ => 2,
    };
    let mut cfg = r2m::rl::config::RlConfig { seed, out: PathBuf::from(format!("runs/grid/{name}")), ..Default::default() };
    cfg.reward.model = "runs/testbed/rm".into();
    cfg.rl.algo = match algo {
        "rloo" => r2m::rl::config::Algo::Rloo,
        "grpo" => r2m::rl::config::Algo::Grpo,
        "remax" => r2m::rl::config::Algo::Remax,
        _ => r2m::rl::config::Algo::ReinforcePp,
    };
    cfg.rl.steps = STEPS;
    cfg.rl.eval_every = EVAL_EVERY;
    cfg.rl.eval_prompts = PROMPTS;
    if mi == 1 {
        cfg.r2m = Some(r2m::r2m::R2mConfig { method: r2m::r2m::Method::R2m, d: 64, lr: 1e-4, ..Default::default() });
    }
    r2m::config::save(&cfg, &dir.join("config.toml")).unwrap();
    if stop_after == Some(0) {
        return;
    }

    // pi_init on the eval prompts: depends on the seed only (same sampling seed for every method).
    let prompt_gold: Vec<f64> = (0..PROMPTS).map(|p| noise(&[1, p as u64], 0.4)).collect();
    let init_gold: Vec<f64> = (0..PROMPTS).map(|p| r4(prompt_gold[p] + noise(&[2, seed, p as u64], 0.1))).collect();
    let init_proxy: Vec<f64> = (0..PROMPTS).map(|p| r4(0.5 * prompt_gold[p] + noise(&[3, seed, p as u64], 0.2))).collect();
    let init_len: Vec<f64> = (0..PROMPTS).map(|p| (40.0 + noise(&[4, seed, p as u64], 8.0)).round()).collect();
    // Dynamics at progress x in (0, 1]: vanilla's gold peaks near x = 0.4 and ends below pi_init.
    let scale = if ai == 1 { 0.9 } else { 1.0 };
    let gold_gain = |x: f64| if mi == 0 { scale * (1.2 * x - 1.6 * x * x) } else { scale * (0.6 * x - 0.15 * x * x) };
    let proxy_gain = |x: f64| if mi == 0 { 1.4 * x } else { 0.9 * x };
    let kl_at = |x: f64| if mi == 0 { 6.0 * x } else { 4.5 * x } * (1.0 + 0.1 * ai as f64);
    let len_gain = |x: f64| if mi == 0 { 25.0 * x } else { 6.0 * x };
    let key = |k: u64, t: i64| [k, mi, ai, seed, (t + 1) as u64];

    let mut metrics = String::new();
    let mut eval = String::new();
    let row = |step: i64, p: usize, reward: f64, gold: f64, len: f64, kl: f64| {
        let mut r = Map::new();
        r.insert("step".into(), json!(step));
        r.insert("prompt".into(), json!(p));
        r.insert("id".into(), json!(format!("test-{p:04}")));
        r.insert("reward".into(), json!(reward));
        r.insert("gold".into(), json!(gold));
        r.insert("length".into(), json!(len));
        r.insert("kl".into(), json!(kl));
        r.insert("finished".into(), json!(len < 64.0));
        serde_json::to_string(&Value::Object(r)).unwrap() + "\n"
    };
    for p in 0..PROMPTS {
        eval.push_str(&row(-1, p, init_proxy[p], init_gold[p], init_len[p], 0.0));
    }
    let last = stop_after.map(|s| s - 1).unwrap_or(STEPS - 1);
    for t in 0..=last {
        // The rollout at step t follows t updates; the eval at step t follows t + 1.
        let xr = t as f64 / STEPS as f64;
        let x = (t + 1) as f64 / STEPS as f64;
        let seed_off = noise(&key(5, -1), 0.03);
        let mut m = Map::new();
        m.insert("step".into(), json!(t));
        m.insert("reward".into(), json!(r4(0.1 + proxy_gain(xr) + noise(&key(6, t), 0.08))));
        m.insert("gold/reward".into(), json!(r4(0.05 + gold_gain(xr) + seed_off + noise(&key(7, t), 0.08))));
        m.insert("kl".into(), json!(r4(kl_at(xr) * (1.0 + noise(&key(8, t), 0.05)))));
        m.insert("completions/mean_length".into(), json!(r4(40.0 + len_gain(xr) + noise(&key(9, t), 2.0))));
        let times = [
            ("time/generate", 3.0),
            ("time/logprobs", 0.8),
            ("time/reference", 0.7),
            ("time/reward", 0.4),
            ("time/policy", 2.5),
            ("time/r2m", if mi == 1 { 0.3 } else { 0.0 }),
            ("time/gold", 0.2),
        ];
        let mut total = 0.0;
        for (k, v) in times {
            let v = r4(v * (1.0 + noise(&[10, mi, ai, seed, t as u64, k.len() as u64], 0.05)));
            total += v;
            m.insert(k.into(), json!(v));
        }
        if mi == 1 {
            m.insert("r2m/w".into(), json!(r4(1.0 - 0.4 * xr)));
            m.insert("r2m/loss".into(), json!(r4(0.69 - 0.1 * xr + noise(&key(11, t), 0.01))));
        }
        if t % EVAL_EVERY == 0 || t == STEPS - 1 {
            let (mut g, mut rw, mut kl, mut ln, mut wins) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for p in 0..PROMPTS {
                let pk = |k: u64| [k, mi, ai, seed, (t + 1) as u64, p as u64];
                let gp = r4(init_gold[p] + gold_gain(x) + seed_off + noise(&pk(12), 0.45));
                let rp = r4(init_proxy[p] + proxy_gain(x) + noise(&pk(13), 0.3));
                let kp = r4((kl_at(x) * (1.0 + noise(&pk(14), 0.2))).max(0.0));
                let lp = (init_len[p] + len_gain(x) + noise(&pk(15), 4.0)).round().max(1.0);
                eval.push_str(&row(t, p, rp, gp, lp, kp));
                g += gp;
                rw += rp;
                kl += kp;
                ln += lp;
                wins += stats::win(gp, init_gold[p]);
            }
            let n = PROMPTS as f64;
            m.insert("eval/reward".into(), json!(rw / n));
            m.insert("eval/gold".into(), json!(g / n));
            m.insert("eval/kl".into(), json!(kl / n));
            m.insert("eval/mean_length".into(), json!(ln / n));
            m.insert("eval/win_rate".into(), json!(wins / n));
            let te = r4(1.5 * (1.0 + noise(&key(16, t), 0.05)));
            m.insert("time/eval".into(), json!(te));
            // A part of the eval, as the trainer nests it: not a phase of its own.
            m.insert("time/eval/gold".into(), json!(r4(0.3 * te)));
            total += te;
        }
        m.insert("time/step".into(), json!(r4(total)));
        metrics.push_str(&(serde_json::to_string(&Value::Object(m)).unwrap() + "\n"));
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(dir.join("eval.jsonl"), eval).unwrap();
    if mi == 1 {
        // Run-level RM accuracy (R2M: before and after RL, with feedback and w(T)).
        let acc =
            json!({"method": method, "before": r4(0.66 + noise(&[17, ai, seed], 0.01)), "after": r4(0.74 + noise(&[18, ai, seed], 0.015))});
        std::fs::write(dir.join("rm_accuracy.json"), serde_json::to_string_pretty(&acc).unwrap()).unwrap();
    }
}

/// The whole fixture grid in `dir`.
pub fn write_fixture_grid(dir: &Path) {
    for method in ["vanilla", "r2m"] {
        for algo in ["rloo", "grpo"] {
            for seed in 0..3 {
                write_run(dir, method, algo, seed, None);
            }
        }
    }
    // Incomplete: a run that never started, and one stopped after 5 of 10 steps.
    write_run(dir, "vanilla", "remax", 0, Some(0));
    write_run(dir, "r2m", "grpo", 3, Some(5));
    // Grid-level RM accuracy for the frozen RM (vanilla: no update, before = after).
    let acc = json!([{"method": "vanilla", "before": 0.683, "after": 0.683}]);
    std::fs::write(dir.join("rm_accuracy.json"), serde_json::to_string_pretty(&acc).unwrap() + "\n").unwrap();
}

/// Regenerates tests/fixtures/grid.
#[test]
#[ignore]
fn regenerate_fixture_grid() {
    let d = fixture_dir();
    if d.exists() {
        std::fs::remove_dir_all(&d).unwrap();
    }
    std::fs::create_dir_all(&d).unwrap();
    write_fixture_grid(&d);
}

/// The checked-in fixture is what the generator writes (metrics and eval rows, byte for byte;
/// config.toml follows RlConfig and may gain fields).
#[test]
fn fixture_grid_is_reproducible() {
    let d = tmpdir();
    write_fixture_grid(d.path());
    let mut n = 0;
    for e in std::fs::read_dir(d.path()).unwrap() {
        let e = e.unwrap();
        for f in ["metrics.jsonl", "eval.jsonl", "rm_accuracy.json"] {
            let p = e.path().join(f);
            if p.exists() {
                let q = fixture_dir().join(e.file_name()).join(f);
                assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap_or_default(), "{} differs", q.display());
                n += 1;
            }
        }
    }
    assert!(n >= 26, "{n} files compared");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn fixture_copy() -> tempfile::TempDir {
    let d = tmpdir();
    copy_dir(&fixture_dir(), d.path());
    d
}

/// With one seed, the overoptimization test runs over the held-out prompts (each prompt's gold at
/// the peak step against its gold at the last step) and says so; with several, over the seeds.
#[test]
fn one_seed_is_tested_over_its_prompts() {
    let d = fixture_copy();
    for m in ["vanilla", "r2m"] {
        for s in [1, 2] {
            std::fs::remove_dir_all(d.path().join(format!("{m}-rloo-s{s}"))).unwrap();
        }
    }
    let opts = AggregateOptions::default();
    let agg = aggregate(&load_grid(d.path(), &opts).unwrap(), &opts);
    let v = agg.cell(Method::Vanilla, Algo::Rloo).unwrap().overopt.clone().unwrap();
    assert_eq!((v.over_prompts, v.overoptimized), (Some(PROMPTS), Some(true)), "{}", v.describe());
    assert!(v.describe().contains("over the 16 held-out prompts") && v.describe().contains("YES in this seed"), "{}", v.describe());
    // R2M's gold rises to the last step by construction.
    let r = agg.cell(Method::R2m, Algo::Rloo).unwrap().overopt.clone().unwrap();
    assert_eq!(r.overoptimized, Some(false), "{}", r.describe());
    let g = agg.cell(Method::Vanilla, Algo::Grpo).unwrap().overopt.clone().unwrap();
    assert_eq!((g.over_prompts, g.overoptimized), (None, Some(true)), "{}", g.describe());
    // The peak is picked on the same prompts: the one-seed test widens its interval for that
    // choice, as the seed's own test does, and agrees with it.
    let own = &v.per_seed[0];
    assert_eq!((v.peak_step, v.drop_ci, v.overoptimized), (own.peak_step, own.drop_ci, own.overoptimized));
    assert!(v.drop_ci > v.drop.ci95 && v.describe().contains("widened"), "{}", v.describe());
    assert_eq!(g.drop_ci, g.drop.ci95, "over seeds the plain interval");

    // A fall that clears the plain interval but not the widened one is not shown: each prompt's
    // gold at the last step is its gold at the peak minus 0.62 -+ 0.97 (sd 1.0: plain half-width
    // 0.53, widened 0.71 for 4 candidate steps).
    let f = d.path().join("vanilla-rloo-s0/eval.jsonl");
    let rows: Vec<Map<String, Value>> = std::fs::read_to_string(&f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let at_peak: BTreeMap<i64, f64> = rows
        .iter()
        .filter(|r| r["step"] == json!(v.peak_step))
        .map(|r| (r["prompt"].as_i64().unwrap(), r["gold"].as_f64().unwrap()))
        .collect();
    let text: String = rows
        .into_iter()
        .map(|mut r| {
            if r["step"] == json!(STEPS - 1) {
                let p = r["prompt"].as_i64().unwrap();
                let fall = if p % 2 == 0 { 0.62 + 0.97 } else { 0.62 - 0.97 };
                r.insert("gold".into(), json!(at_peak[&p] - fall));
            }
            serde_json::to_string(&r).unwrap() + "\n"
        })
        .collect();
    std::fs::write(&f, text).unwrap();
    let agg = aggregate(&load_grid(d.path(), &opts).unwrap(), &opts);
    let v = agg.cell(Method::Vanilla, Algo::Rloo).unwrap().overopt.clone().unwrap();
    assert!((v.drop.mean - 0.62).abs() < 1e-9 && v.drop.ci95 < 0.62 && v.drop_ci > 0.62, "{v:?}");
    assert_eq!(v.overoptimized, Some(false), "{}", v.describe());
    assert!(v.describe().contains("not shown in this seed"), "{}", v.describe());
}

/// Each seed is also tested on its own, over its held-out prompts: a seed whose gold collapses
/// widens the test over seeds past 0, but every seed still overoptimizes by its own test, and the
/// verdict and the table say so.
#[test]
fn each_seed_is_tested_on_its_own() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    let agg = aggregate(&load_grid(d.path(), &opts).unwrap(), &opts);
    for c in &agg.cells {
        let o = c.overopt.as_ref().unwrap();
        let want = if c.arm.is(Method::Vanilla) { 3 } else { 0 };
        assert_eq!(o.seeds_shown(), (want, 3), "{} {:?}: {}", c.arm, c.algo, o.describe());
        for s in &o.per_seed {
            assert_eq!(s.drop.n, PROMPTS);
            // Widened for picking the peak among the eval steps before the last (pi_init, 0, 3, 6).
            assert_eq!(s.candidates, 4);
            assert!(s.drop_ci > s.drop.ci95, "{s:?}");
        }
    }
    // Seed 1 of vanilla RLOO collapses: 5 gold points lower on every prompt at the last step.
    let f = d.path().join("vanilla-rloo-s1/eval.jsonl");
    let text: String = std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: Map<String, Value> = serde_json::from_str(l).unwrap();
            if r["step"] == json!(STEPS - 1) {
                let g = r["gold"].as_f64().unwrap() - 5.0;
                r.insert("gold".into(), json!(g));
            }
            serde_json::to_string(&r).unwrap() + "\n"
        })
        .collect();
    std::fs::write(&f, text).unwrap();
    let agg = aggregate(&load_grid(d.path(), &opts).unwrap(), &opts);
    let o = agg.cell(Method::Vanilla, Algo::Rloo).unwrap().overopt.clone().unwrap();
    assert_eq!((o.overoptimized, o.seeds_shown()), (Some(false), (3, 3)), "{}", o.describe());
    assert!(o.describe().contains("overoptimized in 3 of 3"), "{}", o.describe());
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    assert!(md.contains("each seed (3/3)"), "{md}");
    assert!(md.contains("The testbed shows overoptimization under vanilla RLOO (in each of its 3 seeds"), "{md}");
}

#[test]
fn aggregates_the_fixture_grid() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    let grid = load_grid(d.path(), &opts).unwrap();
    assert_eq!(grid.runs.len(), 12);
    let inc: Vec<&str> = grid.incomplete.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(inc, ["r2m-grpo-s3", "vanilla-remax-s0"], "{:?}", grid.incomplete);
    assert!(grid.incomplete[0].reason.contains("5 of 10"), "{}", grid.incomplete[0].reason);
    assert!(grid.incomplete[1].reason.contains("no metrics"), "{}", grid.incomplete[1].reason);

    let agg = aggregate(&grid, &opts);
    assert_eq!(agg.cells.len(), 4);
    assert_eq!(agg.algos(), [Algo::Rloo, Algo::Grpo]);
    assert_eq!(agg.arms(), [Method::Vanilla.into(), Method::R2m.into()]);
    for c in &agg.cells {
        assert_eq!(c.seeds, [0, 1, 2]);
        // Win rates from eval.jsonl agree with the trainer-style eval/win_rate of the last step.
        for (&i, rs) in c.runs.iter().zip(&c.run_stats) {
            let last = grid.runs[i].metrics.iter().rev().find_map(|m| m.get("eval/win_rate").and_then(Value::as_f64)).unwrap();
            assert!((rs.win_rate - last).abs() < 1e-12, "{} {} vs {last}", grid.runs[i].name, rs.win_rate);
            assert_eq!(rs.last_eval_step, Some(9));
            assert!(rs.times.contains_key("time/eval") && !rs.times.contains_key("time/eval/gold"), "{:?}", rs.times.keys());
            // gold @ d lies on the curve: d <= the run's final sqrt(KL).
            assert!(rs.gold_at_d.is_finite() && c.matched_d <= rs.sqrt_kl_final + 1e-12);
        }
        // By construction: vanilla overoptimizes, R2M does not.
        let o = c.overopt.as_ref().unwrap();
        assert_eq!(o.overoptimized, Some(c.arm.is(Method::Vanilla)), "{} {:?}: {}", c.arm, c.algo, o.describe());
    }
    // The matched d is the smallest final sqrt(KL) of the algorithm's runs.
    for algo in [Algo::Rloo, Algo::Grpo] {
        let min = agg
            .cells
            .iter()
            .filter(|c| c.algo == algo)
            .flat_map(|c| c.run_stats.iter().map(|r| r.sqrt_kl_final))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(agg.matched_d[&algo], min);
    }
    // R2M vs vanilla: better final gold (by construction), Welch p < 0.05; RM accuracy from both file kinds.
    let c = agg.vs_vanilla.iter().find(|c| c.algo == Algo::Rloo && c.arm.is(Method::R2m) && c.metric == "gold_final").unwrap();
    assert!(c.welch.diff > 0.0 && c.significant(), "{c:?}");
    let r2m = agg.cell(Method::R2m, Algo::Rloo).unwrap();
    assert_eq!(r2m.get("rm_acc_after").n, 3);
    assert_eq!(agg.cell(Method::Vanilla, Algo::Rloo).unwrap().get("rm_acc_before").mean, 0.683);
    // No ablation runs in the fixture: an empty ablation table, not an error.
    assert!(agg.ablations.is_empty());
    // A configured matched d is used as is.
    let agg = aggregate(&grid, &AggregateOptions { matched_d: Some(0.5), ..Default::default() });
    assert_eq!(agg.matched_d[&Algo::Rloo], 0.5);
}

/// R2M's attention entropy after RL (`attention` in a run's rm_accuracy.json, written by the grid
/// since R2M's diagnostics): summarised per cell and shown in the report's RM table; cells without
/// it show a dash, and a grid where no run has it keeps the table as it was.
#[test]
fn attention_entropy_after_rl_is_aggregated_and_reported() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    let plain = write_report(d.path()).unwrap();
    let md = std::fs::read_to_string(&plain.report_md).unwrap();
    assert!(!md.contains("attention entropy"), "no run has it yet");
    for (s, e) in [(0, 0.9999), (1, 0.99995), (2, 0.9998)] {
        let p = d.path().join(format!("r2m-rloo-s{s}/rm_accuracy.json"));
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["attention"] = json!({"attn_entropy": e, "hhat_norm_ratio": 5.0, "score_std_hhat": 0.06, "score_std_hlast": 0.33});
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    let agg = aggregate(&load_grid(d.path(), &opts).unwrap(), &opts);
    let e = agg.cell(Method::R2m, Algo::Rloo).unwrap().get("attn_entropy_after");
    assert_eq!(e.n, 3);
    assert!((e.mean - (0.9999 + 0.99995 + 0.9998) / 3.0).abs() < 1e-12, "{e:?}");
    assert_eq!(agg.cell(Method::R2m, Algo::Grpo).unwrap().get("attn_entropy_after").n, 0);
    assert_eq!(agg.cell(Method::Vanilla, Algo::Rloo).unwrap().get("attn_entropy_after").n, 0);
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    let sec = md.split("## RM accuracy").nth(1).unwrap().split("\n## ").next().unwrap();
    let head = sec.lines().find(|l| l.contains("RM acc before")).unwrap();
    assert!(head.contains("attention entropy after (1 = uniform)"), "{head}");
    let row = |m: &str, a: &str| {
        sec.lines().find(|l| l.starts_with(&format!("| {a} | {m} |"))).unwrap_or_else(|| panic!("no {a} {m} row:\n{sec}")).to_string()
    };
    assert!(row("r2m", "RLOO").contains("0.9999"), "{}", row("r2m", "RLOO"));
    assert!(row("vanilla", "RLOO").contains("—"), "{}", row("vanilla", "RLOO"));
}

/// R2M's within-group agreement with and without the H_hat term (`r2m/group_corr_no_hhat`, logged
/// per step): the second half of the steps averaged per run, summarised per cell, and a column of the
/// report's RM table; a missing value (null) is skipped, a cell without it shows a dash.
#[test]
fn hhat_group_corr_is_the_second_half_mean_and_reported() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    assert!(!md.contains("group corr."), "no run has it yet");
    let mut expected = vec![];
    for s in 0..3 {
        let p = d.path().join(format!("r2m-grpo-s{s}/metrics.jsonl"));
        let mut rows: Vec<Map<String, Value>> =
            std::fs::read_to_string(&p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let last = rows.iter().map(|r| r["step"].as_i64().unwrap()).max().unwrap();
        assert!(last >= 3, "the fixture needs a few steps");
        let mut kept = vec![];
        for r in rows.iter_mut() {
            let t = r["step"].as_i64().unwrap();
            // The value is the step scaled; the last step has none (a NaN written as null).
            let v = if t == last { Value::Null } else { json!(t as f64 / 100.0 + s as f64 * 0.1) };
            if t >= (last + 1) / 2 && t != last {
                kept.push(t as f64 / 100.0 + s as f64 * 0.1);
            }
            r.insert("r2m/group_corr_no_hhat".into(), v);
        }
        expected.push(kept.iter().sum::<f64>() / kept.len() as f64);
        let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(&p, text).unwrap();
    }
    let grid = load_grid(d.path(), &opts).unwrap();
    for s in 0..3 {
        let run = grid.runs.iter().find(|r| r.name == format!("r2m-grpo-s{s}")).unwrap();
        let got = run_stats(run, f64::NAN).hhat_group_corr;
        assert!((got - expected[s]).abs() < 1e-12, "seed {s}: {got} vs {}", expected[s]);
    }
    let agg = aggregate(&grid, &opts);
    let g = agg.cell(Method::R2m, Algo::Grpo).unwrap().get("hhat_group_corr");
    assert_eq!(g.n, 3);
    assert!((g.mean - expected.iter().sum::<f64>() / 3.0).abs() < 1e-12, "{g:?}");
    assert_eq!(agg.cell(Method::Vanilla, Algo::Grpo).unwrap().get("hhat_group_corr").n, 0);
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    let sec = md.split("## R2M's feedback term").nth(1).unwrap().split("\n## ").next().unwrap();
    assert!(sec.lines().any(|l| l.starts_with("| algo | method |") && l.contains("group corr. of reward with/without H_hat")), "{sec}");
    let row = |m: &str, a: &str| sec.lines().find(|l| l.starts_with(&format!("| {a} | {m} |"))).map(str::to_string);
    if let Some(r) = row("vanilla", "GRPO") {
        assert!(r.contains("—"), "{r}");
    }
    let r = row("r2m", "GRPO").unwrap_or_else(|| panic!("no r2m GRPO row:\n{sec}"));
    assert!(r.contains(&format!("{:.2}", g.mean)), "{r} lacks {:.2}", g.mean);
}

/// R2M's regime (attention entropy, |H_last|, |H_hat|, the group correlation) and every method's
/// reward accuracy on its own rollouts, from metrics.jsonl: the first and the last tenth of the
/// steps, summarised per cell, and two report tables that show "start → end".
#[test]
fn the_regime_and_the_accuracy_on_own_samples_are_reported() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    for (run, regime) in [("r2m-grpo-s0", true), ("r2m-grpo-s1", true), ("vanilla-grpo-s0", false)] {
        let p = d.path().join(format!("{run}/metrics.jsonl"));
        let mut rows: Vec<Map<String, Value>> =
            std::fs::read_to_string(&p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let last = rows.iter().map(|r| r["step"].as_i64().unwrap()).max().unwrap();
        assert!(last < 10, "the fixture's runs are short: its first and last tenth are one step each");
        for r in rows.iter_mut() {
            let t = r["step"].as_i64().unwrap();
            let (first, end) = (t == 0, t == last);
            let pick = |a: f64, b: f64, mid: f64| {
                json!(if first {
                    a
                } else if end {
                    b
                } else {
                    mid
                })
            };
            if regime {
                r.insert("r2m/attn_entropy".into(), pick(0.9, 0.6, 0.0));
                r.insert("r2m/hlast_norm".into(), pick(40.0, 44.0, 0.0));
                r.insert("r2m/hhat_norm".into(), pick(2.0, 6.0, 0.0));
            }
            r.insert("gold/group_agree".into(), pick(0.66, 0.52, 0.0));
        }
        let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(&p, text).unwrap();
    }
    let agg = aggregate(&load_grid(d.path(), &opts).unwrap(), &opts);
    let c = agg.cell(Method::R2m, Algo::Grpo).unwrap();
    assert_eq!((c.get("attn_entropy_start").n, c.get("attn_entropy_start").mean), (2, 0.9));
    assert_eq!((c.get("hhat_norm_end").mean, c.get("hlast_norm_start").mean), (6.0, 40.0));
    let v = agg.cell(Method::Vanilla, Algo::Grpo).unwrap();
    assert_eq!((v.get("own_acc_start").mean, v.get("own_acc_end").mean, v.get("attn_entropy_start").n), (0.66, 0.52, 0));
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    let sec = md.split("## The regime R2M runs in").nth(1).unwrap_or_else(|| panic!("no regime section:\n{md}"));
    let row = sec.lines().find(|l| l.starts_with("| GRPO | r2m |")).unwrap_or_else(|| panic!("no r2m GRPO row:\n{sec}"));
    assert!(row.contains("0.90000 ± 0.00000 → 0.60000 ± 0.00000") && row.contains("40.00 ± 0.00 → 44.00 ± 0.00"), "{row}");
    assert!(!sec.split("\n## ").next().unwrap().contains("| GRPO | vanilla |"), "vanilla has no regime row");
    let own = md.split("### On the policy's own samples").nth(1).unwrap();
    let row = own.lines().find(|l| l.starts_with("| GRPO | vanilla |")).unwrap();
    assert!(row.contains("0.660 (n=1) → 0.520 (n=1)"), "{row}");
}

/// The proxy of the tables and the overoptimization test is the frozen proxy RM's score where a run
/// logged it beside its own reward (R2M's methods train on another reward); otherwise the reward.
#[test]
fn the_proxy_is_the_frozen_rm_where_logged() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    let stats_of = |name: &str| {
        let grid = load_grid(d.path(), &opts).unwrap();
        run_stats(grid.runs.iter().find(|r| r.name == name).unwrap(), f64::NAN)
    };
    let before = stats_of("r2m-grpo-s0");
    let p = d.path().join("r2m-grpo-s0/eval.jsonl");
    let rows: Vec<String> = std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: Map<String, Value> = serde_json::from_str(l).unwrap();
            let own = r["reward"].as_f64().unwrap();
            r.insert("reward_frozen_rm".into(), json!(own + 1.0));
            serde_json::to_string(&r).unwrap()
        })
        .collect();
    std::fs::write(&p, rows.join("\n")).unwrap();
    let after = stats_of("r2m-grpo-s0");
    assert!((after.proxy_final - before.proxy_final - 1.0).abs() < 1e-9, "{} vs {}", after.proxy_final, before.proxy_final);
    assert!((after.proxy_init - before.proxy_init - 1.0).abs() < 1e-9);
    assert_eq!((after.gold_final, after.win_rate), (before.gold_final, before.win_rate));
    // A shift of every proxy score leaves the standardized gap as it was.
    assert!((after.gap_std_final - before.gap_std_final).abs() < 1e-9);
}

#[test]
fn report_renders_from_the_fixture_grid() {
    let d = fixture_copy();
    // One run made side by side (`jobs`: its own thread count), the others with libtorch's default.
    let c = d.path().join("r2m-rloo-s1/config.toml");
    std::fs::write(&c, std::fs::read_to_string(&c).unwrap().replacen("threads = 0", "threads = 1", 1)).unwrap();
    // RLOO's runs with their own KL coefficient (`algo_set`), the others with their algorithm's default.
    for s in 0..3 {
        for m in ["vanilla", "r2m"] {
            let c = d.path().join(format!("{m}-rloo-s{s}/config.toml"));
            std::fs::write(&c, std::fs::read_to_string(&c).unwrap().replacen("[rl]\n", "[rl]\nbeta = 0.01\n", 1)).unwrap();
        }
    }
    // done.json of finished grid runs: the machine (one run elsewhere) and the RM's fingerprint.
    for e in std::fs::read_dir(d.path()).unwrap() {
        let p = e.unwrap().path();
        if p.join("metrics.jsonl").exists() {
            let cpu = if p.ends_with("vanilla-grpo-s0") { "cpu B" } else { "cpu A" };
            std::fs::write(p.join("done.json"), json!({"machine": cpu, "rm_sha256": "abcdef0123456789"}).to_string()).unwrap();
        }
    }
    let s = write_report(d.path()).unwrap();
    for p in [&s.results_csv, &s.runs_csv, &s.comparisons_csv, &s.report_md, &s.report_html] {
        assert!(p.exists(), "{} missing", p.display());
    }
    for stem in
        ["gold_vs_step_rloo", "proxy_vs_step_grpo", "gold_vs_sqrt_kl_rloo", "gold_vs_sqrt_kl_grpo", "time_per_phase_rloo", "rm_accuracy"]
    {
        for ext in ["png", "svg"] {
            let p = d.path().join("plots").join(format!("{stem}.{ext}"));
            assert!(p.exists() && s.plots.contains(&p), "{} missing", p.display());
        }
    }
    let md = std::fs::read_to_string(&s.report_md).unwrap();
    for m in ["vanilla", "r2m", "RLOO", "GRPO", "r2m-grpo-s3", "vanilla-remax-s0", "Verdict", "overoptimization: YES"] {
        assert!(md.contains(m), "report.md lacks {m}");
    }
    assert!(md.contains("R2M vs vanilla (RLOO): gold at the last step +"), "{md}");
    assert!(!md.contains("R2M r2m"));
    assert!(md.contains("plots/gold_vs_sqrt_kl_rloo.png"));
    assert!(md.contains("| CPU threads per run | libtorch's default (one per core) \\| 1 (differs between runs) |"), "{md}");
    assert!(md.contains("| KL coefficient beta | RLOO: 0.01; GRPO: 0.04 (GRPO's default) |"), "{md}");
    assert!(md.contains("| RM trained against (SHA-256) | abcdef012345 (all 12 runs) |"), "{md}");
    assert!(md.contains("| machine | cpu A (11 runs: ") && md.contains("cpu B (1 run: vanilla-grpo-s0) |"), "{md}");

    let html = std::fs::read_to_string(&s.report_html).unwrap();
    let lower = html.to_lowercase();
    for bad in ["http://", "https://", "<link", "<script", "url(", "@import", "src=\"plots", "href="] {
        assert!(!lower.contains(bad), "report.html has an external reference: {bad}");
    }
    let imgs = lower.matches("<img").count();
    assert_eq!(imgs, lower.matches("src=\"data:image/png;base64,").count());
    assert!(imgs >= 7, "{imgs} images");
    for m in ["vanilla", "r2m", "RLOO", "GRPO"] {
        assert!(html.contains(m));
    }

    let results = std::fs::read_to_string(&s.results_csv).unwrap();
    assert_eq!(results.lines().count(), 5, "{results}");
    assert!(results.lines().next().unwrap().starts_with("method,algo,n_seeds,seeds,matched_d,gold_final_mean,gold_final_ci95"));
    let runs = std::fs::read_to_string(&s.runs_csv).unwrap();
    assert_eq!(runs.lines().count(), 15, "{runs}");
    assert!(runs.contains("incomplete: no metrics"));
    assert_eq!(s.n_runs, 12);
    assert!(s.table.contains("gold (final)") && s.table.contains("r2m"));
    assert!(s.verdicts.iter().any(|v| v.contains("R2M beats vanilla RLOO")), "{:?}", s.verdicts);
    // Writing twice (plots/ now present) gives the same result.
    let s2 = write_report(d.path()).unwrap();
    assert_eq!(s2.n_runs, 12);
    assert_eq!(s2.table, s.table);
}

#[test]
fn report_of_an_empty_or_broken_grid_does_not_crash() {
    let d = tmpdir();
    let s = write_report(d.path()).unwrap();
    assert_eq!(s.n_runs, 0);
    assert!(std::fs::read_to_string(&s.report_md).unwrap().contains("No complete runs"));
    // A run folder with garbage metrics and one with only a config: listed, not fatal.
    let bad = d.path().join("vanilla-rloo-s0");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("metrics.jsonl"), "{not json\n").unwrap();
    let s = write_report(d.path()).unwrap();
    assert_eq!(s.incomplete.len(), 1);
    assert!(s.incomplete[0].reason.contains("line 1"), "{}", s.incomplete[0].reason);
    assert!(write_report(&d.path().join("missing")).is_err());
}

/// The verdict says plainly when R2M does not beat vanilla: here vanilla and R2M are the same runs
/// under different names.
#[test]
fn verdict_says_when_r2m_does_not_beat_vanilla() {
    let d = tmpdir();
    for seed in 0..3 {
        write_run(d.path(), "vanilla", "rloo", seed, None);
        let from = d.path().join(format!("vanilla-rloo-s{seed}"));
        let to = d.path().join(format!("r2m-rloo-s{seed}"));
        copy_dir(&from, &to);
        let cfg = std::fs::read_to_string(to.join("config.toml")).unwrap();
        std::fs::write(to.join("config.toml"), format!("{cfg}\n[r2m]\nmethod = \"r2m\"\n")).unwrap();
    }
    // Vanilla ReMax as a further baseline (the paper's table rows).
    for seed in 0..3 {
        write_run(d.path(), "vanilla", "remax", seed, None);
    }
    let s = write_report(d.path()).unwrap();
    assert!(s.verdicts.iter().any(|v| v.contains("R2M does NOT beat vanilla RLOO")), "{:?}", s.verdicts);
    assert!(s.verdicts.iter().any(|v| v.starts_with("R2M (RLOO) vs vanilla (ReMax): gold at the last step")), "{:?}", s.verdicts);
    assert!(
        s.verdicts
            .iter()
            .any(|v| v.contains("R2M vs vanilla (RLOO): gold at the last step +0.000 ± ") && v.ends_with("p = 1.000: not significant")),
        "{:?}",
        s.verdicts
    );

    // With one seed of R2M nothing can be tested: the verdict says so rather than "does not beat".
    for seed in 1..3 {
        std::fs::remove_dir_all(d.path().join(format!("r2m-rloo-s{seed}"))).unwrap();
    }
    let s = write_report(d.path()).unwrap();
    assert!(
        s.verdicts
            .iter()
            .any(|v| v == "Verdict (RLOO): cannot tell yet: R2M or vanilla RLOO has fewer than 2 seeds, so no difference can be tested."),
        "{:?}",
        s.verdicts
    );
    assert!(!s.verdicts.iter().any(|v| v.contains("does NOT beat")), "{:?}", s.verdicts);
    assert!(s.verdicts.iter().any(|v| v == "The testbed shows overoptimization under vanilla RLOO, ReMax."), "{:?}", s.verdicts);
    // With one seed of every vanilla cell, whether the testbed overoptimizes cannot be told either.
    for seed in 1..3 {
        for algo in ["rloo", "remax"] {
            std::fs::remove_dir_all(d.path().join(format!("vanilla-{algo}-s{seed}"))).unwrap();
        }
    }
    // One seed of each: the test runs over each seed's held-out prompts, and says so.
    let s = write_report(d.path()).unwrap();
    let want = "The testbed shows overoptimization under vanilla RLOO (in one seed, over its held-out prompts), \
                ReMax (in one seed, over its held-out prompts).";
    assert!(s.verdicts.iter().any(|v| v == want), "{:?}", s.verdicts);
    // Without per-prompt eval rows (metrics only) one seed cannot be tested.
    let p = d.path().join("vanilla-remax-s0/eval.jsonl");
    let remax_eval = std::fs::read_to_string(&p).unwrap();
    for algo in ["rloo", "remax"] {
        std::fs::remove_file(d.path().join(format!("vanilla-{algo}-s0/eval.jsonl"))).unwrap();
    }
    let s = write_report(d.path()).unwrap();
    assert!(s.verdicts.iter().any(|v| v.starts_with("Cannot tell yet whether the testbed overoptimizes")), "{:?}", s.verdicts);
    assert!(!s.verdicts.iter().any(|v| v.contains("does NOT show")), "{:?}", s.verdicts);
    // One seed whose gold is highest at the last step is a "no" for its algorithm, but while
    // another algorithm cannot be tested the testbed's verdict is still open (not "does NOT show").
    let rows: Vec<Value> = remax_eval.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = rows.iter().map(|r| r["step"].as_i64().unwrap()).max().unwrap();
    let lifted: Vec<String> = rows
        .into_iter()
        .map(|mut r| {
            if r["step"] == last {
                r["gold"] = json!(r["gold"].as_f64().unwrap() + 100.0);
            }
            r.to_string()
        })
        .collect();
    std::fs::write(&p, lifted.join("\n") + "\n").unwrap();
    let s = write_report(d.path()).unwrap();
    let want = "Cannot tell yet whether the testbed overoptimizes under vanilla RL here: not under vanilla ReMax, and vanilla RLOO cannot be tested yet (see above).";
    assert!(s.verdicts.iter().any(|v| v == want), "{:?}", s.verdicts);
    assert!(!s.verdicts.iter().any(|v| v.contains("does NOT show")), "{:?}", s.verdicts);
}

/// An experiment variant's runs (config `label`, `r2m experiment`'s `[[variants]]`) are a method of
/// their own in the aggregate, compared with vanilla, and not pooled with the plain method's runs.
#[test]
fn labelled_runs_are_their_own_method() {
    let d = fixture_copy();
    for seed in 0..3 {
        let from = d.path().join(format!("r2m-rloo-s{seed}"));
        let to = d.path().join(format!("r2m-lr1e-5-rloo-s{seed}"));
        copy_dir(&from, &to);
        let cfg = std::fs::read_to_string(to.join("config.toml")).unwrap();
        std::fs::write(to.join("config.toml"), format!("label = \"r2m-lr1e-5\"\n{cfg}")).unwrap();
    }
    let opts = AggregateOptions::default();
    let grid = load_grid(d.path(), &opts).unwrap();
    let agg = aggregate(&grid, &opts);
    let variant = Arm::variant("r2m-lr1e-5", Method::R2m);
    assert_eq!(agg.arms(), [Method::Vanilla.into(), Method::R2m.into(), variant.clone()]);
    assert_eq!(agg.cell(Method::R2m, Algo::Rloo).unwrap().seeds, [0, 1, 2]);
    assert_eq!(agg.cell(variant.clone(), Algo::Rloo).unwrap().seeds, [0, 1, 2]);
    assert!(agg.cell(variant.clone(), Algo::Grpo).is_none());
    // Same runs as r2m: the same comparison with vanilla.
    let find =
        |m: &Arm| agg.vs_vanilla.iter().find(|c| c.algo == Algo::Rloo && &c.arm == m && c.metric == "gold_final").unwrap().welch.diff;
    assert_eq!(find(&variant), find(&Method::R2m.into()));
}

/// Writes the fixture's report to `$R2M_REPORT_DEMO` (a folder) for a look:
/// `R2M_REPORT_DEMO=/tmp/grid cargo test --test it experiment::demo -- --ignored`.
#[test]
#[ignore]
fn demo_report() {
    let out = PathBuf::from(std::env::var("R2M_REPORT_DEMO").expect("set R2M_REPORT_DEMO"));
    copy_dir(&fixture_dir(), &out);
    let s = write_report(&out).unwrap();
    println!("{}", s.table);
}

/// R2M's feedback term on the held-out responses, (r - w r_frozen) / (1 - w), read from eval.jsonl
/// with each step's `r2m/w`: its rise over the run and its correlation with gold at the last eval
/// step, per run, aggregated, and in the report's own table; nothing for runs without a frozen score.
#[test]
fn feedback_term_is_read_from_the_eval_rows_and_reported() {
    let d = fixture_copy();
    let opts = AggregateOptions::default();
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    assert!(!md.contains("## R2M's feedback term"), "no run logs a frozen score yet");
    let read = |p: &std::path::Path| -> Vec<Map<String, Value>> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let mut expected = vec![];
    for s in 0..2 {
        let dir = d.path().join(format!("r2m-grpo-s{s}"));
        let w: std::collections::BTreeMap<i64, f64> =
            read(&dir.join("metrics.jsonl")).iter().map(|m| (m["step"].as_i64().unwrap(), m["r2m/w"].as_f64().unwrap())).collect();
        let mut rows = read(&dir.join("eval.jsonl"));
        // The feedback term is built as 0.01 (s + 1) step - 0.001 gold: its rise is known, and its
        // correlation with gold inside a step is -1.
        let phi = |t: i64, g: f64| 0.01 * (s as f64 + 1.0) * t as f64 - 0.001 * g;
        let mut mean_at: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
        for r in rows.iter_mut() {
            let (t, g) = (r["step"].as_i64().unwrap(), r["gold"].as_f64().unwrap());
            let frozen = r["reward"].as_f64().unwrap();
            let wt = if t < 0 { 1.0 } else { w[&t] };
            r.insert("reward_frozen_rm".into(), json!(frozen));
            r.insert("reward".into(), json!(wt * frozen + (1.0 - wt) * phi(t, g)));
            if wt < 1.0 {
                mean_at.entry(t).or_default().push(phi(t, g));
            }
        }
        let m = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        let (first, last) = (mean_at.values().next().unwrap(), mean_at.values().last().unwrap());
        assert!(mean_at.len() >= 2 && !mean_at.contains_key(&0), "step 0 has w = 1: {:?}", mean_at.keys());
        expected.push(m(last) - m(first));
        let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
        std::fs::write(dir.join("eval.jsonl"), text).unwrap();
    }
    let grid = load_grid(d.path(), &opts).unwrap();
    for s in 0..2 {
        let run = grid.runs.iter().find(|r| r.name == format!("r2m-grpo-s{s}")).unwrap();
        let fb = feedback_term(run);
        assert!(fb.iter().all(|p| p.w < 1.0 && (p.gold_corr.unwrap() + 1.0).abs() < 1e-6), "{fb:?}");
        let st = run_stats(run, f64::NAN);
        assert!((st.hhat_rise - expected[s]).abs() < 1e-6, "seed {s}: {} vs {}", st.hhat_rise, expected[s]);
        assert!((st.hhat_gold_corr + 1.0).abs() < 1e-6, "{}", st.hhat_gold_corr);
    }
    let vanilla = grid.runs.iter().find(|r| r.name == "vanilla-grpo-s0").unwrap();
    assert!(feedback_term(vanilla).is_empty());
    // iterative-head logs w and a frozen score too, but its reward has no H_hat term.
    let mut ih = grid.runs.iter().find(|r| r.name == "r2m-grpo-s0").unwrap().clone();
    ih.config.as_mut().unwrap()["r2m"].as_table_mut().unwrap().insert("method".into(), "iterative-head".into());
    assert!(feedback_term(&ih).is_empty());
    let agg = aggregate(&grid, &opts);
    let rise = agg.cell(Method::R2m, Algo::Grpo).unwrap().get("hhat_rise");
    assert_eq!(rise.n, 2, "s2 and s3 have no frozen score: {rise:?}");
    assert!((rise.mean - (expected[0] + expected[1]) / 2.0).abs() < 1e-6);
    let md = std::fs::read_to_string(write_report(d.path()).unwrap().report_md).unwrap();
    let sec = md.split("## R2M's feedback term").nth(1).expect("the feedback table").split("\n## ").next().unwrap();
    let row = sec.lines().find(|l| l.starts_with("| GRPO | r2m |")).unwrap_or_else(|| panic!("{sec}"));
    assert!(row.contains(&format!("{:.3}", rise.mean)) && row.contains("-1.00"), "{row}");
    assert!(!sec.contains("| vanilla |"), "{sec}");
}
