//! `r2m train-rm`: Bradley-Terry reward-model training (peer: TRL RewardTrainer), with held-out
//! accuracy, atomic checkpoints and exact resume.
//!
//! The loop reads top to bottom: the data order is a pure function of (seed, epoch), the LR a pure
//! function of the step; each step: micro-batches (forward, BT loss / grad_accum, backward), clip,
//! AdamW, log; eval every `eval_every`; checkpoint every `save_every`.
//!
//! Data parallel ([`run_dist`]): each rank scores its share of every micro-batch (its pairs' loss
//! terms over the micro-batch's size, so the sum over ranks is the one-process loss), the
//! gradients are summed over ranks before the step, the held-out pairs are split the same way, and
//! rank 0 alone writes. The step's batch is `micro_batch x grad_accum` pairs whatever the number
//! of ranks, so the result does not depend on it (up to float summation order).
use crate::checkpoint::{find_checkpoint, write_atomic, write_dir_atomic};
use crate::data::{self, LoadOptions, PreferenceExample, Text};
use crate::dist::zero::{held_bytes, load_optimizer_state, optimizer_state, update, Zero1};
use crate::dist::{dp, Dist};
use crate::metrics::MetricsSink;
use crate::model::load::safetensors;
use crate::reward::loss::{accuracy, bt_loss};
use crate::reward::model::{right_pad, Backbone, RewardModel};
use crate::train::{ensure_finite, lr_at, AdamW, AdamWConfig, Schedule};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// `[train-rm]` config. Defaults follow TRL's RewardConfig where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainRmConfig {
    /// Seeds the head's init, the data order and the held-out split.
    pub seed: u64,
    /// Backbone: an HF folder, GGUF, sentence-transformers folder, alias, or an RM to continue.
    pub model: String,
    /// Output folder: metrics.jsonl/csv, config.toml, checkpoint/, model/ (the trained RM).
    pub out: PathBuf,
    pub device: String,
    /// Compute precision of the RM's backbone: "auto" (bf16 autocast on CUDA, f32 on the CPU),
    /// "f32", "bf16" (`model::precision`: f32 master weights, bf16 matmuls; scores and loss f32)
    /// or "f64" (CPU; f64 weights, scores and loss, for exact checks).
    pub dtype: String,
    pub data: RmData,
    pub train: RmTrain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmData {
    /// Preference file (JSONL or Parquet, TRL formats).
    pub train: PathBuf,
    /// Held-out pairs; when absent, `eval_fraction` of `train` is held out (seeded).
    pub eval: Option<PathBuf>,
    pub eval_fraction: f64,
    /// Truncate sequences to this many tokens, keeping the start (TRL `max_length`, default 1024).
    pub max_length: usize,
    /// Count and skip malformed records instead of failing on the first.
    pub skip_invalid: bool,
    /// A Jinja chat template file that formats chat pairs, for a backbone whose tokenizer has
    /// none (a base model) or to replace its own; the trained RM's tokenizer keeps it, so RL scores
    /// with the same format (e.g. assets/chat-templates/gemma-turns.jinja).
    pub chat_template: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RmTrain {
    pub epochs: usize,
    /// Pairs per micro-batch (each gives 2 sequences: chosen and rejected).
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    pub max_grad_norm: f64,
    /// BT margin (TRL: per-example `margin` column; here one value).
    pub margin: f64,
    /// Centering term eta (TRL `center_rewards_coefficient`; Eisenstein et al.). 0 = off.
    pub center_coef: f64,
    /// Train only the top N backbone layers (+ final norm) and the head; absent = all.
    pub trainable_layers: Option<usize>,
    pub eval_every: usize,
    pub save_every: usize,
    /// Stop after this many optimiser steps (for tests and interrupted runs); absent = all epochs.
    pub max_steps: Option<usize>,
    /// Stop after this many steps as if interrupted (no final save; the LR schedule is unchanged):
    /// for testing resume.
    pub stop_after: Option<usize>,
    pub eval_batch: usize,
}

impl Default for TrainRmConfig {
    fn default() -> Self {
        TrainRmConfig {
            seed: 0,
            model: "smollm2-135m-instruct".into(),
            out: "runs/rm".into(),
            device: "auto".into(),
            dtype: "auto".into(),
            data: RmData::default(),
            train: RmTrain::default(),
        }
    }
}

impl Default for RmData {
    fn default() -> Self {
        RmData { train: PathBuf::new(), eval: None, eval_fraction: 0.1, max_length: 1024, skip_invalid: false, chat_template: None }
    }
}

impl Default for RmTrain {
    fn default() -> Self {
        RmTrain {
            epochs: 1,
            micro_batch: 8,
            grad_accum: 1,
            lr: 1e-5,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            schedule: Schedule::Linear,
            max_grad_norm: 1.0,
            margin: 0.0,
            center_coef: 0.0,
            trainable_layers: None,
            eval_every: 50,
            save_every: 100,
            max_steps: None,
            stop_after: None,
            eval_batch: 16,
        }
    }
}

impl TrainRmConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.data.train.as_os_str().is_empty(), "data.train: no preference file given");
        crate::model::precision::Precision::resolve(&self.dtype, tch::Device::Cpu, "dtype")?;
        ensure!(self.train.micro_batch >= 1, "train.micro_batch = {} must be >= 1", self.train.micro_batch);
        ensure!(self.train.grad_accum >= 1, "train.grad_accum = {} must be >= 1", self.train.grad_accum);
        ensure!(self.train.epochs >= 1, "train.epochs must be >= 1");
        ensure!(self.train.lr > 0.0, "train.lr = {} must be > 0", self.train.lr);
        ensure!((0.0..1.0).contains(&self.data.eval_fraction), "data.eval_fraction = {} must be in [0, 1)", self.data.eval_fraction);
        ensure!((0.0..1.0).contains(&self.train.warmup_ratio), "train.warmup_ratio must be in [0, 1)");
        ensure!(self.data.max_length >= 2, "data.max_length must be >= 2");
        Ok(())
    }
}

