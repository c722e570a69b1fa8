//! Evaluation on the held-out prompts: one sample per prompt at `rl.eval_temperature` with a fixed
//! seed, scored by the reward source as it stands at step t and by the metric source, with the KL
//! to the reference and the length. The rows of step -1 (the initial policy) are the baseline of
//! the win rates.
use crate::data::PromptExample;
use crate::model::generate::generate_in_calls;
use crate::rl::clock::Clock;
use crate::rl::reward_source::RewardInput;
use crate::rl::rollout::{decode_responses, prompt_ids, reference_response_logprobs};
use crate::rl::trainer::Run;
use anyhow::Result;
use serde_json::{json, Map, Value};
use tch::{Device, Kind, Tensor};

impl Run<'_> {
    /// How many held-out prompts the evaluation at step `t` uses: `rl.final_eval_prompts` at
    /// pi_init's (t = -1) and the last step's, `rl.eval_prompts` between (the first of the same
    /// prompts); at most the held-out prompts there are.
    pub fn eval_size(&self, t: i64) -> usize {
        let r = &self.cfg.rl;
        let n = match r.final_eval_prompts {
            Some(f) if t == -1 || t + 1 == r.steps => f,
            _ => r.eval_prompts,
        };
        n.min(self.eval_prompts.len())
    }

    /// Evaluation on the held-out prompts: one sample each at `rl.eval_temperature` with a fixed
    /// seed; the reward source's score at step t, the metric source's, the KL to the reference and
    /// the length. Returns the metrics and one row per prompt (`eval.jsonl`).
    pub fn evaluate(&mut self, t: i64) -> Result<(Map<String, Value>, Vec<Map<String, Value>>)> {
        let n = self.eval_size(t);
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
        let mut clock = Clock::default();
        let g = clock.time("time/eval/generate", || generate_in_calls(&self.policy, &ids, &gcfg, self.budget.generation_batch))?;
        let (seq, seq_mask) = g.sequences();
        let p = g.prompt_ids.size()[1];
        let eos: Vec<i64> = self.tokenizer.eos_ids().into_iter().map(i64::from).collect();
        let (texts, fin) = decode_responses(&self.tokenizer, &g.ids, &g.mask, &eos)?;
        let _guard = tch::no_grad_guard();
        let temp = self.cfg.rl.eval_temperature;
        let metric = self.metric.as_ref().map(|s| s.name());
        // The reference, reward and metric passes go in chunks of `rl.eval_prompts` rows, the
        // memory of an ordinary evaluation: a larger final evaluation is several of them.
        let chunk = self.cfg.rl.eval_prompts.max(1);
        let mut cols = EvalColumns { reward: vec![], frozen: None, metric: None, length: vec![], kl: vec![] };
        let (mut rws, mut kls, mut golds, mut frozen) = (vec![], vec![], vec![], vec![]);
        for lo in (0..n).step_by(chunk) {
            let (hi, l) = ((lo + chunk).min(n), lo as i64);
            let rows = |x: &Tensor| x.narrow(0, l, (hi - lo) as i64);
            let (seq, seq_mask, ids, mask) = (rows(&seq), rows(&seq_mask), rows(&g.ids), rows(&g.mask));
            let (rlp, ref_last) = clock.time("time/eval/reference", || match &g.trunk {
                Some(x) if kt > 0 => self.reference.token_logprobs_from_trunk(&rows(x), kt, &seq, &seq_mask, temp, p),
                _ => self.reference.token_logprobs(&seq, &seq_mask, temp, p),
            })?;
            let reference_logprobs = if self.metric_reads_reference {
                let lp = || reference_response_logprobs(&self.reference, &ref_last, &seq, &seq_mask, p, &ids, &mask, &eos);
                Some(clock.time(format!("time/eval/{}", metric.unwrap_or_default()), lp)?)
            } else {
                None
            };
            drop(ref_last);
            let mf = mask.to_device(self.device).to_kind(Kind::Float);
            let kl = ((rows(&g.logprobs).to_device(self.device) - rlp) * &mf).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let hidden = g.hidden.as_ref().map(rows);
            let input = RewardInput {
                prompts: prompts[lo..hi].to_vec(),
                responses: &texts[lo..hi],
                finished: &fin[lo..hi],
                hidden: hidden.as_ref().map(|h| (h, &seq_mask)),
                step: t,
                total_steps: self.cfg.rl.steps,
                group_size: 1,
            };
            let reward = &mut self.reward;
            let rw = clock.time("time/eval/reward", || reward.score_aside(&input))?;
            rws.push(rw);
            if let Some(f) = reward.frozen_scores() {
                frozen.extend(Vec::<f64>::try_from(f.to_kind(Kind::Double))?);
            }
            if let Some(source) = &self.metric {
                let score = || source.scores(&prompts[lo..hi], &texts[lo..hi], &fin[lo..hi], reference_logprobs.as_deref());
                golds.push(clock.time(format!("time/eval/{}", source.name()), score)?);
            }
            cols.length.extend(Vec::<f64>::try_from(mf.sum_dim_intlist([1i64].as_slice(), false, Kind::Double).to_device(Device::Cpu))?);
            kls.push(kl.to_device(Device::Cpu));
        }
        // The means over all rows, as one pass over the whole batch computes them.
        let (rw, kl) = (Tensor::cat(&rws, 0), Tensor::cat(&kls, 0));
        m.insert("eval/reward".into(), json!(rw.mean(Kind::Float).double_value(&[])));
        cols.reward = Vec::<f64>::try_from(rw.to_kind(Kind::Double))?;
        if !frozen.is_empty() {
            m.insert("eval/reward_frozen_rm".into(), json!(frozen.iter().sum::<f64>() / frozen.len() as f64));
            cols.frozen = Some(frozen);
        }
        m.insert("eval/kl".into(), json!(kl.mean(Kind::Float).double_value(&[])));
        cols.kl = Vec::<f64>::try_from(kl.to_kind(Kind::Double))?;
        m.insert("eval/mean_length".into(), json!(cols.length.iter().sum::<f64>() / n as f64));
        if let (Some(name), false) = (metric, golds.is_empty()) {
            let gs = Tensor::cat(&golds, 0);
            m.insert(format!("eval/{name}"), json!(gs.mean(Kind::Float).double_value(&[])));
            cols.metric = Some((name, Vec::<f64>::try_from(gs.to_kind(Kind::Double))?));
        }
        // Where an eval's time goes (nested under `time/eval/`: the report stacks only `time/<phase>`,
        // and `time/eval` holds the whole eval).
        clock.add_to(&mut m);
        let columns = cols;
        let rows = eval_rows(t, &prompts, &fin, &columns);
        Ok((m, rows))
    }
}

