//! `r2m experiment`: a grid of RL runs (methods x algorithms x seeds) on shared artefacts, then the
//! report.
//!
//! The grid folder holds
//! - `experiment.toml`: the resolved grid config;
//! - `shared/`: what every run reuses, each made once and reused when present (a stopped grid
//!   resumes here too): the gold-labelled pairs (`pairs-train.jsonl` on the testbed's train
//!   prompts with label noise, `pairs-test.jsonl` on its disjoint test prompts, noise-free), the
//!   proxy RM (`proxy-rm/`, an `r2m train-rm` folder; or the user's `proxy.model`), for
//!   pretrained-rm the pairs on the RL prompts and the further-trained RM (`pretrained-rm/`), and
//!   `rm-accuracy.json` (the RMs' held-out accuracy before RL);
//! - one folder per run, `{method}-{algo}-s{seed}` (an `r2m rl` folder, plus `rm_accuracy.json`:
//!   the RM's held-out accuracy before RL and after it, with the final policy's feedback at w(T)
//!   for the methods that read feedback: the paper's Table 3), and `done.json` once finished;
//! - the report ([`super::write_report`]): `results.csv`, `runs.csv`, `comparisons.csv`,
//!   `plots/`, `report.md`, `report.html`.
//!
//! Resume: running the same config again skips runs with `done.json`, continues runs with a
//! checkpoint, and restarts the others. A run folder made with a different config is an error
//! (naming the folder), never silently reused.
use super::archive;
use super::report::{write_report, ReportSummary};
use crate::checkpoint::{find_checkpoint, write_atomic};
use crate::data::{self, LoadOptions};
use crate::model::CausalLm;
use crate::r2m::eval::{feedback_accuracy, Feedback, FeedbackAccuracy};
use crate::r2m::{w, Method, R2mConfig, R2mSource};
use crate::reward::train::{RmData, RmTrain, TrainRmConfig};
use crate::reward::RewardModel;
use crate::rl::config::{Algo, RewardKind, RlConfig};
use crate::rl::reward_source::RewardSource;
use crate::rl::trainer;
use crate::testbed::pairs::{make_pairs, write_jsonl, Noise, PairsConfig};
use crate::testbed::prompts::Split;
use crate::testbed::Gold;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Device;

/// `r2m experiment` config (TOML; see configs/experiment.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The grid folder.
    pub out: PathBuf,
    /// A folder that keeps the grid's results where `out` does not survive (the repository, say:
    /// `archive/NAME`): finished runs' metrics and configs, the gold-labelled pairs, the RMs'
    /// fingerprints and the report, never weights ([`super::archive`]). A grid restores it into
    /// `out` first and adds to it as runs finish, so it resumes on a fresh machine.
    pub archive: Option<PathBuf>,
    pub device: String,
    /// Runs side by side, each in a child process of the r2m binary with cores / `jobs` CPU
    /// threads (`run.threads`, unless set): for hosts with more cores than one run of a small
    /// model uses well (on 2 cores it measured ~1.02x the runs per hour, docs/benchmarks.md). CPU only:
    /// on a GPU the runs would share its memory.
    pub jobs: usize,
    /// Methods (r2m-method.md: vanilla, pretrained-rm, iterative-head, r2m-no-train, r2m-noise,
    /// r2m-no-bt, r2m-no-gre, r2m), each run under every algorithm of `algos`.
    pub methods: Vec<Method>,
    /// Methods with some run settings changed (a sweep of R2M's learning rate, say), run under
    /// every algorithm and seed like `methods` and reported under their own names.
    pub variants: Vec<Variant>,
    pub algos: Vec<Algo>,
    /// Algorithms run with vanilla only (the paper's ReMax / REINFORCE++ baselines).
    pub baseline_algos: Vec<Algo>,
    /// Run settings per algorithm, as `--set` overrides of `[run]` applied to that algorithm's runs
    /// (before a variant's own): the algorithms' own hyperparameters in one grid, e.g.
    ///
    /// ```toml
    /// [algo_set]
    /// rloo = ["rl.beta=0.01"]   # RLOO's KL penalty sits in the reward: a small-scale proxy needs less
    /// ```
    pub algo_set: BTreeMap<Algo, Vec<String>>,
    pub seeds: Vec<u64>,
    /// Evaluate each run's RM on the held-out pairs before and after RL (Table 3 analogue).
    pub rm_accuracy: bool,
    /// Batch size of the RM-accuracy evaluation.
    pub eval_batch: usize,
    pub proxy: ProxyConfig,
    pub pretrained: PretrainedConfig,
    /// The config of every run (an `r2m rl` config): `seed`, `out`, `device`, `rl.algo`,
    /// `r2m.method` and, unless given, `reward.model` are set per run by the grid.
    pub run: RlConfig,
}

