//! The RL run: what it is built from ([`build`]), the loop over steps with evaluations and atomic
//! checkpoints ([`run`]), and loading a finished run back ([`load_run`]). The step itself is in
//! step.rs, its rollout in rollout.rs, the evaluation in eval.rs.
use crate::checkpoint::{find_checkpoint, write_atomic, write_dir_atomic};
use crate::data::PromptExample;
use crate::metrics::MetricsSink;
use crate::model::causal_lm::CausalLm;
use crate::model::load::safetensors;
use crate::model::precision::Precision;
use crate::rl::budget::{Budget, Count, Shapes};
use crate::rl::config::RlConfig;
use crate::rl::eval_rows::{extend_init_eval, extend_last_eval, initial_eval};
use crate::rl::reward_source::{MetricSource, RewardSource};
use crate::tokenizer::Tokenizer;
use crate::train::{apply_trainable, AdamW, AdamWConfig};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Tensor};

/// Everything the loop needs, built once.
pub struct Run<'a> {
    pub cfg: &'a RlConfig,
    pub policy: CausalLm,
    pub reference: CausalLm,
    pub tokenizer: Tokenizer,
    pub reward: Box<dyn RewardSource>,
    /// Scores logged beside the reward, never trained on (the testbed's gold).
    pub metric: Option<Box<dyn MetricSource>>,
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
    /// The metric source reads the reference's log-probs of each response
    /// ([`ResponseLogprobs`](crate::rl::reward_source::ResponseLogprobs)):
    /// they come from the reference pass that the KL needs anyway.
    pub metric_reads_reference: bool,
    /// Rows per `generate` call and micro-batches per optimiser step (`rl.generation_batch`,
    /// `rl.grad_accum`, resolved against free memory when "auto").
    pub budget: Budget,
    /// This process's rank in a data parallel run (`None`: one process). Set it with
    /// [`Run::data_parallel`].
    pub dist: Option<&'a crate::dist::Dist>,
    /// The shards of the policy optimiser's moments under ZeRO-1 (`--zero1`; `opt` then holds
    /// the parameters and the step counter only).
    pub zero: Option<crate::dist::zero::Zero1>,
    /// The link to the job's reward-model rank, where the reward model runs (`--rm-ranks 1`).
    pub rm_link: Option<std::sync::Arc<crate::dist::rte::RmLink>>,
}

impl<'a> Run<'a> {
    /// Makes this run one rank of the data parallel job `dist`. Each rank samples whole calls of
    /// `rl.generation_batch` rows, so that setting must be a fixed number of whole groups (with
    /// "auto" the calls, and so the samples, would depend on each machine's memory), with at
    /// least one call per rank.
    pub fn data_parallel(&mut self, dist: &'a crate::dist::Dist) -> Result<()> {
        dist.check_device(self.device)?;
        let r = &self.cfg.rl;
        let (b, k) = (r.prompts_per_step * r.group_size, r.group_size);
        let crate::rl::budget::Count::Fixed(g) = r.generation_batch else {
            bail!(
                "rl.generation_batch = \"auto\": a data parallel run deals the batch's sampling calls to the ranks, so set it to a \
                 number of rows, a multiple of rl.group_size = {k} (e.g. {k})"
            )
        };
        ensure!(g % k == 0, "rl.generation_batch = {g} is not a multiple of rl.group_size = {k}: a rank must hold whole groups");
        ensure!(
            b.div_ceil(g) >= dist.world(),
            "rl.generation_batch = {g} makes {} sampling call(s) of the {b} rows of a step, fewer than the {} ranks: set it to at most {}",
            b.div_ceil(g),
            dist.world(),
            (b / dist.world() / k).max(1) * k
        );
        self.budget.generation_batch = g;
        self.dist = Some(dist);
        if dist.zero1 {
            self.zero = Some(crate::dist::zero::Zero1::new(&mut self.opt, dist.rank(), dist.world())?);
        }
        Ok(())
    }

    fn is_main(&self) -> bool {
        self.dist.is_none_or(crate::dist::Dist::is_main)
    }

    /// Writes the checkpoint atomically; in a data parallel run rank 0 writes and every rank
    /// returns once it is whole.
    fn save_checkpoint(&self, dir: &Path, step: i64) -> Result<()> {
        let (policy, reward) = (format!("the policy at step {step}"), format!("the reward source at step {step}"));
        let held = [(policy.as_str(), &self.opt.params[..]), (reward.as_str(), &self.reward.state()[..])];
        // Gathered from the shards on every rank (a collective) before rank 0 writes.
        let opt_state = crate::dist::zero::optimizer_state(&self.opt, self.zero.as_ref(), self.dist.map(|d| &d.group))?;
        crate::dist::dp::write_on_rank0(self.dist, &held, || self.write_checkpoint(dir, step, &opt_state))
    }

