//! The command line: clap definitions and one module per subcommand. `main` only parses, calls
//! `run` and prints the error chain.
mod analyze_hidden;
mod demo;
mod eval_rm;
mod experiment;
mod export;
mod forward;
mod generate;
mod rl;
mod score;
mod testbed;
mod train_rm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "r2m", version, about = "RLHF in Rust, with R2M (Real-Time Aligned Reward Model)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The main job: R2M against vanilla RLOO on the overoptimization testbed (makes the proxy RM,
    /// runs the grid, prints the table and writes the report). --smoke: minutes; --full: the
    /// paper-style grid.
    Demo(demo::Args),
    /// A grid of RL runs (methods x algorithms x seeds) on shared artefacts, resumable, then the
    /// report (tables with 95% CIs, plots, Markdown + HTML).
    Experiment(experiment::Args),
    /// Generate text from a prompt (streams to the terminal; --json prints ids, text and log-probs).
    Generate(generate::Args),
    /// One forward pass: write logits [S, V] and hidden_states [L+1, S, D] to a safetensors file.
    Forward(forward::Args),
    /// Write a model (HF folder or GGUF), or the policy of an `r2m rl` run, as an HF folder (f32
    /// safetensors, LoRA merged) that transformers loads.
    Export(export::Args),
    /// Train a reward model with the Bradley-Terry loss on preference pairs (TOML config + flags).
    TrainRm(train_rm::Args),
    /// RL fine-tuning: RLOO, GRPO, REINFORCE++ or ReMax against a reward model, an ensemble, the
    /// testbed's gold, or R2M (TOML config + flags).
    Rl(rl::Args),
    /// Score prompt/completion records with a reward model (one JSON line per record).
    Score(score::Args),
    /// The overoptimization testbed: prompts and gold-labelled preference pairs.
    Testbed(testbed::Args),
    /// Accuracy of a reward model on preference pairs.
    EvalRm(eval_rm::Args),
    /// Hidden-state similarity of chosen vs rejected responses per layer (paper Fig. 1/2), and its
    /// correlation with reward gaps when --rm is given; table, CSV, JSON and plots.
    AnalyzeHidden(analyze_hidden::Args),
}

/// Options shared by every subcommand that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// An HF folder (config.json + *.safetensors + tokenizer.json), a .gguf file, an alias:
    /// smollm2-135m-instruct, all-minilm-l6-v2 (made by scripts/bootstrap.sh), or a hub id
    /// org/name[@revision] in the local Hugging Face cache.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    /// cpu, cuda, cuda:N, or auto (CUDA when a GPU is usable).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// The flags every config-driven subcommand (`rl`, `train-rm`, `experiment`, `demo`) shares; each
/// named flag is a shorthand for a `--set` of the config key it names.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Override any config key (repeatable), as a TOML value: --set rl.algo="grpo".
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The output folder (= --set out=...).
    #[arg(long)]
    pub out: Option<String>,
    /// cpu, cuda, cuda:N, or auto (= --set device=...).
    #[arg(long)]
    pub device: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of the commands that run data parallel on many processes.
#[derive(clap::Args, Debug, Clone)]
pub struct DistArgs {
    /// Run N data parallel ranks on this machine: r2m starts them, writes a log per rank to
    /// <out>/logs/, and ends the job at the first rank that fails. Leave it out under torchrun
    /// or Slurm, which set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT themselves.
    #[arg(long, value_name = "N")]
    pub nproc: Option<usize>,
    /// Seconds a rank waits for the others: to join at start, and in every collective.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub dist_timeout: u64,
    /// ZeRO stage 1: shard AdamW's moments over the ranks, so that each holds 1/N of them (the
    /// same updates; checkpoints hold the whole moments and resume with or without it).
    #[arg(long)]
    pub zero1: bool,
    /// Give the reward model a rank of its own (the job's last): the policy's ranks send it the
    /// texts to score and get back each response's H_last and score (`rl` only; 0 or 1).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub rm_ranks: usize,
}

