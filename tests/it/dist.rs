//! Data parallel RL on Gloo (localhost): two ranks against one process on the whole batch, for
//! every estimator that reads batch-wide statistics and for R2M's online update, through
//! `r2m rl --nproc 2` (ranks are processes: generation draws from torch's process-wide RNG).
use crate::common::tmpdir;
use crate::rl::{records_without_times, tiny_cfg, tiny_world};
use r2m::r2m::{Method, R2mConfig};
use r2m::rl::budget::Count;
use r2m::rl::config::{Algo, RlConfig};
use r2m::train::Trainable;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// 3 groups of 4 (an odd number of groups: the ranks hold 2 and 1), sampled in calls of one
/// group, 3 steps, a checkpoint after each (where the ranks compare their weights' hashes),
/// evaluations at steps 0 and 2, minibatches of 6 rows in micro-batches of 3.
/// Evaluations of 6 prompts (calls of 4 and 2: the ranks sample one each), pi_init's and the
/// last of 10 (calls of 4, 4 and 2: the ranks sample 8 and 2). The policy and the reward model
/// compute in f64, so that one process and 2 ranks, which sum the same values in other orders,
/// agree to [`EXACT`].
fn cfg(dir: &Path, algo: Algo, r2m: bool, out: &str) -> RlConfig {
    let mut c = tiny_cfg(dir, algo, out);
    c.policy.dtype = "f64".into();
    c.reward.dtype = "f64".into();
    c.rl.steps = 3;
    c.rl.prompts_per_step = 3;
    c.rl.minibatch = 6;
    c.rl.grad_accum = Count::Fixed(2);
    c.rl.generation_batch = Count::Fixed(4);
    c.rl.eval_every = 2;
    c.rl.eval_prompts = 6;
    c.rl.final_eval_prompts = Some(10);
    c.rl.save_every = 1;
    c.threads = 1;
    if r2m {
        c.r2m = Some(R2mConfig { method: Method::R2m, d: 16, lr: 1e-3, ..Default::default() });
        c.policy.trainable = Trainable::Top { layers: 1, head: true };
    }
    c
}

type Weights = BTreeMap<String, Tensor>;

/// How far (relative, plus absolute) an f64 run on 2 ranks may be from one process: the
/// summation order of the gradients and of the batch-wide sums is all that differs.
const EXACT: f64 = 1e-10;

/// Runs `r2m rl` on `c` (written next to its out folder) with `extra` flags; panics with its
/// stderr unless it succeeds.
fn rl_cli(c: &RlConfig, extra: &[&str]) {
    let (ok, err) = rl_cli_status(c, extra);
    assert!(ok, "r2m rl {extra:?} failed:\n{err}");
}

/// As [`rl_cli`]; returns whether it succeeded and its stderr.
fn rl_cli_status(c: &RlConfig, extra: &[&str]) -> (bool, String) {
    let path = c.out.with_extension("toml");
    r2m::config::save(c, &path).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["rl", "--config", path.to_str().unwrap(), "--quiet", "--dist-timeout", "120"])
        .args(extra)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Every numeric value of `a` within `tol` (relative, plus absolute) of `b`'s, the same keys.
fn close_rows(what: &str, a: &[serde_json::Map<String, Value>], b: &[serde_json::Map<String, Value>], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: {} rows vs {}", a.len(), b.len());
    let mut bad = vec![];
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{what}: keys differ at step {}", x["step"]);
        for (k, v) in x {
            let same = match (v.as_f64(), y[k].as_f64()) {
                (Some(p), Some(q)) if p.is_nan() => q.is_nan(),
                (Some(p), Some(q)) => (p - q).abs() <= tol * (1.0 + p.abs()),
                _ => v == &y[k],
            };
            if !same {
                bad.push(format!("step {}: {k} one process {v}, two ranks {}", x["step"], y[k]));
            }
        }
    }
    assert!(bad.is_empty(), "{what}:\n{}", bad.join("\n"));
}

fn weights(path: &Path) -> Weights {
    r2m::model::load::safetensors::read_file(path).unwrap().into_iter().collect()
}

