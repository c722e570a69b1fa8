//! What a run is made of, as its config names it: the reward source (a reward model, an ensemble,
//! the testbed's gold, or R2M and its baselines), the metric source (the testbed's gold), and the
//! prompts (files, or the testbed's generator). The RL engine (`crate::rl`) sees these only through
//! its interfaces; this is the one place that knows them all.
use crate::data::{PromptExample, Text};
use crate::model::precision::Precision;
use crate::r2m::{Method, R2mSource};
use crate::reward::ensemble::Ensemble;
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
use tch::Device;

/// The reward source `cfg` names (`reward.kind`, and `r2m.method` for an RM): a frozen RM, an
/// ensemble, the testbed's gold, or R2M and its baselines; `d_policy` is the policy's hidden size.
pub fn reward_source(cfg: &RlConfig, d_policy: i64, device: Device) -> Result<Box<dyn RewardSource>> {
    let r = &cfg.reward;
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
                    rm.precision = precision;
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
            let model = match (&cfg.r2m, method) {
                (Some(c), Method::PretrainedRm) => c.pretrained_rm.clone().unwrap_or_default(),
                _ => r.model.clone(),
            };
            let mut rm = RewardModel::load(&model, seed, device).with_context(|| format!("loading reward model {model}"))?;
            rm.precision = precision;
            match (&cfg.r2m, method) {
                (Some(c), m) if m != Method::Vanilla && m != Method::PretrainedRm => {
                    Box::new(R2mSource::new(c.clone(), rm, d_policy, cfg.seed, r.max_length, r.batch_size)?)
                }
                _ => {
                    for (_, t) in rm.all_params() {
                        let _ = t.set_requires_grad(false);
                    }
                    Box::new(RmSource { rm, max_length: r.max_length, batch_size: r.batch_size })
                }
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
    let metric = metric_source(cfg, device)?;
    build(cfg, |d_policy| reward_source(cfg, d_policy, device), metric, prompts(cfg)?, device)
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
