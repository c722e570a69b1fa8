//! R2M, the Real-Time Aligned Reward Model (Huang et al., ICML 2026), exactly as
//! docs/method.md states it, with the paper's baselines and ablations.
//!
//! r(x, y, h) = phi(H_fin), H_fin = (1 - w(t)) H_hat + w(t) H_last,
//! H_hat = CrossAttn(q = H_last W_q; k, v = h W_k, h W_v) W_o,
//! w(t) = max(0.5 cos(pi t / T) + 0.5, Omega).
//! H_last comes from the frozen RM backbone once per trajectory (cached at annotation); h is the
//! policy's final hidden states (captured, never recomputed). After each policy step, GREBT =
//! (1 - alpha) BT(winner, loser) + alpha GRE re-fits the cross-attention and phi.
pub mod cross_attention;
pub mod eval;
pub mod grebt;

use crate::error::{Error, Result};
use crate::model::params::Params;
use crate::model::precision::Widen;
use crate::reward::frozen::FrozenRm;
use crate::reward::model::RewardModel;
use crate::rl::reward_source::{RewardInput, RewardSource, UpdateInput};
use crate::train::{clip_grad_norm, AdamW, AdamWConfig};
use cross_attention::CrossAttention;
pub use cross_attention::QueryNorm;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The methods of the paper's Table 1 and its ablations (docs/method.md), one switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Frozen RM, no feedback.
    Vanilla,
    /// The vanilla RM trained further with BT on gold-labelled pairs of the RL prompts before RL
    /// (the experiment runner makes that RM); then vanilla RL.
    PretrainedRm,
    /// Every step, GREBT on the RM's own annotation rewards without feedback; head only.
    IterativeHead,
    /// R2M's architecture and schedule, modules never updated.
    R2mNoTrain,
    /// Feedback replaced by Gaussian noise with the hidden states' mean and variance.
    R2mNoise,
    /// alpha = 1 (GRE only).
    R2mNoBt,
    /// alpha = 0 (BT only).
    R2mNoGre,
    /// The full method.
    R2m,
}

impl Method {
    pub fn all() -> [Method; 8] {
        use Method::*;
        [Vanilla, PretrainedRm, IterativeHead, R2mNoTrain, R2mNoise, R2mNoBt, R2mNoGre, R2m]
    }
    pub fn name(&self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
    /// Whether the reward reads the policy's feedback through the cross-attention.
    pub fn uses_feedback(&self) -> bool {
        matches!(self, Method::R2mNoTrain | Method::R2mNoise | Method::R2mNoBt | Method::R2mNoGre | Method::R2m)
    }
    /// Whether the reward source is updated online.
    pub fn trains_online(&self) -> bool {
        matches!(self, Method::IterativeHead | Method::R2mNoise | Method::R2mNoBt | Method::R2mNoGre | Method::R2m)
    }
    /// Whether its reward differs from the frozen reward model's score, which it then reports
    /// beside it (`reward_frozen_rm` in metrics and evaluation rows).
    pub fn reports_frozen_scores(&self) -> bool {
        self.uses_feedback() || self.trains_online()
    }
}

/// [`R2mConfig::rank_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RankBy {
    /// R2M's rewards at annotation time (the paper).
    #[default]
    Own,
    /// The frozen proxy RM's scores of the same responses.
    Frozen,
}

/// `[r2m]` config. Defaults: docs/method.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct R2mConfig {
    pub method: Method,
    /// Cross-attention width d (paper: 2048) and heads (d divisible by heads).
    pub d: i64,
    pub heads: i64,
    /// Floor of w(t) (paper: 0.6 Llama / TL;DR, 0.7 Qwen).
    pub omega: f64,
    /// GRE weight alpha in (1 - alpha) BT + alpha GRE (paper: 0.3). Overridden by r2m-no-bt (1) and r2m-no-gre (0).
    pub alpha: f64,
    /// AdamW lr of the R2M update (paper: 1e-6 for 8B models; small models need more).
    pub lr: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub init_std: f64,
    /// Testbed switches, not the paper's (docs/method.md, "Testbed switches (not the paper's)"): `query_norm = "unit-rms"`
    /// rescales H_last to unit RMS per row before W_q only (the blend and phi read it as is), and
    /// `qk_init_std` draws W_q and W_k with another std than `init_std`. Defaults: the method as
    /// specified ("none"; unset = init_std).
    pub query_norm: QueryNorm,
    pub qk_init_std: Option<f64>,
    /// What picks each group's winner and loser for the update's BT term: R2M's own
    /// annotation-phase rewards (docs/method.md, the default) or, a testbed switch, the frozen
    /// proxy's scores of the same responses, a signal the H_hat term has not shaped. Read by the
    /// methods that update online; the others have no update.
    pub rank_by: RankBy,
    /// For pretrained-rm: the further-trained RM to use instead of `reward.model`.
    pub pretrained_rm: Option<String>,
}

