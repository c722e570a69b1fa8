use super::ModelArgs;
use crate::model::export::export_hf;
use crate::model::load::safetensors;
use crate::model::CausalLm;
use anyhow::{ensure, Context, Result};
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
            let cfg: crate::rl::config::RlConfig = crate::config::load(Some(&run.join("config.toml")), &[])?;
            let ck = crate::checkpoint::find_checkpoint(&run.join("checkpoint"))
                .with_context(|| format!("{}: no checkpoint/ folder", run.display()))?;
            let l = CausalLm::load_path(&cfg.policy.model, tch::Device::Cpu)
                .with_context(|| format!("loading the run's initial policy {}", cfg.policy.model))?;
            let mut m = l.model;
            let params = crate::train::apply_trainable(&mut m, &cfg.policy.trainable, cfg.seed as i64)?;
            let path = ck.join("policy.safetensors");
            let saved: std::collections::HashMap<String, tch::Tensor> = safetensors::read_file(&path)?.into_iter().collect();
            let _g = tch::no_grad_guard();
            for (n, p) in &params {
                let s = saved.get(n).with_context(|| format!("{}: lacks '{n}'", path.display()))?;
                ensure!(s.size() == p.size(), "{}: '{n}' has shape {:?}, model has {:?}", path.display(), s.size(), p.size());
                p.shallow_clone().copy_(s);
            }
            (m, l.tokenizer)
        }
    };
    export_hf(&model, &tok, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