/// The run `c` on one process and on 2 ranks (`--nproc 2`): the ranks end bitwise in step (the
/// run checks it at every checkpoint), and the metrics of every step, the eval rows and the
/// weights after the last step equal one process's within [`EXACT`].
fn check(dir: &Path, algo: Algo, r2m: bool, tweak: fn(&mut RlConfig)) {
    let name = format!("{algo:?}-{r2m}");
    let mut one = cfg(dir, algo, r2m, &format!("{name}-one"));
    tweak(&mut one);
    rl_cli(&one, &[]);
    let mut two = cfg(dir, algo, r2m, &format!("{name}-two"));
    tweak(&mut two);
    rl_cli(&two, &["--nproc", "2"]);
    assert!(two.out.join("logs/rank1.log").exists());
    let m1 = records_without_times(&one.out.join("metrics.jsonl"));
    let mut m2 = records_without_times(&two.out.join("metrics.jsonl"));
    for r in &mut m2 {
        // The collectives' traffic, logged by data parallel runs only.
        let bytes = r.remove("dist/bytes").and_then(|b| b.as_f64()).unwrap_or(0.0);
        assert!(bytes > 0.0, "{name}: step {}: dist/bytes {bytes}", r["step"]);
    }
    close_rows(&format!("{name} metrics"), &m1, &m2, EXACT);
    let e1 = r2m::metrics::read_jsonl(&one.out.join("eval.jsonl")).unwrap();
    let e2 = r2m::metrics::read_jsonl(&two.out.join("eval.jsonl")).unwrap();
    close_rows(&format!("{name} eval rows"), &e1, &e2, EXACT);
    let (w1, w2) = (weights(&one.out.join("checkpoint/policy.safetensors")), weights(&two.out.join("checkpoint/policy.safetensors")));
    for (n, t) in &w1 {
        assert_eq!(t.kind(), tch::Kind::Double, "{name}: {n}: the checkpoint keeps the f64 weights");
        let diff = (t - &w2[n]).abs().max().double_value(&[]);
        assert!(diff <= EXACT, "{name}: {n}: one process and two ranks differ by {diff}");
    }
}

#[test]
fn rl_on_two_ranks_equals_one_process_grpo_with_r2m() {
    let d = tmpdir();
    tiny_world(d.path());
    check(d.path(), Algo::Grpo, true, |_| {});
}

#[test]
fn rl_on_two_ranks_equals_one_process_rloo_reinforce_pp_and_remax() {
    let d = tmpdir();
    tiny_world(d.path());
    // RLOO with its optional batch-wide normalisation of the advantages; REINFORCE++ whitens over
    // the batch's tokens; ReMax generates a greedy baseline per prompt.
    check(d.path(), Algo::Rloo, false, |c| c.rl.normalize_advantages = true);
    check(d.path(), Algo::ReinforcePp, false, |_| {});
    check(d.path(), Algo::Remax, false, |_| {});
}

/// R2M under GRPO stopped after 2 of 3 steps on 2 ranks (checkpoint at 2): resumed on 2 ranks it
/// ends bit-identical to the uninterrupted 2-rank run (metrics, eval rows, weights); resumed on
/// 1 process it ends within [`EXACT`] of it.
#[test]
fn rl_checkpointed_on_two_ranks_resumes_on_two_and_on_one() {
    let d = tmpdir();
    tiny_world(d.path());
    let full = cfg(d.path(), Algo::Grpo, true, "full");
    rl_cli(&full, &["--nproc", "2"]);
    let mut stop = cfg(d.path(), Algo::Grpo, true, "stopped");
    stop.rl.stop_after = Some(2);
    let (ok, err) = rl_cli_status(&stop, &["--nproc", "2"]);
    assert!(!ok && err.contains("rl.stop_after") && err.contains("rank"), "{err}");
    let on_one = d.path().join("on-one");
    crate::reward::copy_dir(&stop.out, &on_one);
    stop.rl.stop_after = None;
    rl_cli(&stop, &["--nproc", "2", "--resume"]);
    let want = records_without_times(&full.out.join("metrics.jsonl"));
    assert_eq!(records_without_times(&stop.out.join("metrics.jsonl")), want, "resumed on 2 ranks");
    let without_traffic = |rows: Vec<serde_json::Map<String, Value>>| -> Vec<_> {
        rows.into_iter()
            .map(|mut r| {
                r.remove("dist/bytes");
                r
            })
            .collect()
    };
    let want = without_traffic(want);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&stop.out.join("eval.jsonl")), read(&full.out.join("eval.jsonl")), "resumed on 2 ranks: eval rows");
    let (w, wf) = (weights(&stop.out.join("checkpoint/policy.safetensors")), weights(&full.out.join("checkpoint/policy.safetensors")));
    assert!(wf.iter().all(|(n, t)| t.equal(&w[n])), "resumed on 2 ranks: bitwise the same policy");
    let mut one = stop.clone();
    one.out = on_one;
    rl_cli(&one, &["--resume"]);
    close_rows("resumed on 1", &want, &without_traffic(records_without_times(&one.out.join("metrics.jsonl"))), EXACT);
}

