use crate::data::{self, LoadOptions, Text};
use crate::reward::source::rm_text;
use crate::reward::RewardModel;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The reward model.
    #[arg(long)]
    pub model: String,
    /// Prompt-completion records (JSONL or Parquet): {"prompt": .., "completion": ..}, plain or
    /// conversational (TRL's prompt-completion format).
    #[arg(long)]
    pub data: PathBuf,
    /// Write one {"score": ..} JSON line per record here (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub skip_invalid: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(a: Args) -> Result<()> {
    let device = crate::device::parse(&a.device)?;
    let rm = RewardModel::load(&a.model, 0, device).with_context(|| format!("loading {}", a.model))?;
    let d = data::load_completions(&a.data, &LoadOptions { skip_invalid: a.skip_invalid })?;
    let mut texts = vec![];
    let mut chat = None;
    for ex in &d.items {
        let is_chat = matches!(ex.completion, Text::Chat(_));
        if *chat.get_or_insert(is_chat) != is_chat {
            bail!("{}: mixes plain and conversational records", ex.origin);
        }
        // The same rendering as RL scoring: [prompt messages.., assistant: completion] through
        // the RM's chat template, or prompt + completion for plain text.
        let completion = match &ex.completion {
            Text::Plain(s) => s.clone(),
            Text::Chat(m) => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
        };
        texts.push(rm_text(&rm, &ex.prompt, &completion)?);
    }
    let special = texts.first().map(|t| t.1).unwrap_or(true);
    let texts: Vec<String> = texts.into_iter().map(|t| t.0).collect();
    let scores = rm.score_texts(&texts, special, a.max_length, a.batch)?;
    let scores = Vec::<f32>::try_from(scores)?;
    let mut w: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout()),
    };
    for (ex, s) in d.items.iter().zip(scores) {
        writeln!(w, "{}", serde_json::json!({"line": ex.origin.line, "score": s}))?;
    }
    if !d.skipped.is_empty() {
        eprintln!("skipped {} malformed records", d.skipped.len());
    }
    Ok(())
}
