//! Reward sources behind one trait: a reward model, an ensemble, a rule function (the testbed's
//! gold), and R2M. A source may read the policy's hidden states when scoring, and may be updated
//! after the policy step (R2M does both); its state goes into checkpoints.
use crate::data::{PromptExample, Text};
use crate::error::{Error, Result};
use crate::reward::ensemble::Ensemble;
use crate::reward::model::{Backbone, RewardModel};
use crate::testbed::gold::Gold;
use crate::testbed::prompts::TestbedPrompt;
use crate::tokenizer::Message;
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
}

/// The text a reward model reads for (prompt, response): conversational prompts and decoder RMs
/// with a chat template get [prompt messages.., assistant: response] through the template (as the
/// RM saw its conversational training pairs); otherwise prompt text + response. Returns the text
/// and whether the tokenizer should add its special tokens.
pub fn rm_text(rm: &RewardModel, prompt: &Text, response: &str) -> Result<(String, bool)> {
    match (&rm.backbone, prompt) {
        (Backbone::Decoder { tokenizer, .. }, Text::Chat(msgs)) => {
            let mut m = msgs.clone();
            m.push(Message { role: "assistant".into(), content: response.to_string() });
            Ok((tokenizer.apply_chat_template(&m, false)?, false))
        }
        (_, Text::Chat(msgs)) => {
            let p: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
            Ok((format!("{}\n{response}", p.join("\n")), true))
        }
        (_, Text::Plain(p)) => Ok((format!("{p}{response}"), true)),
    }
}

/// A frozen reward model.
pub struct RmSource {
    pub rm: RewardModel,
    pub max_length: usize,
    pub batch_size: usize,
}

impl RmSource {
    /// Rendered texts, grouped by whether special tokens are added (all the same in practice).
    pub fn texts(&self, input: &RewardInput) -> Result<(Vec<String>, bool)> {
        let mut out = vec![];
        let mut special = true;
        for (p, r) in input.prompts.iter().zip(input.responses) {
            let (t, s) = rm_text(&self.rm, &p.prompt, r)?;
            special = s;
            out.push(t);
        }
        Ok((out, special))
    }
}

impl RewardSource for RmSource {
    fn name(&self) -> String {
        "rm".into()
    }
    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        let (texts, special) = self.texts(input)?;
        self.rm.score_texts(&texts, special, self.max_length, self.batch_size)
    }
}

/// An ensemble of frozen reward models (Coste et al. 2024).
pub struct EnsembleSource {
    pub ensemble: Ensemble,
    pub max_length: usize,
    pub batch_size: usize,
}

impl RewardSource for EnsembleSource {
    fn name(&self) -> String {
        format!("ensemble-{}", self.ensemble.members.len())
    }
    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        let mut all = vec![];
        for m in &self.ensemble.members {
            let texts: Vec<(String, bool)> =
                input.prompts.iter().zip(input.responses).map(|(p, r)| rm_text(m, &p.prompt, r)).collect::<Result<_>>()?;
            let special = texts.first().map(|t| t.1).unwrap_or(true);
            let t: Vec<String> = texts.into_iter().map(|t| t.0).collect();
            all.push(m.score_texts(&t, special, self.max_length, self.batch_size)?);
        }
        Ok(crate::reward::ensemble::combine(&Tensor::stack(&all, 0), self.ensemble.combine))
    }
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

/// The testbed prompt behind a prompt record (its `spec` column).
pub fn testbed_prompt(p: &PromptExample) -> Result<TestbedPrompt> {
    let text = match &p.prompt {
        Text::Plain(s) => s.clone(),
        Text::Chat(m) => m.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default(),
    };
    let spec = p
        .meta
        .get("spec")
        .ok_or_else(|| Error::Input(format!("{}: the gold reward needs the testbed's `spec` column (use testbed prompts)", p.origin)))?;
    let spec = serde_json::from_value(spec.clone()).map_err(|e| Error::Input(format!("{}: spec: {e}", p.origin)))?;
    let id = p.meta.get("id").and_then(|v| v.as_str()).unwrap_or("").to_string();
    Ok(TestbedPrompt { id, text, spec })
}

/// The testbed's gold reward as a source (the "human"; also used for evaluation).
pub struct GoldSource {
    pub gold: Gold,
}

impl GoldSource {
    pub fn scores(&self, prompts: &[&PromptExample], responses: &[String], finished: &[bool]) -> Result<Tensor> {
        self.scores_with(prompts, responses, finished, None)
    }

    /// [`GoldSource::scores`] with fluency log-probs already known for some responses
    /// ([`crate::testbed::Gold::score_with`]).
    pub fn scores_with(
        &self,
        prompts: &[&PromptExample],
        responses: &[String],
        finished: &[bool],
        known: Option<&[Option<crate::testbed::KnownLogprobs>]>,
    ) -> Result<Tensor> {
        let tps = prompts.iter().map(|p| testbed_prompt(p)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&TestbedPrompt> = tps.iter().collect();
        let rs: Vec<&str> = responses.iter().map(|s| s.as_str()).collect();
        let g = self.gold.score_with(&refs, &rs, finished, known)?;
        Ok(Tensor::from_slice(&g.iter().map(|s| s.total as f32).collect::<Vec<_>>()))
    }
}

impl RewardSource for GoldSource {
    fn name(&self) -> String {
        "gold".into()
    }
    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        self.scores(&input.prompts, input.responses, input.finished)
    }
}

/// Mean of a (B) tensor as f64, on any device.
pub fn mean_f64(t: &Tensor) -> f64 {
    t.to_device(Device::Cpu).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}
