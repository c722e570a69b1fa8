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
    assert_eq!(c.rl.beta(), 0.04); // GRPO's default (rl-conventions.md)
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
