//! JSON Lines: one JSON object per line; blank lines are skipped; a UTF-8 BOM and `\r\n` endings
//! are accepted. Line numbers are 1-based physical lines (blank ones counted), as editors show them.
use super::{type_name, Origin, RawRecord};
use crate::error::{Error, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads `path` into records. I/O failures are errors; a malformed line is a record error.
pub(crate) fn read_records(path: &Path) -> Result<Vec<RawRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let origin = Origin { file: path.to_path_buf(), line: i + 1 };
        let line = match std::str::from_utf8(raw) {
            Ok(s) => s,
            Err(e) => {
                out.push((origin, Err(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1))));
                continue;
            }
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        // A `.json` file holding one JSON array (pandas' `to_json()` default) is not JSON Lines.
        if out.is_empty() && trimmed.starts_with('[') {
            return Err(Error::parse(path, format!("line {} starts a JSON array: r2m reads JSON Lines, one object per line", i + 1)));
        }
        let rec = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(format!("expected a JSON object per line, got {}", type_name(&other))),
            Err(e) => Err(format!("invalid JSON at column {}: {}", e.column(), strip_position(&e))),
        };
        out.push((origin, rec));
    }
    Ok(out)
}

/// serde_json's message without its " at line L column C" suffix (the line is ours to report).
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Writes `lines` (each without its newline) to `path` atomically: a temporary file in the same
/// folder, flushed and synced, then renamed over `path`. Creates the parent folder. On any error
/// the temporary file is removed and `path` is untouched.
pub(crate) fn write_lines_atomic(path: &Path, lines: impl Iterator<Item = Result<String>>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(f);
        for line in lines {
            let line = line?;
            w.write_all(line.as_bytes()).and_then(|_| w.write_all(b"\n")).map_err(|e| Error::io(&tmp, e))?;
        }
        let f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_crlf_and_bad_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, b"\xef\xbb\xbf{\"a\": 1}\r\n\xff\xfe\n   \n{\"b\": 2}").unwrap();
        let recs = read_records(&p).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].1.as_ref().unwrap()["a"], 1);
        assert_eq!(recs[1].0.line, 2);
        assert_eq!(recs[1].1.as_ref().unwrap_err(), "invalid UTF-8 at byte 1");
        assert_eq!(recs[2].0.line, 4);
        assert_eq!(recs[2].1.as_ref().unwrap()["b"], 2, "a last line without newline is a record");
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(&p, "old\n").unwrap();
        let lines = vec![Ok("{}".to_string()), Err(Error::Input("boom".into()))];
        assert!(write_lines_atomic(&p, lines.into_iter()).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
