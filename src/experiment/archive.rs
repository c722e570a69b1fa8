//! A grid's results kept in a folder that travels with the code (`archive` in the grid config,
//! e.g. `archive/overopt-t1` in the repository), so that a grid run in several sittings, or on
//! machines whose `runs/` folder does not survive, keeps every finished run.
//!
//! The archive holds what the report needs and what makes the shared artefacts again, never
//! weights or checkpoints:
//! - `runs/{run}/`: a finished run's `config.toml`, `done.json`, `metrics.jsonl`, `eval.jsonl` and
//!   `rm_accuracy.json` (a few hundred kB);
//! - `shared/`: the gold-labelled pairs (`pairs-*.jsonl` with their `.config.json`) the RMs were
//!   trained on, and `rm-fingerprints.json`: the SHA-256 of each shared RM's files and its held-out
//!   accuracy, so that a proxy trained again from the same pairs on another machine is checked
//!   against the one the archived runs trained against;
//! - the report's text and tables (`report.md`, the CSVs, `experiment.toml`) and its plots as PNG
//!   (`report.html` and the SVGs hold the same pictures again and stay in the grid's `out` folder).
//!
//! [`restore_shared`] runs first: it copies the archived pairs into `out/shared/` where missing (the
//! RMs are then trained from them); then [`restore_runs`] copies every archived finished run into
//! `out/` where `out` has no finished copy, after checking that its config is the one the grid
//! would run. The grid then skips
//! those runs as done. [`save`] runs after each finished run and after the report: it copies what is
//! new into the archive (each file written atomically).
use crate::checkpoint::write_atomic;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A finished run's files that the archive keeps (the report reads these; `metrics.csv` is made
/// again from `metrics.jsonl`).
pub const RUN_FILES: [&str; 5] = ["config.toml", "done.json", "metrics.jsonl", "eval.jsonl", "rm_accuracy.json"];
/// The report's files.
const REPORT_FILES: [&str; 5] = ["experiment.toml", "report.md", "results.csv", "runs.csv", "comparisons.csv"];
/// The fingerprints file under `shared/`.
pub const FINGERPRINTS: &str = "rm-fingerprints.json";

/// SHA-256 over a folder's files (names and contents, sorted by name, sub-folders included), hex.
pub fn fingerprint(dir: &Path) -> Result<String> {
    let mut files = vec![];
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let bytes = std::fs::read(dir.join(&rel)).with_context(|| format!("reading {}", dir.join(&rel).display()))?;
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect_files(root, &p, out)?;
        } else if !p.to_string_lossy().ends_with(".tmp") {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    Ok(())
}

/// Copies `from` to `to` atomically unless `to` already holds the same bytes. True if it wrote.
fn copy_file(from: &Path, to: &Path) -> Result<bool> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if std::fs::read(to).ok().as_deref() == Some(&bytes[..]) {
        return Ok(false);
    }
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_atomic(to, &bytes)?;
    Ok(true)
}

/// Is `name` one of the shared files the archive keeps (the pairs and their settings)?
fn is_shared_file(name: &str) -> bool {
    name.starts_with("pairs-") && (name.ends_with(".jsonl") || name.ends_with(".config.json"))
}

/// The folders of finished runs under `dir` (those with `done.json`), by name.
fn finished_runs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v = vec![];
    if !dir.exists() {
        return Ok(v);
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.join("done.json").exists() {
            v.push((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), p));
        }
    }
    v.sort();
    Ok(v)
}

/// Copies the archive's pairs (and their settings) into `out/shared/` where missing; returns
/// their names.
pub fn restore_shared(archive: &Path, out: &Path) -> Result<Vec<String>> {
    copy_shared(&archive.join("shared"), &out.join("shared"), true)
}

