//! `r2m experiment`: a grid of RL runs (methods x algorithms x seeds) on shared artefacts, then the
//! report.
//!
//! The grid folder holds
//! - `experiment.toml`: the resolved grid config;
//! - `shared/`: what every run reuses, each made once and reused when present (a stopped grid
//!   resumes here too): the gold-labelled pairs (`pairs-train.jsonl` on the testbed's train
//!   prompts with label noise, `pairs-test.jsonl` on its disjoint test prompts, noise-free), the
//!   proxy RM (`proxy-rm/`, an `r2m train-rm` folder; or the user's `proxy.model`), for
//!   pretrained-rm the pairs on the RL prompts and the further-trained RM (`pretrained-rm/`), and
//!   `rm-accuracy.json` (the RMs' held-out accuracy before RL);
//! - one folder per run, `{method}-{algo}-s{seed}` (an `r2m rl` folder, plus `rm_accuracy.json`:
//!   the RM's held-out accuracy before RL and after it, with the final policy's feedback at w(T)
//!   for the methods that read feedback: the paper's Table 3), and `done.json` once finished;
//! - the report ([`super::write_report`]): `results.csv`, `runs.csv`, `comparisons.csv`,
//!   `plots/`, `report.md`, `report.html`.
//!
//! Resume: running the same config again skips runs with `done.json`, continues runs with a
//! checkpoint, and restarts the others. A run folder made with a different config is an error
//! (naming the folder), never silently reused.
use super::archive;
use super::report::{write_report, ReportSummary};
use super::shared::prepare_shared;
use crate::checkpoint::find_checkpoint;
use crate::rl::config::RlConfig;
use crate::rl::trainer;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

pub use super::config::Shared;
pub use super::config::{ExperimentConfig, PretrainedConfig, ProxyConfig, RunSpec, Variant};
use super::finish::{finish_run, Pending};
use super::progress::say;

/// What [`run_grid`] did.
#[derive(Debug)]
pub struct GridOutcome {
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    pub report: ReportSummary,
    pub wall_s: f64,
}

/// Runs (or resumes) the grid and writes the report. With `jobs` > 1 the runs are child
/// processes of this executable (the r2m binary); see [`run_grid_with`]. On Linux they run the
/// very image this process runs (`/proc/self/exe`), even when the file was rebuilt meanwhile.
pub fn run_grid(cfg: &ExperimentConfig, progress: bool) -> Result<GridOutcome> {
    let exe = if cfg!(target_os = "linux") {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().context("locating the r2m binary (for the runs of jobs > 1)")?
    };
    run_grid_with(cfg, progress, &exe)
}

