//! `r2m rl` configuration: TOML + `--set` overrides, validated once (cross-field rules here).
//! Each default cites its source (docs/rl-conventions.md, docs/method.md, the named peer).
use crate::reward::ensemble::Combine;
use crate::rl::advantages::ScaleRewards;
use crate::rl::budget::Count;
use crate::rl::losses::Aggregation;
use crate::train::{Schedule, Trainable};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    Rloo,
    Grpo,
    ReinforcePp,
    Remax,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    pub seed: u64,
    pub out: PathBuf,
    pub device: String,
    /// Threads of libtorch's CPU operators (0: libtorch's default, one per core). A CPU run's
    /// numbers depend on it in the last bits (reductions split differently), so it is part of
    /// the run's config; `r2m experiment` with `jobs` > 1 sets it per run.
    pub threads: usize,
    pub policy: PolicyConfig,
    pub reward: RewardConfig,
    pub data: DataConfig,
    pub rl: AlgoConfig,
    /// R2M and its baselines (`crate::r2m`); absent = the reward source as configured.
    pub r2m: Option<crate::r2m::R2mConfig>,
    /// The name experiment reports list this run under (an experiment variant's name, set by
    /// `r2m experiment`); absent = `r2m.method`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The initial policy (also the frozen reference: TRL's default `ref_model`).
    pub model: String,
    pub trainable: Trainable,
    /// Render prompts through the policy's chat template as a user message.
    pub chat: bool,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: i64,
    pub schedule: Schedule,
    pub max_grad_norm: f64,
    /// Compute precision of the policy and the reference: "auto" (bf16 autocast on CUDA, f32 on
    /// the CPU), "f32", "bf16" (`model::precision`: bf16 matmuls over f32 master weights) or
    /// "f64" (CPU; f64 weights and math, for exact checks: rewards, advantages and losses follow).
    pub dtype: String,
    /// Activation checkpointing of the policy's trained blocks (HF `gradient_checkpointing`):
    /// each keeps only its input and runs again in backward. Less training memory (for long
    /// responses or large minibatches on a GPU), about one more forward of those blocks per update.
    pub gradient_checkpointing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// A reward model (`model`).
    Rm,
    /// An ensemble of reward models (`members`, `combine`).
    Ensemble,
    /// The testbed's gold reward (optimising it directly: the upper bound).
    Gold,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub kind: RewardKind,
    pub model: String,
    pub members: Vec<String>,
    pub combine: Combine,
    pub max_length: usize,
    pub batch_size: usize,
    /// Also score with the testbed's gold for metrics (`gold/*`) when the prompts carry specs.
    pub gold_metrics: bool,
    pub gold: crate::testbed::GoldConfig,
    /// Compute precision of the reward model(s), as `policy.dtype` ("auto": bf16 on CUDA). The
    /// scores enter the RL step in the policy's kind (and R2M reads the policy's hidden states in
    /// the reward model's): for f64 throughout, set both to "f64".
    pub dtype: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Prompt file (JSONL/Parquet, TRL prompt-only format); "testbed" = the built-in generator.
    pub prompts: String,
    /// Held-out prompts; for "testbed", the generator's disjoint test split.
    pub eval_prompts: Option<String>,
    /// Sizes of the testbed's train and test splits.
    pub testbed_train: usize,
    pub testbed_test: usize,
    pub skip_invalid: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlgoConfig {
    pub algo: Algo,
    /// T: total RL steps (known in advance: R2M's w(t) needs it).
    pub steps: i64,
    /// n: prompts per step.
    pub prompts_per_step: usize,
    /// K: samples per prompt (RLOO/GRPO need >= 2).
    pub group_size: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub max_new_tokens: i64,
    /// Never stop at EOS: every response is exactly `max_new_tokens` long (benchmarks: TRL's
    /// `min_new_tokens = max_new_tokens`).
    pub ignore_eos: bool,
    /// Max prompt tokens (longer prompts are an error naming them).
    pub max_prompt_tokens: usize,
    /// k: policy epochs over each rollout (docs/method.md: 2).
    pub epochs: usize,
    /// Sequences per optimiser step; `grad_accum` micro-batches of `minibatch / grad_accum`
    /// ("auto": the fewest that fit in free memory, `rl::budget`).
    pub minibatch: usize,
    pub grad_accum: Count,
    /// Rows per `generate` call for rollouts and evaluation ("auto": as many as fit in free
    /// memory, up to all n x K at once). Splitting changes which samples are drawn, not how.
    pub generation_batch: Count,
    /// KL coefficient; default per algorithm (RLOO 0.05, GRPO 0.04, REINFORCE++/ReMax 0.01).
    pub beta: Option<f64>,
    /// Clip range eps (0.2 everywhere); `eps_high` for an asymmetric upper clip (DAPO).
    pub eps: f64,
    pub eps_high: Option<f64>,
    /// RLOO: normalise advantages over the batch (TRL `normalize_advantages`, default off).
    pub normalize_advantages: bool,
    /// GRPO advantage scaling and loss aggregation (TRL defaults: group, grpo).
    pub scale_rewards: ScaleRewards,
    pub aggregation: Aggregation,
    /// REINFORCE++/ReMax reward clip (OpenRLHF: 10) and discount (1).
    pub reward_clip: f64,
    pub gamma: f64,
    /// Old log-probs, h and the frozen trunk from a policy forward over prompt+response
    /// ("forward") or from the generator's own pass ("generator": equal to 1e-4 in f32, tested;
    /// saves one forward); "auto" (default): the generator's in f32, a forward otherwise.
    pub logprobs_from: LogprobsFrom,
    /// Run the frozen trunk (embeddings + the blocks below the trainable ones, when the policy
    /// trains only its top blocks) once per rollout and reuse its output for the old log-probs,
    /// the reference (when it shares those weights) and every policy epoch. Exact up to float
    /// rounding; false recomputes the whole model in every pass.
    pub trunk_cache: bool,
    pub eval_every: i64,
    pub eval_prompts: usize,
    /// Prompts of the two evaluations the results compare, pi_init's (step -1) and the last
    /// step's, where a tight confidence interval matters (with the testbed's gold, whose sd over
    /// one sample per prompt is ~2.4, ~1,000 prompts give +-0.15); the evaluations between them,
    /// which draw the curves, use `eval_prompts` (the first of the same prompts). Absent:
    /// `eval_prompts` throughout.
    pub final_eval_prompts: Option<usize>,
    /// The `eval.jsonl` of another run whose evaluation of pi_init (step -1) this run shares: the
    /// same seed, policy, held-out prompts, evaluation sampling and reward at pi_init, as a grid's
    /// runs of one seed are under other algorithms. This run samples and scores the first call of
    /// that evaluation (`rl.generation_batch` rows) itself; where those rows agree with the
    /// other run's (the same prompts, lengths and scores to rounding, in all but a tenth of the
    /// rows at most: float rounding turns a sampled token now and then, more often between CPU
    /// types), it takes the other run's rows instead of evaluating the rest, else it evaluates
    /// pi_init in full and says why.
    /// One process only.
    pub pi_init_eval_from: Option<std::path::PathBuf>,
    pub eval_temperature: f64,
    pub save_every: i64,
    /// Stop after this many steps as if interrupted (tests of resume).
    pub stop_after: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogprobsFrom {
    /// The generator's when the policy runs in f32 (where they equal a forward's to 1e-4,
    /// tested), a forward pass otherwise (reduced precision).
    Auto,
    Forward,
    Generator,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            seed: 0,
            out: "runs/rl".into(),
            device: "auto".into(),
            threads: 0,
            policy: PolicyConfig::default(),
            reward: RewardConfig::default(),
            data: DataConfig::default(),
            rl: AlgoConfig::default(),
            r2m: None,
            label: None,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            model: "smollm2-135m-instruct".into(),
            // docs/testbed.md: on the CPU, train a top slice on short responses.
            trainable: Trainable::Top { layers: 4, head: false },
            chat: true,
            lr: 1e-5,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: Schedule::Constant,
            max_grad_norm: 1.0,
            dtype: "auto".into(),
            gradient_checkpointing: false,
        }
    }
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            kind: RewardKind::Rm,
            model: String::new(),
            members: vec![],
            combine: Combine::Mean,
            max_length: 1024,
            batch_size: 16,
            gold_metrics: true,
            gold: crate::testbed::GoldConfig::default(),
            dtype: "auto".into(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { prompts: "testbed".into(), eval_prompts: None, testbed_train: 2000, testbed_test: 200, skip_invalid: false }
    }
}

