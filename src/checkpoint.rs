//! Atomic writes: a file goes to `name.tmp` then is renamed; a checkpoint folder is written whole
//! to `dir.tmp`, then swapped in, so a stop at any moment leaves the previous checkpoint intact.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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
