use super::{render_prompt, ModelArgs};
use crate::model::generate::{generate_stream, GenerateConfig, Sampling};
use crate::model::CausalLm;
use anyhow::{ensure, Context, Result};
use std::io::Write;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: i64,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<i64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (prompt ids, response ids, text, per-token log-probs) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Compute precision: auto (bf16 autocast on CUDA, f32 on the CPU), f32, bf16 or f64 (CPU).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(!a.prompt.is_empty(), "--prompt is empty");
    let device = crate::device::parse(&a.model.device)?;
    let precision = crate::model::precision::Precision::resolve(&a.dtype, device, "--dtype")?;
    let loaded = CausalLm::load_path(&a.model.model, device).with_context(|| format!("loading model {}", a.model.model))?;
    let (mut model, tok) = (loaded.model, loaded.tokenizer);
    model.set_precision(precision);
    let text = render_prompt(&tok, &a.prompt, a.chat)?;
    // A chat template carries its own special tokens (transformers: add_special_tokens=False).
    let ids: Vec<i64> = tok.encode(&text, !a.chat)?.into_iter().map(i64::from).collect();
    let cfg = GenerateConfig {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling::from_args(a.temperature, a.top_k, a.top_p)?,
        seed: a.seed,
        eos_ids: tok.eos_ids().into_iter().map(i64::from).collect(),
        pad_id: tok.pad_id() as i64,
        return_hidden: false,
        return_trunk: None,
        stop_check_every: 1,
        pack_weights: None,
        cpu_kernels: true,
    };
    let mut out_ids: Vec<u32> = vec![];
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let stream = !a.json;
    let eos = cfg.eos_ids.clone();
    let g = generate_stream(&model, std::slice::from_ref(&ids), &cfg, &mut |_, t| {
        if !stream {
            return;
        }
        let id = t.int64_value(&[0]);
        if eos.contains(&id) {
            return;
        }
        out_ids.push(id as u32);
        // Decode everything so far and print the new suffix (byte-level BPE pieces may be partial).
        if let Ok(s) = tok.decode(&out_ids, true) {
            if s.len() > printed && s.is_char_boundary(printed) && !s.ends_with('\u{FFFD}') {
                let _ = write!(stdout, "{}", &s[printed..]);
                let _ = stdout.flush();
                printed = s.len();
            }
        }
    })?;
    let resp = g.response(0);
    let n = resp.len() as i64;
    let lps: Vec<f32> = Vec::<f32>::try_from(g.logprobs.get(0).narrow(0, 0, n))?;
    let text_ids: Vec<u32> = resp.iter().filter(|i| !cfg.eos_ids.contains(i)).map(|&i| i as u32).collect();
    let text = tok.decode(&text_ids, true)?;
    if a.json {
        let v = serde_json::json!({
            "prompt_ids": ids, "ids": resp, "text": text, "logprobs": lps,
            "finished": resp.last().is_some_and(|i| cfg.eos_ids.contains(i)),
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        if text.len() > printed {
            print!("{}", &text[printed.min(text.len())..]);
        }
        println!();
    }
    Ok(())
}
