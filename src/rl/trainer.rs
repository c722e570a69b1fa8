//! One RL step in Algorithm 1's order, and the run loop around it.
//!
//! Step t:
//!  1. sample n prompts (a pure function of seed and step), K responses each from pi_old;
//!  2. one policy forward over prompt+response: old log-probs AND h (or both from the generator);
//!     reference log-probs;
//!  3. annotate rewards (the reward source sees h and t), compute advantages;
//!  4. k policy epochs over minibatches (clipped loss, AdamW); h' captured in the last epoch;
//!  5. the reward source's update (R2M) with h'; metrics; eval; checkpoint.
use crate::checkpoint::{find_checkpoint, write_atomic, write_dir_atomic};
use crate::data::{PromptExample, Text};
use crate::metrics::MetricsSink;
use crate::model::generate::{generate_in_calls, GenerateConfig, Sampling};
use crate::model::llama::CausalLm;
use crate::model::load::safetensors;
use crate::model::precision::Precision;
use crate::rl::advantages as adv;
use crate::rl::budget::{Budget, Count, Shapes};
use crate::rl::config::{Algo, LogprobsFrom, RlConfig};
use crate::rl::losses::{self, Aggregation};
use crate::rl::reward_source::{GoldSource, RewardInput, RewardSource, UpdateInput};
use crate::testbed::KnownLogprobs;
use crate::tokenizer::{Message, Tokenizer};
use crate::train::{apply_trainable, clip_grad_norm, ensure_finite, lr_at, AdamW, AdamWConfig};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Everything the loop needs, built once.
pub struct Run<'a> {
    pub cfg: &'a RlConfig,
    pub policy: CausalLm,
    pub reference: CausalLm,
    pub tokenizer: Tokenizer,
    pub reward: Box<dyn RewardSource>,
    pub gold: Option<GoldSource>,
    pub train_prompts: Vec<PromptExample>,
    pub eval_prompts: Vec<PromptExample>,
    pub opt: AdamW,
    pub device: Device,
    /// Forward passes of the policy per phase (the R2M test checks that feedback costs none).
    pub policy_forwards: usize,
    /// Frozen trunk: the policy's first `trunk_layers` blocks (and embeddings) never train, so
    /// their output is computed once per rollout (0: off, `rl.trunk_cache`); `reference_shares_trunk`
    /// when the reference holds the same weights there.
    pub trunk_layers: usize,
    pub reference_shares_trunk: bool,
    /// The gold's fluency LM is the reference (same weights, tokenizer and precision): the gold's
    /// fluency log-probs then come from the reference pass that the KL needs anyway, for every
    /// response whose tokens the gold would score itself ([`KnownLogprobs`]).
    pub gold_reuses_reference: bool,
    /// Rows per `generate` call and micro-batches per optimiser step (`rl.generation_batch`,
    /// `rl.grad_accum`, resolved against free memory when "auto").
    pub budget: Budget,
}

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
    /// The gold's fluency log-probs from the reference pass (when `Run::gold_reuses_reference`).
    pub fluency: Option<Vec<Option<KnownLogprobs>>>,
}

