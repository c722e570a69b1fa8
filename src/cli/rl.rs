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
    #[command(flatten)]
    pub dist: super::DistArgs,
    /// = --set seed=...
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the out folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let sets = a.run.sets(&[], &[("seed", a.seed)]);
    let cfg: RlConfig = crate::config::load(a.config.as_deref(), &sets)?;
    cfg.validate()?;
    if a.dist.rm_ranks > 0 {
        use crate::model::precision::Precision;
        let f64_set = [("policy.dtype", &cfg.policy.dtype), ("reward.dtype", &cfg.reward.dtype)]
            .into_iter()
            .find(|(what, v)| Precision::resolve(v, tch::Device::Cpu, what).is_ok_and(|p| p == Precision::F64));
        if let Some((what, _)) = f64_set {
            anyhow::bail!("--rm-ranks: {what} = \"f64\": the reward-model rank sends H_last and scores as f32; run f64 without --rm-ranks");
        }
    }
    if a.dist.launch_if_asked(&cfg.out)?.is_some() {
        return Ok(());
    }
    let device = crate::device::parse(&cfg.device)?;
    let dist = a.dist.join(device)?;
    if let Some(d) = dist.as_ref().filter(|d| d.is_rm_rank()) {
        return crate::sources::serve_reward_model(&cfg, d);
    }
    let link = dist.as_ref().and_then(|d| d.rm_link.clone());
    let mut r = crate::sources::build_run_on(&cfg, device, link.clone())?;
    r.rm_link = link;
    if let Some(d) = dist.as_ref().filter(|d| d.world() > 1) {
        r.data_parallel(d)?;
    }
    let path = trainer::run(&mut r, a.resume, !a.run.quiet)?;
    if dist.as_ref().is_none_or(crate::dist::Dist::is_main) {
        println!("metrics: {}", path.display());
    }
    Ok(())
}
