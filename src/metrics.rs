//! Metrics: one JSON object per step appended to `metrics.jsonl` (flushed each record), and a CSV
//! copy with the union of the keys written at the end. Names are slash-namespaced and stable
//! (TRL's where the quantity is the same: `loss`, `accuracy`, `reward`, `kl`, ...).
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

pub struct MetricsSink {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsSink {
    /// Opens `path` for appending. With `keep_until = Some(step)` (a resumed run), records with
    /// `step > step` (written after the checkpoint) are dropped first, so the file reads as one
    /// uninterrupted run; with None the file starts empty.
    pub fn open(path: &Path, keep_until: Option<i64>) -> Result<Self> {
        let kept: Vec<String> = match keep_until {
            Some(s) if path.exists() => read_lines(path)?
                .into_iter()
                .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_i64()).is_some_and(|x| x <= s))
                .collect(),
            _ => vec![],
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        crate::checkpoint::write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(MetricsSink { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, record: &Map<String, Value>) -> Result<()> {
        let line = serde_json::to_string(record).map_err(|e| Error::parse(&self.path, e))?;
        if let Some(e) = crate::checkpoint::injected_failure(&self.path) {
            let _ = self.file.write_all(&line.as_bytes()[..line.len() / 2]);
            return Err(Error::io(&self.path, e));
        }
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    std::io::BufReader::new(f).lines().collect::<std::io::Result<Vec<_>>>().map_err(|e| Error::io(path, e))
}

/// Reads a metrics JSONL file into records.
pub fn read_jsonl(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let mut out = vec![];
    for (i, l) in read_lines(path)?.into_iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&l).map_err(|e| Error::parse(path, format!("line {}: {e}", i + 1)))?;
        match v {
            Value::Object(m) => out.push(m),
            _ => return Err(Error::parse(path, format!("line {}: not a JSON object", i + 1))),
        }
    }
    Ok(out)
}

/// Writes `records` as CSV: `step`, then the union of the other keys (sorted) as columns.
pub fn write_csv(path: &Path, records: &[Map<String, Value>]) -> Result<()> {
    let mut cols: Vec<String> = vec!["step".into()];
    for r in records {
        for k in r.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    let mut text = cols.join(",") + "\n";
    for r in records {
        let row: Vec<String> = cols
            .iter()
            .map(|c| match r.get(c) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => format!("\"{}\"", s.replace('"', "\"\"")),
                Some(v) => v.to_string(),
            })
            .collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    crate::checkpoint::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_drops_records_after_the_checkpoint_and_csv_has_all_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut s = MetricsSink::open(&p, None).unwrap();
        for step in 0..5 {
            let mut m = Map::new();
            m.insert("step".into(), json!(step));
            m.insert("loss".into(), json!(1.0 / (step + 1) as f64));
            if step == 3 {
                m.insert("eval/accuracy".into(), json!(0.5));
            }
            s.write(&m).unwrap();
        }
        drop(s);
        let s = MetricsSink::open(&p, Some(2)).unwrap();
        drop(s);
        let r = read_jsonl(&p).unwrap();
        assert_eq!(r.len(), 3);
        write_csv(&d.path().join("m.csv"), &read_jsonl(&p).unwrap()).unwrap();
        let csv = std::fs::read_to_string(d.path().join("m.csv")).unwrap();
        assert!(csv.starts_with("step,loss\n0,1.0\n"), "{csv}");
        assert_eq!(csv.lines().count(), 4, "{csv}");
    }
}