impl DistArgs {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.dist_timeout.max(1))
    }

    /// Joins the job the torchrun environment describes (`None`: one process), with `--zero1`:
    /// over NCCL when this rank's `device` is a GPU, else Gloo.
    pub fn join(&self, device: tch::Device) -> Result<Option<crate::dist::Dist>> {
        let dist = crate::dist::Dist::from_env(self.timeout(), self.rm_ranks, device)?;
        let several = dist.as_ref().is_some_and(|d| d.world() > 1);
        if self.zero1 && !several {
            anyhow::bail!("--zero1 shards the optimiser over the ranks of a data parallel job: start several (--nproc N, torchrun)");
        }
        if self.rm_ranks > 0 && dist.is_none() {
            anyhow::bail!("--rm-ranks {}: the reward model's rank is one of the job's: start several (--nproc N, torchrun)", self.rm_ranks);
        }
        Ok(dist.map(|mut d| {
            d.zero1 = self.zero1;
            d
        }))
    }

    /// With `--nproc N` (N > 1), outside a launcher: starts N copies of this very command line
    /// (without `--nproc`) as ranks, supervises them, and returns `Some(())` once all finished.
    /// Returns `None` when this process should do the work itself (one process, or a rank).
    pub fn launch_if_asked(&self, out: &std::path::Path) -> Result<Option<()>> {
        let Some(n) = self.nproc else { return Ok(None) };
        if std::env::var_os("WORLD_SIZE").is_some() {
            anyhow::bail!("--nproc {n}: WORLD_SIZE is already set (a launcher such as torchrun started this process); leave --nproc out");
        }
        if n == 0 {
            anyhow::bail!("--nproc 0: a job has at least one rank");
        }
        if n == 1 {
            return Ok(None);
        }
        let mut args = vec![];
        let mut it = std::env::args_os().skip(1);
        while let Some(a) = it.next() {
            if a == "--nproc" {
                it.next();
            } else if !a.to_string_lossy().starts_with("--nproc=") {
                args.push(a);
            }
        }
        // The launcher holds the run folder for its ranks (they inherit lock::HELD_BY).
        let _lock = crate::lock::FolderLock::acquire(out, "run folder")?;
        let launch = crate::dist::launch::Launch {
            program: std::env::current_exe().context("locating the r2m binary to start the ranks")?,
            args,
            nproc: n,
            log_dir: out.join("logs"),
            grace: std::time::Duration::from_secs(10),
            echo_rank0: true,
        };
        crate::dist::launch::supervise(&launch)?;
        Ok(Some(()))
    }
}

impl RunArgs {
    /// The `--set` overrides these flags and `strings` / `numbers` (further shorthand flags of
    /// one subcommand) stand for, the user's own `--set`s last.
    pub fn sets(&self, strings: &[(&str, Option<&String>)], numbers: &[(&str, Option<u64>)]) -> Vec<String> {
        let mut all = vec![("out", self.out.as_ref()), ("device", self.device.as_ref())];
        all.extend_from_slice(strings);
        flag_sets(&all, numbers, &self.sets)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Export(a) => export::run(a),
        Command::TrainRm(a) => train_rm::run_cli(a),
        Command::EvalRm(a) => eval_rm::run(a),
        Command::AnalyzeHidden(a) => analyze_hidden::run(a),
        Command::Rl(a) => rl::run(a),
        Command::Testbed(a) => testbed::run(a),
        Command::Score(a) => score::run(a),
    }
}

/// Turns `text` into the model's input: through the chat template as one user message when `chat`.
pub(crate) fn render_prompt(tok: &crate::tokenizer::Tokenizer, text: &str, chat: bool) -> Result<String> {
    if !chat {
        return Ok(text.to_string());
    }
    let msgs = [crate::tokenizer::Message { role: "user".into(), content: text.to_string() }];
    Ok(tok.apply_chat_template(&msgs, true)?)
}

/// `--set` overrides from convenience flags: each present (key, value) becomes `key="value"`
/// (a TOML string), each number `key=value`; then the user's own `--set`s, which win.
pub(crate) fn flag_sets(strings: &[(&str, Option<&String>)], numbers: &[(&str, Option<u64>)], user: &[String]) -> Vec<String> {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut sets: Vec<String> = strings.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", q(v)))).collect();
    sets.extend(numbers.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))));
    sets.extend(user.iter().cloned());
    sets
}

#[cfg(test)]
mod tests {
    #[test]
    fn flag_sets_quote_strings_and_keep_user_sets_last() {
        let path = "dir with \"quotes\"".to_string();
        let s = super::flag_sets(&[("out", Some(&path)), ("device", None)], &[("seed", Some(3))], &["seed=4".into()]);
        assert_eq!(s.len(), 3);
        let mut t = toml::Table::new();
        for x in &s {
            crate::config::apply_set(&mut t, x).unwrap();
        }
        assert_eq!(t["out"].as_str(), Some("dir with \"quotes\""));
        assert_eq!(t["seed"].as_integer(), Some(4));
    }
}
