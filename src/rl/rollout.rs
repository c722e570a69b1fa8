//! Phase 1 of a step, the rollout: n prompts (a pure function of seed and step), K responses each
//! from the current policy, their old log-probs and (for R2M) hidden states, the reference's
//! log-probs, and the decoded texts. Also the greedy rollout that is ReMax's baseline.
use crate::data::{PromptExample, Text};
use crate::model::causal_lm::CausalLm;
use crate::model::generate::{generate_in_calls, GenerateConfig, Sampling};
use crate::model::precision::{Precision, Widen};
use crate::rl::clock::Clock;
use crate::rl::config::LogprobsFrom;
use crate::rl::losses;
use crate::rl::reward_source::{ResponseLogprobs, RewardInput};
use crate::rl::trainer::Run;
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// A collected rollout (B = n * K, group-major).
pub struct Rollout {
    pub prompt_idx: Vec<usize>,
    pub seq: Tensor,      // (B, P + N) prompt + response ids
    pub seq_mask: Tensor, // (B, P + N)
    pub prompt_len: i64,
    pub mask: Tensor,           // (B, N) response mask (1 up to and including EOS)
    pub old_lp: Tensor,         // (B, N)
    pub ref_lp: Tensor,         // (B, N)
    pub hidden: Option<Tensor>, // (B, P + N, D)
    /// The frozen trunk's output (the input of block `Run::trunk_layers`), (B, P + N, D).
    pub trunk: Option<Tensor>,
    pub responses: Vec<String>,
    pub finished: Vec<bool>,
    pub entropy: f64,
    /// The reference's log-probs of each response, for the metric source that reads them
    /// (when `Run::metric_reads_reference`).
    pub reference_logprobs: Option<Vec<Option<ResponseLogprobs>>>,
}

/// The reference's log-probs of each response from its final hidden states `last` (B, P + N, D) of
/// `seq` (prompt ids left-padded to width `p`, then the response ids `ids`, (B, N), with `mask`):
/// per row, the prompt's ids, the response's ids before its first EOS, and their log-probs at
/// temperature 1 ([`ResponseLogprobs`]), for a metric source that reads them.
pub fn reference_response_logprobs(
    reference: &CausalLm,
    last: &Tensor,
    seq: &Tensor,
    seq_mask: &Tensor,
    p: i64,
    ids: &Tensor,
    mask: &Tensor,
    eos: &[i64],
) -> Result<Vec<Option<ResponseLogprobs>>> {
    let _guard = tch::no_grad_guard();
    let (b, t) = (seq.size()[0], seq.size()[1]);
    let cpu = |x: &Tensor| -> Result<Vec<Vec<i64>>> { Ok(Vec::<Vec<i64>>::try_from(x.to_device(Device::Cpu).to_kind(Kind::Int64))?) };
    let (seq_v, seq_m, ids_v, mask_v) = (cpu(seq)?, cpu(seq_mask)?, cpu(ids)?, cpu(mask)?);
    let (mut rows, mut at, mut next) = (Vec::with_capacity(b as usize), Vec::new(), Vec::new());
    for i in 0..b as usize {
        let prompt: Vec<i64> = (0..p as usize).filter(|&j| seq_m[i][j] != 0).map(|j| seq_v[i][j]).collect();
        let len = mask_v[i].iter().filter(|&&m| m != 0).count();
        let response: Vec<i64> = ids_v[i][..len].iter().copied().take_while(|x| !eos.contains(x)).collect();
        // The state at position p - 1 + j predicts response token j.
        at.extend((0..response.len() as i64).map(|j| i as i64 * t + p - 1 + j));
        next.extend(response.iter().copied());
        rows.push((prompt, response));
    }
    let lp = if at.is_empty() {
        vec![]
    } else {
        let dev = last.device();
        let hs = last.view([-1, last.size()[2]]).index_select(0, &Tensor::from_slice(&at).to_device(dev)); // (sum r, D)
        let logits = reference.logits(&hs).widen();
        let nx = Tensor::from_slice(&next).to_device(dev).unsqueeze(-1);
        let lp = logits.gather(-1, &nx, false).squeeze_dim(-1) - logits.logsumexp([-1], false);
        Vec::<f32>::try_from(&lp.to_device(Device::Cpu))?
    };
    let mut off = 0;
    Ok(rows
        .into_iter()
        .map(|(prompt, response)| {
            let n = response.len();
            let logprobs = lp[off..off + n].to_vec();
            off += n;
            Some(ResponseLogprobs { prompt, response, logprobs })
        })
        .collect())
}

