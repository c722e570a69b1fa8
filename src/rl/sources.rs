//! Builds the configured reward source (RM, ensemble, gold, or R2M and its baselines) and the
//! optional gold scorer for metrics.
use crate::model::precision::Precision;
use crate::r2m::{Method, R2mSource};
use crate::reward::ensemble::Ensemble;
use crate::reward::RewardModel;
use crate::rl::config::{RewardKind, RlConfig};
use crate::rl::reward_source::{EnsembleSource, GoldSource, RewardSource, RmSource};
use crate::testbed::Gold;
use anyhow::{Context, Result};
use tch::Device;

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

/// The gold scorer for `gold/*` metrics, when the prompts are the testbed's.
pub fn gold_metrics(cfg: &RlConfig, device: Device) -> Result<Option<GoldSource>> {
    if cfg.reward.gold_metrics && cfg.data.prompts == "testbed" {
        Ok(Some(GoldSource { gold: Gold::load(cfg.reward.gold.clone(), device)? }))
    } else {
        Ok(None)
    }
}