/// Copies the pairs files of the folder `from` into `to` (only those `to` lacks, with
/// `missing_only`); returns the names copied, sorted.
fn copy_shared(from: &Path, to: &Path, missing_only: bool) -> Result<Vec<String>> {
    let mut v = vec![];
    if from.exists() {
        for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
            let p = e?.path();
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let dest = to.join(&name);
            if is_shared_file(&name) && !(missing_only && dest.exists()) && copy_file(&p, &dest)? {
                v.push(name);
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Copies every archived finished run into the grid folder `out` where `out` has no finished copy;
/// returns their names. `check(name, archived_run_dir)` is called for each before it is copied:
/// false skips the run (the grid runs it again, and `out` holds that run's progress); an error
/// (a config that differs from what the grid would run) stops the restore.
pub fn restore_runs(archive: &Path, out: &Path, mut check: impl FnMut(&str, &Path) -> Result<bool>) -> Result<Vec<String>> {
    let mut v = vec![];
    for (name, dir) in finished_runs(&archive.join("runs"))? {
        let to = out.join(&name);
        if to.join("done.json").exists() {
            continue;
        }
        if !check(&name, &dir)? {
            continue;
        }
        if to.exists() {
            // An unfinished copy of a run that finished elsewhere: the archived one wins.
            std::fs::remove_dir_all(&to).with_context(|| format!("clearing {}", to.display()))?;
        }
        copy_run(&dir, &to)?;
        v.push(name);
    }
    Ok(v)
}

/// Copies a run's [`RUN_FILES`], `done.json` last (a copy cut short is not taken for a finished
/// run). True if any file changed.
fn copy_run(from: &Path, to: &Path) -> Result<bool> {
    let mut wrote = false;
    for f in RUN_FILES.iter().filter(|f| **f != "done.json").chain(["done.json"].iter()) {
        if from.join(f).exists() {
            wrote |= copy_file(&from.join(f), &to.join(f))?;
        }
    }
    Ok(wrote)
}

/// Copies into the archive what is new in the grid folder `out`: the pairs of `out/shared/`,
/// `fingerprints` (RM path -> {"sha256", "accuracy"}) merged into `shared/rm-fingerprints.json`,
/// every finished run, and the report's files. Returns the runs it archived.
pub fn save(archive: &Path, out: &Path, fingerprints: &BTreeMap<String, Value>) -> Result<Vec<String>> {
    copy_shared(&out.join("shared"), &archive.join("shared"), false)?;
    if !fingerprints.is_empty() {
        let path = archive.join("shared").join(FINGERPRINTS);
        let mut all = read_fingerprints(archive)?;
        for (k, v) in fingerprints {
            all.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let text = serde_json::to_string_pretty(&all)? + "\n";
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::create_dir_all(archive.join("shared"))?;
            write_atomic(&path, text.as_bytes())?;
        }
    }
    let mut saved = vec![];
    for (name, dir) in finished_runs(out)? {
        if copy_run(&dir, &archive.join("runs").join(&name))? {
            saved.push(name);
        }
    }
    for f in REPORT_FILES {
        let from = out.join(f);
        if from.exists() {
            copy_file(&from, &archive.join(f))?;
        }
    }
    let plots = out.join("plots");
    if plots.exists() {
        for e in std::fs::read_dir(&plots).with_context(|| format!("reading {}", plots.display()))? {
            let p = e?.path();
            if p.is_file() && p.extension().is_some_and(|e| e == "png") {
                copy_file(&p, &archive.join("plots").join(p.file_name().unwrap_or_default()))?;
            }
        }
    }
    Ok(saved)
}

/// The archive's `shared/rm-fingerprints.json` (empty when absent).
pub fn read_fingerprints(archive: &Path) -> Result<BTreeMap<String, Value>> {
    let path = archive.join("shared").join(FINGERPRINTS);
    match std::fs::read_to_string(&path) {
        Ok(s) => serde_json::from_str(&s).with_context(|| format!("{}: invalid JSON", path.display())),
        Err(_) => Ok(BTreeMap::new()),
    }
}

/// Compares the RMs made here with the ones the archive's runs trained against: one line per RM
/// whose files differ (same path, other SHA-256), saying so with both accuracies.
pub fn fingerprint_mismatches(archive: &Path, now: &BTreeMap<String, Value>) -> Result<Vec<String>> {
    let had = read_fingerprints(archive)?;
    let mut v = vec![];
    for (rm, cur) in now {
        let Some(old) = had.get(rm) else { continue };
        let (a, b) = (old["sha256"].as_str().unwrap_or(""), cur["sha256"].as_str().unwrap_or(""));
        if a != b {
            v.push(format!(
                "{rm}: made here with SHA-256 {} (held-out accuracy {}), the archived runs trained against {} (accuracy {}): \
                 the same pairs and settings, other float rounding (another CPU?)",
                &b[..b.len().min(12)],
                cur["accuracy"],
                &a[..a.len().min(12)],
                old["accuracy"]
            ));
        }
    }
    Ok(v)
}

/// Bails if `archive` lies inside `out` or the other way round (each would copy into itself).
pub fn check_paths(archive: &Path, out: &Path) -> Result<()> {
    let norm = |p: &Path| p.components().filter(|c| *c != std::path::Component::CurDir).collect::<PathBuf>();
    let (a, o) = (norm(archive), norm(out));
    if a.starts_with(&o) || o.starts_with(&a) {
        bail!("archive = {:?} and out = {:?}: one lies inside the other; choose separate folders", archive, out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn save_then_restore_round_trips_finished_runs_and_pairs_only() {
        let d = tempfile::tempdir().unwrap();
        let (out, arch) = (d.path().join("grid"), d.path().join("archive"));
        write(&out.join("shared/pairs-train.jsonl"), "{}\n");
        write(&out.join("shared/pairs-train.config.json"), "{}");
        write(&out.join("shared/proxy-rm/model/model.safetensors"), "weights");
        for f in RUN_FILES {
            write(&out.join("vanilla-grpo-s0").join(f), f);
        }
        write(&out.join("vanilla-grpo-s0/checkpoint/step-9/policy.safetensors"), "big");
        write(&out.join("r2m-grpo-s0/metrics.jsonl"), "{}\n"); // unfinished: no done.json
        write(&out.join("report.md"), "# report");
        write(&out.join("plots/gold.png"), "png");
        let fp = BTreeMap::from([("grid/shared/proxy-rm/model".to_string(), serde_json::json!({"sha256": "ab", "accuracy": 0.7}))]);
        assert_eq!(save(&arch, &out, &fp).unwrap(), vec!["vanilla-grpo-s0"]);
        // A second save with nothing new writes nothing.
        assert!(save(&arch, &out, &fp).unwrap().is_empty());
        assert!(arch.join("runs/vanilla-grpo-s0/metrics.jsonl").exists());
        assert!(!arch.join("runs/vanilla-grpo-s0/checkpoint").exists(), "no weights in the archive");
        assert!(!arch.join("runs/r2m-grpo-s0").exists(), "only finished runs");
        assert!(!arch.join("shared/proxy-rm").exists(), "no RM weights in the archive");
        assert!(arch.join("shared/pairs-train.jsonl").exists() && arch.join("report.md").exists() && arch.join("plots/gold.png").exists());
        assert_eq!(read_fingerprints(&arch).unwrap(), fp);

        // A fresh machine: an empty grid folder, except an unfinished copy of the archived run.
        let fresh = d.path().join("fresh");
        write(&fresh.join("vanilla-grpo-s0/metrics.jsonl"), "partial");
        let mut checked = vec![];
        assert_eq!(restore_shared(&arch, &fresh).unwrap(), vec!["pairs-train.config.json", "pairs-train.jsonl"]);
        let r = restore_runs(&arch, &fresh, |name, dir| {
            checked.push((name.to_string(), dir.to_path_buf()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(r, vec!["vanilla-grpo-s0"]);
        assert_eq!(checked, vec![("vanilla-grpo-s0".to_string(), arch.join("runs/vanilla-grpo-s0"))]);
        for f in RUN_FILES {
            assert_eq!(std::fs::read_to_string(fresh.join("vanilla-grpo-s0").join(f)).unwrap(), f);
        }
        // Nothing to restore the second time; a failing check stops a restore and copies nothing.
        assert!(restore_shared(&arch, &fresh).unwrap().is_empty());
        assert!(restore_runs(&arch, &fresh, |_, _| Ok(true)).unwrap().is_empty());
        let other = d.path().join("other");
        let e = restore_runs(&arch, &other, |name, _| bail!("{name}: other config")).unwrap_err();
        assert!(format!("{e:#}").contains("vanilla-grpo-s0: other config"));
        assert!(!other.join("vanilla-grpo-s0").exists());
    }

    #[test]
    fn fingerprints_tell_apart_rms_that_differ_and_keep_the_first() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("rm/model/model.safetensors"), "a");
        write(&d.path().join("rm/model/config.json"), "{}");
        let a = fingerprint(&d.path().join("rm")).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, fingerprint(&d.path().join("rm")).unwrap());
        write(&d.path().join("rm/model/model.safetensors"), "b");
        let b = fingerprint(&d.path().join("rm")).unwrap();
        assert_ne!(a, b);
        let arch = d.path().join("archive");
        let fp = |s: &str| BTreeMap::from([("rm".to_string(), serde_json::json!({"sha256": s, "accuracy": 0.7}))]);
        std::fs::create_dir_all(&arch).unwrap();
        save(&arch, &d.path().join("none"), &fp(&a)).unwrap();
        assert!(fingerprint_mismatches(&arch, &fp(&a)).unwrap().is_empty());
        let m = fingerprint_mismatches(&arch, &fp(&b)).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("rm: made here with SHA-256 ") && m[0].contains(&a[..12]), "{}", m[0]);
        // The archive keeps the fingerprint its runs trained against.
        save(&arch, &d.path().join("none"), &fp(&b)).unwrap();
        assert_eq!(read_fingerprints(&arch).unwrap(), fp(&a));
    }

    #[test]
    fn archive_and_out_must_be_apart() {
        assert!(check_paths(Path::new("archive/x"), Path::new("runs/x")).is_ok());
        assert!(check_paths(Path::new("runs/x/archive"), Path::new("runs/x")).is_err());
        assert!(check_paths(Path::new("runs/x"), Path::new("./runs/x/")).is_err());
    }
}
