//! One process at a time in a run folder. `rl`, `train-rm` and an experiment grid hold an
//! exclusive lock on `<folder>/.r2m.lock` while they run; a second process on the same folder is
//! refused at once, with the holder's pid, host, start time and command line.
//!
//! The lock is `flock(2)`: the kernel releases it when its holder exits, however it exits
//! (kill -9 included), so a lock left by a dead process is simply taken over. Where the file
//! system has no flock (some network file systems answer ENOLCK or EOPNOTSUPP), the file's
//! contents are the lock: a holder on this host whose pid is gone is taken over, and a holder on
//! another host is refused (remove the file once sure it is gone).
//!
//! In a data parallel job one process holds it for the job: the `--nproc` launcher (its ranks
//! inherit [`HELD_BY`] naming it), or rank 0 under torchrun.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a folder.
pub const FILE: &str = ".r2m.lock";
/// Environment variable a launcher sets for its children: the pid that holds their run folder.
pub const HELD_BY: &str = "R2M_RUN_LOCK_HELD_BY";

/// Who holds a folder: written into the lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub since: u64,
    pub command: String,
}

impl Holder {
    fn me() -> Holder {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        Holder { pid: std::process::id(), host: hostname(), since, command }
    }

    fn describe(&self) -> String {
        let age =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs().saturating_sub(self.since)).unwrap_or(0);
        format!("pid {} on host {}, for {} s (`{}`)", self.pid, self.host, age, self.command)
    }

    /// Whether this holder is a live process on this host (`kill(pid, 0)`).
    fn alive_here(&self) -> bool {
        // SAFETY: kill with signal 0 only checks that the process exists.
        self.host == hostname() && unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

/// A held folder; dropping it releases the lock.
#[derive(Debug)]
pub struct FolderLock {
    _file: Option<File>,
    pub path: PathBuf,
}

impl FolderLock {
    /// Takes `dir`'s lock (creating `dir`), or fails at once naming the holder. `what` names the
    /// folder's use in the error ("run folder", "experiment folder").
    pub fn acquire(dir: &Path, what: &str) -> Result<FolderLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(FILE);
        // A launcher that holds this folder for its ranks.
        if let Ok(pid) = std::env::var(HELD_BY) {
            if read_holder(&path).is_some_and(|h| h.pid.to_string() == pid && h.host == hostname()) {
                return Ok(FolderLock { _file: None, path });
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        // SAFETY: flock on a file descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {
                    let who = read_holder(&path).map(|h| h.describe()).unwrap_or_else(|| "another process".into());
                    bail!("{} {} is in use by {who}: r2m runs one process per folder (wait for it, or stop it)", what, dir.display());
                }
                Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) => {
                    if let Some(h) = read_holder(&path).filter(|h| h.pid != std::process::id()) {
                        if h.alive_here() || h.host != hostname() {
                            bail!(
                                "{} {} is in use by {} (this file system has no flock: if that process is gone, remove {})",
                                what,
                                dir.display(),
                                h.describe(),
                                path.display()
                            );
                        }
                    }
                }
                _ => return Err(e).with_context(|| format!("locking {}", path.display())),
            }
        }
        let me = serde_json::to_string(&Holder::me())?;
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(FolderLock { _file: Some(file), path })
    }
}

/// The holder a lock file names, if it parses.
pub fn read_holder(path: &Path) -> Option<Holder> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_takes_over_once_it_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(d.path(), "run folder").unwrap();
        let err = FolderLock::acquire(d.path(), "run folder").unwrap_err().to_string();
        assert!(err.contains("is in use by") && err.contains(&format!("pid {}", std::process::id())) && err.contains(&hostname()), "{err}");
        drop(first);
        let again = FolderLock::acquire(d.path(), "run folder").unwrap();
        assert_eq!(read_holder(&again.path).unwrap().pid, std::process::id());
    }
}