/// The gold's fluency log-probs from the reference's final hidden states `last` (B, P + N, D) of
/// `seq` (prompt ids left-padded to width `p`, then the response ids `ids`, (B, N), with `mask`):
/// per row, the prompt's ids, the response's ids before its first EOS (the tokens whose text the
/// gold scores), and their log-probs at temperature 1, computed as the gold's own pass does.
pub fn known_fluency(
    reference: &CausalLm,
    last: &Tensor,
    seq: &Tensor,
    seq_mask: &Tensor,
    p: i64,
    ids: &Tensor,
    mask: &Tensor,
    eos: &[i64],
) -> Result<Vec<Option<KnownLogprobs>>> {
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
        let logits = reference.logits(&hs).to_kind(Kind::Float);
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
            Some(KnownLogprobs { prompt, response, logprobs })
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

fn decode_responses(tok: &Tokenizer, ids: &Tensor, mask: &Tensor, eos: &[i64]) -> Result<(Vec<String>, Vec<bool>)> {
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

/// Timings of one step, in seconds (metric names `time/*`).
#[derive(Default)]
pub struct Clock(pub Vec<(&'static str, f64)>);

impl Clock {
    pub fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.0.push((name, t0.elapsed().as_secs_f64()));
        out
    }
}

impl<'a> Run<'a> {
    fn gen_config(&self, seed: u64, temperature: f64, return_hidden: bool) -> GenerateConfig {
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
        }
    }

    /// Hands freed host heap pages back between the phases of a step when the tensors live on the
    /// CPU (`device::release_free_host_memory`); on a GPU the host heap holds little.
    fn release_host_memory(&self) {
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

    /// Phases 1-2: generation, old log-probs + h, reference log-probs.
    pub fn collect(&mut self, t: i64, clock: &mut Clock) -> Result<Rollout> {
        let k = self.cfg.rl.group_size;
        let idx = self.step_prompts(t);
        let prompts: Vec<&PromptExample> = idx.iter().map(|&i| &self.train_prompts[i]).collect();
        let ids =
            clock.time("time/prompts", || prompt_ids(&self.tokenizer, &prompts, self.cfg.policy.chat, self.cfg.rl.max_prompt_tokens))?;
        let rep: Vec<Vec<i64>> = ids.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
        let prompt_idx: Vec<usize> = idx.iter().flat_map(|&i| std::iter::repeat_n(i, k)).collect();
        let want_h = self.reward.wants_hidden();
        let from_gen = self.logprobs_from_generator();
        let kt = self.trunk_layers;
        let mut gcfg =
            self.gen_config(self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(t as u64), self.cfg.rl.temperature, want_h && from_gen);
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
            let m = g.mask.to_kind(Kind::Float);
            let ent = ((&g.entropy * &m).sum(Kind::Float) / m.sum(Kind::Float).clamp_min(1.0)).double_value(&[]);
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
        let fluency = if self.gold_reuses_reference {
            Some(clock.time("time/gold", || known_fluency(&self.reference, &ref_last, &seq, &seq_mask, p, &g.ids, &g.mask, &eos))?)
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
            old_lp: old_lp * g.mask.to_device(self.device).to_kind(Kind::Float),
            ref_lp: ref_lp * g.mask.to_device(self.device).to_kind(Kind::Float),
            hidden,
            trunk,
            responses,
            finished,
            entropy,
            fluency,
        })
    }

    /// ReMax's baseline: the reward of each prompt's greedy response (one extra generation).
    fn remax_baseline(&mut self, r: &Rollout, t: i64, clock: &mut Clock) -> Result<Tensor> {
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

    /// Phases 3-5 for one step; returns the step's metrics.
    pub fn step(&mut self, t: i64) -> Result<Map<String, Value>> {
        let mut clock = Clock::default();
        let t_step = Instant::now();
        let c = self.cfg.rl.clone();
        let k = c.group_size as i64;
        let beta = c.beta();
        let r = self.collect(t, &mut clock)?;
        self.release_host_memory();
        let scores = {
            let input = RewardInput {
                prompts: r.prompt_idx.iter().map(|&i| &self.train_prompts[i]).collect(),
                responses: &r.responses,
                finished: &r.finished,
                hidden: r.hidden.as_ref().map(|h| (h, &r.seq_mask)),
                step: t,
                total_steps: c.steps,
                group_size: k,
            };
            let reward = &mut self.reward;
            clock.time("time/reward", || reward.score(&input))?
        };
        let frozen = self.reward.frozen_scores();
        let scores = scores.to_device(self.device).to_kind(Kind::Float);
        ensure_finite(scores.sum(Kind::Float).double_value(&[]), &format!("reward at step {t} (reward annotation)"))?;
        let b = scores.size()[0];
        let mask_f = r.mask.to_kind(Kind::Float);

        // Advantages: (B) sequence-level or (B, N) token-level.
        let (t_adv, n_clock) = (Instant::now(), clock.0.len());
        let advantages = match c.algo {
            Algo::Rloo => {
                let shaped = adv::kl_shaped_reward(&scores, &r.old_lp, &r.ref_lp, &r.mask, beta);
                let a = adv::rloo(&shaped, k);
                if c.normalize_advantages {
                    adv::normalize(&a)
                } else {
                    a
                }
            }
            Algo::Grpo => adv::grpo(&scores, k, c.scale_rewards),
            Algo::ReinforcePp => {
                let rw = adv::token_rewards(&scores, &r.old_lp, &r.ref_lp, &r.mask, beta, c.reward_clip);
                adv::reinforce_pp(&rw, &r.mask, c.gamma)
            }
            Algo::Remax => {
                let base = self.remax_baseline(&r, t, &mut clock)?;
                let rw = adv::token_rewards(&scores, &r.old_lp, &r.ref_lp, &r.mask, beta, c.reward_clip);
                adv::remax(&rw, &r.mask, &base.to_kind(Kind::Float))
            }
        };

        // ReMax's baseline generation and reward are timed as such, not as advantages.
        let inner: f64 = clock.0[n_clock..].iter().map(|x| x.1).sum();
        clock.0.push(("time/advantages", t_adv.elapsed().as_secs_f64() - inner));

        // Policy optimisation: k epochs of minibatches; h' captured in the last epoch.
        let want_h = self.reward.wants_hidden();
        let d = self.policy.config.hidden_size;
        let h_prime = if want_h { Some(Tensor::zeros([b, r.seq.size()[1], d], (Kind::Float, self.device))) } else { None };
        let (mut loss_sum, mut n_opt, mut clip_low, mut clip_high, mut kl_term, mut gnorm) = (0.0, 0, 0.0, 0.0, 0.0, 0.0);
        let micro = (c.minibatch / self.budget.grad_accum) as i64;
        let p = r.prompt_len;
        let t_pol = Instant::now();
        for epoch in 0..c.epochs {
            // A fixed permutation per (seed, step, epoch): deterministic and resumable.
            let order = crate::data::batch::epoch_order(b as usize, self.cfg.seed ^ (t as u64).wrapping_mul(0x9E37), epoch as u64);
            for mb in order.chunks(c.minibatch) {
                let step_opt = self.opt.step;
                self.opt.zero_grad();
                let mut mb_loss = 0.0;
                for chunk in mb.chunks(micro as usize) {
                    let ix = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
                    let seq = r.seq.to_device(self.device).index_select(0, &ix);
                    let sm = r.seq_mask.to_device(self.device).index_select(0, &ix);
                    self.policy_forwards += 1;
                    let (l, h) = match &r.trunk {
                        Some(x) => self.policy.token_logprobs_from_trunk(
                            &x.index_select(0, &ix),
                            self.trunk_layers,
                            &seq,
                            &sm,
                            c.temperature,
                            p,
                        )?,
                        None => self.policy.token_logprobs(&seq, &sm, c.temperature, p)?,
                    };
                    if let (Some(hp), true) = (&h_prime, epoch + 1 == c.epochs) {
                        let mut hp = hp.shallow_clone();
                        let _ = hp.index_copy_(0, &ix, &h.detach().to_kind(Kind::Float));
                    }
                    let m = r.mask.index_select(0, &ix);
                    let lo = r.old_lp.index_select(0, &ix);
                    let a = advantages.index_select(0, &ix);
                    let (loss, st) = match c.algo {
                        Algo::Rloo => losses::sequence_clipped_loss(&l, &lo, &m, &a, c.eps),
                        Algo::Grpo => {
                            let lr = r.ref_lp.index_select(0, &ix);
                            let kl = if beta != 0.0 { Some((&lr, beta)) } else { None };
                            losses::token_clipped_loss(
                                &l,
                                &lo,
                                &m,
                                &a,
                                c.eps,
                                c.eps_high.unwrap_or(c.eps),
                                kl,
                                c.aggregation,
                                c.max_new_tokens,
                            )
                        }
                        Algo::ReinforcePp | Algo::Remax => losses::token_clipped_loss(
                            &l,
                            &lo,
                            &m,
                            &a,
                            c.eps,
                            c.eps_high.unwrap_or(c.eps),
                            None,
                            Aggregation::TokenMean,
                            c.max_new_tokens,
                        ),
                    };
                    let scaled = &loss * (chunk.len() as f64 / mb.len() as f64);
                    scaled.backward();
                    let lv = loss.double_value(&[]);
                    ensure_finite(lv, &format!("policy loss at step {t} (policy update)"))?;
                    mb_loss += lv * chunk.len() as f64 / mb.len() as f64;
                    clip_low += st.clip_low.double_value(&[]);
                    clip_high += st.clip_high.double_value(&[]);
                    kl_term += st.kl.double_value(&[]);
                }
                let gn = clip_grad_norm(&self.opt.params, self.cfg.policy.max_grad_norm).double_value(&[]);
                ensure_finite(gn, &format!("gradient norm at step {t} (policy update)"))?;
                let lr = lr_at(
                    step_opt,
                    self.cfg.policy.lr,
                    self.cfg.policy.warmup_steps,
                    self.total_opt_steps(),
                    self.cfg.policy.schedule,
                    0.0,
                );
                self.opt.step(lr)?;
                loss_sum += mb_loss;
                gnorm += gn;
                n_opt += 1;
            }
        }
        clock.0.push(("time/policy", t_pol.elapsed().as_secs_f64()));
        let n_micro = (n_opt as f64) * (c.minibatch as f64 / micro as f64);

        // Phase 5: the reward source's update (R2M), with h' from the last epoch.
        let upd = {
            let u = UpdateInput {
                annotation_rewards: &scores,
                hidden: h_prime.as_ref().map(|h| (h, &r.seq_mask)),
                step: t,
                total_steps: c.steps,
                group_size: k,
            };
            let reward = &mut self.reward;
            clock.time("time/r2m", || reward.update(&u))?
        };

        // Metrics (TRL names where the quantity is the same).
        let (t_metrics, n_clock_metrics) = (Instant::now(), clock.0.len());
        let lens = mask_f.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let kl_seq = ((&r.old_lp - &r.ref_lp) * &mask_f).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let mut m = Map::new();
        m.insert("step".into(), json!(t));
        m.insert("reward".into(), json!(scores.mean(Kind::Float).double_value(&[])));
        m.insert("reward_std".into(), json!(scores.std(true).double_value(&[])));
        if let Some(f) = &frozen {
            // How far the reward trained on departs from the frozen proxy on the same rollouts: the
            // share of groups whose best response is the proxy's best too, and the correlation.
            let f = f.to_device(self.device).to_kind(Kind::Float);
            m.insert("reward_frozen_rm".into(), json!(f.mean(Kind::Float).double_value(&[])));
            let same_top =
                scores.view([-1, k]).argmax(1, false).eq_tensor(&f.view([-1, k]).argmax(1, false)).to_kind(Kind::Float).mean(Kind::Float);
            m.insert("reward_frozen_rm/top_agree".into(), json!(same_top.double_value(&[])));
            let (x, y) = (&scores - scores.mean(Kind::Float), &f - f.mean(Kind::Float));
            let den = (x.square().sum(Kind::Float) * y.square().sum(Kind::Float)).sqrt().double_value(&[]);
            let corr = if den > 0.0 { (x * y).sum(Kind::Float).double_value(&[]) / den } else { f64::NAN };
            m.insert("reward_frozen_rm/corr".into(), json!(corr));
            // The same inside each group, which is all a group-relative advantage sees: group_corr
            // is the correlation of the GRPO advantages the two rewards give.
            if k >= 2 {
                let (sv, fv) = (Vec::<f64>::try_from(scores.to_kind(Kind::Double))?, Vec::<f64>::try_from(f.to_kind(Kind::Double))?);
                let g = adv::group_agreement(&sv, &fv, k as usize);
                m.insert("reward_frozen_rm/group_corr".into(), json!(g.corr));
                m.insert("reward_frozen_rm/group_agree".into(), json!(g.concordance));
            }
        }
        let g = scores.view([-1, k]);
        let zero_std = g.std_dim(1, true, false).lt(1e-6).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        m.insert("frac_reward_zero_std".into(), json!(zero_std));
        m.insert("kl".into(), json!(kl_seq.mean(Kind::Float).double_value(&[])));
        if !r.entropy.is_nan() {
            m.insert("entropy".into(), json!(r.entropy));
        }
        m.insert("loss".into(), json!(loss_sum / n_opt.max(1) as f64));
        m.insert("grad_norm".into(), json!(gnorm / n_opt.max(1) as f64));
        m.insert("clip_ratio/low_mean".into(), json!(clip_low / n_micro));
        m.insert("clip_ratio/high_mean".into(), json!(clip_high / n_micro));
        m.insert("clip_ratio/region_mean".into(), json!((clip_low + clip_high) / n_micro));
        if c.algo == Algo::Grpo {
            m.insert("kl_term".into(), json!(kl_term / n_micro));
        }
        m.insert("completions/mean_length".into(), json!(lens.mean(Kind::Float).double_value(&[])));
        let clipped = r.finished.iter().filter(|f| !**f).count() as f64 / r.finished.len() as f64;
        m.insert("completions/clipped_ratio".into(), json!(clipped));
        m.insert("num_tokens".into(), json!(lens.sum(Kind::Float).double_value(&[])));
        m.insert(
            "learning_rate".into(),
            json!(lr_at(
                self.opt.step - 1,
                self.cfg.policy.lr,
                self.cfg.policy.warmup_steps,
                self.total_opt_steps(),
                self.cfg.policy.schedule,
                0.0
            )),
        );
        if let Some(gold) = &self.gold {
            let prompts: Vec<&PromptExample> = r.prompt_idx.iter().map(|&i| &self.train_prompts[i]).collect();
            let gs = clock.time("time/gold", || gold.scores_with(&prompts, &r.responses, &r.finished, r.fluency.as_deref()))?;
            m.insert("gold/reward".into(), json!(gs.mean(Kind::Float).double_value(&[])));
        }
        for (k2, v) in upd {
            m.insert(k2, v);
        }
        let gold_s: f64 = clock.0[n_clock_metrics..].iter().filter(|x| x.0 == "time/gold").map(|x| x.1).sum();
        clock.0.push(("time/metrics", t_metrics.elapsed().as_secs_f64() - gold_s));
        for (name, s) in &clock.0 {
            let e = m.entry(name.to_string()).or_insert(json!(0.0));
            *e = json!(e.as_f64().unwrap_or(0.0) + s);
        }
        self.release_host_memory();
        m.insert("time/step".into(), json!(t_step.elapsed().as_secs_f64()));
        Ok(m)
    }

    fn total_opt_steps(&self) -> i64 {
        let c = &self.cfg.rl;
        let b = c.prompts_per_step * c.group_size;
        c.steps * (c.epochs * b / c.minibatch) as i64
    }

    /// Evaluation on held-out prompts: one sample each at `eval_temperature` with a fixed seed;
    /// reward (the source at step t), gold (if configured), KL to the reference, length.
    /// Also returns one row per prompt (`eval.jsonl`: step, prompt index and id, reward, gold,
    /// length, kl, finished) for win rates against pi_init (the rows of step -1).
    pub fn evaluate(&mut self, t: i64) -> Result<(Map<String, Value>, Vec<Map<String, Value>>)> {
        let n = self.cfg.rl.eval_prompts.min(self.eval_prompts.len());
        let mut m = Map::new();
        if n == 0 {
            return Ok((m, vec![]));
        }
        let prompts: Vec<&PromptExample> = self.eval_prompts.iter().take(n).collect();
        let ids = prompt_ids(&self.tokenizer, &prompts, self.cfg.policy.chat, self.cfg.rl.max_prompt_tokens)?;
        let want_h = self.reward.wants_hidden();
        let mut gcfg = self.gen_config(self.cfg.seed ^ 0xE7A1, self.cfg.rl.eval_temperature, want_h);
        // As in the rollouts: where the reference shares the policy's frozen trunk, the generator
        // hands it out and the reference runs only the blocks above it (same tokens; the KL moves
        // by float rounding only).
        let kt = if self.reference_shares_trunk { self.trunk_layers } else { 0 };
        gcfg.return_trunk = (kt > 0).then_some(kt);
        let mut clock = Clock(vec![]);
        let g = clock.time("time/eval/generate", || generate_in_calls(&self.policy, &ids, &gcfg, self.budget.generation_batch))?;
        let (seq, seq_mask) = g.sequences();
        let p = g.prompt_ids.size()[1];
        let eos: Vec<i64> = self.tokenizer.eos_ids().into_iter().map(i64::from).collect();
        let (texts, fin) = decode_responses(&self.tokenizer, &g.ids, &g.mask, &eos)?;
        let _guard = tch::no_grad_guard();
        let temp = self.cfg.rl.eval_temperature;
        let (rlp, ref_last) = clock.time("time/eval/reference", || match &g.trunk {
            Some(x) if kt > 0 => self.reference.token_logprobs_from_trunk(x, kt, &seq, &seq_mask, temp, p),
            _ => self.reference.token_logprobs(&seq, &seq_mask, temp, p),
        })?;
        let fluency = if self.gold_reuses_reference {
            Some(clock.time("time/eval/gold", || known_fluency(&self.reference, &ref_last, &seq, &seq_mask, p, &g.ids, &g.mask, &eos))?)
        } else {
            None
        };
        drop(ref_last);
        let mf = g.mask.to_device(self.device).to_kind(Kind::Float);
        let kl = ((g.logprobs.to_device(self.device) - rlp) * &mf).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let input = RewardInput {
            prompts: prompts.clone(),
            responses: &texts,
            finished: &fin,
            hidden: g.hidden.as_ref().map(|h| (h, &seq_mask)),
            step: t,
            total_steps: self.cfg.rl.steps,
            group_size: 1,
        };
        let reward = &mut self.reward;
        let rw = clock.time("time/eval/reward", || reward.score_aside(&input))?;
        let frozen = reward.frozen_scores().map(|f| Vec::<f64>::try_from(f.to_kind(Kind::Double))).transpose()?;
        m.insert("eval/reward".into(), json!(rw.mean(Kind::Float).double_value(&[])));
        if let Some(f) = &frozen {
            m.insert("eval/reward_frozen_rm".into(), json!(f.iter().sum::<f64>() / f.len().max(1) as f64));
        }
        m.insert("eval/kl".into(), json!(kl.mean(Kind::Float).double_value(&[])));
        m.insert("eval/mean_length".into(), json!(mf.sum(Kind::Float).double_value(&[]) / n as f64));
        let gold = match &self.gold {
            Some(gold) => {
                let gs = clock.time("time/eval/gold", || gold.scores_with(&prompts, &texts, &fin, fluency.as_deref()))?;
                m.insert("eval/gold".into(), json!(gs.mean(Kind::Float).double_value(&[])));
                Some(Vec::<f64>::try_from(gs.to_kind(Kind::Double))?)
            }
            None => None,
        };
        // Where an eval's time goes (nested under `time/eval/`: the report stacks only `time/<phase>`,
        // and `time/eval` holds the whole eval).
        for (name, s) in clock.0 {
            let e = m.entry(name.to_string()).or_insert(json!(0.0));
            *e = json!(e.as_f64().unwrap_or(0.0) + s);
        }
        let rwv = Vec::<f64>::try_from(rw.to_kind(Kind::Double))?;
        let klv = Vec::<f64>::try_from(kl.to_device(Device::Cpu).to_kind(Kind::Double))?;
        let lens = Vec::<f64>::try_from(mf.sum_dim_intlist([1i64].as_slice(), false, Kind::Double).to_device(Device::Cpu))?;
        let rows = (0..n)
            .map(|i| {
                let mut r = Map::new();
                r.insert("step".into(), json!(t));
                r.insert("prompt".into(), json!(i));
                r.insert("id".into(), prompts[i].meta.get("id").cloned().unwrap_or(Value::Null));
                r.insert("reward".into(), json!(rwv[i]));
                if let Some(f) = &frozen {
                    r.insert("reward_frozen_rm".into(), json!(f[i]));
                }
                if let Some(g) = &gold {
                    r.insert("gold".into(), json!(g[i]));
                }
                r.insert("length".into(), json!(lens[i]));
                r.insert("kl".into(), json!(klv[i]));
                r.insert("finished".into(), json!(fin[i]));
                r
            })
            .collect();
        Ok((m, rows))
    }

    fn save_checkpoint(&self, dir: &Path, step: i64) -> Result<()> {
        write_dir_atomic(dir, |tmp| {
            let w: Vec<(String, Tensor)> = self.opt.params.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
            safetensors::write_file(&tmp.join("policy.safetensors"), &w)?;
            safetensors::write_file(&tmp.join("optimizer.safetensors"), &self.opt.state())?;
            let rs = self.reward.state();
            if !rs.is_empty() {
                safetensors::write_file(&tmp.join("reward_source.safetensors"), &rs)?;
            }
            let st = json!({"step": step, "seed": self.cfg.seed, "reward_source": self.reward.name()});
            write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&st).unwrap_or_default().as_bytes())
        })?;
        Ok(())
    }

    fn load_checkpoint(&mut self, dir: &Path) -> Result<i64> {
        let st: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
            .with_context(|| format!("{}/state.json", dir.display()))?;
        ensure!(
            st["seed"].as_u64() == Some(self.cfg.seed),
            "{}: checkpoint seed differs from config seed {}",
            dir.display(),
            self.cfg.seed
        );
        let pol = dir.join("policy.safetensors");
        let saved = safetensors::read_file(&pol)?;
        let _g = tch::no_grad_guard();
        for (n, p) in &self.opt.params {
            let s = saved.iter().find(|(m, _)| m == n).map(|(_, t)| t).with_context(|| format!("{}: lacks '{n}'", pol.display()))?;
            p.shallow_clone().copy_(s);
        }
        let o = dir.join("optimizer.safetensors");
        self.opt.load_state(&safetensors::read_file(&o)?, &o)?;
        let rs = dir.join("reward_source.safetensors");
        if rs.exists() {
            self.reward.load_state(&safetensors::read_file(&rs)?, &rs)?;
        }
        st["step"].as_i64().context("state.json: step")
    }
}

/// Builds the policy, reference, optimiser and prompts for `cfg` on `device`; `reward` makes the
/// reward source given the policy's hidden size (R2M's D_p).
pub fn build<'a>(
    cfg: &'a RlConfig,
    reward: impl FnOnce(i64) -> Result<Box<dyn RewardSource>>,
    gold: Option<GoldSource>,
    device: Device,
) -> Result<Run<'a>> {
    cfg.validate()?;
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let free = crate::rl::budget::free_memory(device);
    let loaded = CausalLm::load_path(&cfg.policy.model, device).with_context(|| format!("loading policy {}", cfg.policy.model))?;
    let mut policy = loaded.model;
    let reward = reward(policy.config.hidden_size)?;
    let mut reference = CausalLm::load_path(&cfg.policy.model, device)?.model;
    reference.params.freeze();
    policy.precision = Precision::resolve(&cfg.policy.dtype, device, "policy.dtype")?;
    reference.precision = policy.precision;
    policy.model.checkpointing = cfg.policy.gradient_checkpointing;
    let params = apply_trainable(&mut policy, &cfg.policy.trainable, cfg.seed as i64)?;
    let opt = AdamW::new(params, AdamWConfig { lr: cfg.policy.lr, weight_decay: cfg.policy.weight_decay, ..Default::default() });
    // At most L - 1 blocks: the generator hands out block inputs, and the last block has no successor.
    let trunk_layers = if cfg.rl.trunk_cache { policy.frozen_prefix().min(policy.model.num_layers().saturating_sub(1)) } else { 0 };
    let reference_shares_trunk = trunk_layers > 0 && policy.same_prefix(&reference, trunk_layers);
    let gold_reuses_reference =
        gold.as_ref().and_then(|g| g.gold.lm.as_ref().map(|lm| (&g.gold.cfg.fluency_model, lm))).is_some_and(|(m, lm)| {
            let same_file = |a: &str, b: &str| match (crate::paths::resolve_model(a), crate::paths::resolve_model(b)) {
                (Ok(x), Ok(y)) => x.canonicalize().ok().is_some_and(|x| y.canonicalize().ok() == Some(x)),
                _ => false,
            };
            same_file(m, &cfg.policy.model) && lm.model.precision == reference.precision && lm.model.device == reference.device
        });
    let (train_prompts, eval_prompts) = load_prompts(cfg)?;
    ensure!(!train_prompts.is_empty(), "no training prompts");
    let budget = memory_budget(cfg, &policy, opt.params.iter().map(|(_, t)| t.numel() as i64).sum(), free, device, eval_prompts.len())?;
    Ok(Run {
        cfg,
        policy,
        reference,
        tokenizer: loaded.tokenizer,
        reward,
        gold,
        train_prompts,
        eval_prompts,
        opt,
        device,
        policy_forwards: 0,
        trunk_layers,
        reference_shares_trunk,
        gold_reuses_reference,
        budget,
    })
}

