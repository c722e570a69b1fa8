use crate::experiment::grid::{prepare_only, report_only, run_grid, ExperimentConfig, GridOutcome};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (see configs/experiment.toml); --set overrides its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub run: super::RunArgs,
    /// Runs side by side on the CPU (= --set jobs=N): each gets cores / N threads.
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Only (re)write the report from the run folders already in `out` (and the `archive`'s).
    #[arg(long)]
    pub report_only: bool,
    /// Only make the shared artefacts (gold-labelled pairs, the proxy RM) and print the RMs'
    /// held-out accuracy: to check the proxy before running the grid.
    #[arg(long, conflicts_with = "report_only")]
    pub prepare_only: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sets = a.run.sets(&[], &[("jobs", a.jobs)]);
    let cfg: ExperimentConfig = crate::config::load(a.config.as_deref(), &sets)?;
    if a.report_only {
        // The archive takes the report only when it is written in the grid's own folder (the
        // config file's `out`); a report written elsewhere (`--out DIR`) leaves the archive as it is.
        let own: ExperimentConfig = crate::config::load(a.config.as_deref(), &[])?;
        let r = report_only(&cfg, same_folder(&own.out, &cfg.out), !a.run.quiet)?;
        print_report(&r);
        return Ok(());
    }
    if a.prepare_only {
        let s = prepare_only(&cfg, !a.run.quiet)?;
        let n = match &s.test_pairs {
            Some(t) => std::fs::read_to_string(t)?.lines().filter(|l| !l.trim().is_empty()).count(),
            None => 0,
        };
        for (rm, acc) in &s.accuracy_before {
            let (lo, hi) = crate::experiment::stats::wilson95(*acc, n);
            println!("{rm}: held-out accuracy {acc:.3} on {n} pairs (95% CI {lo:.3}-{hi:.3})");
        }
        if s.accuracy_before.is_empty() {
            println!("proxy: {} (no held-out accuracy: rm_accuracy = false or no held-out pairs)", s.proxy_rm);
        }
        return Ok(());
    }
    let o = run_grid(&cfg, !a.run.quiet)?;
    print_outcome(&o);
    Ok(())
}

/// Whether `a` and `b` name one folder (either may not exist yet).
fn same_folder(a: &std::path::Path, b: &std::path::Path) -> bool {
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => abs(a) == abs(b),
    }
}

pub(crate) fn print_report(r: &crate::experiment::ReportSummary) {
    println!("{}", r.table);
    for v in &r.verdicts {
        println!("- {v}");
    }
    for i in &r.incomplete {
        println!("left out: {} ({})", i.name, i.reason);
    }
    println!("report: {}", r.report_md.display());
    println!("        {}", r.report_html.display());
}

pub(crate) fn print_outcome(o: &GridOutcome) {
    print_report(&o.report);
    println!("{} runs made, {} reused; {:.1} min", o.ran.len(), o.skipped.len(), o.wall_s / 60.0);
}

#[cfg(test)]
mod tests {
    use super::same_folder;

    #[test]
    fn same_folder_compares_what_paths_name_not_how_they_are_spelt() {
        let d = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let runs = d.path().join("runs");
        std::fs::create_dir_all(&runs).unwrap();
        std::fs::create_dir_all(d.path().join("x")).unwrap();
        assert!(same_folder(&runs, &d.path().join("x/../runs")));
        assert!(!same_folder(&runs, &d.path().join("other")));
        // Not made yet: compared as absolute paths.
        assert!(same_folder(std::path::Path::new("not-made/yet"), &cwd.join("not-made/yet")));
        assert!(!same_folder(std::path::Path::new("not-made/yet"), std::path::Path::new("not-made/other")));
    }
}