fn render(tok: &Tokenizer, p: &Text, chat: bool) -> Result<(String, bool)> {
    Ok(match (p, chat) {
        (Text::Chat(m), _) => (tok.apply_chat_template(m, true)?, false),
        (Text::Plain(s), true) if tok.chat_template().is_some() => {
            (tok.apply_chat_template(&[Message { role: "user".into(), content: s.clone() }], true)?, false)
        }
        (Text::Plain(s), _) => (s.clone(), true),
    })
}

/// Tokenizes prompts for the policy, checking lengths (errors name the prompt's origin).
pub fn prompt_ids(tok: &Tokenizer, prompts: &[&PromptExample], chat: bool, max_tokens: usize) -> Result<Vec<Vec<i64>>> {
    prompts
        .iter()
        .map(|p| {
            let (text, special) = render(tok, &p.prompt, chat)?;
            let ids: Vec<i64> = tok.encode(&text, special)?.into_iter().map(i64::from).collect();
            ensure!(!ids.is_empty(), "{}: prompt is empty", p.origin);
            ensure!(ids.len() <= max_tokens, "{}: prompt has {} tokens > rl.max_prompt_tokens = {max_tokens}", p.origin, ids.len());
            Ok(ids)
        })
        .collect()
}

pub(crate) fn decode_responses(tok: &Tokenizer, ids: &Tensor, mask: &Tensor, eos: &[i64]) -> Result<(Vec<String>, Vec<bool>)> {
    let b = ids.size()[0];
    let (mut texts, mut fin) = (vec![], vec![]);
    let lens = Vec::<i64>::try_from(mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64))?;
    for i in 0..b {
        let row = Vec::<i64>::try_from(ids.get(i).narrow(0, 0, lens[i as usize]))?;
        let ended = row.last().is_some_and(|t| eos.contains(t));
        let body: Vec<u32> = row.iter().filter(|t| !eos.contains(t)).map(|&t| t as u32).collect();
        texts.push(tok.decode(&body, true)?);
        fin.push(ended);
    }
    Ok((texts, fin))
}