impl AlgoConfig {
    /// How many held-out prompts the evaluation at step `t` uses, of `held_out` there are:
    /// `final_eval_prompts` at pi_init's (t = -1) and the last step's, `eval_prompts` between (the
    /// first of the same prompts); at most `held_out`.
    pub fn eval_size(&self, t: i64, held_out: usize) -> usize {
        let n = match self.final_eval_prompts {
            Some(f) if t == -1 || t + 1 == self.steps => f,
            _ => self.eval_prompts,
        };
        n.min(held_out)
    }
}

impl Default for AlgoConfig {
    fn default() -> Self {
        AlgoConfig {
            algo: Algo::Rloo,
            steps: 100,
            prompts_per_step: 8,
            group_size: 4,
            temperature: 0.7, // docs/method.md
            top_p: None,
            max_new_tokens: 64,
            ignore_eos: false,
            max_prompt_tokens: 256,
            epochs: 2,
            minibatch: 16,
            grad_accum: Count::Fixed(1),
            generation_batch: Count::Auto,
            beta: None,
            eps: 0.2,
            eps_high: None,
            normalize_advantages: false,
            scale_rewards: ScaleRewards::Group,
            aggregation: Aggregation::Grpo,
            reward_clip: 10.0,
            gamma: 1.0,
            logprobs_from: LogprobsFrom::Auto,
            trunk_cache: true,
            eval_every: 10,
            eval_prompts: 32,
            final_eval_prompts: None,
            pi_init_eval_from: None,
            eval_temperature: 0.7,
            save_every: 10,
            stop_after: None,
        }
    }
}

