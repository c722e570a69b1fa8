//! Starting the ranks of a job. Under torchrun, Slurm or Kubernetes the launcher sets RANK,
//! WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT and [`Env::from_env`] reads them. On one
//! machine `--nproc N` makes r2m its own launcher: [`supervise`] starts N copies of the same
//! command with that environment, a log per rank, and ends the job at the first rank that fails.
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A rank's place in the job, as torchrun describes it in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the store at MASTER_ADDR:MASTER_PORT
    /// (TORCHELASTIC_USE_AGENT_STORE=True): every rank joins it as a client.
    pub agent_store: bool,
}

impl Env {
    /// The job torchrun's variables describe, or `None` when WORLD_SIZE is unset (one process).
    /// A variable that is set but malformed, or missing while WORLD_SIZE is set, is an error
    /// naming it.
    pub fn from_env() -> Result<Option<Env>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Env::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        let Some(world) = var("WORLD_SIZE") else {
            if var("RANK").is_some() {
                bail!("RANK is set but WORLD_SIZE is not: set both (as torchrun does), or neither for one process");
            }
            return Ok(None);
        };
        let num = |k: &str, v: &str| -> Result<usize> {
            v.trim().parse::<usize>().with_context(|| format!("environment variable {k}={v:?} is not a non-negative integer"))
        };
        let world = num("WORLD_SIZE", &world)?;
        if world == 0 {
            bail!("environment variable WORLD_SIZE=0: a job has at least one rank");
        }
        let need = |k: &str| {
            var(k).with_context(|| {
                format!("WORLD_SIZE={world} is set but {k} is not (torchrun sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT with it)")
            })
        };
        let rank = num("RANK", &need("RANK")?)?;
        if rank >= world {
            bail!("environment variable RANK={rank} is out of range for WORLD_SIZE={world}");
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", &v)?,
            None if world == 1 => 0,
            None => need("LOCAL_RANK").map(|_| 0)?,
        };
        let master_addr = match var("MASTER_ADDR") {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            Some(_) => bail!("environment variable MASTER_ADDR is empty"),
            None if world == 1 => "127.0.0.1".to_owned(),
            None => need("MASTER_ADDR")?,
        };
        let master_port = match var("MASTER_PORT") {
            Some(v) => v.trim().parse::<u16>().with_context(|| format!("environment variable MASTER_PORT={v:?} is not a port number"))?,
            None if world == 1 => free_port()?,
            None => bail!("WORLD_SIZE={world} is set but MASTER_PORT is not"),
        };
        let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Some(Env { rank, world, local_rank, master_addr, master_port, agent_store }))
    }

    /// The address Gloo binds this rank to: loopback when the job meets on loopback (all ranks on
    /// this machine), else Gloo's choice (GLOO_SOCKET_IFNAME, or the machine's hostname).
    pub fn gloo_hostname(&self) -> Option<String> {
        if std::env::var_os("GLOO_SOCKET_IFNAME").is_some() {
            return None;
        }
        let a = self.master_addr.as_str();
        (a == "localhost" || a.starts_with("127.") || a == "::1").then(|| "127.0.0.1".to_owned())
    }

    /// The variables a child rank gets.
    fn vars(&self, local_world: usize) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", self.rank.to_string()),
            ("WORLD_SIZE", self.world.to_string()),
            ("LOCAL_RANK", self.local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", local_world.to_string()),
            ("GROUP_RANK", "0".to_owned()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", self.master_port.to_string()),
        ]
    }
}

/// A port on localhost nobody listens on now (as torchrun picks one for a standalone job).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// How [`supervise`] runs the ranks.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The program and arguments every rank runs (r2m itself, without `--nproc`).
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub nproc: usize,
    /// Where `rank<r>.log` goes for each rank.
    pub log_dir: PathBuf,
    /// How long the other ranks get to exit after SIGTERM once one rank has failed.
    pub grace: Duration,
    /// Also copy rank 0's output (stdout and stderr) to this process's own, as it comes.
    pub echo_rank0: bool,
}

/// The log of rank `r` in `log_dir`.
pub fn rank_log(log_dir: &Path, r: usize) -> PathBuf {
    log_dir.join(format!("rank{r}.log"))
}

