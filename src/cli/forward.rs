use super::{render_prompt, ModelArgs};
use crate::model::load::safetensors::write_file;
use crate::model::CausalLm;
use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The input text.
    #[arg(long)]
    pub text: String,
    /// Wrap the text as a user message in the model's chat template (with the generation prompt).
    #[arg(long)]
    pub chat: bool,
    /// Output safetensors file: `logits` [S, V], `hidden_states` [L+1, S, D] (HF order), `input_ids` [S].
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(!a.text.is_empty(), "--text is empty");
    let device = crate::device::parse(&a.model.device)?;
    let loaded = CausalLm::load_path(&a.model.model, device).with_context(|| format!("loading model {}", a.model.model))?;
    let (model, tok) = (loaded.model, loaded.tokenizer);
    let text = render_prompt(&tok, &a.text, a.chat)?;
    // A chat template carries its own special tokens (transformers: add_special_tokens=False).
    let ids: Vec<i64> = tok.encode(&text, !a.chat)?.into_iter().map(i64::from).collect();
    let s = ids.len() as i64;
    let ids_t = Tensor::from_slice(&ids).view([1, s]);
    let mask = ids_t.ones_like();
    let _guard = tch::no_grad_guard();
    let h = model.forward_hidden(&ids_t, &mask, true)?;
    let logits = model.logits(&h.last).squeeze_dim(0).to_kind(Kind::Float);
    let all = Tensor::stack(&h.all.context("all hidden states were requested")?, 0).squeeze_dim(1).to_kind(Kind::Float);
    write_file(&a.out, &[("logits".into(), logits), ("hidden_states".into(), all), ("input_ids".into(), Tensor::from_slice(&ids))])?;
    eprintln!("wrote {} ({} tokens)", a.out.display(), s);
    Ok(())
}
