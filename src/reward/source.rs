//! Frozen reward models as the RL engine's reward source: one RM ([`RmSource`]) or an ensemble
//! ([`EnsembleSource`]), each reading the text [`rm_text`] renders for (prompt, response).
use super::frozen::FrozenRm;
use crate::data::Text;
use crate::error::Result;
use crate::reward::ensemble::Ensemble;
use crate::reward::model::{Backbone, RewardModel};
use crate::rl::reward_source::{RewardInput, RewardSource};
use crate::tokenizer::Message;
use tch::Tensor;

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

/// A frozen reward model (in this process, or on the job's reward-model rank).
pub struct RmSource {
    pub rm: FrozenRm,
    pub max_length: usize,
    pub batch_size: usize,
}

impl RewardSource for RmSource {
    fn name(&self) -> String {
        "rm".into()
    }
    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        self.rm.scores(&input.prompts, input.responses, self.max_length, self.batch_size)
    }
    fn finish(&mut self) -> Result<()> {
        self.rm.finish()
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
