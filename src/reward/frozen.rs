//! A frozen reward model as the RL reward sources see it: in this process, or on the job's
//! reward-model rank ([`crate::dist::rte`]), which returns each response's H_last and score so
//! that the policy's ranks never load it.
use super::source::rm_text;
use super::RewardModel;
use crate::data::PromptExample;
use crate::dist::rte::RmLink;
use crate::error::{Error, Result};
use crate::model::precision::Widen;
use std::sync::Arc;
use tch::{Device, Tensor};

pub enum FrozenRm {
    Local(RewardModel),
    /// On the reward-model rank: its scoring head (1, D_rm), received once, and the link.
    Remote {
        head: Tensor,
        link: Arc<RmLink>,
    },
}

impl From<RewardModel> for FrozenRm {
    fn from(rm: RewardModel) -> Self {
        FrozenRm::Local(rm)
    }
}

impl FrozenRm {
    /// The reward model on the far end of `link` (receives its head: every policy rank calls it
    /// at the same point).
    pub fn remote(link: Arc<RmLink>) -> Result<FrozenRm> {
        let head = link.head().map_err(|e| Error::Input(format!("reward-model rank: {e:#}")))?;
        Ok(FrozenRm::Remote { head, link })
    }

    /// The model, where it lives in this process.
    pub fn local(&self) -> Option<&RewardModel> {
        match self {
            FrozenRm::Local(rm) => Some(rm),
            FrozenRm::Remote { .. } => None,
        }
    }

    /// Where its embeddings and scores are (the CPU for a remote model).
    pub fn device(&self) -> Device {
        match self {
            FrozenRm::Local(rm) => rm.device,
            FrozenRm::Remote { .. } => Device::Cpu,
        }
    }

    /// The scoring head phi (1, D_rm).
    pub fn head(&self) -> &Tensor {
        match self {
            FrozenRm::Local(rm) => &rm.head,
            FrozenRm::Remote { head, .. } => head,
        }
    }

    pub fn embed_dim(&self) -> i64 {
        self.head().size()[1]
    }

    /// The frozen score of embeddings `h` (B, D_rm): the head applied to them.
    pub fn score_embedding(&self, h: &Tensor) -> Tensor {
        match self {
            FrozenRm::Local(rm) => rm.score_embedding(h),
            FrozenRm::Remote { head, .. } => h.linear::<Tensor>(head, None).squeeze_dim(-1),
        }
    }

    /// H_last (B, D_rm) f32 of `(prompt, response)` pairs (chunks of `batch_size`, at most
    /// `max_length` tokens), no grad.
    pub fn h_last(&self, prompts: &[&PromptExample], responses: &[String], max_length: usize, batch_size: usize) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        match self {
            FrozenRm::Local(rm) => {
                let texts: Vec<(String, bool)> =
                    prompts.iter().zip(responses).map(|(p, r)| rm_text(rm, &p.prompt, r)).collect::<Result<_>>()?;
                let special = texts.first().map(|t| t.1).unwrap_or(true);
                let texts: Vec<String> = texts.into_iter().map(|t| t.0).collect();
                let mut out = vec![];
                for chunk in texts.chunks(batch_size.max(1)) {
                    let b = rm.tokenize(chunk, special, max_length)?;
                    out.push(rm.embed(&b)?);
                }
                Ok(Tensor::cat(&out, 0).widen())
            }
            FrozenRm::Remote { link, .. } => Ok(Self::remote_embed(link, prompts, responses)?.0),
        }
    }

    /// The frozen scores (B) f32 on the CPU of `(prompt, response)` pairs.
    pub fn scores(&self, prompts: &[&PromptExample], responses: &[String], max_length: usize, batch_size: usize) -> Result<Tensor> {
        match self {
            FrozenRm::Local(rm) => {
                let mut texts = vec![];
                let mut special = true;
                for (p, r) in prompts.iter().zip(responses) {
                    let (t, s) = rm_text(rm, &p.prompt, r)?;
                    special = s;
                    texts.push(t);
                }
                rm.score_texts(&texts, special, max_length, batch_size)
            }
            FrozenRm::Remote { link, .. } => Ok(Self::remote_embed(link, prompts, responses)?.1),
        }
    }

    fn remote_embed(link: &RmLink, prompts: &[&PromptExample], responses: &[String]) -> Result<(Tensor, Tensor)> {
        link.embed(prompts, responses).map_err(|e| Error::Input(format!("reward-model rank: {e:#}")))
    }

    /// Ends the link to a remote model (once, when the run ends); nothing for a local one.
    pub fn finish(&self) -> Result<()> {
        match self {
            FrozenRm::Local(_) => Ok(()),
            FrozenRm::Remote { link, .. } => link.finish().map_err(|e| Error::Input(format!("reward-model rank: {e:#}"))),
        }
    }
}
