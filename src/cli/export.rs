use super::ModelArgs;
use crate::model::export::export_hf;
use crate::model::CausalLm;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Export the policy of an `r2m rl` run instead: its folder (config.toml + checkpoint/).
    /// The run's initial policy is loaded, its trainable weights (LoRA merged) replaced by the
    /// checkpoint's.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let (model, tok) = match &a.run {
        None => {
            let l = CausalLm::load_path(&a.model.model, tch::Device::Cpu).with_context(|| format!("loading model {}", a.model.model))?;
            (l.model, l.tokenizer)
        }
        Some(run) => {
            let (_, m, tok, _) = crate::rl::trainer::load_run(run, tch::Device::Cpu)?;
            (m, tok)
        }
    };
    export_hf(&model, &tok, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
