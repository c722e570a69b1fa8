use crate::rl::config::RlConfig;
use crate::rl::trainer;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (see configs/rl.toml); flags and --set override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub run: super::RunArgs,
    /// = --set seed=...
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the out folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    // Many copies of one RL run would write the same folder: refuse what is not data parallel.
    if let Some(env) = crate::dist::Env::from_env()?.filter(|e| e.world > 1) {
        anyhow::bail!(
            "r2m rl runs as one process, but WORLD_SIZE={} is set (rank {}): start it without a launcher (data parallel runs: r2m train-rm --nproc N)",
            env.world,
            env.rank
        );
    }
    let sets = a.run.sets(&[], &[("seed", a.seed)]);
    let cfg: RlConfig = crate::config::load(a.config.as_deref(), &sets)?;
    cfg.validate()?;
    let device = crate::device::parse(&cfg.device)?;
    let mut r = crate::sources::build_run(&cfg, device)?;
    let path = trainer::run(&mut r, a.resume, !a.run.quiet)?;
    println!("metrics: {}", path.display());
    Ok(())
}