impl Default for R2mConfig {
    fn default() -> Self {
        R2mConfig {
            method: Method::R2m,
            d: 2048,
            heads: 1,
            omega: 0.6,
            alpha: 0.3,
            lr: 1e-6,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            init_std: 0.02,
            query_norm: QueryNorm::None,
            qk_init_std: None,
            rank_by: RankBy::Own,
            pretrained_rm: None,
        }
    }
}

impl R2mConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.d >= 1 && self.heads >= 1 && self.d % self.heads == 0,
            "r2m.d = {} must be divisible by r2m.heads = {}",
            self.d,
            self.heads
        );
        anyhow::ensure!((0.0..=1.0).contains(&self.omega), "r2m.omega = {} must be in [0, 1]", self.omega);
        anyhow::ensure!((0.0..=1.0).contains(&self.alpha), "r2m.alpha = {} must be in [0, 1]", self.alpha);
        anyhow::ensure!(self.lr > 0.0, "r2m.lr must be > 0");
        anyhow::ensure!(self.init_std > 0.0 && self.init_std.is_finite(), "r2m.init_std = {} must be > 0", self.init_std);
        if let Some(s) = self.qk_init_std {
            anyhow::ensure!(s > 0.0 && s.is_finite(), "r2m.qk_init_std = {s} must be > 0");
        }
        if self.method == Method::PretrainedRm {
            anyhow::ensure!(self.pretrained_rm.is_some(), "r2m.pretrained_rm: method pretrained-rm needs the further-trained RM");
        }
        Ok(())
    }

    /// alpha after the ablation switches.
    pub fn effective_alpha(&self) -> f64 {
        match self.method {
            Method::R2mNoBt => 1.0,
            Method::R2mNoGre => 0.0,
            _ => self.alpha,
        }
    }
}

/// w(t) = max(0.5 cos(pi t / T) + 0.5, Omega); t 0-based, T total steps. w(0) = 1; t < 0 (the
/// eval of pi_init before RL, step -1) counts as 0, so pi_init is scored exactly like the vanilla RM.
pub fn w(t: i64, total: i64, omega: f64) -> f64 {
    let c = 0.5 * (std::f64::consts::PI * t.max(0) as f64 / total.max(1) as f64).cos() + 0.5;
    c.max(omega)
}

/// The R2M reward source (and its baselines that need online state).
pub struct R2mSource {
    pub cfg: R2mConfig,
    /// The frozen RM that gives H_last (here, or on the job's reward-model rank).
    pub rm: FrozenRm,
    pub max_length: usize,
    pub batch_size: usize,
    /// phi: the RM's head, copied (trainable here; the RM itself stays frozen).
    pub head: Tensor,
    pub xattn: Option<CrossAttention>,
    pub params: Params,
    pub opt: Option<AdamW>,
    /// H_last of the last annotated batch (B, D_rm): the update needs no backbone pass.
    cache: Option<Tensor>,
    /// The frozen RM's own scores (its trained head on H_last) of the last `score` call, for the
    /// methods whose reward differs from them ([`RewardSource::frozen_scores`]).
    frozen: Option<Tensor>,
    seed: u64,
    /// Updates done (for the noise stream and metrics).
    pub updates: i64,
}

