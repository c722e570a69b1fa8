//! Reports: plots (PNG + SVG, [`plot`]) and tables, printed aligned for the terminal or written
//! as CSV with the columns in the order given (unlike `metrics::write_csv`, whose columns come
//! from JSON keys).
use crate::error::{Error, Result};
use std::path::Path;

pub mod plot;

/// A table of preformatted cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table { headers: headers.into_iter().map(Into::into).collect(), rows: vec![] }
    }

    /// Appends a row; it must have one cell per header.
    pub fn push(&mut self, row: Vec<String>) -> Result<()> {
        if row.len() != self.headers.len() {
            return Err(Error::Input(format!("table row has {} cells for {} columns", row.len(), self.headers.len())));
        }
        self.rows.push(row);
        Ok(())
    }

    /// Columns padded to their widest cell, right-aligned (numbers line up), a rule under the header.
    pub fn to_text(&self) -> String {
        let w: Vec<usize> = (0..self.headers.len())
            .map(|c| self.rows.iter().map(|r| r[c].chars().count()).chain([self.headers[c].chars().count()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells.iter().zip(&w).map(|(c, &w)| format!("{c:>w$}")).collect();
            parts.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        let rule: Vec<String> = w.iter().map(|&w| "-".repeat(w)).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// RFC 4180 CSV: a cell with a comma, quote or newline is quoted, quotes doubled.
    pub fn to_csv(&self) -> String {
        let cell = |c: &String| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        };
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            out.push_str(&r.iter().map(cell).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        out
    }

    /// Writes [`Table::to_csv`] atomically.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_atomic(path, self.to_csv().as_bytes())
    }
}

/// A number for a table: `digits` decimals; NaN and infinities as `n/a` (text) — use
/// [`csv_num`] for files.
pub fn fmt_num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "n/a".into()
    }
}

/// A number for a CSV file: shortest round-trip form; empty when not finite.
pub fn csv_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_csv() {
        let mut t = Table::new(["layer", "value"]);
        t.push(vec!["0".into(), fmt_num(0.5, 3)]).unwrap();
        t.push(vec!["12".into(), fmt_num(f64::NAN, 3)]).unwrap();
        assert_eq!(t.to_text(), "layer  value\n-----  -----\n    0  0.500\n   12    n/a\n");
        assert!(t.push(vec!["1".into()]).is_err());
        let mut c = Table::new(["a", "b"]);
        c.push(vec!["x,y".into(), csv_num(0.25)]).unwrap();
        c.push(vec!["say \"hi\"".into(), csv_num(f64::INFINITY)]).unwrap();
        assert_eq!(c.to_csv(), "a,b\n\"x,y\",0.25\n\"say \"\"hi\"\"\",\n");
    }
}
