//! The experiment runner end to end: a tiny grid (tiny random policy and RM, user prompts and
//! held-out pairs) that is interrupted, resumed and then fully reused; and `r2m demo --smoke` on
//! SmolLM2 (the README's main command at a tiny budget).
use crate::common::tmpdir;
use crate::rl::{records_without_times, tiny_world};
use r2m::experiment::grid::{done_runs, report_only, run_grid, ExperimentConfig};
use r2m::r2m::Method;
use r2m::rl::config::Algo;
use r2m::train::Trainable;
use std::path::Path;

fn tiny_grid(dir: &Path) -> ExperimentConfig {
    let pairs = dir.join("pairs.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| serde_json::json!({"prompt": format!("w{i} w{}", i + 1), "chosen": "yes yes", "rejected": format!("no w{i}")}).to_string())
        .collect();
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let mut c = ExperimentConfig {
        out: dir.join("grid"),
        device: "cpu".into(),
        methods: vec![Method::Vanilla, Method::R2m],
        algos: vec![Algo::Rloo],
        seeds: vec![0, 1],
        eval_batch: 4,
        ..ExperimentConfig::default()
    };
    c.proxy.model = Some(dir.join("rm").to_str().unwrap().into());
    c.proxy.test_pairs = Some(pairs);
    let r = &mut c.run;
    r.policy.model = dir.join("policy").to_str().unwrap().into();
    r.policy.trainable = Trainable::All;
    r.policy.chat = false;
    r.policy.lr = 3e-3;
    r.reward.max_length = 64;
    r.data.prompts = dir.join("prompts.jsonl").to_str().unwrap().into();
    r.data.eval_prompts = Some(r.data.prompts.clone());
    r.rl.steps = 3;
    r.rl.prompts_per_step = 2;
    r.rl.group_size = 2;
    r.rl.temperature = 1.0;
    r.rl.max_new_tokens = 6;
    r.rl.minibatch = 4;
    r.rl.epochs = 1;
    r.rl.eval_every = 1;
    r.rl.eval_prompts = 4;
    r.rl.save_every = 1;
    r.r2m = Some(r2m::r2m::R2mConfig { d: 16, lr: 1e-2, ..Default::default() });
    c
}

#[test]
fn tiny_grid_runs_resumes_and_skips_finished_runs() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut cfg = tiny_grid(d.path());
    cfg.archive = Some(d.path().join("archive"));
    // Interrupted in its first run (as a crash after step 2's checkpoint).
    let mut stopped = cfg.clone();
    stopped.run.rl.stop_after = Some(2);
    let e = format!("{:#}", run_grid(&stopped, false).unwrap_err());
    assert!(e.contains("vanilla-rloo-s0") && e.contains("stopped after 2"), "{e}");
    assert!(!cfg.out.join("vanilla-rloo-s0/done.json").exists());
    // Resumed: the stopped run continues from its checkpoint, the others run.
    let o = run_grid(&cfg, false).unwrap();
    assert_eq!(o.ran, ["vanilla-rloo-s0", "r2m-rloo-s0", "vanilla-rloo-s1", "r2m-rloo-s1"]);
    assert!(o.skipped.is_empty());
    assert_eq!(o.report.n_runs, 4, "incomplete: {:?}", o.report.incomplete);
    let m = r2m::metrics::read_jsonl(&cfg.out.join("vanilla-rloo-s0/metrics.jsonl")).unwrap();
    let steps: Vec<i64> = m.iter().map(|r| r["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2], "one metrics row per step across the interruption");
    for f in ["report.md", "report.html", "results.csv", "runs.csv", "experiment.toml"] {
        assert!(cfg.out.join(f).exists(), "{f}");
    }
    // RM accuracy before/after: the vanilla RM is frozen (after == before); R2M's is its own.
    let done = done_runs(&cfg.out).unwrap();
    assert_eq!(done.len(), 4);
    // The resumed run says so; every run has the time its steps and evaluations took.
    for r in &done {
        assert_eq!(r.get("resumed").is_some(), r["run"] == "vanilla-rloo-s0", "{r}");
        assert!(r["steps_and_evals_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    for r in &done {
        let acc = &r["rm_accuracy"];
        let (b, a) = (acc["before"].as_f64().unwrap(), acc["after"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&b) && (0.0..=1.0).contains(&a), "{r}");
        assert_eq!(acc["pairs"], 6);
        if acc["method"] == "vanilla" {
            assert_eq!(a, b, "{r}");
            assert!(acc.get("attention").is_none(), "no cross-attention: {r}");
        } else {
            // What R2M's cross-attention did on the held-out pairs (normalised entropy in [0, 1]).
            let ent = acc["attention"]["attn_entropy"].as_f64().unwrap_or_else(|| panic!("{r}"));
            assert!((0.0..=1.0 + 1e-9).contains(&ent) && acc["attention"]["hhat_norm_ratio"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    // Again: everything is reused, nothing reruns.
    let before = std::fs::read(cfg.out.join("r2m-rloo-s1/metrics.jsonl")).unwrap();
    let o = run_grid(&cfg, false).unwrap();
    assert!(o.ran.is_empty());
    assert_eq!(o.skipped.len(), 4);
    assert_eq!(std::fs::read(cfg.out.join("r2m-rloo-s1/metrics.jsonl")).unwrap(), before);
    // A changed config is refused, naming the run folder, instead of mixing results.
    let mut changed = cfg.clone();
    changed.run.policy.lr = 1e-3;
    let e = format!("{:#}", run_grid(&changed, false).unwrap_err());
    assert!(e.contains("vanilla-rloo-s0") && e.contains("different config"), "{e}");

    // The archive keeps each finished run without its checkpoint. On a fresh machine (no `out`)
    // the grid restores them, runs nothing and writes the same report; so does --report-only.
    let arch = cfg.archive.clone().unwrap();
    assert!(arch.join("runs/r2m-rloo-s1/metrics.jsonl").exists() && arch.join("report.md").exists());
    assert!(!arch.join("runs/vanilla-rloo-s0/checkpoint").exists());
    // No blob twice: the HTML report and the SVGs repeat the PNGs, so only the PNGs are kept.
    assert!(!arch.join("report.html").exists());
    let kept: Vec<_> = std::fs::read_dir(arch.join("plots")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!kept.is_empty() && kept.iter().all(|p| p.ends_with(".png")), "{kept:?}");
    let results = std::fs::read(cfg.out.join("results.csv")).unwrap();
    assert_eq!(std::fs::read(arch.join("results.csv")).unwrap(), results);
    std::fs::remove_dir_all(&cfg.out).unwrap();
    let o = run_grid(&cfg, false).unwrap();
    assert!(o.ran.is_empty(), "{:?}", o.ran);
    assert_eq!(o.skipped.len(), 4);
    assert_eq!(std::fs::read(cfg.out.join("r2m-rloo-s1/metrics.jsonl")).unwrap(), before);
    assert_eq!(std::fs::read(cfg.out.join("results.csv")).unwrap(), results);
    std::fs::remove_dir_all(&cfg.out).unwrap();
    // A grid started since in the same folder left its own experiment.toml: the report's is archived.
    std::fs::create_dir_all(&cfg.out).unwrap();
    std::fs::write(cfg.out.join("experiment.toml"), "# another grid's selection\n").unwrap();
    {
        // Not beside a running grid, whose rerun's folder restoring would replace.
        let _grid = r2m::lock::FolderLock::acquire(&cfg.out, "experiment folder").unwrap();
        let e = format!("{:#}", report_only(&cfg, true, false).unwrap_err());
        assert!(e.contains("running grid") && e.contains("is in use by"), "{e}");
    }
    assert_eq!(report_only(&cfg, true, false).unwrap().n_runs, 4);
    assert_eq!(std::fs::read(cfg.out.join("results.csv")).unwrap(), results);
    let saved = std::fs::read_to_string(arch.join("experiment.toml")).unwrap();
    assert!(!saved.contains("another grid") && saved.contains("archive ="), "{saved}");
    // A report written in another folder reads the archive and leaves it as it is.
    let archived = |f: &str| std::fs::read(arch.join(f)).unwrap();
    let (toml, md) = (archived("experiment.toml"), archived("report.md"));
    let elsewhere = ExperimentConfig { out: d.path().join("elsewhere"), ..cfg.clone() };
    assert_eq!(report_only(&elsewhere, false, false).unwrap().n_runs, 4);
    assert_eq!(std::fs::read(elsewhere.out.join("results.csv")).unwrap(), results);
    assert!(std::fs::read_to_string(elsewhere.out.join("experiment.toml")).unwrap().contains("elsewhere"));
    assert_eq!((archived("experiment.toml"), archived("report.md")), (toml, md), "the archive changed");
    // An archived run made with another config than the grid's is refused, naming it.
    std::fs::remove_dir_all(&cfg.out).unwrap();
    let mut changed = cfg.clone();
    changed.run.rl.temperature = 0.9;
    let e = format!("{:#}", run_grid(&changed, false).unwrap_err());
    assert!(e.contains("archive/runs/r2m-rloo-s0") && e.contains("different config"), "{e}");
}

/// A grid whose evaluations grow (`rl.final_eval_prompts` raised after its runs finished): each
/// finished run extends pi_init's and its last step's evaluations from its final checkpoint and
/// keeps its training, done.json and RM accuracy; the report and the archive take the grown runs as
/// each finishes. A finished run restored from the archive (no checkpoint) cannot extend, and the
/// grid says so.
#[test]
fn a_grid_extends_its_finished_runs_when_its_evaluation_grows() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut cfg = tiny_grid(d.path());
    cfg.seeds = vec![0];
    cfg.archive = Some(d.path().join("archive"));
    run_grid(&cfg, false).unwrap();
    let read = |run: &str, f: &str| std::fs::read_to_string(cfg.out.join(run).join(f)).unwrap();
    let runs = ["vanilla-rloo-s0", "r2m-rloo-s0"];
    let before: Vec<_> = runs
        .iter()
        .map(|r| (read(r, "done.json"), read(r, "rm_accuracy.json"), records_without_times(&cfg.out.join(r).join("metrics.jsonl"))))
        .collect();
    let mut grown = cfg.clone();
    grown.run.rl.final_eval_prompts = Some(8);
    // With a new seed that stops part way: the finished runs extend first, and the report and the
    // archive's copy of it, written after each run, already count their grown evaluations.
    let mut stopped = grown.clone();
    stopped.seeds = vec![0, 1];
    stopped.run.rl.stop_after = Some(2);
    let old_results = std::fs::read(cfg.out.join("results.csv")).unwrap();
    let e = format!("{:#}", run_grid(&stopped, false).unwrap_err());
    assert!(e.contains("vanilla-rloo-s1") && e.contains("stopped after 2"), "{e}");
    let (results, archived) =
        (std::fs::read(cfg.out.join("results.csv")).unwrap(), std::fs::read(d.path().join("archive/results.csv")).unwrap());
    assert_ne!(results, old_results, "the report was not rewritten after the extended runs");
    assert_eq!(archived, results);
    r2m::experiment::write_report(&cfg.out).unwrap();
    assert_eq!(std::fs::read(cfg.out.join("results.csv")).unwrap(), results, "the report after the last finished run is stale");
    std::fs::remove_dir_all(cfg.out.join("vanilla-rloo-s1")).unwrap();
    let o = run_grid(&grown, false).unwrap();
    assert!(o.ran.is_empty(), "{:?}", o.ran);
    for (r, (done, acc, metrics)) in runs.iter().zip(&before) {
        let e = r2m::metrics::read_jsonl(&cfg.out.join(r).join("eval.jsonl")).unwrap();
        let count = |t: i64| e.iter().filter(|x| x["step"] == t).count();
        assert_eq!([count(-1), count(0), count(1), count(2)], [8, 4, 4, 8], "{r}");
        assert_eq!((&read(r, "done.json"), &read(r, "rm_accuracy.json")), (done, acc), "{r}");
        let now = records_without_times(&cfg.out.join(r).join("metrics.jsonl"));
        for (a, b) in now.iter().zip(metrics) {
            for (k, v) in b.iter().filter(|(k, _)| !k.starts_with("eval/")) {
                assert_eq!(Some(v), a.get(k), "{r}: step {}: {k}", b["step"]);
            }
        }
        let archived = std::fs::read_to_string(d.path().join("archive/runs").join(r).join("eval.jsonl")).unwrap();
        assert_eq!(archived, read(r, "eval.jsonl"), "{r}: archived");
    }
    // From the archive alone: the grown runs are reused. Grown again, they have no checkpoint to
    // extend from: they run again, after the runs not made yet, and a rerun stopped part way
    // resumes from its own checkpoint rather than from the archive's older result.
    std::fs::remove_dir_all(&cfg.out).unwrap();
    assert_eq!(run_grid(&grown, false).unwrap().skipped.len(), 2);
    grown.run.rl.final_eval_prompts = Some(10);
    grown.run.rl.stop_after = Some(1);
    let e = format!("{:#}", run_grid(&grown, false).unwrap_err());
    assert!(e.contains("vanilla-rloo-s0") && e.contains("stopped after 1"), "{e}");
    grown.run.rl.stop_after = None;
    grown.seeds = vec![0, 1];
    let o = run_grid(&grown, false).unwrap();
    assert_eq!(o.ran, ["vanilla-rloo-s0", "vanilla-rloo-s1", "r2m-rloo-s1", "r2m-rloo-s0"]);
    for r in o.ran {
        let e = r2m::metrics::read_jsonl(&cfg.out.join(&r).join("eval.jsonl")).unwrap();
        let count = |t: i64| e.iter().filter(|x| x["step"] == t).count();
        assert_eq!([count(-1), count(2)], [10, 10], "{r}");
        let m = r2m::metrics::read_jsonl(&cfg.out.join(&r).join("metrics.jsonl")).unwrap();
        assert_eq!(m.iter().map(|x| x["step"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2], "{r}: one record per step");
        let archived = std::fs::read_to_string(d.path().join("archive/runs").join(&r).join("eval.jsonl")).unwrap();
        assert_eq!(archived, read(&r, "eval.jsonl"), "{r}: archived");
    }
}

/// `jobs = 2`: the runs go to child processes (`r2m rl`, two at a time) and give exactly the runs
/// one process makes one after another at the same thread count; a failed child stops the grid
/// with the end of its log, and the grid resumes from the children's checkpoints.
#[test]
fn tiny_grid_side_by_side_matches_one_at_a_time() {
    let d = tmpdir();
    tiny_world(d.path());
    let exe = env!("CARGO_BIN_EXE_r2m");
    // What `jobs = 2` gives each run here.
    let t = (std::thread::available_parallelism().unwrap().get() / 2).max(1);
    // Both grids through the binary: a run with `threads` set changes libtorch's thread count for
    // its whole process, which must not be this test process (tests run side by side here).
    let grid = |name: &str, jobs: usize, threads: usize, stop_after: Option<i64>| {
        let mut c = tiny_grid(d.path());
        c.out = d.path().join(name);
        c.jobs = jobs;
        c.run.threads = threads;
        c.run.rl.stop_after = stop_after;
        let conf = d.path().join(format!("{name}-{jobs}.toml"));
        r2m::config::save(&c, &conf).unwrap();
        let o = std::process::Command::new(exe).args(["experiment", "--config", conf.to_str().unwrap()]).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string(), c.out)
    };
    let (ok, out, err, one) = grid("one", 1, t, None);
    assert!(ok && out.contains("4 runs made"), "{out}\n{err}");
    // A run folder left by a one-at-a-time grid stopped before the run's first checkpoint (libtorch's
    // default threads): it starts afresh, with the side-by-side thread count.
    let two = d.path().join("two");
    let early = std::fs::read_to_string(one.join("vanilla-rloo-s1/config.toml")).unwrap();
    let early = early.replace(&format!("threads = {t}"), "threads = 0").replace(one.to_str().unwrap(), two.to_str().unwrap());
    assert!(early.contains("threads = 0"));
    std::fs::create_dir_all(two.join("vanilla-rloo-s1")).unwrap();
    std::fs::write(two.join("vanilla-rloo-s1/config.toml"), early).unwrap();
    // Side by side, stopped in the first two runs (after step 2's checkpoint), then resumed.
    let (ok, _, err, _) = grid("two", 2, 0, Some(2));
    assert!(!ok, "{err}");
    assert!(err.contains("vanilla-rloo-s0") && err.contains("stopped after 2") && err.contains("rl.log"), "{err}");
    assert!(err.contains(&format!("started (threads {t},")), "the start lines name the thread count: {err}");
    let (ok, out, err, _) = grid("two", 2, 0, None);
    assert!(ok && out.contains("4 runs made"), "{out}\n{err}");
    for run in ["vanilla-rloo-s0", "r2m-rloo-s0", "vanilla-rloo-s1", "r2m-rloo-s1"] {
        let (a, b) = (one.join(run), two.join(run));
        assert_eq!(
            records_without_times(&a.join("metrics.jsonl")),
            records_without_times(&b.join("metrics.jsonl")),
            "{run}: metrics differ"
        );
        assert_eq!(
            std::fs::read_to_string(a.join("eval.jsonl")).unwrap(),
            std::fs::read_to_string(b.join("eval.jsonl")).unwrap(),
            "{run}: eval rows differ"
        );
        assert_eq!(
            std::fs::read_to_string(a.join("rm_accuracy.json")).unwrap(),
            std::fs::read_to_string(b.join("rm_accuracy.json")).unwrap(),
            "{run}"
        );
        let done: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(b.join("done.json")).unwrap()).unwrap();
        assert_eq!(done["threads"], t, "{run}: {done}");
    }
    // The runs of the first two children resumed from their checkpoints: one row per step.
    let m = r2m::metrics::read_jsonl(&two.join("r2m-rloo-s0/metrics.jsonl")).unwrap();
    assert_eq!(m.iter().map(|r| r["step"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
}

/// `r2m demo --smoke`: pairs from SmolLM2, the proxy RM, vanilla and R2M RLOO runs on 2 seeds, RM
/// accuracy, the table, plots and report, through the binary as a user runs it.
#[test]
fn demo_smoke_runs_end_to_end_on_smollm2() {
    let d = tmpdir();
    let out = d.path().join("demo");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["demo", "--smoke", "--device", "cpu", "--quiet", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    for name in ["vanilla", "r2m", "report:", "4 runs made"] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
    for f in [
        "report.md",
        "report.html",
        "results.csv",
        "shared/pairs-train.jsonl",
        "shared/pairs-test.jsonl",
        "shared/proxy-rm/model/config.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let plots: Vec<_> = std::fs::read_dir(out.join("plots")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(plots.iter().any(|p| p.ends_with(".png")) && plots.iter().any(|p| p.ends_with(".svg")), "{plots:?}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("gold"), "{md}");
    for r in ["vanilla-rloo-s0", "r2m-rloo-s1"] {
        let e = r2m::metrics::read_jsonl(&out.join(r).join("eval.jsonl")).unwrap();
        assert!(e.iter().all(|row| row["gold"].as_f64().is_some()), "{r}: gold scored on every eval row");
    }
}

/// The pretrained-rm baseline end to end on SmolLM2 (the smoke preset, one seed): gold-labelled
/// pairs on RL-train prompts, the proxy trained further on them into `shared/pretrained-rm/`, the
/// run scored by that RM (not the proxy), and its RM accuracy before/after recorded.
#[test]
fn pretrained_rm_baseline_runs_end_to_end_on_smollm2() {
    let d = tmpdir();
    let out = d.path().join("pre");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["experiment", "--config", "configs/demo-smoke.toml", "--device", "cpu", "--quiet", "--out", out.to_str().unwrap()])
        .args(["--set", "methods=[\"pretrained-rm\"]", "--set", "seeds=[0]", "--set", "pretrained.prompts=6"])
        .args([
            "--set",
            "pretrained.train.epochs=1",
            "--set",
            "pretrained.train.micro_batch=4",
            "--set",
            "pretrained.train.trainable_layers=2",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("pretrained-rm"), "{stdout}");
    let sh = out.join("shared");
    let pairs = std::fs::read_to_string(sh.join("pairs-rl.jsonl")).unwrap();
    assert!(pairs.lines().count() >= 1, "pairs on the RL prompts");
    let rm = sh.join("pretrained-rm/model");
    assert!(rm.join("config.json").exists());
    // The further-trained RM differs from the proxy it started from.
    let a = r2m::model::load::safetensors::read_dir(&rm).unwrap();
    let b: std::collections::HashMap<String, tch::Tensor> =
        r2m::model::load::safetensors::read_dir(&sh.join("proxy-rm/model")).unwrap().into_iter().collect();
    assert!(a.iter().any(|(n, t)| b.get(n).is_some_and(|u| !t.equal(u))), "pretrained-rm equals the proxy");
    let run = out.join("pretrained-rm-rloo-s0");
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(cfg.contains("pretrained-rm/model"), "the run is scored by the further-trained RM:\n{cfg}");
    let acc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("rm_accuracy.json")).unwrap()).unwrap();
    assert_eq!(acc["method"], "pretrained-rm");
    assert!(acc["before"].as_f64().is_some() && acc["before"] == acc["after"], "a frozen RM: {acc}");
    assert!(run.join("done.json").exists());
}
