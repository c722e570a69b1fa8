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
    /// The grid folder (default: the preset's, under runs/).
    #[arg(long)]
    pub out: Option<String>,
    /// cpu, cuda, cuda:N, or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// Runs side by side on the CPU (= --set jobs=N): each gets cores / N threads.
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Override any key of the preset (see configs/demo.toml), e.g. --set run.rl.steps=30.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (text, origin) = match (a.smoke, a.full) {
        (true, _) => (SMOKE, "configs/demo-smoke.toml (built in)"),
        (_, true) => (FULL, "configs/experiment.toml (built in)"),
        _ => (DEMO, "configs/demo.toml (built in)"),
    };
    let sets = super::flag_sets(&[("out", a.out.as_ref()), ("device", a.device.as_ref())], &[("jobs", a.jobs)], &a.sets);
    let cfg: ExperimentConfig = crate::config::load_str(text, origin, &sets)?;
    if !a.quiet {
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
    let o = run_grid(&cfg, !a.quiet)?;
    super::experiment::print_outcome(&o);
    Ok(())
}