/// Starts `launch.nproc` ranks on this machine and waits for them. Each child gets torchrun's
/// variables (MASTER_ADDR 127.0.0.1, a free MASTER_PORT), its output goes to `rank<r>.log`, and it
/// dies with this process (PR_SET_PDEATHSIG). The first rank that exits with an error or a signal
/// ends the job: the others get SIGTERM, then SIGKILL after the grace period, and the error names
/// that rank, its exit status and the tail of its log.
pub fn supervise(launch: &Launch) -> Result<()> {
    if launch.nproc == 0 {
        bail!("--nproc 0: a job has at least one rank");
    }
    std::fs::create_dir_all(&launch.log_dir).with_context(|| format!("creating {}", launch.log_dir.display()))?;
    let port = free_port()?;
    let mut children: Vec<Option<Child>> = Vec::with_capacity(launch.nproc);
    let mut pumps = Vec::new();
    for rank in 0..launch.nproc {
        let env =
            Env { rank, world: launch.nproc, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port, agent_store: false };
        let log_path = rank_log(&launch.log_dir, rank);
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .envs(env.vars(launch.nproc))
            .env(crate::lock::HELD_BY, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut children, launch.grace);
                return Err(e).with_context(|| format!("starting rank {rank}: {}", launch.program.display()));
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(log));
        let echo = launch.echo_rank0 && rank == 0;
        pumps.push(pump(child.stdout.take().expect("piped"), log.clone(), echo.then_some(Echo::Stdout)));
        pumps.push(pump(child.stderr.take().expect("piped"), log, echo.then_some(Echo::Stderr)));
        children.push(Some(child));
    }
    let mut failed: Option<(usize, ExitStatus)> = None;
    while failed.is_none() && children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait().with_context(|| format!("waiting for rank {rank}"))? {
                *slot = None;
                if !status.success() {
                    failed = Some((rank, status));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_all(&mut children, launch.grace);
    for p in pumps {
        let _ = p.join();
    }
    if let Some((rank, status)) = failed {
        let log = rank_log(&launch.log_dir, rank);
        bail!(
            "rank {rank} of {} failed ({}); the others were stopped. Last lines of {}:\n{}",
            launch.nproc,
            describe(status),
            log.display(),
            tail(&log, 20)
        );
    }
    Ok(())
}

/// SIGTERM to every rank still running, then SIGKILL to those left after `grace`.
fn stop_all(children: &mut [Option<Child>], grace: Duration) {
    for c in children.iter().flatten() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    let t0 = Instant::now();
    while children.iter().any(Option::is_some) {
        for slot in children.iter_mut() {
            if let Some(c) = slot {
                if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
                    *slot = None;
                }
            }
        }
        if t0.elapsed() >= grace {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Where rank 0's output is copied to.
#[derive(Clone, Copy)]
enum Echo {
    Stdout,
    Stderr,
}

/// Copies a child's stream into its log (and rank 0's to this process's own) line by line.
fn pump(
    stream: impl Read + Send + 'static,
    log: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
    echo: Option<Echo>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut line = Vec::new();
        while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&line);
                let _ = f.flush();
            }
            match echo {
                Some(Echo::Stdout) => {
                    let _ = std::io::stdout().write_all(&line);
                }
                Some(Echo::Stderr) => {
                    let _ = std::io::stderr().write_all(&line);
                }
                None => {}
            }
            line.clear();
        }
    })
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The last `n` lines of the file at `path` (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("  (cannot read it: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(kv: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn torchrun_variables_are_read_and_bad_ones_named() {
        assert_eq!(Env::from_vars(vars(&[])).unwrap(), None);
        let e = Env::from_vars(vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(e, Env { rank: 1, world: 4, local_rank: 1, master_addr: "node0".into(), master_port: 29500, agent_store: false });
        let agent = Env::from_vars(vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]));
        assert!(agent.unwrap().unwrap().agent_store);
        assert_eq!(e.gloo_hostname(), None);
        let err = |kv: &[(&str, &str)]| format!("{:#}", Env::from_vars(vars(kv)).unwrap_err());
        assert!(err(&[("RANK", "0")]).contains("WORLD_SIZE is not"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")])
            .contains("RANK=2 is out of range"));
        assert!(err(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_PORT", "1")]).contains("MASTER_ADDR is not"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "99999")])
            .contains("MASTER_PORT=\"99999\""));
        let single = Env::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap().unwrap();
        assert_eq!((single.world, single.master_addr.as_str(), single.gloo_hostname().as_deref()), (1, "127.0.0.1", Some("127.0.0.1")));
    }

    fn sh(script: &str, nproc: usize, dir: &Path, grace: Duration) -> Result<()> {
        supervise(&Launch {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            nproc,
            log_dir: dir.to_path_buf(),
            grace,
            echo_rank0: false,
        })
    }

    #[test]
    fn ranks_get_the_environment_and_a_log_each() {
        let dir = tempfile::tempdir().unwrap();
        sh(
            "echo rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK addr=$MASTER_ADDR port=${MASTER_PORT:+set}",
            3,
            dir.path(),
            Duration::from_secs(5),
        )
        .unwrap();
        for r in 0..3 {
            let log = std::fs::read_to_string(rank_log(dir.path(), r)).unwrap();
            assert_eq!(log.trim(), format!("rank={r} world=3 local={r} addr=127.0.0.1 port=set"));
        }
    }

    #[test]
    fn the_first_failing_rank_ends_the_others_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        // Rank 1 fails after printing; rank 0 would sleep for a minute and ignores nothing.
        let script = r#"if [ "$RANK" = 1 ]; then echo "loading the model"; echo "boom: bad weights" >&2; exit 3; fi; exec sleep 60"#;
        let msg = format!("{:#}", sh(script, 2, dir.path(), Duration::from_secs(2)).unwrap_err());
        assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
        assert!(msg.contains("rank 1 of 2 failed (exit code 3)"), "{msg}");
        assert!(msg.contains("boom: bad weights") && msg.contains("rank1.log"), "{msg}");
    }

    #[test]
    fn a_rank_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let script = r#"if [ "$RANK" = 0 ]; then sleep 0.3; exit 1; fi; trap '' TERM; while true; do sleep 0.1; done"#;
        let msg = format!("{:#}", sh(script, 2, dir.path(), Duration::from_secs(1)).unwrap_err());
        let took = t0.elapsed();
        assert!(msg.contains("rank 0 of 2 failed"), "{msg}");
        assert!(took >= Duration::from_millis(1200) && took < Duration::from_secs(15), "took {took:?}");
    }
}
