//! Atomic writes: a file goes to `name.tmp`, is flushed to disk, then renamed; a checkpoint folder
//! is written whole to `dir.tmp`, flushed, then swapped in, so a stop at any moment (kill -9, a
//! full disk, a power cut) leaves the previous checkpoint intact.
//!
//! [`injected_failure`] lets tests make a chosen write fail as a full disk would.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable for tests: `SUBSTRING:N` makes the N-th write (1-based) of r2m's writers
/// to a file whose path contains SUBSTRING fail with ENOSPC ("No space left on device") after
/// half its bytes, as a full disk would.
pub const FAIL_WRITE: &str = "R2M_FAIL_WRITE";

/// The error a write to `path` must end with under [`FAIL_WRITE`], if this is the chosen one.
pub fn injected_failure(path: &Path) -> Option<std::io::Error> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let spec = std::env::var(FAIL_WRITE).ok()?;
    let (needle, n) = spec.rsplit_once(':')?;
    let n: usize = n.parse().ok()?;
    if !path.to_string_lossy().contains(needle) {
        return None;
    }
    (SEEN.fetch_add(1, Ordering::SeqCst) + 1 == n).then(|| std::io::Error::from_raw_os_error(libc::ENOSPC))
}

/// Writes `bytes` to `path` and flushes them to disk (or fails as [`injected_failure`] says,
/// leaving half of them).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    if let Some(e) = injected_failure(path) {
        let _ = f.write_all(&bytes[..bytes.len() / 2]);
        return Err(Error::io(path, e));
    }
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Flushes a file or folder that is already written to disk.
pub fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes a folder atomically: `fill` writes into a fresh `dir.tmp`; then the old `dir` (if any)
/// is moved aside, the new one renamed into place, and the old one removed.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        let p = entry.map_err(|e| Error::io(&tmp, e))?.path();
        if p.is_file() {
            sync_path(&p)?;
        }
    }
    sync_path(&tmp)?;
    let mut old = dir.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_path(parent)?;
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The checkpoint folder to resume from: `dir`, or `dir.old` when a swap was interrupted between
/// its two renames.
pub fn find_checkpoint(dir: &Path) -> Option<PathBuf> {
    if dir.exists() {
        return Some(dir.to_path_buf());
    }
    let mut old = dir.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    old.exists().then_some(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fill_keeps_the_previous_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoint");
        write_dir_atomic(&ck, |p| write_atomic(&p.join("a"), b"1")).unwrap();
        let r = write_dir_atomic(&ck, |p| {
            write_atomic(&p.join("a"), b"2")?;
            Err(Error::Input("stopped".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(ck.join("a")).unwrap(), b"1");
        write_dir_atomic(&ck, |p| write_atomic(&p.join("a"), b"3")).unwrap();
        assert_eq!(std::fs::read(ck.join("a")).unwrap(), b"3");
        assert_eq!(find_checkpoint(&ck).unwrap(), ck);
    }
}
