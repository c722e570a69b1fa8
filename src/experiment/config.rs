//! The grid's config (`r2m experiment`, TOML; see configs/experiment.toml): which arms (methods
//! and variants) under which algorithms and seeds, the shared artefacts' settings, and the config
//! of every run ([`ExperimentConfig::runs`], [`ExperimentConfig::run_config`]).
use super::arm::{algo_key, run_name, Arm};
use crate::r2m::Method;
use crate::reward::train::RmTrain;
use crate::rl::config::{Algo, RewardKind, RlConfig};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// Methods (docs/method.md: vanilla, pretrained-rm, iterative-head, r2m-no-train, r2m-noise,
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

/// The proxy reward model and its gold-labelled pairs (docs/testbed.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Use this RM (a folder or alias) instead of making one; with `test_pairs`, this runs the grid
    /// on user data (then `run.data.prompts` is the user's prompt file).
    pub model: Option<String>,
    /// Held-out preference pairs for RM accuracy (default: the testbed's, made here).
    pub test_pairs: Option<PathBuf>,
    /// A folder (another grid's archive) whose `shared/` pairs this grid takes where it has none
    /// yet, instead of making them: the proxy is then trained on the same pairs. A pairs file
    /// made with other settings than this grid's is an error, never silently reused.
    pub pairs_from: Option<PathBuf>,
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
    /// A Jinja chat template (a file) that formats the pairs for a backbone without one of its own
    /// (a base model such as gemma3-270m); the trained proxy keeps it, so RL scores in the same
    /// format. Absent: the backbone's own template, or plain text for an encoder.
    pub chat_template: Option<PathBuf>,
    pub train: RmTrain,
}

/// The pretrained-rm baseline: the proxy trained further with BT on gold-labelled pairs of the RL
/// prompts before RL (docs/method.md).
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
            pairs_from: None,
            backbone: "all-minilm-l6-v2".into(),
            train_prompts: 512,
            test_prompts: 128,
            flip: 0.25,
            temperature: 1.0,
            max_new_tokens: 64,
            batch: 32,
            seed: 0,
            max_length: 256,
            chat_template: None,
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

/// One run of the grid: an arm (a method, or a variant of `variants`) under an algorithm and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub arm: Arm,
    pub algo: Algo,
    pub seed: u64,
}

impl RunSpec {
    /// The method it runs (a variant's own method).
    pub fn method(&self) -> Method {
        self.arm.method()
    }

    /// `{method or variant}-{algo}-s{seed}` (what the aggregation parses).
    pub fn name(&self) -> String {
        run_name(&self.arm, self.algo, self.seed)
    }
}