/// A tokenized pair.
pub struct PairIds {
    pub chosen: Vec<i64>,
    pub rejected: Vec<i64>,
}

/// Renders a pair to (chosen, rejected) full texts for `rm`, and whether the tokenizer should add
/// its special tokens (false for chat-template renderings, which carry their own).
pub fn render_pair(rm: &RewardModel, ex: &PreferenceExample) -> Result<(String, String, bool)> {
    let chat = matches!(ex.chosen, Text::Chat(_));
    match &rm.backbone {
        Backbone::Decoder { tokenizer, .. } => {
            let (c, r) = data::batch::render_preference(tokenizer, ex)?;
            Ok((c, r, !chat))
        }
        // An encoder has no chat template: messages are joined by newlines, prompt first.
        Backbone::Encoder { .. } => {
            let plain = |t: &Text| match t {
                Text::Plain(s) => s.clone(),
                Text::Chat(m) => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
            };
            let p = ex.prompt.as_ref().map(plain).unwrap_or_default();
            let sep = if p.is_empty() || !chat { "" } else { "\n" };
            Ok((format!("{p}{sep}{}", plain(&ex.chosen)), format!("{p}{sep}{}", plain(&ex.rejected)), true))
        }
    }
}

/// Tokenizes every pair once (truncated to `max_length`, keeping the start).
pub fn tokenize_pairs(rm: &RewardModel, exs: &[PreferenceExample], max_length: usize) -> Result<Vec<PairIds>> {
    let mut out = Vec::with_capacity(exs.len());
    for ex in exs {
        let (c, r, special) = render_pair(rm, ex)?;
        let b = rm.tokenize(&[c, r], special, max_length).with_context(|| format!("{}", ex.origin))?;
        let lens: Vec<i64> = Vec::<i64>::try_from(b.mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Int64))?;
        let ids = |i: i64| Vec::<i64>::try_from(b.ids.get(i).narrow(0, 0, lens[i as usize])).unwrap_or_default();
        out.push(PairIds { chosen: ids(0), rejected: ids(1) });
    }
    Ok(out)
}

/// Scores pairs (chosen, rejected) in one right-padded batch of 2B sequences.
pub fn score_pairs(rm: &RewardModel, pairs: &[&PairIds]) -> Result<(Tensor, Tensor)> {
    let pad = match &rm.backbone {
        Backbone::Decoder { tokenizer, .. } => tokenizer.pad_id() as i64,
        Backbone::Encoder { .. } => 0, // BERT [PAD]
    };
    let seqs: Vec<Vec<i64>> = pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
    let b = right_pad(&seqs, pad);
    let (s, _) = rm.score(&crate::reward::model::Batch { ids: b.ids, mask: b.mask })?;
    let n = pairs.len() as i64;
    Ok((s.narrow(0, 0, n), s.narrow(0, n, n)))
}

