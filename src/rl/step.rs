//! One RL step as named phases, in Algorithm 1's order:
//!  1. [`Run::collect`] (rollout.rs): n prompts, K responses each from the current policy, their old
//!     log-probs and hidden states h, the reference's log-probs;
//!  2. [`Run::score`]: the reward source annotates the responses (it may read h and the step t);
//!  3. [`Run::advantages`]: the algorithm's advantages and the loss they enter (the one place the
//!     algorithms differ);
//!  4. [`Run::policy_update`]: k epochs of minibatches, clipped loss, AdamW; h' captured in the
//!     last epoch;
//!  5. [`Run::reward_update`]: the reward source's own update with h' (R2M's; a no-op for a frozen RM);
//!  6. [`Run::step_metrics`]: the step's metrics (TRL's names where the quantity is the same).
//!
//! Data parallel: each rank collects, scores and trains on its share of the groups; between
//! phases 2 and 3 the ranks exchange their rows' scores, log-probs and masks ([`Batch`]), so the
//! advantages and the metrics are those of the whole batch, and each minibatch's gradients are
//! summed over the ranks before its AdamW step.
use crate::data::PromptExample;
use crate::dist::dp;
use crate::rl::advantages as adv;
use crate::rl::clock::Clock;
use crate::rl::config::Algo;
use crate::rl::losses::{self, Aggregation, LossStats};
use crate::rl::reward_source::{RewardInput, UpdateInput};
use crate::rl::rollout::Rollout;
use crate::rl::trainer::Run;
use crate::train::{ensure_finite, lr_at};
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The loss an algorithm's advantages enter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PolicyLoss {
    /// Sequence-level advantages (B) on the sequence's summed log-ratio, clipped (RLOO).
    Sequence,
    /// Token-level advantages on each token's ratio, clipped at `eps` / `eps_high`; the KL to the
    /// reference as a loss term with coefficient `kl_beta` (GRPO) or already in the rewards (None).
    Token { kl_beta: Option<f64>, aggregation: Aggregation },
}

/// The whole batch's per-row values that the advantages and the metrics read: the rollout's own
/// tensors in one process; in a data parallel run, every rank's rows gathered in rank order
/// (token tensors padded to the widest rank's responses).
pub struct Batch {
    pub mask: Tensor,
    pub old_lp: Tensor,
    pub ref_lp: Tensor,
    /// The rewards trained on (B), f32 on the run's device.
    pub scores: Tensor,
    /// The frozen proxy's scores (R2M's methods).
    pub frozen: Option<Tensor>,
    /// ReMax's baseline (B).
    pub baseline: Option<Tensor>,
    /// The metric source's scores (the testbed's gold).
    pub metric: Option<Tensor>,
    pub finished: Vec<bool>,
    pub entropy: f64,
}

/// What the policy update (phase 4) adds up for the metrics.
#[derive(Default)]
pub struct PolicyStats {
    pub loss_sum: f64,
    pub grad_norm_sum: f64,
    pub optimizer_steps: usize,
    pub clip_low: f64,
    pub clip_high: f64,
    pub kl_term: f64,
    /// Minibatches the share-weighted sums above (clip fractions, KL term) run over.
    pub minibatches: f64,
}