/// ZeRO-1 (`--zero1`) on 2 ranks against the replicated optimiser on 2 ranks, GRPO with R2M: the
/// same metrics, eval rows, weights and (gathered) moments within [`EXACT`] (the summation order
/// of the gradient norm differs); a run stopped under ZeRO-1 resumes on one process, without it,
/// to the same end.
#[test]
fn rl_with_zero1_equals_replicated_adamw_and_resumes_on_one_process() {
    let d = tmpdir();
    tiny_world(d.path());
    let two = cfg(d.path(), Algo::Grpo, true, "two");
    rl_cli(&two, &["--nproc", "2"]);
    let zero = cfg(d.path(), Algo::Grpo, true, "zero");
    rl_cli(&zero, &["--nproc", "2", "--zero1"]);
    let rows = |c: &RlConfig| -> Vec<serde_json::Map<String, Value>> {
        records_without_times(&c.out.join("metrics.jsonl"))
            .into_iter()
            .map(|mut r| {
                r.remove("dist/bytes");
                r
            })
            .collect()
    };
    close_rows("ZeRO-1 metrics", &rows(&two), &rows(&zero), EXACT);
    let e = |c: &RlConfig| r2m::metrics::read_jsonl(&c.out.join("eval.jsonl")).unwrap();
    close_rows("ZeRO-1 eval rows", &e(&two), &e(&zero), EXACT);
    for file in ["policy.safetensors", "optimizer.safetensors"] {
        let (a, b) = (weights(&two.out.join("checkpoint").join(file)), weights(&zero.out.join("checkpoint").join(file)));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{file}");
        for (n, t) in &a {
            let diff = (t.to_kind(tch::Kind::Double) - b[n].to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
            assert!(diff <= EXACT, "{file}: {n}: replicated and ZeRO-1 differ by {diff}");
        }
    }
    let mut stop = cfg(d.path(), Algo::Grpo, true, "stopped");
    stop.rl.stop_after = Some(2);
    let (ok, err) = rl_cli_status(&stop, &["--nproc", "2", "--zero1"]);
    assert!(!ok && err.contains("rl.stop_after"), "{err}");
    stop.rl.stop_after = None;
    rl_cli(&stop, &["--resume"]);
    close_rows("stopped under ZeRO-1, resumed on one process", &rows(&two), &rows(&stop), EXACT);
}

/// The reward model on a rank of its own (`--rm-ranks 1`, the paper's deployment): one policy
/// process and the reward-model rank give exactly the run of one process (GRPO with R2M: H_last
/// and the frozen scores come back from the reward-model rank, R2M runs beside the policy); 2
/// policy ranks and the reward-model rank match it within float summation order (RLOO, the frozen
/// RM as reward). Each step logs the bytes that crossed: texts out, D_rm + 1 floats per row back.
/// The link carries f32, so these runs are f32, and f64 with `--rm-ranks` is refused.
#[test]
fn rl_with_the_reward_model_on_its_own_rank_equals_one_process() {
    let d = tmpdir();
    tiny_world(d.path());
    let cfg = |dir: &Path, algo: Algo, r2m: bool, out: &str| {
        let mut c = cfg(dir, algo, r2m, out);
        c.policy.dtype = "auto".into();
        c.reward.dtype = "auto".into();
        c
    };
    let strip = |c: &RlConfig| -> (Vec<serde_json::Map<String, Value>>, Vec<(f64, f64)>) {
        let mut bytes = vec![];
        let rows = records_without_times(&c.out.join("metrics.jsonl"))
            .into_iter()
            .map(|mut r| {
                r.remove("dist/bytes");
                let to = r.remove("dist/bytes_to_rm").and_then(|v| v.as_f64());
                let from = r.remove("dist/bytes_from_rm").and_then(|v| v.as_f64());
                if let (Some(a), Some(b)) = (to, from) {
                    bytes.push((a, b));
                }
                r
            })
            .collect();
        (rows, bytes)
    };
    let one = cfg(d.path(), Algo::Grpo, true, "one");
    rl_cli(&one, &[]);
    let linked = cfg(d.path(), Algo::Grpo, true, "linked");
    rl_cli(&linked, &["--nproc", "2", "--rm-ranks", "1"]);
    let (want, none) = strip(&one);
    assert!(none.is_empty());
    let (got, bytes) = strip(&linked);
    assert_eq!(got, want, "one policy process with the reward model on its own rank: the metrics of one process");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(&linked.out.join("eval.jsonl")), read(&one.out.join("eval.jsonl")), "and its eval rows");
    let d_rm = 32.0;
    assert_eq!(bytes.len(), 3, "every step logs the bytes that crossed");
    for (to, from) in &bytes {
        assert!(*to > 0.0, "texts sent: {to}");
        // 12 rows of H_last and score at annotation, more in the steps that evaluate.
        assert!(*from >= 12.0 * (d_rm + 1.0) * 4.0 && from % ((d_rm + 1.0) * 4.0) == 0.0, "received {from}");
    }
    let log = read(&linked.out.join("logs/rank1.log"));
    assert!(log.contains("reward-model rank:") && log.contains("requests"), "{log}");

    let mut one = cfg(d.path(), Algo::Rloo, false, "rloo-one");
    one.rl.normalize_advantages = true;
    rl_cli(&one, &[]);
    let mut three = cfg(d.path(), Algo::Rloo, false, "rloo-three");
    three.rl.normalize_advantages = true;
    rl_cli(&three, &["--nproc", "3", "--rm-ranks", "1"]);
    close_rows("2 policy ranks and the reward-model rank", &strip(&one).0, &strip(&three).0, 2e-4);

    let (ok, err) = rl_cli_status(&cfg(d.path(), Algo::Grpo, false, "alone"), &["--rm-ranks", "1"]);
    assert!(!ok && err.contains("--rm-ranks"), "{err}");
    let mut f64_run = cfg(d.path(), Algo::Grpo, false, "f64-linked");
    f64_run.reward.dtype = "f64".into();
    let (ok, err) = rl_cli_status(&f64_run, &["--nproc", "2", "--rm-ranks", "1"]);
    assert!(!ok && err.contains("--rm-ranks") && err.contains("reward.dtype"), "{err}");
}