/// [`evaluate`] with the pairs split over the ranks of `dist`: every rank returns the whole set's
/// accuracy and mean loss.
pub fn evaluate_dist(rm: &RewardModel, pairs: &[PairIds], batch: usize, dist: Option<&Dist>) -> Result<(f64, f64, usize)> {
    let Some(d) = dist else { return evaluate(rm, pairs, batch) };
    let (acc, loss, n) = evaluate(rm, dp::share(pairs, d.rank(), d.world()), batch)?;
    let nf = n as f64;
    let s = d.group.sum_f64(&(if n == 0 { [0.0, 0.0, 0.0] } else { [acc * nf, loss * nf, nf] }))?;
    if s[2] == 0.0 {
        return Ok((f64::NAN, f64::NAN, 0));
    }
    Ok((s[0] / s[2], s[1] / s[2], s[2] as usize))
}

/// Accuracy and mean BT loss over `pairs`, without gradients.
pub fn evaluate(rm: &RewardModel, pairs: &[PairIds], batch: usize) -> Result<(f64, f64, usize)> {
    let _g = tch::no_grad_guard();
    let (mut cs, mut rs) = (vec![], vec![]);
    for chunk in pairs.chunks(batch.max(1)) {
        let refs: Vec<&PairIds> = chunk.iter().collect();
        let (c, r) = score_pairs(rm, &refs)?;
        cs.push(c.to_device(Device::Cpu));
        rs.push(r.to_device(Device::Cpu));
    }
    if cs.is_empty() {
        return Ok((f64::NAN, f64::NAN, 0));
    }
    let (c, r) = (Tensor::cat(&cs, 0), Tensor::cat(&rs, 0));
    Ok((accuracy(&c, &r), bt_loss(&c, &r, 0.0, 0.0).double_value(&[]), pairs.len()))
}

/// Checkpoint contents besides tensors.
#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    seed: u64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RmRunSummary {
    pub steps: usize,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    pub eval_accuracy: f64,
    pub eval_loss: f64,
    pub skipped_records: usize,
    pub model_dir: PathBuf,
}

/// Runs (or, with `resume`, continues) reward-model training. Progress to stderr when `progress`.
pub fn run(cfg: &TrainRmConfig, resume: bool, progress: bool) -> Result<RmRunSummary> {
    run_dist(cfg, resume, progress, None)
}

