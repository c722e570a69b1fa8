#![allow(dead_code)]
use std::path::PathBuf;
use std::process::Command;

/// The bootstrap's Python (repo `.venv`, else `$R2M_HOME/venv`). Tests need it: a missing venv is a
/// failure that says to run scripts/bootstrap.sh, not a skip.
pub fn venv_python() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if repo.exists() {
        return repo;
    }
    let p = r2m::paths::r2m_home().join("venv/bin/python");
    assert!(p.exists(), "no Python venv at {} nor {}: run scripts/bootstrap.sh", repo.display(), p.display());
    p
}

/// Runs a Python script (offline) with `args`, returning its stdout; panics with its stderr on failure.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("running python");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// torch's random generator is process-global (`tch::manual_seed`), and cargo runs tests in
/// parallel threads of one process: every test that seeds it and compares seeded results holds
/// this lock, so that no other test reseeds it in between. (A real run is one per process.)
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
