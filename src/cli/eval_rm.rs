use crate::data::{self, LoadOptions};
use crate::reward::train::{evaluate, tokenize_pairs};
use crate::reward::RewardModel;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reward model (an RM folder, or a backbone with a fresh head).
    #[arg(long)]
    pub model: String,
    /// Preference pairs (JSONL or Parquet, TRL formats).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub skip_invalid: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    let rm = RewardModel::load(&a.model, 0, device).with_context(|| format!("loading {}", a.model))?;
    let d = data::load_preferences(&a.data, &LoadOptions { skip_invalid: a.skip_invalid })?;
    let pairs = tokenize_pairs(&rm, &d.items, a.max_length)?;
    let (acc, loss, n) = evaluate(&rm, &pairs, a.batch)?;
    if a.json {
        println!("{}", serde_json::json!({"accuracy": acc, "loss": loss, "pairs": n, "skipped": d.skipped.len()}));
    } else {
        println!("pairs {n}  accuracy {acc:.4}  BT loss {loss:.4}");
        if !d.skipped.is_empty() {
            println!("skipped {} malformed records", d.skipped.len());
        }
    }
    Ok(())
}