/// [`run`] as one rank of a data parallel job (`dist`), or alone (`None`). Every rank returns
/// the same summary; only rank 0 writes to the out folder.
pub fn run_dist(cfg: &TrainRmConfig, resume: bool, progress: bool, dist: Option<&Dist>) -> Result<RmRunSummary> {
    cfg.validate()?;
    let device = crate::device::parse(&cfg.device)?;
    if let Some(d) = dist {
        d.check_device(device)?;
    }
    let main = dist.is_none_or(Dist::is_main);
    let progress = progress && main;
    let out = &cfg.out;
    // One process per run folder (rank 0 holds it for a data parallel job).
    let _lock = if main { Some(crate::lock::FolderLock::acquire(out, "run folder")?) } else { None };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ck_dir = out.join("checkpoint");
    let ck = if resume { find_checkpoint(&ck_dir) } else { None };
    if resume && ck.is_none() && main {
        eprintln!("--resume: no checkpoint in {}, starting from the beginning", out.display());
    }
    if !resume && ck_dir.exists() {
        bail!("{} already has a checkpoint: pass --resume to continue it, or choose another out folder", out.display());
    }
    // Every rank has checked the folder before rank 0 writes into it.
    if let Some(d) = dist {
        d.group.barrier()?;
    }
    if main {
        crate::config::save(cfg, &out.join("config.toml"))?;
    }

    // Data.
    let opts = LoadOptions { skip_invalid: cfg.data.skip_invalid };
    let train_all = data::load_preferences(&cfg.data.train, &opts)?;
    let mut skipped = train_all.skipped.len();
    let (train_ex, eval_ex) = match &cfg.data.eval {
        Some(p) => {
            let e = data::load_preferences(p, &opts)?;
            skipped += e.skipped.len();
            (train_all.items, e.items)
        }
        None => {
            let (t, e) = data::split_holdout(train_all.items, cfg.data.eval_fraction, cfg.seed);
            (t, e)
        }
    };
    ensure!(!train_ex.is_empty(), "{}: no training pairs", cfg.data.train.display());

    // Model.
    let mut rm = RewardModel::load(&cfg.model, cfg.seed as i64, device).with_context(|| format!("loading {}", cfg.model))?;
    rm.set_precision(crate::model::precision::Precision::resolve(&cfg.dtype, device, "dtype")?);
    if let Some(p) = &cfg.data.chat_template {
        let text = std::fs::read_to_string(p).with_context(|| format!("data.chat_template: reading {}", p.display()))?;
        rm.set_chat_template(text).context("data.chat_template")?;
    }
    let params = rm.set_trainable(cfg.train.trainable_layers)?;
    let train_ids = tokenize_pairs(&rm, &train_ex, cfg.data.max_length)?;
    let eval_ids = tokenize_pairs(&rm, &eval_ex, cfg.data.max_length)?;

    let t = &cfg.train;
    let per_step = t.micro_batch * t.grad_accum;
    let steps_per_epoch = train_ids.len().div_ceil(per_step);
    let mut total = steps_per_epoch * t.epochs;
    if let Some(m) = t.max_steps {
        total = total.min(m);
    }
    let warmup = (t.warmup_ratio * total as f64).ceil() as i64;
    let adam = AdamWConfig { lr: t.lr, weight_decay: t.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(params, adam);
    let mut zero = match dist {
        Some(d) if d.zero1 => Some(Zero1::new(&mut opt, d.rank(), d.world())?),
        _ => None,
    };

    let mut start = 0usize;
    if let Some(ck) = &ck {
        let st: TrainerState =
            serde_json::from_str(&std::fs::read_to_string(ck.join("state.json")).with_context(|| format!("{}/state.json", ck.display()))?)
                .with_context(|| format!("{}/state.json", ck.display()))?;
        ensure!(st.seed == cfg.seed, "{}: checkpoint was made with seed {}, config says {}", ck.display(), st.seed, cfg.seed);
        let w = safetensors::read_file(&ck.join("trainable.safetensors"))?;
        load_named(&opt.params, &w, &ck.join("trainable.safetensors"))?;
        let o = ck.join("optimizer.safetensors");
        load_optimizer_state(&mut opt, zero.as_mut(), &safetensors::read_file(&o)?, &o)?;
        start = st.step;
    }
    if let Some(d) = dist {
        dp::broadcast_params(&d.group, &opt.params, 0)?;
    }
    let mut sink = if main { Some(MetricsSink::open(&out.join("metrics.jsonl"), ck.as_ref().map(|_| start as i64 - 1))?) } else { None };
    let bar = progress_bar(progress, total as u64, start as u64);

    let t0 = std::time::Instant::now();
    let mut tokens_seen = 0usize;
    for step in start..total {
        if t.stop_after == Some(step) {
            bail!("stopped after {step} steps (train.stop_after); resume with --resume");
        }
        let epoch = step / steps_per_epoch;
        let order = data::batch::epoch_order(train_ids.len(), cfg.seed, epoch as u64);
        let pos = (step % steps_per_epoch) * per_step;
        let idx = &order[pos..(pos + per_step).min(order.len())];
        opt.zero_grad();
        let (mut loss_sum, mut correct, mut n_pairs) = (0.0, 0.0, 0usize);
        let n_micro = idx.chunks(t.micro_batch).count() as f64;
        for micro in idx.chunks(t.micro_batch) {
            // This rank's pairs of the micro-batch; their loss is a share of the micro-batch's mean.
            let mine = dist.map_or(micro, |d| dp::share(micro, d.rank(), d.world()));
            if mine.is_empty() {
                continue;
            }
            let pairs: Vec<&PairIds> = mine.iter().map(|&i| &train_ids[i]).collect();
            tokens_seen += pairs.iter().map(|p| p.chosen.len() + p.rejected.len()).sum::<usize>();
            let (c, r) = score_pairs(&rm, &pairs)?;
            let loss = bt_loss(&c, &r, t.margin, t.center_coef);
            let loss = if dist.is_some() { loss * (mine.len() as f64 / micro.len() as f64) } else { loss };
            (&loss / n_micro).backward();
            loss_sum += loss.double_value(&[]) / n_micro;
            correct += accuracy(&c.detach(), &r.detach()) * pairs.len() as f64;
            n_pairs += pairs.len();
        }
        if let Some(d) = dist {
            let s = d.group.sum_f64(&[loss_sum, correct, n_pairs as f64])?;
            (loss_sum, correct, n_pairs) = (s[0], s[1], s[2] as usize);
        }
        ensure_finite(loss_sum, &format!("BT loss at step {step} (reward-model update)"))?;
        let lr = lr_at(step as i64, t.lr, warmup, total as i64, t.schedule, 0.0);
        let group = dist.map(|d| &d.group);
        let grad_norm = update(&mut opt, zero.as_mut(), group, t.max_grad_norm, lr, &format!("reward-model update at step {step}"))?;

        let mut rec = serde_json::Map::new();
        rec.insert("step".into(), json!(step));
        rec.insert("epoch".into(), json!(step as f64 / steps_per_epoch as f64));
        rec.insert("loss".into(), json!(loss_sum));
        rec.insert("accuracy".into(), json!(correct / n_pairs as f64));
        rec.insert("grad_norm".into(), json!(grad_norm));
        rec.insert("learning_rate".into(), json!(lr));
        let last = step + 1 == total;
        if t.eval_every > 0 && ((step + 1) % t.eval_every == 0 || last) && !eval_ids.is_empty() {
            let (acc, l, _) = evaluate_dist(&rm, &eval_ids, t.eval_batch, dist)?;
            rec.insert("eval/accuracy".into(), json!(acc));
            rec.insert("eval/loss".into(), json!(l));
        }
        if let Some(sink) = &mut sink {
            sink.write(&rec)?;
        }
        if let Some(b) = &bar {
            let tps = tokens_seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("loss {loss_sum:.4} acc {:.3} {tps:.0} tok/s", correct / n_pairs as f64));
            b.inc(1);
        }
        if t.save_every > 0 && (step + 1) % t.save_every == 0 && !last {
            save_checkpoint(&ck_dir, &opt, zero.as_ref(), step + 1, total, cfg.seed, dist)?;
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    let (acc, l, n_eval) = evaluate_dist(&rm, &eval_ids, t.eval_batch, dist)?;
    let model_dir = out.join("model");
    let summary = RmRunSummary {
        steps: total,
        train_pairs: train_ids.len(),
        eval_pairs: n_eval,
        eval_accuracy: acc,
        eval_loss: l,
        skipped_records: skipped,
        model_dir: model_dir.clone(),
    };
    if let Some(d) = dist {
        d.report_memory(held_bytes(&opt, zero.as_ref()));
    }
    if !main {
        // Rank 0 writes the model and the last checkpoint; the others wait for it.
        save_checkpoint(&ck_dir, &opt, zero.as_ref(), total, total, cfg.seed, dist)?;
        return Ok(summary);
    }
    let tmp_model = out.join("model.tmp");
    if tmp_model.exists() {
        std::fs::remove_dir_all(&tmp_model)?;
    }
    rm.save(&tmp_model)?;
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir)?;
    }
    std::fs::rename(&tmp_model, &model_dir)?;
    save_checkpoint(&ck_dir, &opt, zero.as_ref(), total, total, cfg.seed, dist)?;
    crate::metrics::write_csv(&out.join("metrics.csv"), &crate::metrics::read_jsonl(&out.join("metrics.jsonl"))?)?;
    write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// Writes the checkpoint atomically: rank 0 writes, every rank returns once it is whole.
fn save_checkpoint(dir: &Path, opt: &AdamW, zero: Option<&Zero1>, step: usize, total: usize, seed: u64, dist: Option<&Dist>) -> Result<()> {
    let what = format!("the reward model at step {step}");
    // Gathered from the shards on every rank (a collective) before rank 0 writes.
    let state = optimizer_state(opt, zero, dist.map(|d| &d.group))?;
    dp::write_on_rank0(dist, &[(what.as_str(), &opt.params[..])], || {
        write_dir_atomic(dir, |tmp| {
            let w: Vec<(String, Tensor)> = opt.params.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
            safetensors::write_file(&tmp.join("trainable.safetensors"), &w)?;
            safetensors::write_file(&tmp.join("optimizer.safetensors"), &state)?;
            let st = TrainerState { step, total_steps: total, seed };
            write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&st).unwrap_or_default().as_bytes())
        })?;
        Ok(())
    })
}

/// Copies checkpointed values into `params` by name (every one must be present, same shape).
fn load_named(params: &[(String, Tensor)], saved: &[(String, Tensor)], path: &Path) -> Result<()> {
    let _g = tch::no_grad_guard();
    for (n, p) in params {
        let s = saved
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, t)| t)
            .with_context(|| format!("{}: checkpoint lacks '{n}' (was trainable_layers changed?)", path.display()))?;
        ensure!(s.size() == p.size(), "{}: '{n}' has shape {:?}, model has {:?}", path.display(), s.size(), p.size());
        crate::model::params::check_stored_kind(path, n, s.kind(), p.kind(), "dtype").map_err(anyhow::Error::msg)?;
        p.shallow_clone().copy_(s);
    }
    Ok(())
}

pub fn progress_bar(on: bool, total: u64, pos: u64) -> Option<indicatif::ProgressBar> {
    if !on {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_position(pos);
    Some(b)
}