/// Rows per `generate` call and micro-batches per optimiser step (`rl::budget`), from the memory
/// `free` on `device` before the models were loaded. Where the platform reports no free memory,
/// "auto" means everything at once and one micro-batch, as without a budget.
fn memory_budget(
    cfg: &RlConfig,
    policy: &CausalLm,
    trained_params: i64,
    free: Option<f64>,
    device: Device,
    n_eval: usize,
) -> Result<Budget> {
    let r = &cfg.rl;
    let rows = (r.prompts_per_step * r.group_size).max(r.eval_prompts.min(n_eval));
    let Some(free) = free else {
        let fixed = |c: Count, all: usize| if let Count::Fixed(n) = c { n } else { all };
        return Ok(Budget { generation_batch: fixed(r.generation_batch, rows), grad_accum: fixed(r.grad_accum, 1) });
    };
    let shapes = Shapes {
        model: policy.config.clone(),
        prompt_tokens: r.max_prompt_tokens as i64,
        new_tokens: r.max_new_tokens,
        trained_blocks: (policy.model.num_layers() - policy.frozen_prefix()) as i64,
        trained_params,
        act_bytes: if policy.precision == Precision::F32 { 4 } else { 3 },
        checkpointing: cfg.policy.gradient_checkpointing,
        cuda: device.is_cuda(),
    };
    let name = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "the host".to_string(),
    };
    crate::rl::budget::choose(&shapes, free, rows, r.minibatch, r.generation_batch, r.grad_accum, &name)
}