/// [`run_grid`], with `exe` the r2m binary that runs each run (`r2m rl`) when `jobs` > 1.
pub fn run_grid_with(cfg: &ExperimentConfig, progress: bool, exe: &Path) -> Result<GridOutcome> {
    let t0 = Instant::now();
    let _lock = crate::lock::FolderLock::acquire(&cfg.out, "experiment folder")?;
    let (device, shared) = setup(cfg, progress)?;
    let specs = cfg.runs();
    if let Some(a) = &cfg.archive {
        let restored = archive::restore_runs(a, &cfg.out, |name, dir| match specs.iter().find(|s| s.name() == name) {
            Some(spec) => {
                let rc = cfg.run_config(spec, &shared)?;
                check_earlier_config(dir, &rc)?;
                // Run again since its evaluation grew (below), and checkpointed here: its progress wins.
                let rerunning = find_checkpoint(&rc.out.join("checkpoint")).is_some()
                    && !rc.out.join("done.json").exists()
                    && crate::rl::eval_rows::evaluation_grew(dir, &rc)?;
                Ok(!rerunning)
            }
            None => Ok(true), // not in this grid's selection: restored for the report, checked when run
        })?;
        if !restored.is_empty() {
            say(progress, format!("restored {} finished runs from the archive {}: {}", restored.len(), a.display(), restored.join(", ")));
        }
    }
    let (mut pending, mut reruns, mut skipped) = (vec![], vec![], vec![]);
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.name();
        let mut rc = cfg.run_config(spec, &shared)?;
        if cfg.jobs > 1 && rc.threads == 0 {
            rc.threads = cfg.threads_per_job();
        }
        let dir = rc.out.clone();
        let resume = find_checkpoint(&dir.join("checkpoint")).is_some();
        if let Some(old) = check_earlier_config(&dir, &rc)? {
            if resume {
                rc.threads = old.threads;
            }
        }
        if dir.join("done.json").exists() {
            if crate::rl::eval_rows::evaluation_grew(&dir, &rc)? {
                // Finished, but its config now evaluates more prompts: the run extends its
                // evaluations from its final checkpoint, and keeps its done.json. Without one (an
                // archive keeps none) it runs again, after the runs that have no result yet.
                if !resume {
                    say(
                        progress,
                        format!(
                            "[{}/{}] {name}: the grid now evaluates pi_init and the last step on {} held-out prompts, more than this run did, \
                             and it has no checkpoint to extend its evaluations from: it runs again, after the runs not made yet",
                            i + 1,
                            specs.len(),
                            rc.rl.final_eval_prompts.unwrap_or(rc.rl.eval_prompts)
                        ),
                    );
                    reruns.push(Pending { i, spec: spec.clone(), rc, resume, extend_only: false, rerun: true });
                    continue;
                }
                pending.push(Pending { i, spec: spec.clone(), rc, resume, extend_only: true, rerun: false });
                continue;
            }
            say(progress, format!("[{}/{}] {name}: done, skipped", i + 1, specs.len()));
            skipped.push(name);
            continue;
        }
        if !resume && dir.exists() {
            // Started but never checkpointed: nothing to keep.
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        pending.push(Pending { i, spec: spec.clone(), rc, resume, extend_only: false, rerun: false });
    }
    pending.append(&mut reruns);
    let n = specs.len();
    let ran = if cfg.jobs == 1 {
        let mut ran = vec![];
        for p in &pending {
            let name = p.spec.name();
            let what = if p.extend_only {
                ": extending its evaluations"
            } else if p.rerun {
                ": running again, on the grown evaluation"
            } else if p.resume {
                ": resuming"
            } else {
                ""
            };
            say(progress, format!("[{}/{n}] {name}{what}", p.i + 1));
            let tr = Instant::now();
            p.start()?;
            {
                let mut rc = p.rc.clone();
                rc.rl.pi_init_eval_from = init_eval_source(&cfg.out, &p.spec, crate::rl::eval_rows::final_eval_size(&rc)?);
                let mut r = crate::sources::build_run(&rc, device)?;
                trainer::run(&mut r, p.resume, progress).with_context(|| format!("run {name}"))?;
            }
            finish_run(cfg, p, &shared, tr.elapsed().as_secs_f64(), device)?;
            ran.push(name);
        }
        ran
    } else {
        super::pool::run_side_by_side(cfg, &pending, n, &shared, exe, progress, device)?
    };
    let report = write_report(&cfg.out)?;
    if let Some(a) = &cfg.archive {
        archive::save(a, &cfg.out, &shared.fingerprints)?;
    }
    Ok(GridOutcome { ran, skipped, report, wall_s: t0.elapsed().as_secs_f64() })
}

/// `r2m experiment --prepare-only`: the shared artefacts (pairs, proxy RM, the RMs' held-out
/// accuracy), archived when the grid has an archive, and no run: to check the proxy before a grid
/// is spent on it.
pub fn prepare_only(cfg: &ExperimentConfig, progress: bool) -> Result<Shared> {
    let _lock = crate::lock::FolderLock::acquire(&cfg.out, "experiment folder")?;
    let (_, shared) = setup(cfg, progress)?;
    if let Some(a) = &cfg.archive {
        archive::save(a, &cfg.out, &shared.fingerprints)?;
    }
    Ok(shared)
}

/// Validates `cfg`, restores the shared files of the archive and of `proxy.pairs_from`, and makes
/// (or reuses) the rest.
fn setup(cfg: &ExperimentConfig, progress: bool) -> Result<(Device, Shared)> {
    cfg.validate()?;
    let device = crate::device::parse(&cfg.device)?;
    ensure!(
        cfg.jobs == 1 || device == Device::Cpu,
        "jobs = {}: runs side by side are for the CPU; on {device:?} they would share one device's memory (set jobs = 1)",
        cfg.jobs
    );
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    crate::config::save(cfg, &cfg.out.join("experiment.toml"))?;
    if let Some(a) = &cfg.archive {
        archive::check_paths(a, &cfg.out)?;
        for f in archive::restore_shared(a, &cfg.out)? {
            say(progress, format!("restored shared/{f} from the archive {}", a.display()));
        }
    }
    if let Some(from) = &cfg.proxy.pairs_from {
        for f in archive::restore_shared(from, &cfg.out)? {
            say(progress, format!("took shared/{f} from {}", from.display()));
        }
    }
    let shared = prepare_shared(cfg, device, progress)?;
    if let Some(a) = &cfg.archive {
        for m in archive::fingerprint_mismatches(a, &shared.fingerprints)? {
            eprintln!("experiment: warning: {m}");
        }
    }
    Ok((device, shared))
}

