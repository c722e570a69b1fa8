use crate::rl::config::RlConfig;
use crate::rl::{sources, trainer};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (see configs/rl.toml); flags and --set override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any config key: --set rl.algo="grpo" (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// = --set out=...
    #[arg(long)]
    pub out: Option<String>,
    /// = --set seed=...
    #[arg(long)]
    pub seed: Option<u64>,
    /// = --set device=...
    #[arg(long)]
    pub device: Option<String>,
    /// Continue from the out folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sets = super::flag_sets(&[("out", a.out.as_ref()), ("device", a.device.as_ref())], &[("seed", a.seed)], &a.sets);
    let cfg: RlConfig = crate::config::load(a.config.as_deref(), &sets)?;
    cfg.validate()?;
    let device = crate::device::parse(&cfg.device)?;
    let gold = sources::gold_metrics(&cfg, device)?;
    let mut r = trainer::build(&cfg, |d_policy| sources::reward_source(&cfg, d_policy, device), gold, device)?;
    let path = trainer::run(&mut r, a.resume, !a.quiet)?;
    println!("metrics: {}", path.display());
    Ok(())
}