/// Train and eval prompts from the config (the testbed generator or files).
pub fn load_prompts(cfg: &RlConfig) -> Result<(Vec<PromptExample>, Vec<PromptExample>)> {
    let opts = crate::data::LoadOptions { skip_invalid: cfg.data.skip_invalid };
    if cfg.data.prompts == "testbed" {
        use crate::testbed::prompts::{generate_split, Split};
        let to_ex = |v: Vec<crate::testbed::TestbedPrompt>, name: &str| -> Vec<PromptExample> {
            v.into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut meta = Map::new();
                    meta.insert("id".into(), json!(p.id));
                    meta.insert("spec".into(), serde_json::to_value(&p.spec).unwrap_or(Value::Null));
                    PromptExample {
                        prompt: Text::Plain(p.text),
                        origin: crate::data::Origin { file: format!("testbed:{name}").into(), line: i + 1 },
                        meta,
                    }
                })
                .collect()
        };
        let tr = generate_split(Split::Train, cfg.data.testbed_train, cfg.seed_data())?;
        let te = generate_split(Split::Test, cfg.data.testbed_test, cfg.seed_data())?;
        return Ok((as_chat(cfg, to_ex(tr, "train")), as_chat(cfg, to_ex(te, "test"))));
    }
    let train = crate::data::load_prompts(Path::new(&cfg.data.prompts), &opts)?.items;
    let eval = match &cfg.data.eval_prompts {
        Some(p) => crate::data::load_prompts(Path::new(p), &opts)?.items,
        None => vec![],
    };
    Ok((as_chat(cfg, train), as_chat(cfg, eval)))
}

