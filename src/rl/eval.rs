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
    /// How many held-out prompts the evaluation at step `t` uses (`AlgoConfig::eval_size`).
    pub fn eval_size(&self, t: i64) -> usize {
        self.cfg.rl.eval_size(t, self.eval_prompts.len())
    }

    /// Which rows of an evaluation of `n` prompts each rank samples and scores, and the index of
    /// its first sampling call (its seed's offset). The evaluation is sampled in calls of
    /// `rl.generation_batch` rows, each with its own seed, as in one process; a data parallel run
    /// deals the calls to the ranks in order, whole, so that each row is sampled as in one process.
    /// One process, or a run whose reward model is on a rank of its own (every policy rank then
    /// asks it for the same evaluation chunks, in step): every row on every rank.
    pub fn eval_split(&self, n: usize) -> Vec<(std::ops::Range<usize>, u64)> {
        match self.dist.filter(|_| self.rm_link.is_none()) {
            Some(d) => crate::dist::dp::deal_calls(n, self.budget.generation_batch, d.world()),
            None => vec![(0..n, 0)],
        }
    }

    /// Evaluation on the held-out prompts: one sample each at `rl.eval_temperature` with a fixed
    /// seed; the reward source's score at step t, the metric source's, the KL to the reference and
    /// the length. Returns the metrics and one row per prompt (`eval.jsonl`). In a data parallel
    /// run each rank samples and scores its share ([`Run::eval_split`]) and every rank ends with
    /// every row.
    pub fn evaluate(&mut self, t: i64) -> Result<(Map<String, Value>, Vec<Map<String, Value>>)> {
        let n = self.eval_size(t);
        if n == 0 {
            return Ok((Map::new(), vec![]));
        }
        let split = self.eval_split(n);
        let (mine, first_call) = split[self.dist.filter(|_| split.len() > 1).map_or(0, |d| d.rank())].clone();
        let mut clock = Clock::default();
        let part = if mine.is_empty() { EvalPart::empty() } else { self.eval_part(t, mine, first_call, &mut clock)? };
        let part = match self.dist.filter(|_| split.len() > 1) {
            Some(d) => part.gathered(&d.group, &split.iter().map(|(r, _)| r.len()).collect::<Vec<_>>(), self.metric.is_some())?,
            None => part,
        };
        self.summarize_part(t, 0..n, part, clock)
    }

    /// Rows `range` of the evaluation at step `t` (one process), sampled as the whole evaluation
    /// samples them: `range` starts at a sampling call's first row (a multiple of
    /// `rl.generation_batch`), whose seed it takes. To check rows made earlier against (pi_init's
    /// first call, `rl.pi_init_eval_from`) and to extend an evaluation that grew
    /// (`rl.final_eval_prompts`).
    pub fn evaluate_rows(&mut self, t: i64, range: std::ops::Range<usize>) -> Result<Vec<Map<String, Value>>> {
        let gb = self.budget.generation_batch.max(1);
        anyhow::ensure!(range.start % gb == 0, "evaluation rows from {}: not the first row of a sampling call of {gb}", range.start);
        anyhow::ensure!(
            range.end <= self.eval_prompts.len(),
            "evaluation rows up to {}: there are {} held-out prompts",
            range.end,
            self.eval_prompts.len()
        );
        if range.is_empty() {
            return Ok(vec![]);
        }
        let mut clock = Clock::default();
        let part = self.eval_part(t, range.clone(), (range.start / gb) as u64, &mut clock)?;
        Ok(self.summarize_part(t, range, part, clock)?.1)
    }

    /// The rows of pi_init's evaluation (t = -1) from its first sampling call alone
    /// (`rl.generation_batch` rows, one process): to check another run's rows against
    /// (`rl.pi_init_eval_from`).
    pub fn first_call_rows(&mut self) -> Result<Vec<Map<String, Value>>> {
        let n = self.eval_size(-1).min(self.budget.generation_batch);
        self.evaluate_rows(-1, 0..n)
    }

    /// The metrics and rows of the held-out prompts `range` evaluated at step `t`, from their
    /// sampled and scored `part`.
    fn summarize_part(
        &self,
        t: i64,
        range: std::ops::Range<usize>,
        part: EvalPart,
        clock: Clock,
    ) -> Result<(Map<String, Value>, Vec<Map<String, Value>>)> {
        let EvalPart { reward, kl, metric: golds, frozen, length, finished } = part;
        let metric = self.metric.as_ref().map(|s| s.name());
        let columns = EvalColumns {
            reward: Vec::<f64>::try_from(reward.to_kind(Kind::Double))?,
            frozen: (!frozen.is_empty()).then_some(frozen),
            metric: match (metric, golds) {
                (Some(name), Some(gs)) => Some((name, Vec::<f64>::try_from(gs.to_kind(Kind::Double))?)),
                _ => None,
            },
            length,
            kl: Vec::<f64>::try_from(kl.to_kind(Kind::Double))?,
        };
        let prompts: Vec<&PromptExample> = self.eval_prompts[range.clone()].iter().collect();
        let rows = eval_rows(t, range.start, &prompts, &finished, &columns);
        let mut m = eval_means(&rows, columns.metric.as_ref().map(|(name, _)| *name));
        // Where an eval's time goes (nested under `time/eval/`: the report stacks only `time/<phase>`,
        // and `time/eval` holds the whole eval).
        clock.add_to(&mut m);
        Ok((m, rows))
    }

    /// Samples and scores the evaluation prompts `range`, whose first sampling call is call
    /// `first_call` of the whole evaluation.
    fn eval_part(&mut self, t: i64, range: std::ops::Range<usize>, first_call: u64, clock: &mut Clock) -> Result<EvalPart> {
        let range_start = range.start;
        let prompts: Vec<&PromptExample> = self.eval_prompts[range].iter().collect();
        let n = prompts.len();
        let ids = prompt_ids(&self.tokenizer, &prompts, self.cfg.policy.chat, self.cfg.rl.max_prompt_tokens)?;
        let want_h = self.reward.wants_hidden();
        let seed = (self.cfg.seed ^ 0xE7A1).wrapping_add(first_call);
        let mut gcfg = self.gen_config(seed, self.cfg.rl.eval_temperature, want_h);
        // As in the rollouts: where the reference shares the policy's frozen trunk, the generator
        // hands it out and the reference runs only the blocks above it (same tokens; the KL moves
        // by float rounding only).
        let kt = if self.reference_shares_trunk { self.trunk_layers } else { 0 };
        gcfg.return_trunk = (kt > 0).then_some(kt);
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
        // Chunks start at multiples of the chunk size over the whole evaluation, so that rows
        // evaluated apart (a rank's share, an evaluation extended) see the same padding.
        let chunk = self.cfg.rl.eval_prompts.max(1);
        let base = range_start;
        let (mut rws, mut kls, mut golds, mut frozen, mut length) = (vec![], vec![], vec![], vec![], vec![]);
        let mut lo = 0;
        while lo < n {
            let hi = (((base + lo) / chunk + 1) * chunk - base).min(n);
            let l = lo as i64;
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
            let lp = rows(&g.logprobs).to_device(self.device);
            let mf = mask.to_device(self.device).to_kind(lp.kind());
            let kl = ((lp - rlp) * &mf).sum_dim_intlist([1i64].as_slice(), false, mf.kind());
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
            length.extend(Vec::<f64>::try_from(mf.sum_dim_intlist([1i64].as_slice(), false, Kind::Double).to_device(Device::Cpu))?);
            kls.push(kl.to_device(Device::Cpu));
            lo = hi;
        }
        Ok(EvalPart {
            reward: Tensor::cat(&rws, 0),
            kl: Tensor::cat(&kls, 0),
            metric: (!golds.is_empty()).then(|| Tensor::cat(&golds, 0)),
            frozen,
            length,
            finished: fin,
        })
    }
}

