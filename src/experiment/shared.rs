//! The artefacts every run of a grid shares, each made once into `out/shared/` and reused when
//! present (a stopped grid resumes here too): the gold-labelled pairs, the proxy RM, for
//! pretrained-rm the pairs on the RL prompts and the further-trained RM, and the RMs' held-out
//! accuracy before RL ([`prepare_shared`]); and a run's RM accuracy after RL
//! ([`run_rm_accuracy_after`]).
use super::archive;
use super::config::{ExperimentConfig, Shared};
use super::progress::say;
use crate::checkpoint::{find_checkpoint, write_atomic};
use crate::data::{self, LoadOptions};
use crate::model::CausalLm;
use crate::r2m::eval::{feedback_accuracy, Feedback, FeedbackAccuracy};
use crate::r2m::{w, Method, R2mConfig, R2mSource};
use crate::reward::train::{RmData, RmTrain, TrainRmConfig};
use crate::reward::RewardModel;
use crate::rl::reward_source::RewardSource;
use crate::rl::trainer;
use crate::testbed::pairs::{make_pairs, write_jsonl, Noise, PairsConfig};
use crate::testbed::prompts::Split;
use crate::testbed::Gold;
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Device;

/// Makes gold-labelled pairs into `path` unless it exists.
fn ensure_pairs(
    path: &Path,
    cfg: &PairsConfig,
    policy: &mut Option<crate::model::causal_lm::Loaded>,
    gold: &mut Option<Gold>,
    model: &str,
    device: Device,
    progress: bool,
) -> Result<()> {
    // The settings the pairs were made with sit beside them: a changed config is an error, never
    // a silent reuse of other pairs.
    let meta = path.with_extension("config.json");
    let want = serde_json::to_value(cfg)?;
    if path.exists() {
        if let Ok(text) = std::fs::read_to_string(&meta) {
            let had: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", meta.display()))?;
            ensure!(
                had == want,
                "{}: made with other settings ({had}) than now ({want}); delete it or choose another `out`",
                path.display()
            );
        }
        say(progress, format!("reusing {}", path.display()));
        return Ok(());
    }
    say(progress, format!("making {} gold-labelled pairs on the {:?} split -> {}", cfg.n_prompts, cfg.split, path.display()));
    if policy.is_none() {
        *policy = Some(CausalLm::load_path(model, device).with_context(|| format!("loading pi_init {model}"))?);
    }
    if gold.is_none() {
        *gold = Some(Gold::load(crate::testbed::GoldConfig::default(), device)?);
    }
    let (p, g) = (policy.as_ref().unwrap(), gold.as_ref().unwrap());
    let bar = crate::reward::train::progress_bar(progress, cfg.n_prompts as u64, 0);
    let (pairs, dropped) = make_pairs(&p.model, &p.tokenizer, g, cfg, |n| {
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    ensure!(!pairs.is_empty(), "{}: every pair was dropped (identical or tied responses)", path.display());
    write_atomic(&meta, serde_json::to_string_pretty(&want)?.as_bytes())?;
    write_jsonl(path, &pairs)?;
    say(progress, format!("{} pairs ({dropped} dropped: identical or tied)", pairs.len()));
    Ok(())
}

/// Trains an RM into `out` unless `out/model` exists (a stopped training resumes).
fn ensure_rm(cfg: &TrainRmConfig, progress: bool, trained: &mut bool) -> Result<String> {
    let model = cfg.out.join("model");
    let saved = cfg.out.join("config.toml");
    if saved.exists() {
        let mut had: TrainRmConfig = crate::config::load(Some(&saved), &[])?;
        // The device it was trained on does not change what it is.
        had.device = cfg.device.clone();
        ensure!(
            had == *cfg,
            "{}: this reward model was trained with other settings; delete the folder or choose another `out`",
            cfg.out.display()
        );
    }
    if model.join("config.json").exists() {
        say(progress, format!("reusing {}", model.display()));
        return Ok(model.display().to_string());
    }
    let resume = find_checkpoint(&cfg.out.join("checkpoint")).is_some();
    say(progress, format!("training the reward model {} on {}", cfg.out.display(), cfg.data.train.display()));
    let s = crate::reward::train::run(cfg, resume, progress)?;
    *trained = true;
    say(progress, format!("{}: held-out accuracy {:.3} on {} pairs", cfg.out.display(), s.eval_accuracy, s.eval_pairs));
    Ok(s.model_dir.display().to_string())
}

/// Held-out accuracy of a plain RM on `pairs`, scored as in RL (the same path as after RL).
fn rm_accuracy(rm_path: &str, pairs: &Path, max_length: usize, batch: usize, device: Device) -> Result<f64> {
    let rm = RewardModel::load(rm_path, 0, device).with_context(|| format!("loading {rm_path}"))?;
    let cfg = R2mConfig { method: Method::Vanilla, ..R2mConfig::default() };
    let src = R2mSource::new(cfg, rm, 1, 0, max_length, batch)?;
    let d = data::load_preferences(pairs, &LoadOptions::default())?;
    Ok(feedback_accuracy(&src, None, &d.items, 1.0, batch)?.accuracy)
}

/// Makes (or reuses) the shared artefacts.
pub fn prepare_shared(cfg: &ExperimentConfig, device: Device, progress: bool) -> Result<Shared> {
    let dir = cfg.out.join("shared");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (mut policy, mut gold, mut trained) = (None, None, false);
    let p = &cfg.proxy;
    let rm_cfg = |model: String, out: PathBuf, train: PathBuf, eval: Option<PathBuf>, t: &RmTrain| TrainRmConfig {
        seed: p.seed,
        model,
        out,
        device: cfg.device.clone(),
        dtype: "auto".into(),
        data: RmData { train, eval, max_length: p.max_length, chat_template: p.chat_template.clone(), ..RmData::default() },
        train: t.clone(),
    };
    // Gold-labelled pairs into `path` unless there; pi_init and the gold load on first need.
    let mut make_pairs = |path: &Path, split: Split, n_prompts: usize, seed: u64, flip: f64| {
        let c = PairsConfig {
            split,
            n_prompts,
            seed,
            temperature: p.temperature,
            max_new_tokens: p.max_new_tokens,
            batch: p.batch,
            noise: Noise::Flip { p: flip },
        };
        ensure_pairs(path, &c, &mut policy, &mut gold, &cfg.run.policy.model, device, progress)
    };
    let test_pairs = match (&p.test_pairs, &p.model) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) if cfg.run.data.prompts != "testbed" => None,
        (None, _) => {
            let t = dir.join("pairs-test.jsonl");
            make_pairs(&t, Split::Test, p.test_prompts, p.seed + 1, 0.0)?;
            Some(t)
        }
    };
    let proxy_rm = match &p.model {
        Some(m) => m.clone(),
        None => {
            let tr = dir.join("pairs-train.jsonl");
            make_pairs(&tr, Split::Train, p.train_prompts, p.seed, p.flip)?;
            ensure_rm(&rm_cfg(p.backbone.clone(), dir.join("proxy-rm"), tr, test_pairs.clone(), &p.train), progress, &mut trained)?
        }
    };
    let pretrained_rm = if cfg.runs_method(Method::PretrainedRm) {
        let rl = dir.join("pairs-rl.jsonl");
        let n = cfg.pretrained.prompts;
        make_pairs(&rl, Split::Train, n, p.seed + 2, p.flip)?;
        Some(ensure_rm(
            &rm_cfg(proxy_rm.clone(), dir.join("pretrained-rm"), rl, test_pairs.clone(), &cfg.pretrained.train),
            progress,
            &mut trained,
        )?)
    } else {
        None
    };
    drop((policy, gold));
    let mut accuracy_before = BTreeMap::new();
    if let (true, Some(t)) = (cfg.rm_accuracy, &test_pairs) {
        let path = dir.join("rm-accuracy.json");
        // Keyed by the RM's path: cleared whenever an RM was (re)trained here.
        let mut cached: BTreeMap<String, f64> = match std::fs::read_to_string(&path) {
            Ok(s) if !trained => serde_json::from_str(&s).unwrap_or_default(),
            _ => BTreeMap::new(),
        };
        for rm in std::iter::once(&proxy_rm).chain(pretrained_rm.as_ref()) {
            if !cached.contains_key(rm) {
                say(progress, format!("held-out accuracy of {rm} on {}", t.display()));
                cached.insert(rm.clone(), rm_accuracy(rm, t, cfg.run.reward.max_length, cfg.eval_batch, device)?);
            }
            accuracy_before.insert(rm.clone(), cached[rm]);
        }
        write_atomic(&path, serde_json::to_string_pretty(&cached)?.as_bytes())?;
    }
    // The RMs this grid made (a user's own RM is not fingerprinted: it is named by its path).
    let mut fingerprints = BTreeMap::new();
    for rm in std::iter::once(&proxy_rm).chain(pretrained_rm.as_ref()) {
        let path = Path::new(rm);
        if path.starts_with(&dir) && path.is_dir() {
            let acc = accuracy_before.get(rm).copied();
            fingerprints.insert(rm.clone(), json!({"sha256": archive::fingerprint(path)?, "accuracy": acc}));
        }
    }
    Ok(Shared { proxy_rm, pretrained_rm, test_pairs, accuracy_before, fingerprints })
}

