//! Runs side by side: the grid's pending runs as child processes of the r2m binary (`r2m rl`), at
//! most `jobs` at a time ([`run_side_by_side`]).
use super::config::ExperimentConfig;
use super::config::Shared;
use super::finish::{finish_run, Pending};
use super::progress::say;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;
use tch::Device;

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
pub(super) fn run_side_by_side(
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
            p.start()?;
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
