//! What r2m promises when things go wrong, tried out of process on tiny models: one process per
//! run folder, a full disk in the middle of a checkpoint or a metrics write, and kill -9 at random
//! moments; each time the run resumes to the metrics of an uninterrupted run.
use crate::common::tmpdir;
use crate::rl::{records_without_times, tiny_cfg, tiny_world};
use r2m::rl::config::{Algo, RlConfig};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 5 steps of GRPO, a checkpoint after every step, evaluations at steps 0, 2 and 4.
fn cfg(dir: &Path, out: &str) -> RlConfig {
    let mut c = tiny_cfg(dir, Algo::Grpo, out);
    c.rl.steps = 5;
    c.rl.save_every = 1;
    c.rl.eval_every = 2;
    c.threads = 1;
    c
}

fn command(c: &RlConfig, extra: &[&str]) -> Command {
    let path = c.out.with_extension("toml");
    r2m::config::save(c, &path).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_r2m"));
    cmd.args(["rl", "--config", path.to_str().unwrap(), "--quiet"]).args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Runs `r2m rl` on `c`; returns whether it succeeded and its stderr.
fn rl(c: &RlConfig, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let o = command(c, extra).envs(env.iter().copied()).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The run's metrics (timings aside) and eval rows.
fn outcome(c: &RlConfig) -> (Vec<serde_json::Map<String, serde_json::Value>>, String) {
    (records_without_times(&c.out.join("metrics.jsonl")), std::fs::read_to_string(c.out.join("eval.jsonl")).unwrap())
}

/// A second process on a running run's folder is refused at once, naming the first (its pid);
/// once the first is killed (-9) its lock is taken over.
#[test]
fn a_second_process_on_a_run_folder_is_refused_naming_the_first() {
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = cfg(d.path(), "locked");
    c.rl.steps = 500;
    let mut first = command(&c, &[]).spawn().unwrap();
    let t0 = Instant::now();
    while !c.out.join("metrics.jsonl").exists() || std::fs::read_to_string(c.out.join("metrics.jsonl")).unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the first run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t1 = Instant::now();
    let (ok, err) = rl(&c, &["--resume"], &[]);
    assert!(!ok && err.contains("is in use by") && err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(t1.elapsed() < Duration::from_secs(30), "refused at once, not after {:?}", t1.elapsed());
    first.kill().unwrap();
    first.wait().unwrap();
    // One more step from wherever it stopped, then stop.
    let saved = std::fs::read_to_string(c.out.join("checkpoint/state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["step"].as_i64())
        .unwrap_or(0);
    c.rl.stop_after = Some(saved + 1);
    let (ok, err) = rl(&c, &["--resume"], &[]);
    assert!(!ok && err.contains("rl.stop_after") && !err.contains("in use"), "the dead holder's lock is taken over: {err}");
}

/// A write that fails as on a full disk (ENOSPC, injected through R2M_FAIL_WRITE) in the middle of
/// the third checkpoint's policy file, then of a metrics line: the run ends with an error naming
/// the file, the previous checkpoint stays whole, and the resumed run ends as an uninterrupted one.
#[test]
fn a_full_disk_ends_the_run_naming_the_file_and_it_resumes_from_the_last_checkpoint() {
    let d = tmpdir();
    tiny_world(d.path());
    let whole = cfg(d.path(), "whole");
    let (ok, err) = rl(&whole, &[], &[]);
    assert!(ok, "{err}");
    let want = outcome(&whole);

    for (name, needle, n, saved) in [("ck", "policy.safetensors", "3", 2), ("metrics", "metrics.jsonl", "4", 2)] {
        let c = cfg(d.path(), name);
        let spec = format!("{needle}:{n}");
        let (ok, err) = rl(&c, &[], &[(r2m::checkpoint::FAIL_WRITE, spec.as_str())]);
        assert!(!ok && err.contains(needle) && err.contains("No space left on device"), "{name}: {err}");
        let st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.out.join("checkpoint/state.json")).unwrap()).unwrap();
        assert_eq!(st["step"], saved, "{name}: the last whole checkpoint");
        r2m::model::load::safetensors::read_file(&c.out.join("checkpoint/policy.safetensors")).unwrap();
        let (ok, err) = rl(&c, &["--resume"], &[]);
        assert!(ok, "{name}: {err}");
        assert_eq!(outcome(&c), want, "{name}: resumed after the failed write");
    }
}

/// kill -9 at random moments (start-up, generation, a checkpoint's write, an evaluation), each
/// time resumed with --resume until the run finishes: the metrics and eval rows equal an
/// uninterrupted run's, and a run killed every ~1.5 s still advances (resume redoes no saved work,
/// pi_init's evaluation included).
#[test]
fn kill_9_at_random_moments_and_resume_ends_as_an_uninterrupted_run() {
    let d = tmpdir();
    tiny_world(d.path());
    let whole = cfg(d.path(), "whole");
    let t0 = Instant::now();
    let (ok, err) = rl(&whole, &[], &[]);
    assert!(ok, "{err}");
    let full = t0.elapsed();
    let c = cfg(d.path(), "killed");
    // A fixed sequence of delays between 0.2 and 1.5 times a third of the uninterrupted run's
    // length, stretched by half each time an attempt saved nothing new (a loaded machine starts
    // slower than the uninterrupted run did).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    let mut stretch = 1.0;
    let saved = || -> i64 {
        std::fs::read_to_string(c.out.join("checkpoint/state.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["step"].as_i64())
            .unwrap_or(-1)
    };
    for attempt in 0..60 {
        let before = saved();
        let mut child = command(&c, &["--resume"]).stderr(Stdio::null()).spawn().unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let frac = 0.2 + 1.3 * (x % 1000) as f64 / 1000.0;
        let deadline = Instant::now() + full.mul_f64(stretch * frac / 3.0);
        let mut done = None;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                done = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match done {
            Some(s) if s.success() => {
                assert!(kills > 0, "the run was never killed: lengthen the test run");
                assert_eq!(outcome(&c), outcome(&whole), "after {kills} kills");
                return;
            }
            Some(s) => panic!("attempt {attempt}: the resumed run failed on its own ({s})"),
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                stretch = if saved() > before { 1.0 } else { stretch * 1.5 };
            }
        }
    }
    panic!("the run did not finish in 60 attempts ({kills} kills): resume does not advance");
}