impl Run<'_> {
    /// One RL step: the phases in order; returns the step's metrics.
    pub fn step(&mut self, t: i64) -> Result<Map<String, Value>> {
        let mut clock = Clock::default();
        let t_step = Instant::now();
        let traffic = self.dist.map(|d| d.group.traffic());
        let link_traffic = self.rm_link.as_ref().map(|l| l.traffic());
        let r = self.collect(t, &mut clock)?;
        self.release_host_memory();
        let scores = self.score(&r, t, &mut clock)?;
        let frozen = self.reward.frozen_scores();
        let fk = self.float_kind();
        let scores = scores.to_device(self.device).to_kind(fk);
        ensure_finite(scores.sum(fk).double_value(&[]), &format!("reward at step {t} (reward annotation)"))?;
        let baseline = match self.cfg.rl.algo {
            Algo::Remax => Some(self.remax_baseline(&r, t, &mut clock)?.to_kind(fk)),
            _ => None,
        };
        let metric = self.metric_scores(&r, &mut clock)?;
        let batch = self.batch(&r, &scores, frozen, baseline, metric)?;
        let (advantages, loss) = self.advantages(&batch, &mut clock)?;
        let advantages = self.own_rows(&r, &advantages);
        let (stats, h_prime) = clock.time("time/policy", || self.policy_update(&r, &batch, &advantages, loss, t))?;
        let update = clock.time("time/r2m", || self.reward_update(&r, &scores, h_prime.as_ref(), t))?;
        let mut m = self.step_metrics(t, &batch, &stats, update, &mut clock)?;
        self.release_host_memory();
        m.insert("time/step".into(), json!(t_step.elapsed().as_secs_f64()));
        if let (Some(d), Some((bytes, secs))) = (self.dist, traffic) {
            // What this step's collectives moved and cost (rank 0's, as it writes the metrics).
            let (b, s) = d.group.traffic();
            m.insert("dist/bytes".into(), json!(b - bytes));
            m.insert("time/dist".into(), json!(s - secs));
        }
        if let (Some(l), Some((sent, received))) = (&self.rm_link, link_traffic) {
            // What crossed between this rank and the reward-model rank: texts out, H_last and scores back.
            let (s, r) = l.traffic();
            m.insert("dist/bytes_to_rm".into(), json!(s - sent));
            m.insert("dist/bytes_from_rm".into(), json!(r - received));
        }
        Ok(m)
    }

    /// Phase 2: the reward source's scores of the rollout's responses (B), as it returns them.
    pub fn score(&mut self, r: &Rollout, t: i64, clock: &mut Clock) -> Result<Tensor> {
        let input = RewardInput {
            prompts: r.prompt_idx.iter().map(|&i| &self.train_prompts[i]).collect(),
            responses: &r.responses,
            finished: &r.finished,
            hidden: r.hidden.as_ref().map(|h| (h, &r.seq_mask)),
            step: t,
            total_steps: self.cfg.rl.steps,
            group_size: self.cfg.rl.group_size as i64,
        };
        let reward = &mut self.reward;
        Ok(clock.time("time/reward", || reward.score(&input))?)
    }

    /// The metric source's scores of the rollout's responses (the testbed's gold), if any.
    pub fn metric_scores(&self, r: &Rollout, clock: &mut Clock) -> Result<Option<Tensor>> {
        let Some(source) = &self.metric else { return Ok(None) };
        let prompts: Vec<&PromptExample> = r.prompt_idx.iter().map(|&i| &self.train_prompts[i]).collect();
        let time = format!("time/{}", source.name());
        let gs = clock.time(&time, || source.scores(&prompts, &r.responses, &r.finished, r.reference_logprobs.as_deref()))?;
        Ok(Some(gs))
    }

    /// The whole batch's rows ([`Batch`]): this rollout's own in one process, every rank's
    /// gathered in a data parallel run.
    pub fn batch(
        &self,
        r: &Rollout,
        scores: &Tensor,
        frozen: Option<Tensor>,
        baseline: Option<Tensor>,
        metric: Option<Tensor>,
    ) -> Result<Batch> {
        let Some(d) = self.dist else {
            return Ok(Batch {
                mask: r.mask.shallow_clone(),
                old_lp: r.old_lp.shallow_clone(),
                ref_lp: r.ref_lp.shallow_clone(),
                scores: scores.shallow_clone(),
                frozen,
                baseline,
                metric,
                finished: r.finished.clone(),
                entropy: r.entropy,
            });
        };
        let g = &d.group;
        let counts = self.rank_rows();
        let counts: Vec<usize> = counts.iter().map(|x| x.len()).collect();
        let width = {
            let mut w = Tensor::from_slice(&[r.mask.size()[1]]);
            g.all_reduce(&mut w, crate::dist::ReduceOp::Max)?;
            w.int64_value(&[0])
        };
        let dev = self.device;
        let rows = |x: &Tensor| -> Result<Tensor> { Ok(dp::all_gather_rows(g, &x.to_device(Device::Cpu), &counts)?.to_device(dev)) };
        let cols = |x: &Tensor| -> Result<Tensor> { rows(&dp::pad_cols(&x.to_device(Device::Cpu), width)) };
        let fin = Tensor::from_slice(&r.finished.iter().map(|&f| u8::from(f)).collect::<Vec<_>>());
        let finished = Vec::<u8>::try_from(dp::all_gather_rows(g, &fin, &counts)?)?.into_iter().map(|f| f != 0).collect();
        let tokens = r.mask.to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
        let e = g.sum_f64(&[r.entropy * tokens, tokens])?;
        let fk = self.float_kind();
        let opt = |x: Option<Tensor>| x.map(|x| rows(&x.to_kind(fk))).transpose();
        Ok(Batch {
            mask: cols(&r.mask)?,
            old_lp: cols(&r.old_lp)?,
            ref_lp: cols(&r.ref_lp)?,
            scores: rows(scores)?,
            frozen: opt(frozen)?,
            baseline: opt(baseline)?,
            metric: opt(metric)?,
            finished,
            entropy: if e[1] > 0.0 { e[0] / e[1] } else { f64::NAN },
        })
    }

    /// This rank's rows of a whole-batch tensor (B) or (B, N), narrowed to this rollout's width.
    fn own_rows(&self, r: &Rollout, x: &Tensor) -> Tensor {
        if self.dist.is_none() {
            return x.shallow_clone();
        }
        let mine = self.own_range();
        let x = x.narrow(0, mine.start as i64, mine.len() as i64);
        if x.dim() == 2 {
            x.narrow(1, 0, r.mask.size()[1])
        } else {
            x
        }
    }

    /// Phase 3: the advantages of the whole batch, (B) sequence-level or (B, N) token-level, and
    /// the loss they enter.
    pub fn advantages(&mut self, r: &Batch, clock: &mut Clock) -> Result<(Tensor, PolicyLoss)> {
        let c = &self.cfg.rl;
        let (k, beta) = (c.group_size as i64, c.beta());
        let (t_adv, from) = (Instant::now(), clock.0.len());
        let token_mean = PolicyLoss::Token { kl_beta: None, aggregation: Aggregation::TokenMean };
        let scores = &r.scores;
        let out = match c.algo {
            Algo::Rloo => {
                let shaped = adv::kl_shaped_reward(scores, &r.old_lp, &r.ref_lp, &r.mask, beta);
                let a = adv::rloo(&shaped, k);
                (if c.normalize_advantages { adv::normalize(&a) } else { a }, PolicyLoss::Sequence)
            }
            Algo::Grpo => (
                adv::grpo(scores, k, c.scale_rewards),
                PolicyLoss::Token { kl_beta: (beta != 0.0).then_some(beta), aggregation: c.aggregation },
            ),
            Algo::ReinforcePp => {
                let rw = adv::token_rewards(scores, &r.old_lp, &r.ref_lp, &r.mask, beta, c.reward_clip);
                (adv::reinforce_pp(&rw, &r.mask, c.gamma), token_mean)
            }
            Algo::Remax => {
                let base = r.baseline.as_ref().expect("the step computes ReMax's baseline before the advantages");
                let rw = adv::token_rewards(scores, &r.old_lp, &r.ref_lp, &r.mask, beta, c.reward_clip);
                (adv::remax(&rw, &r.mask, base), token_mean)
            }
        };
        let inner = clock.since(from, None);
        clock.0.push(("time/advantages".into(), t_adv.elapsed().as_secs_f64() - inner));
        Ok(out)
    }

    /// Phase 4: k epochs over minibatches of the rollout (a fixed permutation per seed, step and
    /// epoch: deterministic and resumable), each split into micro-batches whose gradients add up
    /// before one AdamW step. Returns the sums for the metrics and, where the reward source reads
    /// hidden states, h' (B, P + N, D) from the last epoch's training forward.
    ///
    /// A micro-batch's loss enters as its share of the minibatch's: its rows' share, or for the
    /// token-mean loss its tokens' share, so that the sum over micro-batches (and over ranks, in a
    /// data parallel run, where each rank takes its rows of every minibatch) is the loss of the
    /// whole minibatch. `advantages` are this rank's rows; `batch` is the whole batch.
    pub fn policy_update(
        &mut self,
        r: &Rollout,
        batch: &Batch,
        advantages: &Tensor,
        loss: PolicyLoss,
        t: i64,
    ) -> Result<(PolicyStats, Option<Tensor>)> {
        let c = &self.cfg.rl;
        let b = r.seq.size()[0];
        let d = self.policy.config.hidden_size;
        let h_prime = self.reward.wants_hidden().then(|| Tensor::zeros([b, r.seq.size()[1], d], (self.float_kind(), self.device)));
        let mut st = PolicyStats::default();
        let micro = c.minibatch / self.budget.grad_accum;
        let whole = batch.mask.size()[0] as usize;
        let mine = self.own_range();
        let lens = Vec::<f64>::try_from(
            batch
                .mask
                .to_kind(Kind::Float)
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .to_device(Device::Cpu)
                .to_kind(Kind::Double),
        )?;
        let token_mean = matches!(loss, PolicyLoss::Token { aggregation: Aggregation::TokenMean, .. });
        for epoch in 0..c.epochs {
            let order = crate::data::batch::epoch_order(whole, self.cfg.seed ^ (t as u64).wrapping_mul(0x9E37), epoch as u64);
            for mb in order.chunks(c.minibatch) {
                let step_opt = self.opt.step;
                self.opt.zero_grad();
                let mut mb_loss = 0.0;
                let mb_tokens: f64 = mb.iter().map(|&i| lens[i]).sum();
                // This rank's rows of the minibatch, as indices into its rollout.
                let own: Vec<usize> = mb.iter().filter(|i| mine.contains(i)).map(|i| i - mine.start).collect();
                for chunk in own.chunks(micro) {
                    let h_out = h_prime.as_ref().filter(|_| epoch + 1 == c.epochs);
                    let rows_share = chunk.len() as f64 / mb.len() as f64;
                    let tokens_share = chunk.iter().map(|&i| lens[i + mine.start]).sum::<f64>() / mb_tokens.max(1.0);
                    let w = if token_mean { tokens_share } else { rows_share };
                    let (lv, ls) = self.micro_batch(r, advantages, loss, chunk, w, h_out)?;
                    ensure_finite(lv, &format!("policy loss at step {t} (policy update)"))?;
                    mb_loss += lv * w;
                    // The minibatch's clip fractions and KL: over its tokens (its rows for the
                    // sequence loss), whatever the micro-batches and ranks.
                    let ws = if loss == PolicyLoss::Sequence { rows_share } else { tokens_share };
                    st.clip_low += ls.clip_low.double_value(&[]) * ws;
                    st.clip_high += ls.clip_high.double_value(&[]) * ws;
                    st.kl_term += ls.kl.double_value(&[]) * ws;
                }
                let p = &self.cfg.policy;
                let lr = lr_at(step_opt, p.lr, p.warmup_steps, self.total_opt_steps(), p.schedule, 0.0);
                let group = self.dist.map(|d| &d.group);
                let what = format!("policy update at step {t}");
                let gn = crate::dist::zero::update(&mut self.opt, self.zero.as_mut(), group, p.max_grad_norm, lr, &what)?;
                st.loss_sum += mb_loss;
                st.grad_norm_sum += gn;
                st.optimizer_steps += 1;
            }
        }
        st.minibatches = st.optimizer_steps as f64;
        if let Some(d) = self.dist {
            // Each minibatch's sums are split over the ranks.
            let s = d.group.sum_f64(&[st.loss_sum, st.clip_low, st.clip_high, st.kl_term])?;
            (st.loss_sum, st.clip_low, st.clip_high, st.kl_term) = (s[0], s[1], s[2], s[3]);
        }
        Ok((st, h_prime))
    }

    /// One micro-batch (the rows `chunk` of the rollout): the policy's forward, the loss, scaled
    /// by `share` (the chunk's share of its minibatch), and its backward. Writes the detached
    /// hidden states into `h_out` at those rows when given. Returns the unscaled loss.
    fn micro_batch(
        &mut self,
        r: &Rollout,
        advantages: &Tensor,
        loss: PolicyLoss,
        chunk: &[usize],
        share: f64,
        h_out: Option<&Tensor>,
    ) -> Result<(f64, LossStats)> {
        let c = &self.cfg.rl;
        let ix = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(self.device);
        let seq = r.seq.to_device(self.device).index_select(0, &ix);
        let sm = r.seq_mask.to_device(self.device).index_select(0, &ix);
        self.policy_forwards += 1;
        let (l, h) = match &r.trunk {
            Some(x) => {
                self.policy.token_logprobs_from_trunk(&x.index_select(0, &ix), self.trunk_layers, &seq, &sm, c.temperature, r.prompt_len)?
            }
            None => self.policy.token_logprobs(&seq, &sm, c.temperature, r.prompt_len)?,
        };
        if let Some(hp) = h_out {
            let _ = hp.shallow_clone().index_copy_(0, &ix, &h.detach().to_kind(hp.kind()));
        }
        let (m, lo, a) = (r.mask.index_select(0, &ix), r.old_lp.index_select(0, &ix), advantages.index_select(0, &ix));
        let (value, st) = match loss {
            PolicyLoss::Sequence => losses::sequence_clipped_loss(&l, &lo, &m, &a, c.eps),
            PolicyLoss::Token { kl_beta, aggregation } => {
                let lr = kl_beta.map(|_| r.ref_lp.index_select(0, &ix));
                let kl = lr.as_ref().zip(kl_beta);
                losses::token_clipped_loss(&l, &lo, &m, &a, c.eps, c.eps_high.unwrap_or(c.eps), kl, aggregation, c.max_new_tokens)
            }
        };
        (&value * share).backward();
        Ok((value.double_value(&[]), st))
    }

    /// Phase 5: the reward source's update after the policy's (R2M's re-fit), with h' from the last
    /// epoch; returns its metrics.
    pub fn reward_update(&mut self, r: &Rollout, scores: &Tensor, h_prime: Option<&Tensor>, t: i64) -> Result<Map<String, Value>> {
        let u = UpdateInput {
            annotation_rewards: scores,
            hidden: h_prime.map(|h| (h, &r.seq_mask)),
            step: t,
            total_steps: self.cfg.rl.steps,
            group_size: self.cfg.rl.group_size as i64,
            ranks: self.dist.map(|d| (&d.group, self.cfg.rl.prompts_per_step as i64)),
        };
        Ok(self.reward.update(&u)?)
    }

    /// Phase 6: the step's metrics, over the whole batch `r`.
    pub fn step_metrics(
        &mut self,
        t: i64,
        r: &Batch,
        st: &PolicyStats,
        update: Map<String, Value>,
        clock: &mut Clock,
    ) -> Result<Map<String, Value>> {
        let fk = self.float_kind();
        let (scores, frozen) = (&r.scores, r.frozen.as_ref());
        let t_metrics = Instant::now();
        let c = &self.cfg.rl;
        let k = c.group_size as i64;
        let mask_f = r.mask.to_kind(fk);
        let lens = mask_f.sum_dim_intlist([1i64].as_slice(), false, fk);
        let kl_seq = ((&r.old_lp - &r.ref_lp) * &mask_f).sum_dim_intlist([1i64].as_slice(), false, fk);
        let mut m = Map::new();
        m.insert("step".into(), json!(t));
        m.insert("reward".into(), json!(scores.mean(fk).double_value(&[])));
        m.insert("reward_std".into(), json!(scores.std(true).double_value(&[])));
        if let Some(f) = frozen {
            frozen_rm_metrics(&mut m, scores, &f.to_device(self.device).to_kind(fk), k)?;
        }
        let zero_std = scores.view([-1, k]).std_dim(1, true, false).lt(1e-6).to_kind(fk).mean(fk);
        m.insert("frac_reward_zero_std".into(), json!(zero_std.double_value(&[])));
        m.insert("kl".into(), json!(kl_seq.mean(fk).double_value(&[])));
        if !r.entropy.is_nan() {
            m.insert("entropy".into(), json!(r.entropy));
        }
        let (n_opt, n_mb) = (st.optimizer_steps.max(1) as f64, st.minibatches);
        m.insert("loss".into(), json!(st.loss_sum / n_opt));
        m.insert("grad_norm".into(), json!(st.grad_norm_sum / n_opt));
        m.insert("clip_ratio/low_mean".into(), json!(st.clip_low / n_mb));
        m.insert("clip_ratio/high_mean".into(), json!(st.clip_high / n_mb));
        m.insert("clip_ratio/region_mean".into(), json!((st.clip_low + st.clip_high) / n_mb));
        if c.algo == Algo::Grpo {
            m.insert("kl_term".into(), json!(st.kl_term / n_mb));
        }
        m.insert("completions/mean_length".into(), json!(lens.mean(fk).double_value(&[])));
        let clipped = r.finished.iter().filter(|f| !**f).count() as f64 / r.finished.len() as f64;
        m.insert("completions/clipped_ratio".into(), json!(clipped));
        m.insert("num_tokens".into(), json!(lens.sum(fk).double_value(&[])));
        let p = &self.cfg.policy;
        m.insert("learning_rate".into(), json!(lr_at(self.opt.step - 1, p.lr, p.warmup_steps, self.total_opt_steps(), p.schedule, 0.0)));
        if let (Some(source), Some(gs)) = (&self.metric, &r.metric) {
            m.insert(format!("{}/reward", source.name()), json!(gs.mean(fk).double_value(&[])));
            // The reward's pairwise accuracy against the metric inside each group: how well it
            // ranks the policy's own samples as the policy moves (and the frozen proxy's, beside it).
            if k >= 2 {
                let g = Vec::<f64>::try_from(gs.to_kind(Kind::Double))?;
                let agree = |x: &Tensor| -> Result<f64> {
                    let x = Vec::<f64>::try_from(x.to_device(tch::Device::Cpu).to_kind(Kind::Double))?;
                    Ok(adv::group_agreement(&x, &g, k as usize).concordance)
                };
                m.insert(format!("{}/group_agree", source.name()), json!(agree(scores)?));
                if let Some(f) = frozen {
                    m.insert(format!("{}/group_agree_frozen_rm", source.name()), json!(agree(f)?));
                }
            }
        }
        m.extend(update);
        clock.0.push(("time/metrics".into(), t_metrics.elapsed().as_secs_f64()));
        clock.add_to(&mut m);
        Ok(m)
    }

    /// The kind the step computes rewards, advantages and losses in: the policy's
    /// ([`crate::model::precision::compute_kind`]: f64 under the f64 precision, f32 otherwise).
    pub fn float_kind(&self) -> Kind {
        crate::model::precision::compute_kind(self.policy.head_weight().kind())
    }

    pub(crate) fn total_opt_steps(&self) -> i64 {
        let c = &self.cfg.rl;
        let b = c.prompts_per_step * c.group_size;
        c.steps * (c.epochs * b / c.minibatch) as i64
    }
}