impl Run<'_> {
    pub(crate) fn gen_config(&self, seed: u64, temperature: f64, return_hidden: bool) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens: self.cfg.rl.max_new_tokens,
            sampling: Sampling::Sample { temperature, top_k: None, top_p: self.cfg.rl.top_p },
            seed,
            eos_ids: if self.cfg.rl.ignore_eos { vec![] } else { self.tokenizer.eos_ids().into_iter().map(i64::from).collect() },
            pad_id: self.tokenizer.pad_id() as i64,
            return_hidden,
            return_trunk: None,
            stop_check_every: 4,
            pack_weights: None,
            // Rollouts sample with ATen's ops: the sampling kernel draws the same tokens but its
            // log-probs differ from ATen's in the last bits, which moves RL trajectories; the
            // runs archived so far were made this way.
            cpu_kernels: false,
        }
    }

    /// Hands freed host heap pages back between the phases of a step when the tensors live on the
    /// CPU (`device::release_free_host_memory`); on a GPU the host heap holds little.
    pub(crate) fn release_host_memory(&self) {
        if self.device == Device::Cpu {
            crate::device::release_free_host_memory();
        }
    }

    /// Whether old log-probs, h and the trunk come from the generator (`rl.logprobs_from`).
    pub fn logprobs_from_generator(&self) -> bool {
        match self.cfg.rl.logprobs_from {
            LogprobsFrom::Generator => true,
            LogprobsFrom::Forward => false,
            LogprobsFrom::Auto => self.policy.head_weight().kind() == Kind::Float && self.policy.precision == Precision::F32,
        }
    }

    /// Prompts of step t: a pure function of (seed, t) over the seeded epoch orders.
    pub fn step_prompts(&self, t: i64) -> Vec<usize> {
        let n = self.cfg.rl.prompts_per_step;
        let total = self.train_prompts.len();
        (0..n)
            .map(|j| {
                let flat = t as usize * n + j;
                let order = crate::data::batch::epoch_order(total, self.cfg.seed, (flat / total) as u64);
                order[flat % total]
            })
            .collect()
    }

    /// The rows of a step's batch (B = n K, group-major) that each rank collects and trains on.
    /// The batch is sampled in calls of `rl.generation_batch` rows, each with its own seed; a data
    /// parallel run deals the calls to the ranks in order, whole, so that every rank samples
    /// exactly the rows one process would. One process: all rows.
    pub fn rank_rows(&self) -> Vec<std::ops::Range<usize>> {
        let b = self.cfg.rl.prompts_per_step * self.cfg.rl.group_size;
        let Some(d) = self.dist else { return [0..b].to_vec() };
        crate::dist::dp::deal_calls(b, self.budget.generation_batch, d.world()).into_iter().map(|(rows, _)| rows).collect()
    }

    /// This rank's rows of a step's batch ([`Run::rank_rows`]).
    pub fn own_range(&self) -> std::ops::Range<usize> {
        self.rank_rows()[self.dist.map_or(0, |d| d.rank())].clone()
    }

    /// Phases 1-2: generation, old log-probs + h, reference log-probs (of this rank's rows).
    pub fn collect(&mut self, t: i64, clock: &mut Clock) -> Result<Rollout> {
        let k = self.cfg.rl.group_size;
        let mine = self.own_range();
        let idx = self.step_prompts(t)[mine.start / k..mine.end / k].to_vec();
        // The first sampling call's index in the whole batch (its seed's offset).
        let first_call = (mine.start / self.budget.generation_batch.max(1)) as u64;
        let prompts: Vec<&PromptExample> = idx.iter().map(|&i| &self.train_prompts[i]).collect();
        let ids =
            clock.time("time/prompts", || prompt_ids(&self.tokenizer, &prompts, self.cfg.policy.chat, self.cfg.rl.max_prompt_tokens))?;
        let rep: Vec<Vec<i64>> = ids.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
        let prompt_idx: Vec<usize> = idx.iter().flat_map(|&i| std::iter::repeat_n(i, k)).collect();
        let want_h = self.reward.wants_hidden();
        let from_gen = self.logprobs_from_generator();
        let kt = self.trunk_layers;
        let seed = self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(t as u64).wrapping_add(first_call);
        let mut gcfg = self.gen_config(seed, self.cfg.rl.temperature, want_h && from_gen);
        gcfg.return_trunk = if from_gen && kt > 0 { Some(kt) } else { None };
        let g = clock.time("time/generate", || generate_in_calls(&self.policy, &rep, &gcfg, self.budget.generation_batch))?;
        let (seq, seq_mask) = g.sequences();
        let p = g.prompt_ids.size()[1];
        let temp = self.cfg.rl.temperature;
        let _guard = tch::no_grad_guard();
        let trunk = match (kt, &g.trunk) {
            (0, _) => None,
            (_, Some(x)) => Some(x.shallow_clone()),
            (_, None) => Some(clock.time("time/logprobs", || self.policy.trunk(&seq, &seq_mask, kt))?),
        };
        let (old_lp, hidden, entropy) = if from_gen {
            let m = g.mask.to_kind(g.entropy.kind());
            let ent = ((&g.entropy * &m).sum(m.kind()) / m.sum(m.kind()).clamp_min(1.0)).double_value(&[]);
            (g.logprobs.shallow_clone(), g.hidden.as_ref().map(|h| h.shallow_clone()), ent)
        } else {
            clock.time("time/logprobs", || -> Result<_> {
                self.policy_forwards += 1;
                let last = match &trunk {
                    Some(x) => self.policy.hidden_from_trunk(x, kt, &seq_mask),
                    None => self.policy.forward_hidden(&seq, &seq_mask, false)?.last,
                };
                let n = seq.size()[1] - p;
                let logits = self.policy.scaled_logits(&last.narrow(1, p - 1, n), temp);
                let next = seq.to_device(self.device).narrow(1, p, n).unsqueeze(-1);
                let lp = logits.gather(-1, &next, false).squeeze_dim(-1) - logits.logsumexp([-1], false);
                let ent = losses::entropy(&logits, &g.mask.to_device(self.device)).double_value(&[]);
                Ok((lp, if want_h { Some(last) } else { None }, ent))
            })?
        };
        let (ref_lp, ref_last) = clock.time("time/reference", || match (&trunk, self.reference_shares_trunk) {
            (Some(x), true) => self.reference.token_logprobs_from_trunk(x, kt, &seq, &seq_mask, temp, p),
            _ => self.reference.token_logprobs(&seq, &seq_mask, temp, p),
        })?;
        let eos: Vec<i64> = self.tokenizer.eos_ids().into_iter().map(i64::from).collect();
        let reference_logprobs = if self.metric_reads_reference {
            let lp = || reference_response_logprobs(&self.reference, &ref_last, &seq, &seq_mask, p, &g.ids, &g.mask, &eos);
            Some(clock.time(format!("time/{}", self.metric.as_ref().map(|m| m.name()).unwrap_or_default()), lp)?)
        } else {
            None
        };
        drop(ref_last);
        let (responses, finished) = clock.time("time/decode", || decode_responses(&self.tokenizer, &g.ids, &g.mask, &eos))?;
        Ok(Rollout {
            prompt_idx,
            seq,
            seq_mask,
            prompt_len: p,
            mask: g.mask.to_device(self.device),
            old_lp: &old_lp * g.mask.to_device(self.device).to_kind(old_lp.kind()),
            ref_lp: &ref_lp * g.mask.to_device(self.device).to_kind(ref_lp.kind()),
            hidden,
            trunk,
            responses,
            finished,
            entropy,
            reference_logprobs,
        })
    }

    /// ReMax's baseline: the reward of each prompt's greedy response (one extra generation).
    pub(crate) fn remax_baseline(&mut self, r: &Rollout, t: i64, clock: &mut Clock) -> Result<Tensor> {
        let k = self.cfg.rl.group_size;
        let idx: Vec<usize> = r.prompt_idx.iter().step_by(k).copied().collect();
        let prompts: Vec<&PromptExample> = idx.iter().map(|&i| &self.train_prompts[i]).collect();
        let ids = prompt_ids(&self.tokenizer, &prompts, self.cfg.policy.chat, self.cfg.rl.max_prompt_tokens)?;
        let mut gcfg = self.gen_config(0, 1.0, self.reward.wants_hidden());
        gcfg.sampling = Sampling::Greedy;
        let g = clock.time("time/generate", || generate_in_calls(&self.policy, &ids, &gcfg, self.budget.generation_batch))?;
        let eos: Vec<i64> = self.tokenizer.eos_ids().into_iter().map(i64::from).collect();
        let (texts, fin) = decode_responses(&self.tokenizer, &g.ids, &g.mask, &eos)?;
        let (seq, seq_mask) = g.sequences();
        let hidden = g.hidden.as_ref();
        let input = RewardInput {
            prompts,
            responses: &texts,
            finished: &fin,
            hidden: hidden.map(|h| (h, &seq_mask)),
            step: t,
            total_steps: self.cfg.rl.steps,
            group_size: 1,
        };
        let _ = seq;
        let b = clock.time("time/reward", || self.reward.score_aside(&input))?;
        // One baseline per prompt, repeated over its K samples.
        Ok(b.repeat_interleave_self_int(k as i64, 0, None).to_device(self.device))
    }
}