impl R2mSource {
    /// Wraps `rm` (frozen) with R2M for a policy of hidden size `d_policy`.
    pub fn new(cfg: R2mConfig, rm: impl Into<FrozenRm>, d_policy: i64, seed: u64, max_length: usize, batch_size: usize) -> Result<Self> {
        let rm: FrozenRm = rm.into();
        let dev = rm.device();
        for (_, t) in rm.local().map(RewardModel::all_params).unwrap_or_default() {
            let _ = t.set_requires_grad(false);
        }
        let mut params = Params::default();
        let head = params.add("score.weight", rm.head().detach().copy());
        let xattn = if cfg.method.uses_feedback() {
            tch::manual_seed(seed as i64 ^ 0x52324d);
            Some(CrossAttention::new(
                &mut params,
                rm.embed_dim(),
                d_policy,
                cfg.d,
                cfg.heads,
                cfg.init_std,
                cfg.qk_init_std.unwrap_or(cfg.init_std),
                cfg.query_norm,
                dev,
            ))
        } else {
            None
        };
        // The cross-attention computes in the reward model's kind (f64 under the f64 precision).
        params.to_kind_(head.kind());
        // Only the head trains for iterative-head; nothing for vanilla / no-train.
        if cfg.method == Method::IterativeHead {
            params.set_trainable(|n| n == "score.weight");
        }
        let opt = if cfg.method.trains_online() {
            let ac = AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() };
            Some(AdamW::new(params.trainable(), ac))
        } else {
            params.freeze();
            None
        };
        Ok(R2mSource { cfg, rm, max_length, batch_size, head, xattn, params, opt, cache: None, frozen: None, seed, updates: 0 })
    }

    /// H_last (B, D_rm) of the batch's texts, from the frozen backbone, no grad.
    fn h_last(&self, input: &RewardInput) -> Result<Tensor> {
        self.h_last_of(&input.prompts, input.responses)
    }

    /// H_last (B, D_rm) for (prompt, response) pairs, from the frozen backbone, no grad.
    pub fn h_last_of(&self, prompts: &[&crate::data::PromptExample], responses: &[String]) -> Result<Tensor> {
        self.rm.h_last(prompts, responses, self.max_length, self.batch_size)
    }

    /// The feedback the cross-attention reads: h itself, or (r2m-noise) Gaussian noise with h's
    /// per-dimension mean and variance over valid tokens, seeded per update. In the head's kind
    /// (f32, or f64 under the f64 precision), whatever the policy's.
    fn feedback(&self, h: &Tensor, mask: &Tensor) -> Tensor {
        let h = h.to_device(self.rm.device()).to_kind(self.head.kind()).detach();
        if self.cfg.method != Method::R2mNoise {
            return h;
        }
        let m = mask.to_device(h.device()).to_kind(h.kind()).unsqueeze(-1); // (B, S, 1)
        let n = m.sum(h.kind()).clamp_min(1.0);
        let mean = (&h * &m).sum_dim_intlist([0i64, 1].as_slice(), false, h.kind()) / &n; // (D)
        let var = ((&h - &mean).square() * &m).sum_dim_intlist([0i64, 1].as_slice(), false, h.kind()) / &n;
        tch::manual_seed((self.seed as i64) ^ (self.updates.wrapping_mul(7919)) ^ 0x6e6f);
        Tensor::randn(h.size(), (h.kind(), h.device())) * var.sqrt() + mean
    }

    /// r = phi((1 - w) H_hat + w H_last) for cached H_last (B, D_rm) and feedback (B, S, D_p).
    pub fn rewards(&self, h_last: &Tensor, feedback: Option<(&Tensor, &Tensor)>, wt: f64) -> Tensor {
        self.rewards_with(h_last, feedback, wt, None)
    }

    /// [`Self::rewards`], also filling `diag` (when given and the cross-attention ran) with what
    /// the cross-attention does: see [`AttentionDiagnostics`].
    pub fn rewards_with(
        &self,
        h_last: &Tensor,
        feedback: Option<(&Tensor, &Tensor)>,
        wt: f64,
        diag: Option<&mut Option<AttentionDiagnostics>>,
    ) -> Tensor {
        let fin = match (&self.xattn, feedback) {
            (Some(x), Some((h, mask))) => {
                let mask = mask.to_device(h_last.device());
                let (hh, att) = x.forward_with_weights(h_last, &self.feedback(h, &mask), &mask);
                if let Some(d) = diag {
                    *d = Some(tch::no_grad(|| AttentionDiagnostics::of(&hh, h_last, &att, &mask, &self.head)));
                }
                hh * (1.0 - wt) + h_last * wt
            }
            _ => h_last.shallow_clone(),
        };
        fin.linear::<Tensor>(&self.head, None).squeeze_dim(-1)
    }

    /// What the H_hat term does to the rewards `r` (B) the advantages were computed from: the same
    /// head on H_last alone (w = 1), compared inside each group of `k` (`r2m/group_corr_no_hhat`,
    /// `r2m/group_agree_no_hhat`; nothing for k < 2).
    /// The update's metrics over the whole batch in a data parallel run: each rank's values are
    /// means over its `rows`, so the batch's are the row-weighted means over ranks.
    fn over_ranks(m: Map<String, Value>, input: &UpdateInput, rows: i64) -> Result<Map<String, Value>> {
        match input.ranks {
            Some((group, _)) => {
                crate::dist::dp::mean_over_ranks(group, &m, rows as f64).map_err(|e| Error::Input(format!("R2M update metrics: {e:#}")))
            }
            None => Ok(m),
        }
    }

    fn log_group_agreement(&self, m: &mut Map<String, Value>, r: &Tensor, h_last: &Tensor, wt: f64, k: i64) -> Result<()> {
        if k < 2 {
            return Ok(());
        }
        let plain = tch::no_grad(|| self.rewards(h_last, None, wt));
        let (rv, pv) = (Vec::<f64>::try_from(r.to_kind(Kind::Double))?, Vec::<f64>::try_from(plain.to_kind(Kind::Double))?);
        let g = crate::rl::advantages::group_agreement(&rv, &pv, k as usize);
        m.insert("r2m/group_corr_no_hhat".into(), json!(g.corr));
        m.insert("r2m/group_agree_no_hhat".into(), json!(g.concordance));
        Ok(())
    }
}

