use crate::reward::train::{run, TrainRmConfig};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config (see configs/train-rm.toml); flags and --set override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any config key: --set train.lr=3e-5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// = --set model=...
    #[arg(long)]
    pub model: Option<String>,
    /// = --set data.train=...
    #[arg(long)]
    pub data: Option<String>,
    /// = --set data.eval=...
    #[arg(long)]
    pub eval_data: Option<String>,
    /// = --set out=...
    #[arg(long)]
    pub out: Option<String>,
    /// = --set seed=...
    #[arg(long)]
    pub seed: Option<u64>,
    /// = --set device=...
    #[arg(long)]
    pub device: Option<String>,
    /// = --set data.skip_invalid=true
    #[arg(long)]
    pub skip_invalid: bool,
    /// Continue from the out folder's checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run_cli(a: Args) -> Result<()> {
    let mut user = a.sets.clone();
    if a.skip_invalid {
        user.insert(0, "data.skip_invalid=true".into());
    }
    let sets = super::flag_sets(
        &[
            ("model", a.model.as_ref()),
            ("data.train", a.data.as_ref()),
            ("data.eval", a.eval_data.as_ref()),
            ("out", a.out.as_ref()),
            ("device", a.device.as_ref()),
        ],
        &[("seed", a.seed)],
        &user,
    );
    let cfg: TrainRmConfig = crate::config::load(a.config.as_deref(), &sets)?;
    let s = run(&cfg, a.resume, !a.quiet)?;
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