/// A method run with some settings of the run config changed, written as `--set` overrides of
/// `[run]`:
///
/// ```toml
/// [[variants]]
/// name = "r2m-lr1e-5"
/// method = "r2m"
/// set = ["r2m.lr=1e-5", "r2m.alpha=0.5"]
/// algos = ["grpo"]                     # optional: only under these of `algos`
/// ```
///
/// Its runs are `{name}-{algo}-s{seed}`; the report lists them as a method of that name, compared
/// with vanilla like the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub method: Method,
    /// "key=value" overrides of the run config (dotted keys as in `[run]`: "policy.lr",
    /// "rl.epochs", "r2m.omega"; the value a TOML literal).
    #[serde(default)]
    pub set: Vec<String>,
    /// The algorithms of `algos` to run it under (default: all of them), for a setting that only
    /// one algorithm reads (`rl.scale_rewards` is GRPO's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algos: Option<Vec<Algo>>,
}

/// Keys of the run config that the grid sets per run: a variant or `algo_set` cannot change them.
const GRID_KEYS: [&str; 6] = ["seed", "out", "device", "rl.algo", "r2m.method", "label"];

/// `run` with the overrides `sets` (`origin` names them in errors, with the key).
fn apply_sets(run: &RlConfig, sets: &[String], origin: &str) -> Result<RlConfig> {
    if sets.is_empty() {
        return Ok(run.clone());
    }
    for s in sets {
        let (key, _) = crate::config::split_set(s).with_context(|| origin.to_string())?;
        ensure!(!GRID_KEYS.contains(&key), "{origin}: set {s:?}: `{key}` is set by the grid per run");
    }
    let text = toml::to_string(run).context("serialising the run config")?;
    crate::config::load_str::<RlConfig>(&text, origin, sets)
}

/// The proxy reward model and its gold-labelled pairs (testbed.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Use this RM (a folder or alias) instead of making one; with `test_pairs`, this runs the grid
    /// on user data (then `run.data.prompts` is the user's prompt file).
    pub model: Option<String>,
    /// Held-out preference pairs for RM accuracy (default: the testbed's, made here).
    pub test_pairs: Option<PathBuf>,
    /// The RM backbone (a fresh, seeded head on it).
    pub backbone: String,
    /// Prompts of the train split for the proxy's pairs (two pi_init samples each).
    pub train_prompts: usize,
    /// Prompts of the test split for the held-out pairs.
    pub test_prompts: usize,
    /// Label flips in the training pairs (Coste et al.: 0.25); the held-out pairs are noise-free.
    pub flip: f64,
    pub temperature: f64,
    pub max_new_tokens: i64,
    /// Generation batch of pair making.
    pub batch: usize,
    pub seed: u64,
    pub max_length: usize,
    pub train: RmTrain,
}

/// The pretrained-rm baseline: the proxy trained further with BT on gold-labelled pairs of the RL
/// prompts before RL (r2m-method.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainedConfig {
    /// RL-train-split prompts to make pairs on (fresh samples, same noise as the proxy's).
    pub prompts: usize,
    pub train: RmTrain,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            out: "runs/experiment".into(),
            archive: None,
            device: "auto".into(),
            jobs: 1,
            methods: Method::all().to_vec(),
            variants: vec![],
            algos: vec![Algo::Rloo, Algo::Grpo],
            baseline_algos: vec![],
            algo_set: BTreeMap::new(),
            seeds: vec![0, 1, 2],
            rm_accuracy: true,
            eval_batch: 16,
            proxy: ProxyConfig::default(),
            pretrained: PretrainedConfig::default(),
            run: RlConfig::default(),
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        // docs/testbed.md ("Measured"): the MiniLM encoder trained whole learns from a few hundred
        // noisy pairs where a SmolLM2 backbone with its top layers did not.
        ProxyConfig {
            model: None,
            test_pairs: None,
            backbone: "all-minilm-l6-v2".into(),
            train_prompts: 512,
            test_prompts: 128,
            flip: 0.25,
            temperature: 1.0,
            max_new_tokens: 64,
            batch: 32,
            seed: 0,
            max_length: 256,
            train: RmTrain {
                epochs: 4,
                micro_batch: 8,
                lr: 1e-4,
                warmup_ratio: 0.05,
                eval_every: 50,
                save_every: 100,
                ..RmTrain::default()
            },
        }
    }
}

impl Default for PretrainedConfig {
    fn default() -> Self {
        PretrainedConfig {
            prompts: 256,
            train: RmTrain { epochs: 2, micro_batch: 8, lr: 3e-5, eval_every: 32, save_every: 64, ..RmTrain::default() },
        }
    }
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub method: Method,
    pub algo: Algo,
    pub seed: u64,
    /// The variant's name (`ExperimentConfig::variants`), for a variant's run.
    pub variant: Option<String>,
}

impl RunSpec {
    /// `{method or variant}-{algo}-s{seed}` (what the aggregation parses).
    pub fn name(&self) -> String {
        format!("{}-{}-s{}", self.variant.clone().unwrap_or_else(|| self.method.name()), algo_key(self.algo), self.seed)
    }
}