impl RewardSource for R2mSource {
    fn name(&self) -> String {
        self.cfg.method.name()
    }
    fn wants_hidden(&self) -> bool {
        self.cfg.method.uses_feedback()
    }

    fn score(&mut self, input: &RewardInput) -> Result<Tensor> {
        let h_last = self.h_last(input)?;
        if self.cfg.method.uses_feedback() && input.hidden.is_none() {
            return Err(Error::Input("R2M: the policy's hidden states were not passed to the reward source".into()));
        }
        let wt = w(input.step, input.total_steps, self.cfg.omega);
        let r = tch::no_grad(|| self.rewards(&h_last, input.hidden, wt));
        self.frozen = self
            .cfg
            .method
            .reports_frozen_scores()
            .then(|| tch::no_grad(|| self.rm.score_embedding(&h_last)).to_device(Device::Cpu).widen());
        self.cache = Some(h_last);
        Ok(r.to_device(Device::Cpu))
    }

    fn score_aside(&mut self, input: &RewardInput) -> Result<Tensor> {
        // The update ranks and recomputes the annotation's rows: another batch must not replace them.
        let kept = self.cache.take();
        let r = self.score(input);
        self.cache = kept;
        r
    }

    fn frozen_scores(&self) -> Option<Tensor> {
        self.frozen.as_ref().map(Tensor::shallow_clone)
    }

