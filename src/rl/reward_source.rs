//! The interfaces through which the RL engine sees rewards, and nothing else of where they come
//! from:
//! - [`RewardSource`]: what the policy is trained on. A frozen reward model or an ensemble
//!   (`crate::reward::source`), R2M and its baselines (`crate::r2m`), the testbed's gold
//!   (`crate::testbed::source`), a rule ([`RuleSource`]). A source may read the policy's hidden
//!   states when scoring and may be updated after the policy step (R2M does both); its state goes
//!   into checkpoints.
//! - [`MetricSource`]: scores logged beside the reward, never trained on (the testbed's gold).
//!
//! `crate::sources` builds the ones a run config names.
use crate::data::PromptExample;
use crate::error::Result;
use crate::model::causal_lm::CausalLm;
use serde_json::{Map, Value};
use tch::{Device, Kind, Tensor};

/// What a source sees when scoring a batch of B = n * K responses (group-major).
pub struct RewardInput<'a> {
    /// The prompt of each sequence (repeated K times).
    pub prompts: Vec<&'a PromptExample>,
    /// Decoded responses (without the EOS token) and whether each ended with EOS.
    pub responses: &'a [String],
    pub finished: &'a [bool],
    /// The policy's final hidden states over prompt + response (B, S, D) and their mask (B, S),
    /// when the source asked for them (`wants_hidden`).
    pub hidden: Option<(&'a Tensor, &'a Tensor)>,
    /// 0-based RL step and the run's total steps T.
    pub step: i64,
    pub total_steps: i64,
    /// Group size K.
    pub group_size: i64,
}

/// What a source sees after the policy update of a step (R2M's online update).
pub struct UpdateInput<'a> {
    /// The rewards the source gave at annotation time (B).
    pub annotation_rewards: &'a Tensor,
    /// The policy's final hidden states h' from the last policy epoch's training forward (B, S, D)
    /// and their mask (B, S), detached.
    pub hidden: Option<(&'a Tensor, &'a Tensor)>,
    pub step: i64,
    pub total_steps: i64,
    pub group_size: i64,
    /// In a data parallel run: the ranks, and the groups of the whole batch (this rank's rows are
    /// its share). A source that trains sums its gradients over the ranks and logs metrics over
    /// the whole batch.
    pub ranks: Option<(&'a crate::dist::Group, i64)>,
}

pub trait RewardSource {
    fn name(&self) -> String;
    /// Whether `score` and `update` need the policy's hidden states.
    fn wants_hidden(&self) -> bool {
        false
    }
    /// Scores (B) f32 on the CPU.
    fn score(&mut self, input: &RewardInput) -> Result<Tensor>;
    /// Scores like `score`, keeping what `score` holds for the next `update` (R2M's cached
    /// annotation inputs): for scoring outside the annotation of a step (ReMax's greedy baseline,
    /// the eval).
    fn score_aside(&mut self, input: &RewardInput) -> Result<Tensor> {
        self.score(input)
    }
    /// The frozen RM's own scores (B) of the last `score` call, where this source's reward is
    /// something else (R2M's methods: the blend with the policy's feedback, or a head trained
    /// online): what the proxy, as vanilla RL sees it, says of the same responses. `None` where the
    /// reward is the frozen RM's.
    fn frozen_scores(&self) -> Option<Tensor> {
        None
    }
    /// Called once per RL step after the policy update; returns metrics.
    fn update(&mut self, _input: &UpdateInput) -> Result<Map<String, Value>> {
        Ok(Map::new())
    }
    /// Tensors to checkpoint (names unique within the source).
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![]
    }
    fn load_state(&mut self, _state: &[(String, Tensor)], _source: &std::path::Path) -> Result<()> {
        Ok(())
    }
    /// Called once when the run ends (a source on another rank is told it may stop).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The reference's log-probs of one response at temperature 1, from the reference pass the KL
/// needs anyway: the prompt's ids, the response's ids before its first EOS, and their log-probs.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseLogprobs {
    pub prompt: Vec<i64>,
    pub response: Vec<i64>,
    pub logprobs: Vec<f32>,
}

/// A scorer whose scores are logged beside the reward and never trained on (the testbed's gold
/// reward, the truth the proxy stands in for). Its [`name`](MetricSource::name) keys the metrics:
/// `{name}/reward` on each step's rollout, `eval/{name}` and the eval rows' `{name}` column, which
/// also judges the eval win rate against the initial policy.
pub trait MetricSource {
    fn name(&self) -> &'static str;
    /// Whether it reads the reference's log-probs of each response: true where its own language
    /// model is the run's reference (`reference_model` is the path or id the reference was loaded
    /// from), so that the rollout hands over what the reference pass computed anyway.
    fn reads_reference(&self, _reference_model: &str, _reference: &CausalLm) -> bool {
        false
    }
    /// Scores (B) f32 on the CPU; `reference` holds the reference's log-probs of each response
    /// when [`reads_reference`](MetricSource::reads_reference) said so.
    fn scores(
        &self,
        prompts: &[&PromptExample],
        responses: &[String],
        finished: &[bool],
        reference: Option<&[Option<ResponseLogprobs>]>,
    ) -> Result<Tensor>;
}

/// A rule reward: any function of (prompt, response, finished).
pub struct RuleSource<F: FnMut(&PromptExample, &str, bool) -> f64> {
    pub name: String,
    pub f: F,
}

impl<F: FnMut(&PromptExample, &str, bool) -> f64> RewardSource for RuleSource<F> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        let v: Vec<f32> =
            input.prompts.iter().zip(input.responses).zip(input.finished).map(|((p, r), f)| (self.f)(p, r, *f) as f32).collect();
        Ok(Tensor::from_slice(&v))
    }
}

/// Mean of a (B) tensor as f64, on any device.
pub fn mean_f64(t: &Tensor) -> f64 {
    t.to_device(Device::Cpu).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}