/// With `policy.chat`, a plain prompt is one user message: the policy renders it through its chat
/// template, and the reward model reads the same conversation it was trained on (TRL's
/// conversational pairs, as `testbed make-pairs` writes them), not the bare concatenation.
fn as_chat(cfg: &RlConfig, v: Vec<PromptExample>) -> Vec<PromptExample> {
    if !cfg.policy.chat {
        return v;
    }
    v.into_iter()
        .map(|mut p| {
            if let Text::Plain(s) = &p.prompt {
                p.prompt = Text::Chat(vec![Message { role: "user".into(), content: s.clone() }]);
            }
            p
        })
        .collect()
}

impl RlConfig {
    /// The testbed's prompts do not depend on the run seed: every seed of a grid sees the same
    /// prompt pool (seeds vary sampling, order and init).
    pub fn seed_data(&self) -> u64 {
        0
    }
}

/// Runs (or resumes) training; returns the path of the metrics file.
pub fn run(run: &mut Run, resume: bool, progress: bool) -> Result<std::path::PathBuf> {
    let cfg = run.cfg;
    let out = &cfg.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ck_dir = out.join("checkpoint");
    let ck = if resume { find_checkpoint(&ck_dir) } else { None };
    if !resume && ck_dir.exists() {
        bail!("{} already has a checkpoint: pass --resume to continue it, or choose another out folder", out.display());
    }
    crate::config::save(cfg, &out.join("config.toml"))?;
    let start = match &ck {
        Some(d) => run.load_checkpoint(d)?,
        None => 0,
    };
    let mut sink = MetricsSink::open(&out.join("metrics.jsonl"), ck.as_ref().map(|_| start - 1))?;
    let mut eval_sink = MetricsSink::open(&out.join("eval.jsonl"), ck.as_ref().map(|_| start - 1))?;
    let eval_on = cfg.rl.eval_every > 0;
    let gold_of =
        |rows: &[Map<String, Value>]| -> Vec<f64> { rows.iter().filter_map(|r| r.get("gold").and_then(|g| g.as_f64())).collect() };
    let mut init_gold: Vec<f64> = vec![];
    if eval_on {
        // pi_init's eval rows (step -1): the baseline of the win rates. Written once; on resume
        // read back from eval.jsonl (recomputed, deterministically, where they are missing).
        let kept: Vec<Map<String, Value>> = match &ck {
            Some(_) => crate::metrics::read_jsonl(eval_sink.path())?
                .into_iter()
                .filter(|r| r.get("step").and_then(Value::as_i64) == Some(-1))
                .collect(),
            None => vec![],
        };
        let want = cfg.rl.eval_prompts.min(run.eval_prompts.len());
        if kept.len() == want && want > 0 {
            init_gold = gold_of(&kept);
        } else {
            let (_, rows) = run.evaluate(-1)?;
            init_gold = gold_of(&rows);
            if kept.is_empty() {
                for r in &rows {
                    eval_sink.write(r)?;
                }
            }
        }
    }
    eprintln!(
        "rl: rollouts and evals decode in calls of at most {} rows; {} micro-batch(es) per optimiser step",
        run.budget.generation_batch, run.budget.grad_accum
    );
    let bar = crate::reward::train::progress_bar(progress, cfg.rl.steps as u64, start as u64);
    for t in start..cfg.rl.steps {
        if cfg.rl.stop_after == Some(t) {
            bail!("stopped after {t} steps (rl.stop_after); resume with --resume");
        }
        let mut m = contain_panic(&format!("step {t}"), || run.step(t))?;
        let last = t + 1 == cfg.rl.steps;
        if eval_on && (t % cfg.rl.eval_every == 0 || last) {
            let t0 = Instant::now();
            let (em, rows) = contain_panic(&format!("eval at step {t}"), || run.evaluate(t))?;
            for (k, v) in em {
                m.insert(k, v);
            }
            let gold = gold_of(&rows);
            if !gold.is_empty() && gold.len() == init_gold.len() {
                // Win rate vs pi_init judged by gold (ties count half), the AlpacaEval-WR analogue.
                let w: f64 = gold
                    .iter()
                    .zip(&init_gold)
                    .map(|(a, b)| {
                        if a > b {
                            1.0
                        } else if a == b {
                            0.5
                        } else {
                            0.0
                        }
                    })
                    .sum();
                m.insert("eval/win_rate".into(), json!(w / gold.len() as f64));
            }
            for r in &rows {
                eval_sink.write(r)?;
            }
            m.insert("time/eval".into(), json!(t0.elapsed().as_secs_f64()));
        }
        let msg = format!(
            "reward {:.3} kl {:.3} {:.1}s/step",
            m["reward"].as_f64().unwrap_or(f64::NAN),
            m["kl"].as_f64().unwrap_or(f64::NAN),
            m["time/step"].as_f64().unwrap_or(f64::NAN)
        );
        sink.write(&m)?;
        if let Some(b) = &bar {
            b.set_message(msg);
            b.inc(1);
        }
        if cfg.rl.save_every > 0 && (t + 1) % cfg.rl.save_every == 0 || last {
            run.save_checkpoint(&ck_dir, t + 1)?;
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    crate::metrics::write_csv(&out.join("metrics.csv"), &crate::metrics::read_jsonl(sink.path())?)?;
    Ok(sink.path().to_path_buf())
}

/// Runs one step (or eval) and turns a panic inside it into an error naming the step: tch panics
/// where libtorch throws, and the one a user can act on is running out of (GPU) memory, which gets
/// the settings that size the step. The checkpoint on disk is the last saved step's either way.
fn contain_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = crate::error::panic_message(payload.as_ref(), "(no message)");
            // libtorch's message without the C++ backtrace after it (tch's errors reach the panic
            // through `{:?}`, so its line breaks arrive as the two characters `\n`).
            let first = msg.split("\\n").next().and_then(|m| m.lines().next()).unwrap_or(msg).trim();
            if msg.contains("out of memory") {
                bail!(
                    "{what}: out of memory ({first}). The step does not fit on this device: set rl.grad_accum and \
                     rl.generation_batch to \"auto\" or smaller sizes, policy.gradient_checkpointing = true, lower \
                     reward.batch_size, rl.prompts_per_step x rl.group_size or rl.max_new_tokens, or set policy.dtype = \"bf16\"; \
                     the last saved checkpoint is intact: resume with --resume"
                )
            }
            bail!("{what} failed: {first}; the last saved checkpoint is intact")
        }
    }
}

