//! The shipped example configs parse, validate, and resolve to the documented values (a default
//! changing unnoticed fails here).
use r2m::r2m::Method;
use r2m::reward::train::TrainRmConfig;
use r2m::rl::config::{Algo, RlConfig};
use std::path::Path;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn example_rl_config_resolves() {
    let c: RlConfig = r2m::config::load(Some(&repo("configs/rl.toml")), &["rl.algo=\"grpo\"".into()]).unwrap();
    c.validate().unwrap();
    assert_eq!(c.rl.algo, Algo::Grpo);
    assert_eq!((c.rl.steps, c.rl.prompts_per_step, c.rl.group_size, c.rl.epochs), (20, 8, 4, 2));
    assert_eq!(c.rl.beta(), 0.04); // GRPO's default (docs/rl-conventions.md)
    let r = c.r2m.as_ref().unwrap();
    assert_eq!((r.method, r.d, r.heads, r.omega, r.alpha), (Method::R2m, 2048, 1, 0.6, 0.3));
    // The resolved config round-trips through TOML (it is saved with every run).
    let d = tempfile::tempdir().unwrap();
    r2m::config::save(&c, &d.path().join("c.toml")).unwrap();
    let back: RlConfig = r2m::config::load(Some(&d.path().join("c.toml")), &[]).unwrap();
    assert_eq!(back, c);
    // Typos and cross-field errors name the field.
    let e = r2m::config::load::<RlConfig>(Some(&repo("configs/rl.toml")), &["rl.grop_size=2".into()]).unwrap_err();
    assert!(e.to_string().contains("rl.grop_size"), "{e}");
    let c: RlConfig = r2m::config::load(Some(&repo("configs/rl.toml")), &["rl.group_size=1".into()]).unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("rl.group_size"));
    let c: RlConfig = r2m::config::load(Some(&repo("configs/rl.toml")), &["rl.minibatch=7".into()]).unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("rl.minibatch"));
    // A setting only some algorithms read is refused under the others, not ignored.
    for (algo, set) in [
        ("grpo", "rl.normalize_advantages=true"),
        ("rloo", "rl.scale_rewards=\"batch\""),
        ("rloo", "rl.eps_high=0.28"),
        ("grpo", "rl.reward_clip=5.0"),
    ] {
        let c: RlConfig = r2m::config::load(Some(&repo("configs/rl.toml")), &[format!("rl.algo=\"{algo}\""), set.into()]).unwrap();
        let key = set.split('=').next().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains(key), "{algo} {set}");
    }
    let c: RlConfig = r2m::config::load(Some(&repo("configs/rl.toml")), &["rl.algo=\"remax\"".into(), "rl.gamma=0.9".into()]).unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("rl.gamma"));
    let c: RlConfig =
        r2m::config::load(Some(&repo("configs/rl.toml")), &["rl.algo=\"reinforce_pp\"".into(), "rl.gamma=0.9".into()]).unwrap();
    c.validate().unwrap();
}

#[test]
fn example_train_rm_config_resolves() {
    let c: TrainRmConfig = r2m::config::load(Some(&repo("configs/train-rm.toml")), &["train.lr=1e-4".into()]).unwrap();
    c.validate().unwrap();
    assert_eq!(c.train.lr, 1e-4);
    assert_eq!(c.train.trainable_layers, Some(4));
    assert_eq!(c.data.max_length, 512);
    let defaults = TrainRmConfig::default();
    assert_eq!((defaults.train.lr, defaults.train.micro_batch, defaults.data.eval_fraction), (1e-5, 8, 0.1));
}