/// A rank killed in the middle of a run (SIGKILL, after the first step's metrics are written) ends
/// the job: the launcher names that rank, and nothing hangs.
#[test]
fn a_rank_killed_mid_run_ends_the_job_naming_it() {
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = cfg(d.path(), Algo::Grpo, false, "killed");
    c.rl.steps = 200;
    c.rl.eval_every = 0;
    c.rl.final_eval_prompts = None;
    let path = c.out.with_extension("toml");
    r2m::config::save(&c, &path).unwrap();
    let t0 = std::time::Instant::now();
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["rl", "--config", path.to_str().unwrap(), "--quiet", "--dist-timeout", "60", "--nproc", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = c.out.join("metrics.jsonl");
    while std::fs::read_to_string(&metrics).map_or(true, |m| m.lines().count() < 2) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(120), "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The launcher's child whose environment says RANK=1.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", job.id())).unwrap();
    let pids: Vec<i32> = children.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{children}");
    let rank1 = pids
        .into_iter()
        .find(|p| std::fs::read(format!("/proc/{p}/environ")).unwrap().split(|&b| b == 0).any(|kv| kv == b"RANK=1"))
        .expect("a child with RANK=1");
    let killed_at = std::time::Instant::now();
    // SAFETY: kill(2) on a process this test started (through the launcher).
    unsafe { libc::kill(rank1, libc::SIGKILL) };
    let status = job.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(killed_at.elapsed() < std::time::Duration::from_secs(30), "took {:?}", killed_at.elapsed());
    assert!(err.contains("rank 1 of 2 failed (killed by signal 9)"), "{err}");
    let rows = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert!(rows < 200, "the run went on after a rank died");
}
