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
    let mut sets = vec![];
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    if let Some(m) = &a.model {
        sets.push(format!("model={}", q(m)));
    }
    if let Some(d) = &a.data {
        sets.push(format!("data.train={}", q(d)));
    }
    if let Some(d) = &a.eval_data {
        sets.push(format!("data.eval={}", q(d)));
    }
    if let Some(o) = &a.out {
        sets.push(format!("out={}", q(o)));
    }
    if let Some(s) = a.seed {
        sets.push(format!("seed={s}"));
    }
    if let Some(d) = &a.device {
        sets.push(format!("device={}", q(d)));
    }
    if a.skip_invalid {
        sets.push("data.skip_invalid=true".into());
    }
    sets.extend(a.sets.iter().cloned());
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