    fn write_checkpoint(&self, dir: &Path, step: i64, opt_state: &[(String, Tensor)]) -> Result<()> {
        write_dir_atomic(dir, |tmp| {
            let w: Vec<(String, Tensor)> = self.opt.params.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
            safetensors::write_file(&tmp.join("policy.safetensors"), &w)?;
            safetensors::write_file(&tmp.join("optimizer.safetensors"), opt_state)?;
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
            crate::model::params::check_stored_kind(&pol, n, s.kind(), p.kind(), "policy.dtype").map_err(anyhow::Error::msg)?;
            p.shallow_clone().copy_(s);
        }
        let o = dir.join("optimizer.safetensors");
        crate::dist::zero::load_optimizer_state(&mut self.opt, self.zero.as_mut(), &safetensors::read_file(&o)?, &o)?;
        let rs = dir.join("reward_source.safetensors");
        if rs.exists() {
            self.reward.load_state(&safetensors::read_file(&rs)?, &rs)?;
        }
        st["step"].as_i64().context("state.json: step")
    }
}

/// Prompts to train on and to evaluate on.
pub struct Prompts {
    pub train: Vec<PromptExample>,
    pub eval: Vec<PromptExample>,
}

/// Builds the policy, reference and optimiser for `cfg` on `device`; `reward` makes the reward
/// source given the policy's hidden size (R2M's D_p); `metric` scores for the logs only.
/// (`crate::sources::build_run` makes all of them from the config.)
pub fn build<'a>(
    cfg: &'a RlConfig,
    reward: impl FnOnce(i64) -> Result<Box<dyn RewardSource>>,
    metric: Option<Box<dyn MetricSource>>,
    prompts: Prompts,
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
    policy.set_precision(Precision::resolve(&cfg.policy.dtype, device, "policy.dtype")?);
    reference.set_precision(policy.precision);
    policy.model.checkpointing = cfg.policy.gradient_checkpointing;
    let params = apply_trainable(&mut policy, &cfg.policy.trainable, cfg.seed as i64)?;
    let opt = AdamW::new(params, AdamWConfig { lr: cfg.policy.lr, weight_decay: cfg.policy.weight_decay, ..Default::default() });
    // At most L - 1 blocks: the generator hands out block inputs, and the last block has no successor.
    let trunk_layers = if cfg.rl.trunk_cache { policy.frozen_prefix().min(policy.model.num_layers().saturating_sub(1)) } else { 0 };
    let reference_shares_trunk = trunk_layers > 0 && policy.same_prefix(&reference, trunk_layers);
    let metric_reads_reference = metric.as_ref().is_some_and(|m| m.reads_reference(&cfg.policy.model, &reference));
    let Prompts { train: train_prompts, eval: eval_prompts } = prompts;
    ensure!(!train_prompts.is_empty(), "no training prompts");
    let budget = memory_budget(cfg, &policy, opt.params.iter().map(|(_, t)| t.numel() as i64).sum(), free, device, eval_prompts.len())?;
    Ok(Run {
        cfg,
        policy,
        reference,
        tokenizer: loaded.tokenizer,
        reward,
        metric,
        train_prompts,
        eval_prompts,
        opt,
        device,
        policy_forwards: 0,
        trunk_layers,
        reference_shares_trunk,
        metric_reads_reference,
        budget,
        dist: None,
        zero: None,
        rm_link: None,
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
    // A larger final evaluation generates and scores in calls of the ordinary evaluation's size.
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
        act_bytes: match policy.precision {
            Precision::F32 => 4,
            Precision::Bf16 => 3,
            Precision::F64 => 8,
        },
        checkpointing: cfg.policy.gradient_checkpointing,
        cuda: device.is_cuda(),
    };
    let name = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "the host".to_string(),
    };
    crate::rl::budget::choose(&shapes, free, rows, r.minibatch, r.generation_batch, r.grad_accum, &name)
}

