//! The testbed as the RL engine sees it: its gold reward as a reward source and as the metric
//! source, and the prompt records that carry a testbed prompt's spec.
use crate::data::{PromptExample, Text};
use crate::error::{Error, Result};
use crate::model::causal_lm::CausalLm;
use crate::rl::reward_source::{MetricSource, ResponseLogprobs, RewardInput, RewardSource};
use crate::testbed::gold::Gold;
use crate::testbed::prompts::TestbedPrompt;
use tch::Tensor;

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

/// The testbed's gold reward as a source: as the reward to train on (`reward.kind = "gold"`: the
/// upper bound) and as the metric source that measures what the prompts asked for.
pub struct GoldSource {
    pub gold: Gold,
}

impl RewardSource for GoldSource {
    fn name(&self) -> String {
        "gold".into()
    }
    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        MetricSource::scores(self, &input.prompts, input.responses, input.finished, None)
    }
}

impl MetricSource for GoldSource {
    fn name(&self) -> &'static str {
        "gold"
    }

    /// The gold's fluency LM is the reference when both load the same model file at the same
    /// precision on the same device: the fluency log-probs then come from the reference pass, for
    /// every response whose tokens the gold would score itself.
    fn reads_reference(&self, reference_model: &str, reference: &CausalLm) -> bool {
        let Some(lm) = &self.gold.lm else { return false };
        let same_file = |a: &str, b: &str| match (crate::paths::resolve_model(a), crate::paths::resolve_model(b)) {
            (Ok(x), Ok(y)) => x.canonicalize().ok().is_some_and(|x| y.canonicalize().ok() == Some(x)),
            _ => false,
        };
        same_file(&self.gold.cfg.fluency_model, reference_model)
            && lm.model.precision == reference.precision
            && lm.model.device == reference.device
    }

    /// The gold's totals; `reference` gives the fluency log-probs of the responses whose tokens
    /// the gold would score itself ([`Gold::score_with`]).
    fn scores(
        &self,
        prompts: &[&PromptExample],
        responses: &[String],
        finished: &[bool],
        reference: Option<&[Option<ResponseLogprobs>]>,
    ) -> Result<Tensor> {
        let tps = prompts.iter().map(|p| testbed_prompt(p)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&TestbedPrompt> = tps.iter().collect();
        let rs: Vec<&str> = responses.iter().map(|s| s.as_str()).collect();
        let g = self.gold.score_with(&refs, &rs, finished, reference)?;
        Ok(Tensor::from_slice(&g.iter().map(|s| s.total as f32).collect::<Vec<_>>()))
    }
}