/// `r2m experiment --report-only`: the report from the run folders in `out`, after restoring the
/// archive's finished runs into it (so a fresh machine writes the report of the archived grid).
/// With `update_archive` the report is archived too; without it (a report written somewhere else
/// than the grid's own folder) the archive is only read. Trains nothing. It holds the grid
/// folder's lock: restoring could replace the folder of a run a grid is making again, so a running
/// grid refuses it (that grid rewrites its report after each run it finishes).
pub fn report_only(cfg: &ExperimentConfig, update_archive: bool, progress: bool) -> Result<ReportSummary> {
    let _lock = crate::lock::FolderLock::acquire(&cfg.out, "experiment folder").context(
        "--report-only restores the archived runs into the grid folder, where a running grid may be making one of them again; \
         the running grid rewrites its report.md after each finished run",
    )?;
    // The archived experiment.toml is the config of the command that wrote the report beside it,
    // not of a grid started since in the same folder.
    crate::config::save(cfg, &cfg.out.join("experiment.toml"))?;
    if let Some(a) = &cfg.archive {
        archive::check_paths(a, &cfg.out)?;
        let restored = archive::restore_runs(a, &cfg.out, |_, _| Ok(true))?;
        if !restored.is_empty() {
            say(progress, format!("restored {} finished runs from the archive {}", restored.len(), a.display()));
        }
    }
    let report = write_report(&cfg.out)?;
    match &cfg.archive {
        Some(a) if update_archive => {
            archive::save(a, &cfg.out, &BTreeMap::new())?;
        }
        Some(a) => say(progress, format!("the archive {} is left as it is: this report is not the grid's own folder's", a.display())),
        None => {}
    }
    Ok(report)
}

/// A finished run of the grid in `out` (done.json written) with `spec`'s seed whose evaluation of
/// pi_init `spec`'s run may share (`rl.pi_init_eval_from`, which checks it): one that evaluated
/// pi_init on `rows` prompts (as many as its own evaluation takes) first (a smaller evaluation is
/// extended by the run), then one of the same arm under another algorithm, else any other arm's.
/// pi_init's evaluation depends on the seed, the policy, the prompts and the reward, not on the
/// algorithm. A run whose rows lack the frozen reward model's score where `spec`'s method reports
/// it (vanilla's, for R2M), or the reverse, cannot match and is not offered.
fn init_eval_source(out: &Path, spec: &super::config::RunSpec, rows: usize) -> Option<PathBuf> {
    let mut found: Vec<(bool, bool, PathBuf)> = vec![];
    for e in std::fs::read_dir(out).ok()?.flatten() {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == spec.name() || !dir.join("done.json").exists() || !dir.join("eval.jsonl").exists() {
            continue;
        }
        let Some((arm, _, seed)) = super::arm::parse_run_name(&name) else { continue };
        let path = dir.join("eval.jsonl");
        if seed == spec.seed && crate::rl::eval_rows::rows_report_frozen_scores(&path) == spec.method().reports_frozen_scores() {
            let whole = crate::rl::eval_rows::init_rows(&path) == rows;
            found.push((!whole, arm != spec.arm.name(), path));
        }
    }
    found.sort();
    found.into_iter().next().map(|(_, _, p)| p)
}