    fn update(&mut self, input: &UpdateInput) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        let wt = w(input.step, input.total_steps, self.cfg.omega);
        m.insert("r2m/w".into(), json!(wt));
        let Some(mut opt) = self.opt.take() else {
            // Modules never updated (r2m-no-train): the H_hat term still shapes the rewards, so log
            // what it does to the ranking (the annotation's rows, as below).
            if let (Some(h_last), Some(fb), true) = (self.cache.as_ref(), input.hidden, self.cfg.method.uses_feedback()) {
                let r = tch::no_grad(|| self.rewards(h_last, Some(fb), wt));
                self.log_group_agreement(&mut m, &r, h_last, wt, input.group_size)?;
            }
            let rows = self.cache.as_ref().map_or(0, |h| h.size()[0]);
            return Self::over_ranks(m, input, rows);
        };
        let h_last = self.cache.take().ok_or_else(|| Error::Input("R2M update before any annotation".into()))?;
        let t0 = Instant::now();
        let rss0 = peak_rss_kb();
        let feedback = if self.xattn.is_some() {
            Some(input.hidden.ok_or_else(|| Error::Input("R2M update: h' was not captured".into()))?)
        } else {
            None
        };
        let alpha = self.cfg.effective_alpha();
        opt.zero_grad();
        let r = self.rewards(&h_last, feedback, wt); // (B) with grad
        let before = r.detach();
        if feedback.is_some() {
            self.log_group_agreement(&mut m, &before, &h_last, wt, input.group_size)?;
        }
        let ranking = match self.cfg.rank_by {
            RankBy::Own => input.annotation_rewards.shallow_clone(),
            RankBy::Frozen => tch::no_grad(|| self.rm.score_embedding(&h_last)).to_device(r.device()).to_kind(r.kind()),
        };
        let (loss, bt, gre) = grebt::grebt(&r, &ranking, input.group_size, alpha);
        ensure_finite(&loss, input.step)?;
        match input.ranks {
            // The loss is a mean over groups: this rank's groups' share of the whole batch's mean.
            Some((group, total_groups)) => {
                let groups = r.size()[0] / input.group_size;
                (&loss * (groups as f64 / total_groups as f64)).backward();
                crate::dist::dp::all_reduce_grads(group, &opt.params).map_err(|e| Error::Input(format!("R2M update: {e:#}")))?;
            }
            None => loss.backward(),
        }
        let gn = clip_grad_norm(&opt.params, self.cfg.max_grad_norm).double_value(&[]);
        opt.step(self.cfg.lr)?;
        // The gradients are spent: drop them now rather than carry them through the next rollout
        // and policy update (where the step's memory peaks).
        opt.zero_grad();
        self.opt = Some(opt);
        let mut diag = None;
        let after = tch::no_grad(|| self.rewards_with(&h_last, feedback, wt, Some(&mut diag)));
        self.updates += 1;
        m.insert("r2m/loss".into(), json!(loss.double_value(&[])));
        m.insert("r2m/grad_norm".into(), json!(gn));
        m.insert("r2m/bt".into(), json!(bt.double_value(&[])));
        m.insert("r2m/gre".into(), json!(gre.double_value(&[])));
        m.insert("r2m/reward_before".into(), json!(before.mean(before.compute_kind()).double_value(&[])));
        m.insert("r2m/reward_after".into(), json!(after.mean(after.compute_kind()).double_value(&[])));
        if let Some(mut d) = diag {
            if let Some((group, _)) = input.ranks {
                d = d.pooled(group, before.size()[0] as f64).map_err(|e| Error::Input(format!("R2M update metrics: {e:#}")))?;
            }
            d.insert_into(&mut m);
        }
        m.insert("r2m/update_time".into(), json!(t0.elapsed().as_secs_f64()));
        m.insert("r2m/peak_rss_delta_mb".into(), json!((peak_rss_kb() - rss0) as f64 / 1024.0));
        Self::over_ranks(m, input, before.size()[0])
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.params.named().iter().map(|(n, t)| (format!("param.{n}"), t.detach())).collect();
        if let Some(o) = &self.opt {
            v.extend(o.state().into_iter().map(|(n, t)| (format!("opt.{n}"), t)));
        }
        v.push(("updates".into(), Tensor::from(self.updates)));
        v
    }

    fn finish(&mut self) -> Result<()> {
        self.rm.finish()
    }

    fn load_state(&mut self, state: &[(String, Tensor)], source: &std::path::Path) -> Result<()> {
        let strip = |p: &str| -> Vec<(String, Tensor)> {
            state.iter().filter_map(|(n, t)| n.strip_prefix(p).map(|s| (s.to_string(), t.shallow_clone()))).collect()
        };
        self.params.load_values(&strip("param."), source)?;
        if let Some(o) = self.opt.as_mut() {
            o.load_state(&strip("opt."), source)?;
        }
        if let Some((_, u)) = state.iter().find(|(n, _)| n == "updates") {
            self.updates = u.int64_value(&[]);
        }
        Ok(())
    }
}