/// One evaluation's per-prompt values.
struct EvalColumns {
    reward: Vec<f64>,
    /// The frozen RM's own score, where the reward source's reward is something else (R2M's).
    frozen: Option<Vec<f64>>,
    /// The metric source's name and scores.
    metric: Option<(&'static str, Vec<f64>)>,
    length: Vec<f64>,
    kl: Vec<f64>,
}

/// The rows of `eval.jsonl` for step `t`: step, prompt index and id, reward, the frozen RM's and
/// the metric source's scores, length, KL and whether the response finished.
fn eval_rows(t: i64, prompts: &[&PromptExample], finished: &[bool], c: &EvalColumns) -> Vec<Map<String, Value>> {
    (0..prompts.len())
        .map(|i| {
            let mut r = Map::new();
            r.insert("step".into(), json!(t));
            r.insert("prompt".into(), json!(i));
            r.insert("id".into(), prompts[i].meta.get("id").cloned().unwrap_or(Value::Null));
            r.insert("reward".into(), json!(c.reward[i]));
            if let Some(f) = &c.frozen {
                r.insert("reward_frozen_rm".into(), json!(f[i]));
            }
            if let Some((name, g)) = &c.metric {
                r.insert(name.to_string(), json!(g[i]));
            }
            r.insert("length".into(), json!(c.length[i]));
            r.insert("kl".into(), json!(c.kl[i]));
            r.insert("finished".into(), json!(finished[i]));
            r
        })
        .collect()
}