/// The run's RM accuracy on `pairs` after RL: the run's reward source as it stands at the last
/// checkpoint (R2M modules and head trained online), with the final policy's feedback at w(T) for
/// the methods that read feedback. Frozen RMs (vanilla, pretrained-rm, r2m-no-train's RM part)
/// are evaluated the same way, so every method's number comes from one code path.
pub fn run_rm_accuracy_after(run_dir: &Path, pairs: &Path, batch: usize, device: Device) -> Result<FeedbackAccuracy> {
    let (cfg, policy, ptok, ck) = trainer::load_run(run_dir, device)?;
    let r2m_cfg = cfg.r2m.clone().unwrap_or(R2mConfig { method: Method::Vanilla, ..R2mConfig::default() });
    let model = match r2m_cfg.method {
        Method::PretrainedRm => r2m_cfg.pretrained_rm.clone().context("pretrained-rm run without r2m.pretrained_rm")?,
        _ => cfg.reward.model.clone(),
    };
    let rm = RewardModel::load(&model, cfg.seed as i64, device).with_context(|| format!("loading {model}"))?;
    let mut src = R2mSource::new(r2m_cfg.clone(), rm, policy.config.hidden_size, cfg.seed, cfg.reward.max_length, batch)?;
    let state = ck.join("reward_source.safetensors");
    if r2m_cfg.method.uses_feedback() || r2m_cfg.method.trains_online() {
        src.load_state(&crate::model::load::safetensors::read_file(&state)?, &state)?;
    }
    let d = data::load_preferences(pairs, &LoadOptions::default())?;
    let wt = w(cfg.rl.steps, cfg.rl.steps, r2m_cfg.omega);
    let fb = r2m_cfg.method.uses_feedback().then_some(Feedback { policy: &policy, tokenizer: &ptok, chat: cfg.policy.chat });
    Ok(feedback_accuracy(&src, fb, &d.items, wt, batch)?)
}