/// What the cross-attention does on a batch (after the step's update), logged per step as
/// `r2m/attn_entropy`, `r2m/hhat_norm_ratio`, `r2m/hlast_norm`, `r2m/hhat_norm`,
/// `r2m/score_std_hhat` and `r2m/score_std_hlast`:
/// whether it reads particular tokens or just the mean of h, and how much H_hat can move the score
/// next to H_last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDiagnostics {
    /// Mean normalised entropy of the attention over valid tokens: 1 = uniform, 0 = one token.
    pub attn_entropy: f64,
    /// mean ||H_hat|| / mean ||H_last|| over the batch.
    pub hhat_norm_ratio: f64,
    /// mean ||H_last|| and mean ||H_hat|| over the batch: an encoder's L2-normalised embedding has
    /// norm 1, a decoder's last hidden state tens to hundreds.
    pub hlast_norm: f64,
    pub hhat_norm: f64,
    /// Standard deviation over the batch of phi(H_hat) and of phi(H_last): how far each part alone
    /// spreads the scores (before the blend's weights 1 - w and w).
    pub score_std_hhat: f64,
    pub score_std_hlast: f64,
    /// The means the two standard deviations are taken around (to pool them over ranks).
    pub score_mean_hhat: f64,
    pub score_mean_hlast: f64,
}

impl AttentionDiagnostics {
    fn of(h_hat: &Tensor, h_last: &Tensor, att: &Tensor, mask: &Tensor, head: &Tensor) -> Self {
        let norm = |t: &Tensor| {
            t.to_kind(Kind::Double)
                .square()
                .sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)
                .sqrt()
                .mean(Kind::Double)
                .double_value(&[])
        };
        let sd = |t: &Tensor| {
            let s = t.linear::<Tensor>(head, None).to_kind(Kind::Double);
            if s.numel() < 2 {
                0.0
            } else {
                s.std(false).double_value(&[])
            }
        };
        let mean = |t: &Tensor| t.linear::<Tensor>(head, None).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        AttentionDiagnostics {
            attn_entropy: cross_attention::normalized_entropy(att, mask),
            hhat_norm_ratio: norm(h_hat) / norm(h_last).max(1e-30),
            hlast_norm: norm(h_last),
            hhat_norm: norm(h_hat),
            score_std_hhat: sd(h_hat),
            score_std_hlast: sd(h_last),
            score_mean_hhat: mean(h_hat),
            score_mean_hlast: mean(h_last),
        }
    }

    /// The diagnostics of the whole batch from each rank's over its `rows`: means pooled, the
    /// norm ratio of the pooled norms, standard deviations pooled around the batch's mean.
    pub fn pooled(&self, group: &crate::dist::Group, rows: f64) -> anyhow::Result<Self> {
        let sq = |sd: f64, m: f64| sd * sd + m * m;
        let v = [
            rows,
            rows * self.attn_entropy,
            rows * self.hlast_norm,
            rows * self.hhat_norm,
            rows * self.score_mean_hhat,
            rows * sq(self.score_std_hhat, self.score_mean_hhat),
            rows * self.score_mean_hlast,
            rows * sq(self.score_std_hlast, self.score_mean_hlast),
        ];
        let s = group.sum_f64(&v)?;
        let n = s[0].max(1e-30);
        let (mh, ml) = (s[4] / n, s[6] / n);
        let (hlast, hhat) = (s[2] / n, s[3] / n);
        Ok(AttentionDiagnostics {
            attn_entropy: s[1] / n,
            hhat_norm_ratio: hhat / hlast.max(1e-30),
            hlast_norm: hlast,
            hhat_norm: hhat,
            score_std_hhat: (s[5] / n - mh * mh).max(0.0).sqrt(),
            score_std_hlast: (s[7] / n - ml * ml).max(0.0).sqrt(),
            score_mean_hhat: mh,
            score_mean_hlast: ml,
        })
    }

    /// The weighted mean of each field; `None` for no items.
    pub fn mean(items: &[(AttentionDiagnostics, f64)]) -> Option<Self> {
        let w: f64 = items.iter().map(|x| x.1).sum();
        if items.is_empty() || w <= 0.0 {
            return None;
        }
        let m = |f: fn(&AttentionDiagnostics) -> f64| items.iter().map(|(d, k)| f(d) * k).sum::<f64>() / w;
        Some(AttentionDiagnostics {
            attn_entropy: m(|d| d.attn_entropy),
            hhat_norm_ratio: m(|d| d.hhat_norm_ratio),
            hlast_norm: m(|d| d.hlast_norm),
            hhat_norm: m(|d| d.hhat_norm),
            score_std_hhat: m(|d| d.score_std_hhat),
            score_std_hlast: m(|d| d.score_std_hlast),
            score_mean_hhat: m(|d| d.score_mean_hhat),
            score_mean_hlast: m(|d| d.score_mean_hlast),
        })
    }

    /// As JSON: the fields by name.
    pub fn to_json(&self) -> Value {
        json!({"attn_entropy": self.attn_entropy, "hhat_norm_ratio": self.hhat_norm_ratio,
               "hlast_norm": self.hlast_norm, "hhat_norm": self.hhat_norm, "score_std_hhat": self.score_std_hhat, "score_std_hlast": self.score_std_hlast})
    }

    /// The fields of [`Self::to_json`] as `r2m/<field>` metrics.
    fn insert_into(&self, m: &mut Map<String, Value>) {
        if let Value::Object(o) = self.to_json() {
            m.extend(o.into_iter().map(|(k, v)| (format!("r2m/{k}"), v)));
        }
    }
}