impl ExperimentConfig {
    /// CPU threads of each run side by side: cores / `jobs`, at least 1.
    pub fn threads_per_job(&self) -> usize {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cores / self.jobs.max(1)).max(1)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.methods.is_empty() || !self.variants.is_empty() || !self.baseline_algos.is_empty(),
            "methods: empty (and no variants or baseline_algos)"
        );
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
            if let Some(from) = &self.proxy.pairs_from {
                ensure!(from.join("shared").is_dir(), "proxy.pairs_from = {:?}: there is no shared/ folder of pairs there", from);
            }
            ensure!(self.proxy.test_prompts >= 1, "proxy.test_prompts must be >= 1");
            ensure!((0.0..=0.5).contains(&self.proxy.flip), "proxy.flip = {} must be in [0, 0.5]", self.proxy.flip);
            if let Some(t) = &self.proxy.chat_template {
                ensure!(t.is_file(), "proxy.chat_template = {:?}: no such file", t);
            }
        }
        if self.runs_method(Method::PretrainedRm) {
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
        let runs = self.runs();
        ensure!(!runs.is_empty(), "methods: empty, and every algorithm of baseline_algos is in algos: the grid has no runs");
        for spec in runs {
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
                    v.push(RunSpec { arm: Arm::Method(method), algo, seed });
                }
                for x in self.variants.iter().filter(|x| x.algos.as_ref().is_none_or(|a| a.contains(&algo))) {
                    v.push(RunSpec { arm: Arm::variant(x.name.clone(), x.method), algo, seed });
                }
            }
            for &algo in &self.baseline_algos {
                if !self.algos.contains(&algo) {
                    v.push(RunSpec { arm: Arm::Method(Method::Vanilla), algo, seed });
                }
            }
        }
        v
    }

    /// Whether some run of the grid runs `m` (as itself or as a variant's method).
    pub fn runs_method(&self, m: Method) -> bool {
        self.methods.contains(&m) || self.variants.iter().any(|v| v.method == m)
    }

    /// `[run]` with `algo`'s settings of `algo_set`.
    fn algo_run(&self, algo: Algo) -> Result<RlConfig> {
        apply_sets(&self.run, self.algo_set.get(&algo).map_or(&[][..], Vec::as_slice), &format!("algo_set.{}", algo_key(algo)))
    }

    /// The `r2m rl` config of one run.
    pub fn run_config(&self, spec: &RunSpec, shared: &Shared) -> Result<RlConfig> {
        let base = self.algo_run(spec.algo)?;
        let mut c = match &spec.arm {
            Arm::Variant { name, .. } => {
                let v = self.variants.iter().find(|v| &v.name == name).with_context(|| format!("variants: no variant {name:?}"))?;
                let mut c = apply_sets(&base, &v.set, &format!("variants.{}.set", v.name))?;
                c.label = Some(name.clone());
                c
            }
            Arm::Method(_) => base,
        };
        c.seed = spec.seed;
        c.out = self.out.join(spec.name());
        c.device = self.device.clone();
        c.rl.algo = spec.algo;
        c.reward.model = shared.proxy_rm.clone();
        let mut r = c.r2m.clone().unwrap_or_default();
        r.method = spec.method();
        r.pretrained_rm = if spec.method() == Method::PretrainedRm { shared.pretrained_rm.clone() } else { None };
        c.r2m = Some(r);
        Ok(c)
    }
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
    pub fingerprints: BTreeMap<String, serde_json::Value>,
}

impl Shared {
    /// Made-up paths, for checking a grid config before anything is made.
    pub fn placeholder() -> Shared {
        Shared {
            proxy_rm: "proxy".into(),
            pretrained_rm: Some("pretrained".into()),
            test_pairs: None,
            accuracy_before: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }
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
        for (n, spec) in names.iter().zip(cfg.runs()) {
            assert_eq!(super::super::arm::parse_run_name(n), Some((spec.arm.name().as_str(), spec.algo, spec.seed)));
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
        let spec = RunSpec { arm: Method::PretrainedRm.into(), algo: Algo::Grpo, seed: 7 };
        let c = cfg.run_config(&spec, &shared).unwrap();
        assert_eq!((c.seed, c.rl.algo, c.out.clone()), (7, Algo::Grpo, PathBuf::from("g/pretrained-rm-grpo-s7")));
        assert_eq!(c.r2m.as_ref().unwrap().pretrained_rm.as_deref(), Some("q"));
        assert_eq!(c.reward.model, "p");
        let v = cfg.run_config(&RunSpec { arm: Method::Vanilla.into(), algo: Algo::Grpo, seed: 7 }, &shared).unwrap();
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
        assert!(rloo.runs().iter().all(|r| r.arm.variant_name() != Some("r2m-batch-std")));
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
    fn baseline_algos_alone_make_a_grid() {
        let text = r#"
            methods = []
            algos = ["grpo"]
            baseline_algos = ["remax", "reinforce_pp"]
            seeds = [0, 1]
        "#;
        let cfg: ExperimentConfig = crate::config::load_str(text, "x.toml", &[]).unwrap();
        cfg.validate().unwrap();
        let names: Vec<String> = cfg.runs().iter().map(RunSpec::name).collect();
        assert_eq!(names, ["vanilla-remax-s0", "vanilla-reinforce_pp-s0", "vanilla-remax-s1", "vanilla-reinforce_pp-s1"]);
        // Nothing to run is still refused: no methods and no baselines, or baselines that are all in `algos`.
        let e =
            crate::config::load_str::<ExperimentConfig>(&text.replace("baseline_algos = [\"remax\", \"reinforce_pp\"]", ""), "x.toml", &[])
                .unwrap()
                .validate()
                .unwrap_err();
        assert!(e.to_string().contains("methods: empty"), "{e}");
        let e = crate::config::load_str::<ExperimentConfig>(text, "x.toml", &["baseline_algos=[\"grpo\"]".to_string()])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("no runs"), "{e}");
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
