//! What a run is made of, as its config names it: the reward source (a reward model, an ensemble,
//! the testbed's gold, or R2M and its baselines), the metric source (the testbed's gold), and the
//! prompts (files, or the testbed's generator). The RL engine (`crate::rl`) sees these only through
//! its interfaces; this is the one place that knows them all.
use crate::data::{PromptExample, Text};
use crate::dist::rte::RmLink;
use crate::model::precision::Precision;
use crate::r2m::{Method, R2mSource};
use crate::reward::ensemble::Ensemble;
use crate::reward::frozen::FrozenRm;
use crate::reward::source::{EnsembleSource, RmSource};
use crate::reward::RewardModel;
use crate::rl::config::{RewardKind, RlConfig};
use crate::rl::reward_source::{MetricSource, RewardSource};
use crate::rl::trainer::{build, Prompts, Run};
use crate::testbed::source::GoldSource;
use crate::testbed::Gold;
use crate::tokenizer::Message;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;
use tch::Device;

/// The reward source `cfg` names (`reward.kind`, and `r2m.method` for an RM): a frozen RM, an
/// ensemble, the testbed's gold, or R2M and its baselines; `d_policy` is the policy's hidden size.
pub fn reward_source(cfg: &RlConfig, d_policy: i64, device: Device) -> Result<Box<dyn RewardSource>> {
    reward_source_on(cfg, d_policy, device, None)
}

/// The reward model a run scores with (`reward.model`, or R2M's `pretrained_rm` for that method),
/// loaded at `reward.dtype` on `device`, frozen.
pub fn frozen_rm(cfg: &RlConfig, device: Device) -> Result<RewardModel> {
    let r = &cfg.reward;
    let method = cfg.r2m.as_ref().map(|c| c.method).unwrap_or(Method::Vanilla);
    let model = match (&cfg.r2m, method) {
        (Some(c), Method::PretrainedRm) => c.pretrained_rm.clone().unwrap_or_default(),
        _ => r.model.clone(),
    };
    let mut rm = RewardModel::load(&model, cfg.seed as i64, device).with_context(|| format!("loading reward model {model}"))?;
    rm.set_precision(Precision::resolve(&r.dtype, device, "reward.dtype")?);
    for (_, t) in rm.all_params() {
        let _ = t.set_requires_grad(false);
    }
    Ok(rm)
}

/// [`reward_source`], with the reward model on the job's reward-model rank when `link` is given
/// (`--rm-ranks 1`: this process never loads it; `reward.kind` must then be "rm").
pub fn reward_source_on(cfg: &RlConfig, d_policy: i64, device: Device, link: Option<Arc<RmLink>>) -> Result<Box<dyn RewardSource>> {
    let r = &cfg.reward;
    if link.is_some() && r.kind != RewardKind::Rm {
        anyhow::bail!("--rm-ranks: reward.kind = {:?}; a reward-model rank serves one reward model (reward.kind = \"rm\")", r.kind);
    }
    let seed = cfg.seed as i64;
    let precision = Precision::resolve(&r.dtype, device, "reward.dtype")?;
    Ok(match r.kind {
        RewardKind::Gold => Box::new(GoldSource { gold: Gold::load(r.gold.clone(), device)? }),
        RewardKind::Ensemble => {
            let members = r
                .members
                .iter()
                .map(|m| {
                    let mut rm = RewardModel::load(m, seed, device).with_context(|| format!("loading {m}"))?;
                    rm.set_precision(precision);
                    Ok(rm)
                })
                .collect::<Result<Vec<_>>>()?;
            for m in &members {
                for (_, t) in m.all_params() {
                    let _ = t.set_requires_grad(false);
                }
            }
            Box::new(EnsembleSource { ensemble: Ensemble::new(members, r.combine)?, max_length: r.max_length, batch_size: r.batch_size })
        }
        RewardKind::Rm => {
            let method = cfg.r2m.as_ref().map(|c| c.method).unwrap_or(Method::Vanilla);
            let rm = match link {
                Some(l) => FrozenRm::remote(l)?,
                None => FrozenRm::Local(frozen_rm(cfg, device)?),
            };
            match (&cfg.r2m, method) {
                (Some(c), m) if m != Method::Vanilla && m != Method::PretrainedRm => {
                    Box::new(R2mSource::new(c.clone(), rm, d_policy, cfg.seed, r.max_length, r.batch_size)?)
                }
                _ => Box::new(RmSource { rm, max_length: r.max_length, batch_size: r.batch_size }),
            }
        }
    })
}

/// The metric source: the testbed's gold (`gold/*` metrics) when the prompts are the testbed's and
/// `reward.gold_metrics` is on.
pub fn metric_source(cfg: &RlConfig, device: Device) -> Result<Option<Box<dyn MetricSource>>> {
    if cfg.reward.gold_metrics && cfg.data.prompts == "testbed" {
        Ok(Some(Box::new(GoldSource { gold: Gold::load(cfg.reward.gold.clone(), device)? })))
    } else {
        Ok(None)
    }
}

/// A run built from its config alone: the metric source, the reward source, the prompts.
pub fn build_run(cfg: &RlConfig, device: Device) -> Result<Run<'_>> {
    build_run_on(cfg, device, None)
}

/// [`build_run`], with the reward model on the job's reward-model rank when `link` is given.
pub fn build_run_on(cfg: &RlConfig, device: Device, link: Option<Arc<RmLink>>) -> Result<Run<'_>> {
    let metric = metric_source(cfg, device)?;
    build(cfg, |d_policy| reward_source_on(cfg, d_policy, device, link), metric, prompts(cfg)?, device)
}

/// The work of a job's reward-model rank (`--rm-ranks 1`): loads the run's reward model and
/// serves the policy's ranks ([`crate::dist::rte::serve`]) until their run ends.
pub fn serve_reward_model(cfg: &RlConfig, dist: &crate::dist::Dist) -> Result<()> {
    let link = dist.rm_link.as_ref().context("serve_reward_model: this job has no reward-model rank")?;
    if cfg.reward.kind != RewardKind::Rm {
        anyhow::bail!(
            "--rm-ranks: reward.kind = {:?}; a reward-model rank serves one reward model (reward.kind = \"rm\")",
            cfg.reward.kind
        );
    }
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    let device = crate::device::parse(&cfg.device)?;
    let rm = frozen_rm(cfg, device)?;
    let t0 = std::time::Instant::now();
    let s = crate::dist::rte::serve(link, &rm, cfg.reward.max_length, cfg.reward.batch_size)?;
    eprintln!(
        "reward-model rank: {} requests, {} rows embedded; received {:.2} MB of texts, sent {:.2} MB of H_last and scores, in {:.1} s; peak resident memory {:.0} MB",
        s.requests,
        s.rows,
        s.bytes_in as f64 / 1e6,
        s.bytes_out as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        crate::r2m::peak_rss_kb() as f64 / 1024.0
    );
    Ok(())
}

/// Train and eval prompts from the config (the testbed generator or files).
pub fn prompts(cfg: &RlConfig) -> Result<Prompts> {
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
        return Ok(Prompts { train: as_chat(cfg, to_ex(tr, "train")), eval: as_chat(cfg, to_ex(te, "test")) });
    }
    let train = crate::data::load_prompts(Path::new(&cfg.data.prompts), &opts)?.items;
    let eval = match &cfg.data.eval_prompts {
        Some(p) => crate::data::load_prompts(Path::new(p), &opts)?.items,
        None => vec![],
    };
    Ok(Prompts { train: as_chat(cfg, train), eval: as_chat(cfg, eval) })
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