impl AlgoConfig {
    pub fn beta(&self) -> f64 {
        self.beta.unwrap_or(match self.algo {
            Algo::Rloo => 0.05,
            Algo::Grpo => 0.04,
            Algo::ReinforcePp | Algo::Remax => 0.01,
        })
    }
}

impl RlConfig {
    /// The testbed's prompts do not depend on the run seed: every seed of a grid sees the same
    /// prompt pool (seeds vary sampling, order and init).
    pub fn seed_data(&self) -> u64 {
        0
    }

    /// The settings only some algorithms read are refused under the others, where they would be
    /// silently ignored.
    fn check_algorithm_settings(&self) -> Result<()> {
        let (r, d) = (&self.rl, AlgoConfig::default());
        let only = |set: bool, key: &str, readers: &str| -> Result<()> {
            ensure!(
                !set,
                "rl.{key}: only {readers} read(s) it; under rl.algo = {:?} it would be ignored (leave it at its default)",
                r.algo
            );
            Ok(())
        };
        only(r.algo != Algo::ReinforcePp && r.gamma != d.gamma, "gamma", "REINFORCE++ (the others use gamma = 1)")?;
        only(!matches!(r.algo, Algo::ReinforcePp | Algo::Remax) && r.reward_clip != d.reward_clip, "reward_clip", "REINFORCE++ and ReMax")?;
        only(r.algo != Algo::Rloo && r.normalize_advantages != d.normalize_advantages, "normalize_advantages", "RLOO")?;
        only(r.algo != Algo::Grpo && r.scale_rewards != d.scale_rewards, "scale_rewards", "GRPO")?;
        only(r.algo != Algo::Grpo && r.aggregation != d.aggregation, "aggregation", "GRPO")?;
        only(r.algo == Algo::Rloo && r.eps_high.is_some(), "eps_high", "the token-level losses (GRPO, REINFORCE++, ReMax)")?;
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let r = &self.rl;
        ensure!(r.steps >= 1, "rl.steps = {} must be >= 1", r.steps);
        ensure!(r.prompts_per_step >= 1, "rl.prompts_per_step must be >= 1");
        if matches!(r.algo, Algo::Rloo | Algo::Grpo) {
            ensure!(r.group_size >= 2, "rl.group_size = {}: {:?} needs >= 2 samples per prompt", r.group_size, r.algo);
        }
        ensure!(r.group_size >= 1, "rl.group_size must be >= 1");
        let b = r.prompts_per_step * r.group_size;
        ensure!(r.minibatch >= 1 && b.is_multiple_of(r.minibatch), "rl.minibatch = {} must divide the batch of {b} sequences", r.minibatch);
        if let Count::Fixed(g) = r.grad_accum {
            ensure!(g >= 1 && r.minibatch.is_multiple_of(g), "rl.grad_accum = {g} must divide rl.minibatch = {}", r.minibatch);
        }
        ensure!(r.generation_batch != Count::Fixed(0), "rl.generation_batch must be >= 1 (or \"auto\")");
        ensure!(r.epochs >= 1, "rl.epochs must be >= 1");
        ensure!(r.temperature > 0.0, "rl.temperature must be > 0 (sampling)");
        ensure!(r.max_new_tokens >= 1, "rl.max_new_tokens must be >= 1");
        ensure!(r.eps > 0.0 && r.eps < 1.0, "rl.eps = {} must be in (0, 1)", r.eps);
        if let Some(n) = r.final_eval_prompts {
            ensure!(r.eval_every > 0, "rl.final_eval_prompts = {n}: the run does not evaluate (rl.eval_every = {})", r.eval_every);
            ensure!(
                n >= r.eval_prompts,
                "rl.final_eval_prompts = {n} must be >= rl.eval_prompts = {} (the curve's evaluations use the first of the same prompts)",
                r.eval_prompts
            );
        }
        self.check_algorithm_settings()?;
        ensure!(self.policy.lr > 0.0, "policy.lr must be > 0");
        crate::model::precision::Precision::resolve(&self.policy.dtype, tch::Device::Cpu, "policy.dtype")?;
        crate::model::precision::Precision::resolve(&self.reward.dtype, tch::Device::Cpu, "reward.dtype")?;
        match self.reward.kind {
            RewardKind::Rm => ensure!(!self.reward.model.is_empty(), "reward.model: no reward model given (kind = \"rm\")"),
            RewardKind::Ensemble => ensure!(self.reward.members.len() >= 2, "reward.members: an ensemble needs >= 2 models"),
            RewardKind::Gold => ensure!(self.data.prompts == "testbed", "reward.kind = \"gold\" needs data.prompts = \"testbed\""),
        }
        if let Some(r2m) = &self.r2m {
            r2m.validate()?;
            ensure!(self.reward.kind == RewardKind::Rm, "r2m: needs reward.kind = \"rm\" (R2M wraps one reward model)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pi_init's and the last step's evaluations take `final_eval_prompts`, the others
    /// `eval_prompts`, each at most the held-out prompts there are.
    #[test]
    fn eval_size_by_step() {
        let mut a = AlgoConfig { steps: 10, eval_prompts: 32, final_eval_prompts: None, ..AlgoConfig::default() };
        assert_eq!([-1, 0, 5, 9].map(|t| a.eval_size(t, 1000)), [32; 4]);
        a.final_eval_prompts = Some(512);
        assert_eq!([-1, 0, 5, 9].map(|t| a.eval_size(t, 1000)), [512, 32, 32, 512]);
        assert_eq!([-1, 5, 9].map(|t| a.eval_size(t, 100)), [100, 32, 100]);
        assert_eq!(a.eval_size(5, 20), 20);
    }
}