/// A finished or stopped `r2m rl` run, loaded back: its config, the policy with the checkpoint's
/// trained weights (the initial policy + its trainable set, overwritten), the tokenizer, and the
/// checkpoint folder.
pub fn load_run(run_dir: &Path, device: Device) -> Result<(RlConfig, CausalLm, Tokenizer, std::path::PathBuf)> {
    let cfg: RlConfig = crate::config::load(Some(&run_dir.join("config.toml")), &[])?;
    let ck = find_checkpoint(&run_dir.join("checkpoint")).with_context(|| format!("{}: no checkpoint/ folder", run_dir.display()))?;
    let l =
        CausalLm::load_path(&cfg.policy.model, device).with_context(|| format!("loading the run's initial policy {}", cfg.policy.model))?;
    let mut m = l.model;
    m.precision = Precision::resolve(&cfg.policy.dtype, device, "policy.dtype")?;
    let params = apply_trainable(&mut m, &cfg.policy.trainable, cfg.seed as i64)?;
    let path = ck.join("policy.safetensors");
    let saved: std::collections::HashMap<String, Tensor> = safetensors::read_file(&path)?.into_iter().collect();
    let _g = tch::no_grad_guard();
    for (n, p) in &params {
        let s = saved.get(n).with_context(|| format!("{}: lacks '{n}'", path.display()))?;
        ensure!(s.size() == p.size(), "{}: '{n}' has shape {:?}, model has {:?}", path.display(), s.size(), p.size());
        p.shallow_clone().copy_(&s.to_device(device));
    }
    Ok((cfg, m, l.tokenizer, ck))
}