/// The experiment presets (`r2m demo`, `--smoke`, `--full`) parse, validate and resolve to the
/// grids their comments and the README describe.
#[test]
fn experiment_presets_resolve() {
    use r2m::experiment::ExperimentConfig;
    let load = |p: &str| -> ExperimentConfig {
        let c: ExperimentConfig = r2m::config::load(Some(&repo(p)), &[]).unwrap();
        c.validate().unwrap();
        c
    };
    let demo = load("configs/demo.toml");
    let names: Vec<String> = demo.runs().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["vanilla-grpo-s0", "r2m-grpo-s0"]);
    assert_eq!(demo.proxy.backbone, "all-minilm-l6-v2");
    assert_eq!(demo.proxy.train.trainable_layers, None);
    assert_eq!((demo.run.rl.steps, demo.run.rl.prompts_per_step, demo.run.rl.group_size), (24, 4, 4));
    // The demo is the testbed's grid at a shorter budget: the same proxy, trained on the same
    // archived pairs, GRPO without a KL term, the policy's lr doubled.
    let tuned = load("configs/overopt-t2-lr3e-4.toml");
    assert_eq!(demo.proxy.pairs_from.as_deref(), tuned.archive.as_deref());
    let strip = |mut p: r2m::experiment::grid::ProxyConfig| {
        p.pairs_from = None;
        p
    };
    assert_eq!(strip(demo.proxy.clone()), strip(tuned.proxy.clone()));
    assert_eq!(demo.algo_set.get(&Algo::Grpo), tuned.algo_set.get(&Algo::Grpo));
    assert_eq!((demo.run.policy.lr, tuned.run.policy.lr), (6e-4, 3e-4));
    // The overoptimization check: vanilla and R2M GRPO on the demo's proxy settings, 3 seeds, T = 80,
    // and R2M at a 10x smaller lr of its modules (a variant).
    let over = load("configs/overopt.toml");
    let names: Vec<String> = over.runs().iter().map(|r| r.name()).collect();
    let mut want = vec![];
    for s in 0..3 {
        want.extend([format!("vanilla-grpo-s{s}"), format!("r2m-grpo-s{s}"), format!("r2m-lr1e-5-grpo-s{s}")]);
    }
    assert_eq!(names, want);
    assert_eq!(over.run.r2m.as_ref().unwrap().lr, 1e-4);
    assert_eq!(over.variants[0].set, ["r2m.lr=1e-5"]);
    assert_eq!((over.proxy.clone(), over.run.rl.steps, over.run.rl.max_new_tokens), (strip(demo.proxy.clone()), 80, 64));
    // The Table-1 grid at the CPU budget: 8 methods x {GRPO, RLOO} + vanilla {REINFORCE++, ReMax},
    // 3 seeds; RLOO at its own beta (the others at their algorithm's default).
    let t1 = load("configs/overopt-t1.toml");
    assert_eq!(t1.runs().len(), (8 * 2 + 2) * 3);
    // Kept in the repository, so that the grid goes on in several sittings and on fresh machines.
    assert_eq!(t1.archive.as_deref(), Some(Path::new("archive/overopt-t1")));
    let shared = r2m::experiment::grid::Shared {
        proxy_rm: "p".into(),
        pretrained_rm: Some("q".into()),
        test_pairs: None,
        accuracy_before: Default::default(),
        fingerprints: Default::default(),
    };
    for spec in t1.runs() {
        let c = t1.run_config(&spec, &shared).unwrap();
        let want = if spec.algo == r2m::rl::config::Algo::Rloo { Some(0.01) } else { None };
        assert_eq!(c.rl.beta, want, "{}", spec.name());
        assert_eq!((c.rl.steps, c.rl.eval_prompts, c.r2m.as_ref().unwrap().lr), (80, 128, 1e-5), "{}", spec.name());
    }
    // overopt-t2: overopt-t1 with GRPO at beta 0, its own folder and archive.
    let t2 = load("configs/overopt-t2.toml");
    assert_eq!(t2.runs().len(), (8 * 2 + 2) * 3);
    assert_eq!(t2.archive.as_deref(), Some(Path::new("archive/overopt-t2")));
    assert_eq!((t2.proxy.clone(), t2.pretrained.clone()), (t1.proxy.clone(), t1.pretrained.clone()));
    for spec in t2.runs() {
        let c = t2.run_config(&spec, &shared).unwrap();
        let want = match spec.algo {
            r2m::rl::config::Algo::Rloo => Some(0.01),
            r2m::rl::config::Algo::Grpo => Some(0.0),
            _ => None,
        };
        assert_eq!(c.rl.beta, want, "{}", spec.name());
        let c1 = t1.run_config(&spec, &shared).unwrap();
        assert_eq!((c.rl.steps, c.policy.lr, c.r2m.clone()), (c1.rl.steps, c1.policy.lr, c1.r2m.clone()), "{}", spec.name());
    }
    // Written as `extends = "overopt-t1.toml"`: the whole resolved config is t1's but for these.
    let mut want2 = t1.clone();
    want2.out = "runs/overopt-t2".into();
    want2.archive = Some("archive/overopt-t2".into());
    want2.algo_set.insert(r2m::rl::config::Algo::Grpo, vec!["rl.beta=0.0".into()]);
    assert_eq!(t2, want2);
    // overopt-t2-lr3e-4 (the default grid): the policy's lr 3e-4, all else as overopt-t2 (which it
    // extends) ...
    let t3 = load("configs/overopt-t2-lr3e-4.toml");
    let mut want3 = t2.clone();
    want3.out = "runs/overopt-t2-lr3e-4".into();
    want3.archive = Some("archive/overopt-t2-lr3e-4".into());
    want3.run.policy.lr = 3e-4;
    // ... plus its variants: r2m-sharp-attn (r2m with the attention's testbed switches), vanilla and
    // r2m under GRPO with the batch's std, and r2m-rank-frozen (GRPO, ranked by the frozen proxy).
    let names: Vec<&str> = t3.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["r2m-sharp-attn", "r2m-batch-std", "vanilla-batch-std", "r2m-rank-frozen"]);
    want3.variants = t3.variants.clone();
    assert_eq!(t3, want3);
    assert_eq!(t3.archive.as_deref(), Some(Path::new("archive/overopt-t2-lr3e-4")));
    assert_eq!(t3.runs().len(), (8 * 2 + 2) * 3 + 2 * 3 + 2 * 3 + 3);
    for spec in t3.runs() {
        let c = t3.run_config(&spec, &shared).unwrap();
        if let Some(v) = spec.arm.variant_name().filter(|v| v.ends_with("-batch-std")) {
            assert_eq!(spec.algo, r2m::rl::config::Algo::Grpo, "{v}: GRPO only");
            let plain = t3.run_config(&r2m::experiment::grid::RunSpec { arm: spec.method().into(), ..spec.clone() }, &shared).unwrap();
            assert_eq!(c.rl.scale_rewards, r2m::rl::advantages::ScaleRewards::Batch);
            assert_eq!(plain.rl.scale_rewards, r2m::rl::advantages::ScaleRewards::Group);
            let mut back = c.clone();
            (back.rl.scale_rewards, back.label, back.out) = (plain.rl.scale_rewards, None, plain.out.clone());
            assert_eq!(back, plain, "{}: only scale_rewards differs", spec.name());
            continue;
        }
        if spec.arm.variant_name() == Some("r2m-rank-frozen") {
            assert_eq!(spec.algo, r2m::rl::config::Algo::Grpo);
            let plain = t3.run_config(&r2m::experiment::grid::RunSpec { arm: spec.method().into(), ..spec.clone() }, &shared).unwrap();
            let (r, p) = (c.r2m.clone().unwrap(), plain.r2m.clone().unwrap());
            assert_eq!((r.rank_by, p.rank_by), (r2m::r2m::RankBy::Frozen, r2m::r2m::RankBy::Own));
            assert_eq!(r2m::r2m::R2mConfig { rank_by: p.rank_by, ..r }, p, "{}", spec.name());
            continue;
        }
        if let Some(v) = spec.arm.variant_name() {
            assert_eq!(v, "r2m-sharp-attn");
            let plain = r2m::experiment::grid::RunSpec { arm: spec.method().into(), ..spec.clone() };
            let (r, p) = (c.r2m.clone().unwrap(), t3.run_config(&plain, &shared).unwrap().r2m.unwrap());
            assert_eq!((r.query_norm, r.qk_init_std), (r2m::r2m::QueryNorm::UnitRms, Some(0.05)));
            assert_eq!(r2m::r2m::R2mConfig { query_norm: p.query_norm, qk_init_std: p.qk_init_std, ..r }, p, "{}", spec.name());
            assert_eq!(p.qk_init_std, None, "the grid's r2m stays as specified");
            continue;
        }
        let c2 = t2.run_config(&spec, &shared).unwrap();
        assert_eq!(c.policy.lr, 3e-4, "{}", spec.name());
        assert_eq!(c.rl, c2.rl, "{}", spec.name());
        assert_eq!(
            (c.r2m.clone(), c.reward.clone(), c.data.clone()),
            (c2.r2m.clone(), c2.reward.clone(), c2.data.clone()),
            "{}",
            spec.name()
        );
    }
    // The GPU budget: K = 8, T = 100, budgets from free memory.
    let gpu = load("configs/overopt-gpu.toml");
    assert_eq!(gpu.runs().len(), 6);
    assert_eq!((gpu.run.rl.steps, gpu.run.rl.group_size, gpu.run.rl.grad_accum), (100, 8, r2m::rl::budget::Count::Auto));
    let smoke = load("configs/demo-smoke.toml");
    assert_eq!(smoke.runs().len(), 4);
    let full = load("configs/experiment.toml");
    // 8 methods x {RLOO, GRPO} + vanilla {REINFORCE++, ReMax}, 3 seeds.
    assert_eq!(full.runs().len(), (8 * 2 + 2) * 3);
    assert_eq!((full.run.rl.steps, full.run.rl.group_size, full.run.rl.epochs), (100, 8, 2));
    assert_eq!(full.run.r2m.as_ref().unwrap().d, 2048);
    let e = r2m::config::load::<ExperimentConfig>(Some(&repo("configs/demo.toml")), &["run.rl.stepz=3".into()]).unwrap_err();
    assert!(e.to_string().contains("run.rl.stepz"), "{e}");
}
