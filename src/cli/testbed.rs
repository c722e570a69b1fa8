use crate::model::CausalLm;
use crate::testbed::pairs::{make_pairs, write_jsonl, Noise, PairsConfig};
use crate::testbed::prompts::{generate_split, write_jsonl as write_prompts, Split};
use crate::testbed::{Gold, GoldConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Sample two pi_init responses per testbed prompt, label them with the gold reward (with
    /// noise), and write a conversational preference JSONL for `train-rm`.
    MakePairs(MakePairs),
    /// Write the testbed's prompts (train or test split) as prompt-only JSONL.
    Prompts(Prompts),
}

#[derive(clap::Args, Debug)]
pub struct MakePairs {
    #[arg(long)]
    pub out: PathBuf,
    /// pi_init.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    #[arg(long, default_value_t = 1000)]
    pub n_prompts: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: i64,
    /// Flip each label with this probability (Coste et al.: 0.25).
    #[arg(long, default_value_t = 0.25)]
    pub flip: f64,
    /// Instead of flips: label by Bradley-Terry sampling from sigmoid((g_a - g_b) / T).
    #[arg(long)]
    pub bt_temperature: Option<f64>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::Args, Debug)]
pub struct Prompts {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Prompts(p) => {
            let v = generate_split(p.split.into(), p.n, 0)?;
            write_prompts(&p.out, &v)?;
            eprintln!("wrote {} prompts to {}", v.len(), p.out.display());
            Ok(())
        }
        Cmd::MakePairs(m) => {
            let device = crate::device::parse(&m.device)?;
            let loaded = CausalLm::load_path(&m.model, device).with_context(|| format!("loading {}", m.model))?;
            let gold = Gold::load(GoldConfig::default(), device)?;
            let noise = match m.bt_temperature {
                Some(t) => Noise::Bt { temperature: t },
                None => Noise::Flip { p: m.flip },
            };
            anyhow::ensure!((0.0..=0.5).contains(&m.flip), "--flip {} must be in [0, 0.5]", m.flip);
            let cfg = PairsConfig {
                split: m.split.into(),
                n_prompts: m.n_prompts,
                seed: m.seed,
                temperature: m.temperature,
                max_new_tokens: m.max_new_tokens,
                batch: m.batch,
                noise,
            };
            let bar = crate::reward::train::progress_bar(true, m.n_prompts as u64, 0);
            let (pairs, dropped) = make_pairs(&loaded.model, &loaded.tokenizer, &gold, &cfg, |n| {
                if let Some(b) = &bar {
                    b.inc(n as u64);
                }
            })?;
            if let Some(b) = &bar {
                b.finish();
            }
            write_jsonl(&m.out, &pairs)?;
            let flipped = pairs.iter().filter(|p| p.flipped).count();
            println!(
                "wrote {} pairs to {} ({} dropped: identical or tied; {} labels flipped by noise)",
                pairs.len(),
                m.out.display(),
                dropped,
                flipped
            );
            Ok(())
        }
    }
}