pub fn algo_key(a: Algo) -> String {
    serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// The paths of the shared artefacts, resolved.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The proxy RM every run starts from.
    pub proxy_rm: String,
    /// The further-trained RM of pretrained-rm.
    pub pretrained_rm: Option<String>,
    /// Held-out pairs for RM accuracy.
    pub test_pairs: Option<PathBuf>,
    /// Held-out accuracy of each RM before RL (key: the RM path).
    pub accuracy_before: BTreeMap<String, f64>,
    /// Each shared RM made here (key: its path): {"sha256", "accuracy"} ([`archive::fingerprint`]).
    pub fingerprints: BTreeMap<String, Value>,
}

impl ExperimentConfig {
    /// CPU threads of each run side by side: cores / `jobs`, at least 1.
    pub fn threads_per_job(&self) -> usize {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cores / self.jobs.max(1)).max(1)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(!self.methods.is_empty() || !self.variants.is_empty(), "methods: empty");
        let mut names = std::collections::BTreeSet::new();
        for v in &self.variants {
            ensure!(
                !v.name.is_empty() && v.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "variants: name {:?} must be letters, digits, '-', '_' or '.' (it names run folders)",
                v.name
            );
            ensure!(Method::all().iter().all(|m| m.name() != v.name), "variants: name {:?} is a method's name; choose another", v.name);
            ensure!(names.insert(v.name.as_str()), "variants: {:?} is listed twice", v.name);
            ensure!(
                v.algos.as_ref().is_none_or(|a| !a.is_empty()),
                "variants.{}.algos: empty (leave it out to run the variant under every algorithm)",
                v.name
            );
        }
        ensure!(!self.algos.is_empty() || !self.baseline_algos.is_empty(), "algos: empty");
        ensure!(!self.seeds.is_empty(), "seeds: empty");
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.seeds {
            ensure!(seen.insert(s), "seeds: {s} is listed twice");
        }
        ensure!(self.run.reward.kind == RewardKind::Rm, "run.reward.kind: the grid trains against a reward model (\"rm\")");
        ensure!(self.eval_batch >= 1, "eval_batch must be >= 1");
        ensure!(self.jobs >= 1, "jobs must be >= 1");
        if self.proxy.model.is_none() {
            ensure!(
                self.run.data.prompts == "testbed",
                "proxy.model: with your own prompts (run.data.prompts = {:?}) give the reward model to use; the grid makes one only on the testbed",
                self.run.data.prompts
            );
            ensure!(self.proxy.train_prompts >= 2, "proxy.train_prompts must be >= 2");
            ensure!(self.proxy.test_prompts >= 1, "proxy.test_prompts must be >= 1");
            ensure!((0.0..=0.5).contains(&self.proxy.flip), "proxy.flip = {} must be in [0, 0.5]", self.proxy.flip);
        }
        if self.methods.contains(&Method::PretrainedRm) {
            ensure!(
                self.run.data.prompts == "testbed",
                "methods: pretrained-rm needs gold-labelled pairs of the RL prompts: the testbed's"
            );
            ensure!(self.pretrained.prompts >= 2, "pretrained.prompts must be >= 2");
        }
        // Every algorithm's settings, also of an algorithm this grid does not run (a typo fails now,
        // not in the grid that runs it).
        for algo in self.algo_set.keys() {
            self.algo_run(*algo)?;
        }
        for spec in self.runs() {
            self.run_config(&spec, &Shared::placeholder())?.validate().with_context(|| format!("run {}", spec.name()))?;
        }
        Ok(())
    }

    /// Every run, seed-major (a grid stopped early has whole seeds), then algorithm, then method.
    pub fn runs(&self) -> Vec<RunSpec> {
        let mut v = vec![];
        for &seed in &self.seeds {
            for &algo in &self.algos {
                for &method in &self.methods {
                    v.push(RunSpec { method, algo, seed, variant: None });
                }
                for x in self.variants.iter().filter(|x| x.algos.as_ref().is_none_or(|a| a.contains(&algo))) {
                    v.push(RunSpec { method: x.method, algo, seed, variant: Some(x.name.clone()) });
                }
            }
            for &algo in &self.baseline_algos {
                if !self.algos.contains(&algo) {
                    v.push(RunSpec { method: Method::Vanilla, algo, seed, variant: None });
                }
            }
        }
        v
    }

    /// `[run]` with `algo`'s settings of `algo_set`.
    fn algo_run(&self, algo: Algo) -> Result<RlConfig> {
        apply_sets(&self.run, self.algo_set.get(&algo).map_or(&[][..], Vec::as_slice), &format!("algo_set.{}", algo_key(algo)))
    }

    /// The `r2m rl` config of one run.
    pub fn run_config(&self, spec: &RunSpec, shared: &Shared) -> Result<RlConfig> {
        let base = self.algo_run(spec.algo)?;
        let mut c = match &spec.variant {
            Some(name) => {
                let v = self.variants.iter().find(|v| &v.name == name).with_context(|| format!("variants: no variant {name:?}"))?;
                let mut c = apply_sets(&base, &v.set, &format!("variants.{}.set", v.name))?;
                c.label = Some(name.clone());
                c
            }
            None => base,
        };
        c.seed = spec.seed;
        c.out = self.out.join(spec.name());
        c.device = self.device.clone();
        c.rl.algo = spec.algo;
        c.reward.model = shared.proxy_rm.clone();
        let mut r = c.r2m.clone().unwrap_or_default();
        r.method = spec.method;
        r.pretrained_rm = if spec.method == Method::PretrainedRm { shared.pretrained_rm.clone() } else { None };
        c.r2m = Some(r);
        Ok(c)
    }
}