/// The per-row values of the evaluation rows a rank sampled and scored.
struct EvalPart {
    reward: Tensor,
    kl: Tensor,
    /// The metric source's scores, if there is one.
    metric: Option<Tensor>,
    /// The frozen RM's own scores, where the reward source reports them.
    frozen: Vec<f64>,
    length: Vec<f64>,
    finished: Vec<bool>,
}

impl EvalPart {
    /// A rank's part when it holds no rows of the evaluation.
    fn empty() -> EvalPart {
        let none = || Tensor::zeros([0], (Kind::Float, Device::Cpu));
        EvalPart { reward: none(), kl: none(), metric: None, frozen: vec![], length: vec![], finished: vec![] }
    }

    /// Every rank's rows in rank order, on every rank (rank r holds `counts[r]` rows). Scores
    /// travel and come back as f64 (exact for f32 values).
    fn gathered(self, group: &crate::dist::Group, counts: &[usize], has_metric: bool) -> Result<EvalPart> {
        let gather = |t: &Tensor, counts: &[usize]| -> Result<Tensor> {
            crate::dist::dp::all_gather_rows(group, &t.to_device(Device::Cpu).to_kind(Kind::Double), counts)
        };
        let column = |v: &[f64]| Tensor::from_slice(v);
        // A reward source that reports frozen scores does so for every row of every rank.
        let with_frozen = group.sum_f64(&[self.frozen.len() as f64])?[0] > 0.0;
        let frozen = if with_frozen { Vec::<f64>::try_from(gather(&column(&self.frozen), counts)?)? } else { vec![] };
        let metric = match (has_metric, &self.metric) {
            (false, _) => None,
            (true, Some(g)) => Some(gather(g, counts)?),
            (true, None) => Some(gather(&Tensor::zeros([0], (Kind::Double, Device::Cpu)), counts)?),
        };
        let finished: Vec<f64> = self.finished.iter().map(|&f| f64::from(u8::from(f))).collect();
        Ok(EvalPart {
            reward: gather(&self.reward, counts)?,
            kl: gather(&self.kl, counts)?,
            metric,
            frozen,
            length: Vec::<f64>::try_from(gather(&column(&self.length), counts)?)?,
            finished: Vec::<f64>::try_from(gather(&column(&finished), counts)?)?.into_iter().map(|f| f > 0.5).collect(),
        })
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
/// `prompts` are the held-out prompts from index `first` on.
fn eval_rows(t: i64, first: usize, prompts: &[&PromptExample], finished: &[bool], c: &EvalColumns) -> Vec<Map<String, Value>> {
    (0..prompts.len())
        .map(|i| {
            let mut r = Map::new();
            r.insert("step".into(), json!(t));
            r.insert("prompt".into(), json!(first + i));
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

/// An evaluation's metrics from its rows: the means of the reward, of the frozen RM's score (where
/// the rows have it), of the KL, of the length and of the metric source's score `metric` (its
/// column's name), in f64 over the rows in order: metrics recomputed from the rows of
/// `eval.jsonl` (an extended evaluation) equal those of one evaluation of them all.
pub fn eval_means(rows: &[Map<String, Value>], metric: Option<&str>) -> Map<String, Value> {
    let col = |k: &str| -> Vec<f64> { rows.iter().filter_map(|r| r.get(k)).map(|v| v.as_f64().unwrap_or(f64::NAN)).collect() };
    let mean64 = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let mut m = Map::new();
    m.insert("eval/reward".into(), json!(mean64(col("reward"))));
    let frozen = col("reward_frozen_rm");
    if !frozen.is_empty() {
        m.insert("eval/reward_frozen_rm".into(), json!(mean64(frozen)));
    }
    m.insert("eval/kl".into(), json!(mean64(col("kl"))));
    m.insert("eval/mean_length".into(), json!(mean64(col("length"))));
    if let Some(name) = metric {
        m.insert(format!("eval/{name}"), json!(mean64(col(name))));
    }
    m
}
