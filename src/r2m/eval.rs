//! RM accuracy on held-out preference pairs with a policy's feedback (the paper's Table 3):
//! each pair's chosen and rejected responses are read by the policy (prompt + response, one
//! forward) for h, by the frozen RM backbone for H_last, and scored by R2M at a given w
//! (offline evaluation uses w(T)).
use crate::data::{PreferenceExample, PromptExample, Text};
use crate::error::{Error, Result};
use crate::model::causal_lm::CausalLm;
use crate::model::generate::left_pad;
use crate::model::precision::Widen;
use crate::r2m::{AttentionDiagnostics, R2mSource};
use crate::reward::loss::accuracy;
use crate::rl::rollout::prompt_ids;
use crate::tokenizer::Tokenizer;
use tch::{Device, Tensor};

fn response_text(t: &Text) -> String {
    match t {
        Text::Plain(s) => s.clone(),
        Text::Chat(m) => m.iter().filter(|m| m.role == "assistant").map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
    }
}

/// The policy whose final hidden states are the feedback: the model, its tokenizer, and whether
/// prompts go through its chat template.
pub struct Feedback<'a> {
    pub policy: &'a CausalLm,
    pub tokenizer: &'a Tokenizer,
    pub chat: bool,
}

/// Accuracy of `src` at blend weight `wt` on `pairs` (explicit prompts), with the policy's final
/// hidden states as feedback when given (otherwise phi(H_last): the score of the methods that read
/// none, and of the plain RM before RL). Texts reach the RM exactly as in RL (`rm_text`).
pub fn feedback_accuracy(
    src: &R2mSource,
    feedback: Option<Feedback>,
    pairs: &[PreferenceExample],
    wt: f64,
    batch: usize,
) -> Result<FeedbackAccuracy> {
    let _g = tch::no_grad_guard();
    let (mut cs, mut rs) = (vec![], vec![]);
    let mut diags: Vec<(AttentionDiagnostics, f64)> = vec![];
    for chunk in pairs.chunks(batch.max(1)) {
        let mut prompts = vec![];
        let mut responses = vec![];
        for ex in chunk {
            let p =
                ex.prompt.clone().ok_or_else(|| Error::Input(format!("{}: feedback evaluation needs an explicit prompt", ex.origin)))?;
            let pe = PromptExample { prompt: p, origin: ex.origin.clone(), meta: Default::default() };
            for resp in [&ex.chosen, &ex.rejected] {
                prompts.push(pe.clone());
                responses.push(response_text(resp));
            }
        }
        let prefs: Vec<&PromptExample> = prompts.iter().collect();
        let hl = src.h_last_of(&prefs, &responses)?;
        let r = if let Some(Feedback { policy, tokenizer: ptok, chat }) = &feedback {
            // The policy reads prompt + response as it would have produced it (+ EOS).
            let eos = ptok.eos_ids().first().copied().map(i64::from);
            let pids = prompt_ids(ptok, &prefs, *chat, usize::MAX).map_err(|e| Error::Input(format!("{e:#}")))?;
            let seqs: Vec<Vec<i64>> = pids
                .iter()
                .zip(&responses)
                .map(|(p, r)| -> Result<Vec<i64>> {
                    let mut s = p.clone();
                    s.extend(ptok.encode(r, false)?.into_iter().map(i64::from));
                    s.extend(eos);
                    Ok(s)
                })
                .collect::<Result<_>>()?;
            let (ids, mask) = left_pad(&seqs, ptok.pad_id() as i64, policy.device);
            let h = policy.forward_hidden(&ids, &mask, false)?.last;
            let mut d = None;
            let r = src.rewards_with(&hl, Some((&h, &mask)), wt, Some(&mut d));
            diags.extend(d.map(|d| (d, 2.0 * chunk.len() as f64)));
            r
        } else {
            src.rewards(&hl, None, wt)
        };
        let r = r.to_device(Device::Cpu).widen().view([-1, 2]);
        cs.push(r.select(1, 0));
        rs.push(r.select(1, 1));
    }
    if cs.is_empty() {
        return Ok(FeedbackAccuracy { accuracy: f64::NAN, pairs: 0, attention: None });
    }
    let (c, r) = (Tensor::cat(&cs, 0), Tensor::cat(&rs, 0));
    Ok(FeedbackAccuracy { accuracy: accuracy(&c, &r), pairs: c.size()[0] as usize, attention: AttentionDiagnostics::mean(&diags) })
}

/// What [`feedback_accuracy`] measured.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackAccuracy {
    /// Share of pairs whose chosen response scores higher.
    pub accuracy: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// What the cross-attention did on these responses (means over batches, weighted by rows);
    /// `None` without feedback.
    pub attention: Option<AttentionDiagnostics>,
}
