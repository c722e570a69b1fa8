use crate::reward::train::{run_dist, TrainRmConfig};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (see configs/train-rm.toml); flags and --set override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub run: super::RunArgs,
    #[command(flatten)]
    pub dist: super::DistArgs,
    /// = --set model=...
    #[arg(long)]
    pub model: Option<String>,
    /// = --set data.train=...
    #[arg(long)]
    pub data: Option<String>,
    /// = --set data.eval=...
    #[arg(long)]
    pub eval_data: Option<String>,
    /// = --set seed=...
    #[arg(long)]
    pub seed: Option<u64>,
    /// = --set data.skip_invalid=true
    #[arg(long)]
    pub skip_invalid: bool,
    /// Continue from the out folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
}

pub fn run_cli(a: Args) -> Result<()> {
    let mut flags = a.run.clone();
    if a.skip_invalid {
        flags.sets.insert(0, "data.skip_invalid=true".into());
    }
    let sets = flags
        .sets(&[("model", a.model.as_ref()), ("data.train", a.data.as_ref()), ("data.eval", a.eval_data.as_ref())], &[("seed", a.seed)]);
    let cfg: TrainRmConfig = crate::config::load(a.config.as_deref(), &sets)?;
    if a.dist.launch_if_asked(&cfg.out)?.is_some() {
        return Ok(());
    }
    if a.dist.rm_ranks > 0 {
        anyhow::bail!("--rm-ranks {}: train-rm trains the reward model on every rank (--rm-ranks is for rl)", a.dist.rm_ranks);
    }
    let dist = a.dist.join(crate::device::parse(&cfg.device)?)?;
    let s = run_dist(&cfg, a.resume, !a.run.quiet, dist.as_ref())?;
    if dist.as_ref().is_some_and(|d| !d.is_main()) {
        return Ok(());
    }
    if s.skipped_records > 0 {
        eprintln!("skipped {} malformed records (--skip-invalid)", s.skipped_records);
    }
    println!(
        "steps {}  train pairs {}  eval pairs {}  eval accuracy {:.4}  eval loss {:.4}\nmodel: {}",
        s.steps,
        s.train_pairs,
        s.eval_pairs,
        s.eval_accuracy,
        s.eval_loss,
        s.model_dir.display()
    );
    Ok(())
}
