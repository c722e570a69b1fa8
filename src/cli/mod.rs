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

use anyhow::Result;
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