impl Shared {
    fn placeholder() -> Shared {
        Shared {
            proxy_rm: "proxy".into(),
            pretrained_rm: Some("pretrained".into()),
            test_pairs: None,
            accuracy_before: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }
}

fn say(progress: bool, msg: impl AsRef<str>) {
    if progress {
        eprintln!("experiment: {}", msg.as_ref());
    }
}

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
        data: RmData { train, eval, max_length: p.max_length, ..RmData::default() },
        train: t.clone(),
    };
    let pairs = |split, n, seed, flip| PairsConfig {
        split,
        n_prompts: n,
        seed,
        temperature: p.temperature,
        max_new_tokens: p.max_new_tokens,
        batch: p.batch,
        noise: Noise::Flip { p: flip },
    };
    let test_pairs = match (&p.test_pairs, &p.model) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) if cfg.run.data.prompts != "testbed" => None,
        (None, _) => {
            let t = dir.join("pairs-test.jsonl");
            ensure_pairs(
                &t,
                &pairs(Split::Test, p.test_prompts, p.seed + 1, 0.0),
                &mut policy,
                &mut gold,
                &cfg.run.policy.model,
                device,
                progress,
            )?;
            Some(t)
        }
    };
    let proxy_rm = match &p.model {
        Some(m) => m.clone(),
        None => {
            let tr = dir.join("pairs-train.jsonl");
            ensure_pairs(
                &tr,
                &pairs(Split::Train, p.train_prompts, p.seed, p.flip),
                &mut policy,
                &mut gold,
                &cfg.run.policy.model,
                device,
                progress,
            )?;
            ensure_rm(&rm_cfg(p.backbone.clone(), dir.join("proxy-rm"), tr, test_pairs.clone(), &p.train), progress, &mut trained)?
        }
    };
    let pretrained_rm = if cfg.methods.contains(&Method::PretrainedRm) {
        let rl = dir.join("pairs-rl.jsonl");
        let n = cfg.pretrained.prompts;
        ensure_pairs(&rl, &pairs(Split::Train, n, p.seed + 2, p.flip), &mut policy, &mut gold, &cfg.run.policy.model, device, progress)?;
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

/// What [`run_grid`] did.
#[derive(Debug)]
pub struct GridOutcome {
    pub ran: Vec<String>,
    pub skipped: Vec<String>,
    pub report: ReportSummary,
    pub wall_s: f64,
}

/// Runs (or resumes) the grid and writes the report. With `jobs` > 1 the runs are child
/// processes of this executable (the r2m binary); see [`run_grid_with`]. On Linux they run the
/// very image this process runs (`/proc/self/exe`), even when the file was rebuilt meanwhile.
pub fn run_grid(cfg: &ExperimentConfig, progress: bool) -> Result<GridOutcome> {
    let exe = if cfg!(target_os = "linux") {
        PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().context("locating the r2m binary (for the runs of jobs > 1)")?
    };
    run_grid_with(cfg, progress, &exe)
}

/// A run to make: its place in the grid, spec, config, and whether it resumes a checkpoint.
struct Pending {
    i: usize,
    spec: RunSpec,
    rc: RlConfig,
    resume: bool,
}

/// [`run_grid`], with `exe` the r2m binary that runs each run (`r2m rl`) when `jobs` > 1.
pub fn run_grid_with(cfg: &ExperimentConfig, progress: bool, exe: &Path) -> Result<GridOutcome> {
    let t0 = Instant::now();
    cfg.validate()?;
    let device = crate::device::parse(&cfg.device)?;
    ensure!(
        cfg.jobs == 1 || device == Device::Cpu,
        "jobs = {}: runs side by side are for the CPU; on {device:?} they would share one device's memory (set jobs = 1)",
        cfg.jobs
    );
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    crate::config::save(cfg, &cfg.out.join("experiment.toml"))?;
    if let Some(a) = &cfg.archive {
        archive::check_paths(a, &cfg.out)?;
        for f in archive::restore_shared(a, &cfg.out)? {
            say(progress, format!("restored shared/{f} from the archive {}", a.display()));
        }
    }
    let shared = prepare_shared(cfg, device, progress)?;
    let specs = cfg.runs();
    if let Some(a) = &cfg.archive {
        for m in archive::fingerprint_mismatches(a, &shared.fingerprints)? {
            eprintln!("experiment: warning: {m}");
        }
        let restored = archive::restore_runs(a, &cfg.out, |name, dir| match specs.iter().find(|s| s.name() == name) {
            Some(spec) => check_earlier_config(dir, &cfg.run_config(spec, &shared)?).map(|_| ()),
            None => Ok(()), // not in this grid's selection: restored for the report, checked when run
        })?;
        if !restored.is_empty() {
            say(progress, format!("restored {} finished runs from the archive {}: {}", restored.len(), a.display(), restored.join(", ")));
        }
    }
    let (mut pending, mut skipped) = (vec![], vec![]);
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.name();
        let mut rc = cfg.run_config(spec, &shared)?;
        if cfg.jobs > 1 && rc.threads == 0 {
            rc.threads = cfg.threads_per_job();
        }
        let dir = rc.out.clone();
        let resume = find_checkpoint(&dir.join("checkpoint")).is_some();
        if let Some(old) = check_earlier_config(&dir, &rc)? {
            if resume {
                rc.threads = old.threads;
            }
        }
        if dir.join("done.json").exists() {
            say(progress, format!("[{}/{}] {name}: done, skipped", i + 1, specs.len()));
            skipped.push(name);
            continue;
        }
        if !resume && dir.exists() {
            // Started but never checkpointed: nothing to keep.
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        pending.push(Pending { i, spec: spec.clone(), rc, resume });
    }
    let n = specs.len();
    let ran = if cfg.jobs == 1 {
        let mut ran = vec![];
        for p in &pending {
            let name = p.spec.name();
            say(progress, format!("[{}/{n}] {name}{}", p.i + 1, if p.resume { ": resuming" } else { "" }));
            let tr = Instant::now();
            {
                let mut r = crate::sources::build_run(&p.rc, device)?;
                trainer::run(&mut r, p.resume, progress).with_context(|| format!("run {name}"))?;
            }
            finish_run(cfg, p, &shared, tr.elapsed().as_secs_f64(), device)?;
            ran.push(name);
        }
        ran
    } else {
        run_side_by_side(cfg, &pending, n, &shared, exe, progress, device)?
    };
    let report = write_report(&cfg.out)?;
    if let Some(a) = &cfg.archive {
        archive::save(a, &cfg.out, &shared.fingerprints)?;
    }
    Ok(GridOutcome { ran, skipped, report, wall_s: t0.elapsed().as_secs_f64() })
}

/// `r2m experiment --report-only`: the report from the run folders in `out`, after restoring the
/// archive's finished runs into it (so a fresh machine writes the report of the archived grid);
/// the report is then archived too. Trains nothing.
pub fn report_only(cfg: &ExperimentConfig, progress: bool) -> Result<ReportSummary> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    // The archived experiment.toml is the config of the command that wrote the report beside it,
    // not of a grid started since in the same folder.
    crate::config::save(cfg, &cfg.out.join("experiment.toml"))?;
    if let Some(a) = &cfg.archive {
        archive::check_paths(a, &cfg.out)?;
        let restored = archive::restore_runs(a, &cfg.out, |_, _| Ok(()))?;
        if !restored.is_empty() {
            say(progress, format!("restored {} finished runs from the archive {}", restored.len(), a.display()));
        }
    }
    let report = write_report(&cfg.out)?;
    if let Some(a) = &cfg.archive {
        archive::save(a, &cfg.out, &BTreeMap::new())?;
    }
    Ok(report)
}