/// Runs (or resumes) training; returns the path of the metrics file.
pub fn run(run: &mut Run, resume: bool, progress: bool) -> Result<std::path::PathBuf> {
    let cfg = run.cfg;
    let out = &cfg.out;
    // One process per run folder (rank 0 holds it for a data parallel job).
    let _lock = if run.is_main() { Some(crate::lock::FolderLock::acquire(out, "run folder")?) } else { None };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ck_dir = out.join("checkpoint");
    let ck = if resume { find_checkpoint(&ck_dir) } else { None };
    if !resume && ck_dir.exists() {
        bail!("{} already has a checkpoint: pass --resume to continue it, or choose another out folder", out.display());
    }
    let main = run.is_main();
    // Every rank has checked the folder before rank 0 writes into it.
    if let Some(d) = run.dist {
        d.group.barrier()?;
    }
    if main {
        crate::config::save(cfg, &out.join("config.toml"))?;
    }
    if ck.is_some() && cfg.rl.eval_every > 0 {
        // Before the checkpoint is loaded: the run holds pi_init.
        extend_init_eval(run)?;
    }
    let start = match &ck {
        Some(d) => run.load_checkpoint(d)?,
        None => 0,
    };
    if let Some(d) = run.dist {
        // Rank 0's weights everywhere (the policy's trained set, the reward source's state).
        crate::dist::dp::broadcast_params(&d.group, &run.opt.params, 0)?;
        let rs: Vec<(String, Tensor)> = run.reward.state();
        crate::dist::dp::broadcast_params(&d.group, &rs, 0)?;
    }
    // Rank 0 alone writes the logs; the others only read pi_init's evaluation back on resume.
    let mut sink = if main { Some(MetricsSink::open(&out.join("metrics.jsonl"), ck.as_ref().map(|_| start - 1))?) } else { None };
    // Resumed before the first checkpoint: pi_init's evaluation, if it was done, is kept.
    let eval_keep = if ck.is_some() { Some(start - 1) } else { resume.then_some(-1) };
    let mut eval_sink = if main { Some(MetricsSink::open(&out.join("eval.jsonl"), eval_keep)?) } else { None };
    if let Some(d) = run.dist {
        // On resume the others read pi_init's rows back once rank 0 has opened (and cut) the logs.
        d.group.barrier()?;
    }
    let eval_on = cfg.rl.eval_every > 0;
    let eval_path = out.join("eval.jsonl");
    let init = if eval_on { initial_eval(run, eval_keep.is_some(), &eval_path, eval_sink.as_mut())? } else { vec![] };
    if main {
        eprintln!(
            "rl: rollouts and evals decode in calls of at most {} rows; {} micro-batch(es) per optimiser step{}",
            run.budget.generation_batch,
            run.budget.grad_accum,
            run.dist.map(|d| format!("; {} data parallel ranks", d.world())).unwrap_or_default()
        );
    }
    let bar = crate::reward::train::progress_bar(progress && main, cfg.rl.steps as u64, start as u64);
    for t in start..cfg.rl.steps {
        if cfg.rl.stop_after == Some(t) {
            bail!("stopped after {t} steps (rl.stop_after); resume with --resume");
        }
        let mut m = contain_panic(&format!("step {t}"), || run.step(t))?;
        let last = t + 1 == cfg.rl.steps;
        if eval_on && (t % cfg.rl.eval_every == 0 || last) {
            eval_step(run, t, &init, &mut m, eval_sink.as_mut())?;
        }
        let msg = format!(
            "reward {:.3} kl {:.3} {:.1}s/step",
            m["reward"].as_f64().unwrap_or(f64::NAN),
            m["kl"].as_f64().unwrap_or(f64::NAN),
            m["time/step"].as_f64().unwrap_or(f64::NAN)
        );
        if let Some(sink) = &mut sink {
            sink.write(&m)?;
        }
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
    if eval_on && main && ck.is_some() && start == cfg.rl.steps {
        // A finished run resumed: its last evaluation may have grown since.
        drop((sink.take(), eval_sink.take()));
        extend_last_eval(run, &init)?;
    }
    // A reward model on another rank may stop.
    run.reward.finish()?;
    if let Some(d) = run.dist {
        d.report_memory(crate::dist::zero::held_bytes(&run.opt, run.zero.as_ref()));
    }
    let path = out.join("metrics.jsonl");
    if main {
        crate::metrics::write_csv(&out.join("metrics.csv"), &crate::metrics::read_jsonl(&path)?)?;
    }
    Ok(path)
}

/// The eval rows' scores by the metric source's column (the testbed's gold): the win rate's judge.
pub(super) fn judged(run: &Run, rows: &[Map<String, Value>]) -> Vec<f64> {
    let judge = run.metric.as_ref().map(|m| m.name()).unwrap_or_default();
    rows.iter().filter_map(|r| r.get(judge).and_then(|g| g.as_f64())).collect()
}

/// The share of prompts on which `now` beats `init` (ties count half): the win rate against
/// pi_init, the AlpacaEval-WR analogue. None when the two do not cover the same prompts.
pub(super) fn win_rate(now: &[f64], init: &[f64]) -> Option<f64> {
    if now.is_empty() || now.len() != init.len() {
        return None;
    }
    let w: f64 = now
        .iter()
        .zip(init)
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
    Some(w / now.len() as f64)
}

/// One evaluation inside the loop, at step `t`: its metrics (and the win rate against `init`)
/// into `m`, its rows into `eval.jsonl`.
fn eval_step(run: &mut Run, t: i64, init: &[f64], m: &mut Map<String, Value>, eval_sink: Option<&mut MetricsSink>) -> Result<()> {
    let t0 = Instant::now();
    let (em, rows) = contain_panic(&format!("eval at step {t}"), || run.evaluate(t))?;
    m.extend(em);
    // pi_init's rows cover the first prompts of every evaluation (its own may be larger).
    let now = judged(run, &rows);
    if let Some(w) = win_rate(&now, &init[..now.len().min(init.len())]) {
        m.insert("eval/win_rate".into(), json!(w));
    }
    if let Some(sink) = eval_sink {
        for r in &rows {
            sink.write(r)?;
        }
    }
    m.insert("time/eval".into(), json!(t0.elapsed().as_secs_f64()));
    Ok(())
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
    m.set_precision(Precision::resolve(&cfg.policy.dtype, device, "policy.dtype")?);
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