/// The config of the run folder `dir` made earlier, if any, checked against `rc`: a folder made
/// with another config is an error naming it. `rl.stop_after` only simulates an interruption; the
/// thread count and the device are how the run was executed (a grid archived on one machine goes
/// on on another, `device = "auto"` resolving there): they may differ (done.json records each run's
/// machine, and the report shows it).
fn check_earlier_config(dir: &Path, rc: &RlConfig) -> Result<Option<RlConfig>> {
    let path = dir.join("config.toml");
    if !path.exists() {
        return Ok(None);
    }
    let old: RlConfig =
        crate::config::load(Some(&path), &[]).with_context(|| format!("{}: unreadable config of an earlier run", dir.display()))?;
    // An evaluation on more held-out prompts than the run made (`rl.final_eval_prompts`, and
    // `data.testbed_test` for the prompts) is the same run: it extends its evaluations.
    let grew = rc.rl.final_eval_prompts.unwrap_or(rc.rl.eval_prompts) >= old.rl.final_eval_prompts.unwrap_or(old.rl.eval_prompts)
        && rc.data.testbed_test >= old.data.testbed_test;
    let same = |c: &RlConfig| RlConfig {
        threads: 0,
        device: String::new(),
        rl: crate::rl::config::AlgoConfig {
            stop_after: None,
            pi_init_eval_from: None,
            final_eval_prompts: if grew { None } else { c.rl.final_eval_prompts },
            ..c.rl.clone()
        },
        data: crate::rl::config::DataConfig { testbed_test: if grew { 0 } else { c.data.testbed_test }, ..c.data.clone() },
        ..c.clone()
    };
    if same(&old) != same(rc) {
        bail!(
            "{}: this run folder was made with a different config; choose another `out` for the grid, or delete the folder to rerun it",
            dir.display()
        );
    }
    Ok(Some(old))
}

/// Reads `done.json` of every run (for tests and tools).
pub fn done_runs(grid: &Path) -> Result<Vec<Value>> {
    let mut v = vec![];
    for e in std::fs::read_dir(grid).with_context(|| format!("reading {}", grid.display()))? {
        let p = e?.path().join("done.json");
        if p.exists() {
            v.push(serde_json::from_str(&std::fs::read_to_string(&p)?)?);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::arm::Arm;
    use crate::experiment::config::RunSpec;
    use crate::r2m::Method;
    use crate::rl::config::Algo;

    /// A finished run folder `name` in `out` whose pi_init evaluation has `rows` rows, with the
    /// frozen reward model's score when `frozen`.
    fn finished(out: &Path, name: &str, rows: usize, frozen: bool) {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("done.json"), "{}").unwrap();
        let mut text = String::new();
        for i in 0..rows {
            let mut r = serde_json::json!({"step": -1, "prompt": i, "reward": 0.5, "gold": 6.0});
            if frozen {
                r["reward_frozen_rm"] = serde_json::json!(0.5);
            }
            text.push_str(&format!("{r}\n"));
        }
        std::fs::write(dir.join("eval.jsonl"), text).unwrap();
    }

    /// pi_init's rows are offered from a run of the same seed whose rows have the columns the new
    /// run's will: R2M's from R2M-family runs (which report the frozen score), vanilla's from
    /// vanilla-like runs; a whole evaluation first, then the same arm.
    #[test]
    fn pi_init_rows_come_only_from_runs_whose_rows_can_match() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path();
        let spec = |m: Method, algo: Algo| RunSpec { arm: Arm::Method(m), algo, seed: 2 };
        finished(out, "vanilla-grpo-s2", 8, false);
        finished(out, "vanilla-rloo-s2", 8, false);
        finished(out, "vanilla-grpo-s1", 16, false);
        assert_eq!(init_eval_source(out, &spec(Method::R2m, Algo::Grpo), 16), None, "vanilla's rows lack reward_frozen_rm");
        assert_eq!(init_eval_source(out, &spec(Method::Vanilla, Algo::Rloo), 16), Some(out.join("vanilla-grpo-s2/eval.jsonl")));
        finished(out, "iterative-head-grpo-s2", 16, true);
        finished(out, "r2m-grpo-s2", 8, true);
        assert_eq!(
            init_eval_source(out, &spec(Method::R2m, Algo::Rloo), 16),
            Some(out.join("iterative-head-grpo-s2/eval.jsonl")),
            "a whole evaluation first"
        );
        assert_eq!(
            init_eval_source(out, &spec(Method::R2m, Algo::Rloo), 32),
            Some(out.join("r2m-grpo-s2/eval.jsonl")),
            "then the same arm"
        );
        assert_eq!(init_eval_source(out, &spec(Method::PretrainedRm, Algo::Grpo), 8), Some(out.join("vanilla-grpo-s2/eval.jsonl")));
    }
}
