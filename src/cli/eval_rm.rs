use crate::data::{self, LoadOptions};
use crate::reward::train::{evaluate, tokenize_pairs};
use crate::reward::RewardModel;
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reward model (an RM folder, or a backbone with a fresh head); not needed with
    /// --feedback-from (the run names its RM).
    #[arg(long, required_unless_present = "feedback_from")]
    pub model: Option<String>,
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
    /// An `r2m rl` run with R2M (or an ablation that reads feedback): evaluate its reward model
    /// (the run's RM + trained cross-attention and head) with the run's final policy's feedback
    /// at w(T), as the paper's Table 3, and what its cross-attention does on these pairs.
    #[arg(long)]
    pub feedback_from: Option<PathBuf>,
    /// With --feedback-from: use freshly initialised R2M modules (accuracy before R2M training).
    #[arg(long)]
    pub untrained: bool,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(run) = &a.feedback_from {
        return run_feedback(&a, run);
    }
    let device = crate::device::parse(&a.device)?;
    let model = a.model.as_deref().context("--model: which reward model to evaluate")?;
    let rm = RewardModel::load(model, 0, device).with_context(|| format!("loading {model}"))?;
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

fn run_feedback(a: &Args, run: &std::path::Path) -> Result<()> {
    use crate::r2m::{
        eval::{feedback_accuracy, Feedback},
        w, R2mSource,
    };
    let device = crate::device::parse(&a.device)?;
    let (cfg, policy, ptok, ck) = crate::rl::trainer::load_run(run, device)?;
    let r2m_cfg = cfg.r2m.clone().context("the run has no [r2m] table: nothing reads feedback")?;
    anyhow::ensure!(r2m_cfg.method.uses_feedback(), "the run's method {} reads no feedback", r2m_cfg.method.name());
    let rm = RewardModel::load(&cfg.reward.model, cfg.seed as i64, device).with_context(|| format!("loading {}", cfg.reward.model))?;
    let mut src = R2mSource::new(r2m_cfg.clone(), rm, policy.config.hidden_size, cfg.seed, a.max_length, a.batch)?;
    if !a.untrained {
        let p = ck.join("reward_source.safetensors");
        use crate::rl::reward_source::RewardSource;
        src.load_state(&crate::model::load::safetensors::read_file(&p)?, &p)?;
    }
    let d = data::load_preferences(&a.data, &LoadOptions { skip_invalid: a.skip_invalid })?;
    let wt = w(cfg.rl.steps, cfg.rl.steps, r2m_cfg.omega);
    let fb = Feedback { policy: &policy, tokenizer: &ptok, chat: cfg.policy.chat };
    let r = feedback_accuracy(&src, Some(fb), &d.items, wt, a.batch)?;
    let (acc, n) = (r.accuracy, r.pairs);
    if a.json {
        let att = r.attention.map(|x| x.to_json());
        println!("{}", serde_json::json!({"accuracy": acc, "pairs": n, "w": wt, "untrained": a.untrained, "run": run, "attention": att}));
    } else {
        println!(
            "pairs {n}  accuracy {acc:.4}  (R2M {}, w(T) = {wt:.3}, feedback from {})",
            if a.untrained { "untrained" } else { "trained" },
            run.display()
        );
        if let Some(x) = r.attention {
            println!(
                "cross-attention: normalised entropy {:.4} (1 = uniform)  ||H_last|| {:.4}  ||H_hat|| {:.4} (ratio {:.4})  score std: phi(H_hat) {:.4}, phi(H_last) {:.4}",
                x.attn_entropy, x.hlast_norm, x.hhat_norm, x.hhat_norm_ratio, x.score_std_hhat, x.score_std_hlast
            );
        }
    }
    Ok(())
}