/// How far the reward trained on departs from the frozen proxy's scores `f` on the same rollouts:
/// the share of groups whose best response is the proxy's best too, the correlation, and the same
/// inside each group, which is all a group-relative advantage sees (`group_corr` is the
/// correlation of the GRPO advantages the two rewards give).
fn frozen_rm_metrics(m: &mut Map<String, Value>, scores: &Tensor, f: &Tensor, k: i64) -> Result<()> {
    let fk = scores.kind();
    m.insert("reward_frozen_rm".into(), json!(f.mean(fk).double_value(&[])));
    let same_top = scores.view([-1, k]).argmax(1, false).eq_tensor(&f.view([-1, k]).argmax(1, false)).to_kind(fk);
    m.insert("reward_frozen_rm/top_agree".into(), json!(same_top.mean(fk).double_value(&[])));
    let (x, y) = (scores - scores.mean(fk), f - f.mean(fk));
    let den = (x.square().sum(fk) * y.square().sum(fk)).sqrt().double_value(&[]);
    let corr = if den > 0.0 { (x * y).sum(fk).double_value(&[]) / den } else { f64::NAN };
    m.insert("reward_frozen_rm/corr".into(), json!(corr));
    if k >= 2 {
        let (sv, fv) = (Vec::<f64>::try_from(scores.to_kind(Kind::Double))?, Vec::<f64>::try_from(f.to_kind(Kind::Double))?);
        let g = adv::group_agreement(&sv, &fv, k as usize);
        m.insert("reward_frozen_rm/group_corr".into(), json!(g.corr));
        m.insert("reward_frozen_rm/group_agree".into(), json!(g.concordance));
    }
    Ok(())
}