/// The config of the run folder `dir` made earlier, if any, checked against `rc`: a folder made
/// with another config is an error naming it. `rl.stop_after` only simulates an interruption; the
/// thread count and the device are how the run was executed (a grid archived on one machine goes
/// on on another, `device = "auto"` resolving there): they may differ (done.json records each run's
/// machine, and the report shows it).
fn check_earlier_config(dir: &Path, rc: &RlConfig) -> Result<Option<RlConfig>> {
    let path = dir.join("config.toml");
    if !path.exists() {
        return Ok(None);
    }
    let old: RlConfig =
        crate::config::load(Some(&path), &[]).with_context(|| format!("{}: unreadable config of an earlier run", dir.display()))?;
    let same = |c: &RlConfig| RlConfig {
        threads: 0,
        device: String::new(),
        rl: crate::rl::config::AlgoConfig { stop_after: None, ..c.rl.clone() },
        ..c.clone()
    };
    if same(&old) != same(rc) {
        bail!(
            "{}: this run folder was made with a different config; choose another `out` for the grid, or delete the folder to rerun it",
            dir.display()
        );
    }
    Ok(Some(old))
}

/// After a run's training: its RM accuracy before/after RL (`rm_accuracy.json`) and `done.json`.
fn finish_run(cfg: &ExperimentConfig, p: &Pending, shared: &Shared, wall_s: f64, device: Device) -> Result<()> {
    let (spec, dir) = (&p.spec, &p.rc.out);
    let mut summary = json!({"run": spec.name(), "wall_s": wall_s, "machine": crate::device::describe_host(device)});
    if p.rc.threads > 0 {
        summary["threads"] = json!(p.rc.threads);
    }
    // The RM the run trained against, by content: runs of one grid on several machines (an
    // archived grid) can be checked to share it.
    let rm = if spec.method == Method::PretrainedRm { shared.pretrained_rm.as_ref() } else { Some(&shared.proxy_rm) };
    if let Some(f) = rm.and_then(|rm| shared.fingerprints.get(rm)) {
        summary["rm_sha256"] = f["sha256"].clone();
    }
    if let (true, Some(t)) = (cfg.rm_accuracy, &shared.test_pairs) {
        let rm = match spec.method {
            Method::PretrainedRm => shared.pretrained_rm.clone().unwrap_or_default(),
            _ => shared.proxy_rm.clone(),
        };
        let before = shared.accuracy_before.get(&rm).copied().unwrap_or(f64::NAN);
        let after = run_rm_accuracy_after(dir, t, cfg.eval_batch, device)?;
        let mut acc = json!({"method": spec.method.name(), "algo": algo_key(spec.algo), "seed": spec.seed,
                         "before": before, "after": after.accuracy, "pairs": after.pairs});
        if let Some(a) = after.attention {
            acc["attention"] = a.to_json();
        }
        write_atomic(&dir.join("rm_accuracy.json"), serde_json::to_string_pretty(&acc)?.as_bytes())?;
        summary["rm_accuracy"] = acc;
    }
    write_atomic(&dir.join("done.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    if let Some(a) = &cfg.archive {
        archive::save(a, &cfg.out, &shared.fingerprints)?;
    }
    Ok(())
}

/// The last `n` lines of a file (for an error message).
fn tail_lines(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `pending` as at most `cfg.jobs` child processes at a time: `exe rl --config
/// <run>/config.toml [--resume] --quiet`, output to `<run>/rl.log`. Each child dies with this
/// process (Linux: PR_SET_PDEATHSIG), its checkpoint intact. After a failed run no new run starts;
/// the running ones finish, then the failure is reported with the end of its log.
fn run_side_by_side(
    cfg: &ExperimentConfig,
    pending: &[Pending],
    n: usize,
    shared: &Shared,
    exe: &Path,
    progress: bool,
    device: Device,
) -> Result<Vec<String>> {
    use std::process::{Child, Command, Stdio};
    // This process scores each finished run's RM beside the running children: at a child's share
    // of the cores (libgomp's idle threads would spin against theirs).
    tch::set_num_threads(cfg.threads_per_job() as i32);
    let mut queue = pending.iter();
    let mut running: Vec<(&Pending, Child, Instant)> = vec![];
    let (mut ran, mut failed) = (vec![], None::<String>);
    loop {
        while failed.is_none() && running.len() < cfg.jobs {
            let Some(p) = queue.next() else { break };
            let dir = &p.rc.out;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let conf = dir.join("config.toml");
            crate::config::save(&p.rc, &conf)?;
            let log_path = dir.join("rl.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("opening {}", log_path.display()))?;
            let mut cmd = Command::new(exe);
            cmd.arg("rl").arg("--config").arg(&conf).arg("--quiet");
            if p.resume {
                cmd.arg("--resume");
            }
            cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::process::CommandExt;
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
            }
            let child = cmd.spawn().with_context(|| format!("starting {} rl for {}", exe.display(), p.spec.name()))?;
            say(
                progress,
                format!(
                    "[{}/{n}] {}{}: started (threads {}, log {})",
                    p.i + 1,
                    p.spec.name(),
                    if p.resume { ", resuming" } else { "" },
                    p.rc.threads,
                    log_path.display()
                ),
            );
            running.push((p, child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        let mut finished = None;
        for (k, (_, child, _)) in running.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                finished = Some((k, status));
                break;
            }
        }
        let Some((k, status)) = finished else {
            std::thread::sleep(std::time::Duration::from_millis(500));
            continue;
        };
        let (p, _, t) = running.remove(k);
        let name = p.spec.name();
        if status.success() {
            finish_run(cfg, p, shared, t.elapsed().as_secs_f64(), device)?;
            say(progress, format!("{name}: done in {:.1} min", t.elapsed().as_secs_f64() / 60.0));
            ran.push(name);
        } else if failed.is_none() {
            let log = p.rc.out.join("rl.log");
            failed = Some(format!("run {name} failed ({status}); the end of {}:\n{}", log.display(), tail_lines(&log, 8)));
            say(progress, format!("{name}: failed; waiting for the runs still going"));
        }
    }
    match failed {
        Some(e) => bail!(e),
        None => Ok(ran),
    }
}

/// Reads `done.json` of every run (for tests and tools).
pub fn done_runs(grid: &Path) -> Result<Vec<Value>> {
    let mut v = vec![];
    for e in std::fs::read_dir(grid).with_context(|| format!("reading {}", grid.display()))? {
        let p = e?.path().join("done.json");
        if p.exists() {
            v.push(serde_json::from_str(&std::fs::read_to_string(&p)?)?);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_seed_major_and_named_for_the_aggregation() {
        let cfg = ExperimentConfig {
            methods: vec![Method::Vanilla, Method::R2m],
            algos: vec![Algo::Rloo],
            baseline_algos: vec![Algo::Remax, Algo::Rloo],
            seeds: vec![3, 4],
            ..ExperimentConfig::default()
        };
        let names: Vec<String> = cfg.runs().iter().map(|r| r.name()).collect();
        assert_eq!(names, ["vanilla-rloo-s3", "r2m-rloo-s3", "vanilla-remax-s3", "vanilla-rloo-s4", "r2m-rloo-s4", "vanilla-remax-s4"]);
        for n in &names {
            let (m, a, s) = super::super::aggregate::parse_run_name(n).unwrap();
            assert!(n.starts_with(&m) && n.contains(&a) && n.ends_with(&s.to_string()));
        }
    }

    #[test]
    fn run_config_sets_what_varies_and_nothing_else() {
        let cfg = ExperimentConfig { out: "g".into(), ..ExperimentConfig::default() };
        let shared = Shared {
            proxy_rm: "p".into(),
            pretrained_rm: Some("q".into()),
            test_pairs: None,
            accuracy_before: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        };
        let spec = RunSpec { method: Method::PretrainedRm, algo: Algo::Grpo, seed: 7, variant: None };
        let c = cfg.run_config(&spec, &shared).unwrap();
        assert_eq!((c.seed, c.rl.algo, c.out.clone()), (7, Algo::Grpo, PathBuf::from("g/pretrained-rm-grpo-s7")));
        assert_eq!(c.r2m.as_ref().unwrap().pretrained_rm.as_deref(), Some("q"));
        assert_eq!(c.reward.model, "p");
        let v = cfg.run_config(&RunSpec { method: Method::Vanilla, algo: Algo::Grpo, seed: 7, variant: None }, &shared).unwrap();
        assert_eq!(v.r2m.as_ref().unwrap().pretrained_rm, None);
        assert_eq!((v.rl.clone(), v.policy.clone()), (c.rl.clone(), c.policy.clone()));
        c.validate().unwrap();
    }

    #[test]
    fn a_variant_runs_only_under_its_algos() {
        let text = r#"
            out = "g"
            methods = ["r2m"]
            algos = ["rloo", "grpo"]
            seeds = [0]
            [[variants]]
            name = "r2m-batch-std"
            method = "r2m"
            set = ['rl.scale_rewards="batch"']
            algos = ["grpo"]
            [[variants]]
            name = "r2m-lr1e-5"
            method = "r2m"
            set = ["r2m.lr=1e-5"]
        "#;
        let cfg: ExperimentConfig = crate::config::load_str(text, "x.toml", &[]).unwrap();
        cfg.validate().unwrap();
        let names: Vec<String> = cfg.runs().iter().map(RunSpec::name).collect();
        assert_eq!(names, ["r2m-rloo-s0", "r2m-lr1e-5-rloo-s0", "r2m-grpo-s0", "r2m-batch-std-grpo-s0", "r2m-lr1e-5-grpo-s0"]);
        let spec = cfg.runs().into_iter().find(|r| r.name() == "r2m-batch-std-grpo-s0").unwrap();
        assert_eq!(cfg.run_config(&spec, &Shared::placeholder()).unwrap().rl.scale_rewards, crate::rl::advantages::ScaleRewards::Batch);
        // A selection without the variant's algorithm runs none of it; an empty list is a mistake.
        let rloo: ExperimentConfig = crate::config::load_str(text, "x.toml", &[r#"algos=["rloo"]"#.to_string()]).unwrap();
        assert!(rloo.runs().iter().all(|r| r.variant.as_deref() != Some("r2m-batch-std")));
        let e = crate::config::load_str::<ExperimentConfig>(&text.replace(r#"algos = ["grpo"]"#, "algos = []"), "x.toml", &[])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(format!("{e:#}").contains("variants.r2m-batch-std.algos"), "{e:#}");
    }

    #[test]
    fn variants_change_their_runs_only() {
        let text = r#"
            out = "g"
            methods = ["vanilla", "r2m"]
            algos = ["grpo"]
            seeds = [0, 1]
            [[variants]]
            name = "r2m-lr1e-5"
            method = "r2m"
            set = ["r2m.lr=1e-5", "policy.lr=3e-5"]
        "#;
        let cfg: ExperimentConfig = crate::config::load_str(text, "x.toml", &[]).unwrap();
        cfg.validate().unwrap();
        let names: Vec<String> = cfg.runs().iter().map(RunSpec::name).collect();
        assert_eq!(names, ["vanilla-grpo-s0", "r2m-grpo-s0", "r2m-lr1e-5-grpo-s0", "vanilla-grpo-s1", "r2m-grpo-s1", "r2m-lr1e-5-grpo-s1"]);
        let shared = Shared::placeholder();
        let specs = cfg.runs();
        let plain = cfg.run_config(&specs[1], &shared).unwrap();
        let var = cfg.run_config(&specs[2], &shared).unwrap();
        assert_eq!((var.label.as_deref(), var.r2m.as_ref().unwrap().method), (Some("r2m-lr1e-5"), Method::R2m));
        assert_eq!((var.r2m.as_ref().unwrap().lr, var.policy.lr), (1e-5, 3e-5));
        assert_eq!(var.out, PathBuf::from("g/r2m-lr1e-5-grpo-s0"));
        assert_eq!(plain.label, None);
        assert_eq!((plain.r2m.as_ref().unwrap().lr, plain.policy.lr), (cfg.run.r2m.clone().unwrap_or_default().lr, cfg.run.policy.lr));
        // Apart from what the variant sets and the grid's per-run fields, the same config.
        let mut back = var.clone();
        back.label = None;
        back.out = plain.out.clone();
        back.policy.lr = plain.policy.lr;
        back.r2m.as_mut().unwrap().lr = plain.r2m.as_ref().unwrap().lr;
        assert_eq!(back, plain);
        // The label survives the run folder's config.toml (the report reads it there).
        let d = tempfile::tempdir().unwrap();
        crate::config::save(&var, &d.path().join("c.toml")).unwrap();
        let again: RlConfig = crate::config::load(Some(&d.path().join("c.toml")), &[]).unwrap();
        assert_eq!(again, var);

        // Errors name the variant and what is wrong.
        let bad = |set: &str, name: &str| {
            let t = format!("methods = [\"r2m\"]\n[[variants]]\nname = \"{name}\"\nmethod = \"r2m\"\nset = [\"{set}\"]\n");
            crate::config::load_str::<ExperimentConfig>(&t, "x.toml", &[]).unwrap().validate().unwrap_err().to_string()
        };
        let e = bad("r2m.lrr=1e-5", "v1");
        assert!(e.contains("variants.v1") && e.contains("lrr"), "{e}");
        let e = bad("seed=3", "v1");
        assert!(e.contains("variants.v1") && e.contains("set by the grid"), "{e}");
        let e = bad("r2m.lr=1e-5", "vanilla");
        assert!(e.contains("method's name"), "{e}");
        let e = bad("r2m.lr=1e-5", "a/b");
        assert!(e.contains("\"a/b\""), "{e}");
    }

    #[test]
    fn algo_set_changes_that_algorithms_runs_only() {
        let text = r#"
            out = "g"
            methods = ["vanilla"]
            algos = ["grpo", "rloo"]
            seeds = [0]
            [algo_set]
            rloo = ["rl.beta=0.01", "rl.normalize_advantages=true"]
            [[variants]]
            name = "v-lr"
            method = "vanilla"
            set = ["policy.lr=3e-5", "rl.beta=0.02"]
        "#;
        let cfg: ExperimentConfig = crate::config::load_str(text, "x.toml", &[]).unwrap();
        cfg.validate().unwrap();
        let shared = Shared::placeholder();
        let by_name: BTreeMap<String, RlConfig> = cfg.runs().iter().map(|s| (s.name(), cfg.run_config(s, &shared).unwrap())).collect();
        let (g, r) = (&by_name["vanilla-grpo-s0"], &by_name["vanilla-rloo-s0"]);
        assert_eq!((g.rl.beta, g.rl.normalize_advantages), (None, false));
        assert_eq!((r.rl.beta, r.rl.normalize_advantages), (Some(0.01), true));
        // Apart from the algorithm and what its set changes, the same config.
        let mut back = r.clone();
        (back.rl.algo, back.rl.beta, back.rl.normalize_advantages) = (g.rl.algo, None, false);
        back.out = g.out.clone();
        assert_eq!(&back, g);
        // A variant's own settings come after the algorithm's.
        let (vg, vr) = (&by_name["v-lr-grpo-s0"], &by_name["v-lr-rloo-s0"]);
        assert_eq!((vg.rl.beta, vg.rl.normalize_advantages, vg.policy.lr), (Some(0.02), false, 3e-5));
        assert_eq!((vr.rl.beta, vr.rl.normalize_advantages, vr.policy.lr), (Some(0.02), true, 3e-5));
        // The grid's config round-trips through experiment.toml.
        let again: ExperimentConfig = crate::config::load_str(&toml::to_string(&cfg).unwrap(), "e.toml", &[]).unwrap();
        assert_eq!(again, cfg);
        // Errors name the algorithm and the key.
        let bad =
            |t: &str| crate::config::load_str::<ExperimentConfig>(t, "x.toml", &[]).and_then(|c| c.validate()).unwrap_err().to_string();
        let e = bad("algos = [\"rloo\"]\n[algo_set]\nrloo = [\"rl.betta=0.01\"]\n");
        assert!(e.contains("algo_set.rloo") && e.contains("betta"), "{e}");
        let e = bad("algos = [\"rloo\"]\n[algo_set]\nrloo = [\"seed=1\"]\n");
        assert!(e.contains("algo_set.rloo") && e.contains("set by the grid"), "{e}");
        let e = bad("algos = [\"grpo\"]\n[algo_set]\nremax = [\"rl.bta=0.01\"]\n");
        assert!(e.contains("algo_set.remax") && e.contains("bta"), "{e}");
        let e = bad("[algo_set]\nrlooo = [\"rl.beta=0.01\"]\n");
        assert!(e.contains("x.toml") && e.contains("algo_set") && e.contains("rlooo"), "{e}");
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = crate::config::load_str::<ExperimentConfig>("methods = [\"r2m\", \"r3m\"]", "x.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("methods"), "{e}");
        let cfg = ExperimentConfig { seeds: vec![1, 1], ..ExperimentConfig::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("twice"));
        let mut cfg = ExperimentConfig::default();
        cfg.run.data.prompts = "mine.jsonl".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("proxy.model"));
    }
}
