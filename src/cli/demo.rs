use crate::experiment::grid::{run_grid, ExperimentConfig};
use anyhow::Result;

/// The built-in presets (the same files as configs/).
const DEMO: &str = include_str!("../../configs/demo.toml");
const SMOKE: &str = include_str!("../../configs/demo-smoke.toml");
const FULL: &str = include_str!("../../configs/experiment.toml");

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A tiny budget (a few minutes): checks the whole pipeline end to end.
    #[arg(long, conflicts_with = "full")]
    pub smoke: bool,
    /// The paper-style grid (every method, RLOO and GRPO, 3 seeds): for a GPU or a long CPU run.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub run: super::RunArgs,
    /// Runs side by side on the CPU (= --set jobs=N): each gets cores / N threads.
    #[arg(long)]
    pub jobs: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    let (text, origin) = match (a.smoke, a.full) {
        (true, _) => (SMOKE, "configs/demo-smoke.toml (built in)"),
        (_, true) => (FULL, "configs/experiment.toml (built in)"),
        _ => (DEMO, "configs/demo.toml (built in)"),
    };
    let sets = a.run.sets(&[], &[("jobs", a.jobs)]);
    let mut cfg: ExperimentConfig = crate::config::load_str(text, origin, &sets)?;
    resolve_in_checkout(&mut cfg);
    let quiet = a.run.quiet;
    if !quiet {
        let runs = cfg.runs();
        eprintln!(
            "demo: {} runs ({} x {} x seeds {:?}) on the overoptimization testbed, into {}",
            runs.len(),
            cfg.methods.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
            cfg.algos.iter().map(|a| crate::experiment::arm::algo_key(*a)).collect::<Vec<_>>().join(", "),
            cfg.seeds,
            cfg.out.display()
        );
    }
    let o = run_grid(&cfg, !quiet)?;
    super::experiment::print_outcome(&o);
    if !a.smoke && !a.full {
        println!(
            "\nThe demo runs {} seed(s) per method at a small budget: it shows overoptimization and R2M beside vanilla, \
             it cannot rank them where the intervals overlap. The answer over 3 seeds of every method and ablation: \
             docs/results.md (in the repository).",
            cfg.seeds.len()
        );
    }
    Ok(())
}

/// The presets name the archive they take their pairs from relative to the repository: run from
/// elsewhere, the binary finds it in the checkout it was built from, or makes the pairs itself.
fn resolve_in_checkout(cfg: &mut ExperimentConfig) {
    if let Some(from) = cfg.proxy.pairs_from.clone().filter(|p| p.is_relative() && !p.exists()) {
        let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&from);
        cfg.proxy.pairs_from = built.exists().then_some(built);
    }
}
