//! A run the grid makes ([`Pending`]) and what follows its training ([`finish_run`]): its RM
//! accuracy before and after RL, `done.json`, the report of the runs finished so far, and the
//! archive's copy.
use super::archive;
use super::arm::algo_key;
use super::config::{ExperimentConfig, RunSpec, Shared};
use super::report::write_report;
use super::shared::run_rm_accuracy_after;
use crate::checkpoint::write_atomic;
use crate::r2m::Method;
use crate::rl::config::RlConfig;
use anyhow::{Context, Result};
use serde_json::json;
use tch::Device;

/// A run to make: its place in the grid, spec, config, and whether it resumes a checkpoint.
pub(super) struct Pending {
    pub i: usize,
    pub spec: RunSpec,
    pub rc: RlConfig,
    pub resume: bool,
    /// A finished run whose config now evaluates more prompts: it only extends its evaluations
    /// and keeps its `done.json` and RM accuracy.
    pub extend_only: bool,
    /// A finished run with no checkpoint (an archive keeps none) whose config now evaluates more
    /// prompts: it runs again from the start; [`Pending::start`] clears its folder.
    pub rerun: bool,
}

impl Pending {
    /// Readies the run's folder when its turn comes: a rerun's earlier results are removed (the
    /// archive keeps them until the rerun finishes and replaces them).
    pub fn start(&self) -> Result<()> {
        let dir = &self.rc.out;
        if self.rerun && dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {} to run it again", dir.display()))?;
        }
        Ok(())
    }
}

/// After a run's training: its RM accuracy before/after RL (`rm_accuracy.json`) and `done.json`
/// (a run that only extended its evaluations keeps both); then the report of the runs finished so
/// far and, for a grid with an archive, the archive's copy of both: a grid stopped between runs
/// leaves a report (and an archive) that matches its finished runs.
pub(super) fn finish_run(cfg: &ExperimentConfig, p: &Pending, shared: &Shared, wall_s: f64, device: Device) -> Result<()> {
    if !p.extend_only {
        write_done(cfg, p, shared, wall_s, device)?;
    }
    write_report(&cfg.out)?;
    if let Some(a) = &cfg.archive {
        archive::save(a, &cfg.out, &shared.fingerprints)?;
    }
    Ok(())
}

/// A finished run's `rm_accuracy.json` and `done.json`.
fn write_done(cfg: &ExperimentConfig, p: &Pending, shared: &Shared, wall_s: f64, device: Device) -> Result<()> {
    let (spec, dir) = (&p.spec, &p.rc.out);
    let mut summary = json!({"run": spec.name(), "wall_s": wall_s, "machine": crate::device::describe_host(device)});
    if p.rc.threads > 0 {
        summary["threads"] = json!(p.rc.threads);
    }
    // `wall_s` is this process's time: a run resumed from a checkpoint spent more. Its metrics
    // hold every step's and its evaluation's own time, whichever process made them (pi_init's
    // evaluation comes before step 0 and is not among them).
    if p.resume {
        summary["resumed"] = json!(true);
    }
    let rows = crate::metrics::read_jsonl(&dir.join("metrics.jsonl")).with_context(|| format!("{}: metrics", dir.display()))?;
    let timed: f64 = rows.iter().flat_map(|r| ["time/step", "time/eval"].map(|k| r.get(k).and_then(|v| v.as_f64()))).flatten().sum();
    summary["steps_and_evals_s"] = json!(timed);
    // The RM the run trained against, by content: runs of one grid on several machines (an
    // archived grid) can be checked to share it.
    let rm = if spec.method() == Method::PretrainedRm { shared.pretrained_rm.as_ref() } else { Some(&shared.proxy_rm) };
    if let Some(f) = rm.and_then(|rm| shared.fingerprints.get(rm)) {
        summary["rm_sha256"] = f["sha256"].clone();
    }
    if let (true, Some(t)) = (cfg.rm_accuracy, &shared.test_pairs) {
        let rm = match spec.method() {
            Method::PretrainedRm => shared.pretrained_rm.clone().unwrap_or_default(),
            _ => shared.proxy_rm.clone(),
        };
        let before = shared.accuracy_before.get(&rm).copied().unwrap_or(f64::NAN);
        let after = run_rm_accuracy_after(dir, t, cfg.eval_batch, device)?;
        let mut acc = json!({"method": spec.method().name(), "algo": algo_key(spec.algo), "seed": spec.seed,
                         "before": before, "after": after.accuracy, "pairs": after.pairs});
        if let Some(a) = after.attention {
            acc["attention"] = a.to_json();
        }
        write_atomic(&dir.join("rm_accuracy.json"), serde_json::to_string_pretty(&acc)?.as_bytes())?;
        summary["rm_accuracy"] = acc;
    }
    write_atomic(&dir.join("done.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(())
}
