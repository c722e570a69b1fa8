use super::ModelArgs;
use crate::model::export::export_hf;
use crate::model::CausalLm;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let loaded = CausalLm::load_path(&a.model.model, tch::Device::Cpu).with_context(|| format!("loading model {}", a.model.model))?;
    export_hf(&loaded.model, &loaded.tokenizer, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
