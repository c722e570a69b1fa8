//! `r2m analyze-hidden`: the paper's Figure 1/2 analysis (see `crate::analysis`).
use super::ModelArgs;
use crate::analysis::{analyze, HiddenConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Preference pairs (JSONL or Parquet, TRL formats).
    #[arg(long)]
    pub data: PathBuf,
    /// A reward model (RM folder, or a backbone with a fresh head): adds the correlation of
    /// cos(chosen_i, rejected_i) with |r(chosen_i) - r(rejected_i)| per layer.
    #[arg(long)]
    pub rm: Option<String>,
    /// Analyse the first N pairs of the file.
    #[arg(long, default_value_t = 64)]
    pub max_pairs: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Cut full texts to their first N tokens (pairs left without response tokens are skipped).
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Folder for hidden_similarity.{csv,json} and the plots (PNG + SVG).
    #[arg(long, default_value = "runs/analyze-hidden")]
    pub out: PathBuf,
    /// Skip malformed records (listed in the JSON) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = HiddenConfig {
        model: a.model.model.clone(),
        data: a.data,
        rm: a.rm,
        max_pairs: a.max_pairs,
        batch: a.batch,
        max_length: a.max_length,
        device: crate::device::parse(&a.model.device)?,
        skip_invalid: a.skip_invalid,
        out: a.out,
    };
    let report = analyze(&cfg).with_context(|| format!("analyze-hidden with model {}", cfg.model))?;
    println!(
        "{}: {} pairs, {} layers + embeddings, mean-pooled over response tokens{}",
        report.model,
        report.pairs,
        report.num_layers,
        match &report.rewards {
            Some(r) => format!("; RM accuracy {:.3}, mean |reward gap| {:.4}", r.accuracy, r.mean_abs_gap),
            None => String::new(),
        }
    );
    print!("{}", report.table().to_text());
    if report.rm.is_some() {
        println!("pearson/spearman: corr across pairs of cos(chosen_i, rejected_i) with |r(chosen_i) - r(rejected_i)|");
    }
    if !report.skipped.is_empty() {
        println!("skipped {} pair(s) (listed in the JSON)", report.skipped.len());
    }
    for f in report.write(&cfg.out)? {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