fn ensure_finite(loss: &Tensor, step: i64) -> Result<()> {
    let v = loss.double_value(&[]);
    if !v.is_finite() {
        return Err(Error::Input(format!("R2M GREBT loss at step {step} (reward-source update) is {v}")));
    }
    Ok(())
}

/// Peak resident set size of the process (VmHWM), in kB; 0 where /proc is absent.
pub fn peak_rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_values() {
        assert_eq!(w(0, 100, 0.6), 1.0);
        assert_eq!(w(-1, 100, 0.6), 1.0, "pi_init's eval (step -1) is scored as at step 0");
        assert!((w(50, 100, 0.0) - 0.5).abs() < 1e-12);
        assert_eq!(w(100, 100, 0.6), 0.6);
        // The floor crossing: 0.5 cos(pi t / T) + 0.5 = 0.6 at t / T = acos(0.2) / pi = 0.4359...
        let tc = (0.2f64).acos() / std::f64::consts::PI * 100.0;
        assert!(w(tc.floor() as i64, 100, 0.6) > 0.6);
        assert_eq!(w(tc.ceil() as i64, 100, 0.6), 0.6);
        assert_eq!(w(99, 100, 0.0), 0.5 * (std::f64::consts::PI * 0.99).cos() + 0.5);
    }

    #[test]
    fn testbed_switches_default_to_the_spec_and_parse_by_name() {
        // A run config written before the switches existed reads as the method as specified.
        let old: R2mConfig = toml::from_str("method = \"r2m\"\nd = 512\ninit_std = 0.02\n").unwrap();
        assert_eq!(old.query_norm, QueryNorm::None);
        assert_eq!(old.qk_init_std, None);
        assert_eq!(old, R2mConfig { d: 512, ..Default::default() });
        let on: R2mConfig = toml::from_str("query_norm = \"unit-rms\"\nqk_init_std = 0.05\n").unwrap();
        assert_eq!((on.query_norm, on.qk_init_std), (QueryNorm::UnitRms, Some(0.05)));
        on.validate().unwrap();
        let e = toml::from_str::<R2mConfig>("query_norm = \"unit\"\n").unwrap_err().to_string();
        assert!(e.contains("unit-rms") && e.contains("query_norm"), "{e}");
        let bad = R2mConfig { qk_init_std: Some(0.0), ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("r2m.qk_init_std"));
        // Serialised and read back (the run folder's config.toml) it stays the same.
        assert_eq!(toml::from_str::<R2mConfig>(&toml::to_string(&on).unwrap()).unwrap(), on);
    }

    #[test]
    fn method_names_and_switches() {
        assert_eq!(Method::R2mNoBt.name(), "r2m-no-bt");
        assert_eq!(Method::PretrainedRm.name(), "pretrained-rm");
        let mut c = R2mConfig { method: Method::R2mNoGre, ..Default::default() };
        assert_eq!(c.effective_alpha(), 0.0);
        c.method = Method::R2mNoBt;
        assert_eq!(c.effective_alpha(), 1.0);
        assert!(!Method::R2mNoTrain.trains_online() && Method::R2mNoTrain.uses_feedback());
        assert!(Method::IterativeHead.trains_online() && !Method::IterativeHead.uses_feedback());
    }
}
