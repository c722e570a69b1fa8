//! Run configuration from TOML plus command-line overrides (`--set section.key=value`), parsed
//! into typed structs with `deny_unknown_fields`, so that a typo fails at load time with the field
//! path named ("train.lrr: unknown field `lrr`, expected one of ..."). The resolved config is saved
//! with every run.
//!
//! A file may start from another: `extends = "base.toml"` (a path relative to the file that says
//! it) reads the base first, then lays this file over it: its tables merge key by key into the
//! base's, any other value (arrays included) replaces the base's. Bases may extend further; a
//! cycle is an error naming the chain. `--set` overrides apply to the merged result.
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Reads `path` (if any) as TOML (with its `extends` chain), applies `sets` ("a.b.c=value"; the
/// value is a TOML literal, or a bare string), and deserializes into `T`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, sets: &[String]) -> Result<T> {
    match path {
        Some(p) => {
            let table = read_table(p, &mut Vec::new())?;
            from_table(table, &p.display().to_string(), sets)
        }
        None => load_str("", "command-line config", sets),
    }
}

/// [`load`] from TOML text; `origin` names it in errors (a file, or a built-in preset). An
/// `extends` path in it is relative to the current directory.
pub fn load_str<T: DeserializeOwned>(text: &str, origin: &str, sets: &[String]) -> Result<T> {
    let table = toml::from_str::<toml::Table>(text).with_context(|| format!("{origin}: invalid TOML"))?;
    let table = resolve_extends(table, Path::new("."), origin, &mut Vec::new())?;
    from_table(table, origin, sets)
}

/// The TOML table of the file `path`, its `extends` chain merged in; `chain` holds the files
/// being read (to name a cycle).
fn read_table(path: &Path, chain: &mut Vec<PathBuf>) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let origin = path.display().to_string();
    let table = toml::from_str::<toml::Table>(&text).with_context(|| format!("{origin}: invalid TOML"))?;
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&canonical) {
        let names: Vec<String> = chain.iter().chain(std::iter::once(&canonical)).map(|p| p.display().to_string()).collect();
        anyhow::bail!("config `extends` cycle: {}", names.join(" -> "));
    }
    chain.push(canonical);
    let dir = path.parent().unwrap_or(Path::new("."));
    let out = resolve_extends(table, dir, &origin, chain);
    chain.pop();
    out
}

/// `table` laid over the base its `extends` key names (relative to `dir`); `table` itself when it
/// has none.
fn resolve_extends(mut table: toml::Table, dir: &Path, origin: &str, chain: &mut Vec<PathBuf>) -> Result<toml::Table> {
    let Some(ext) = table.remove("extends") else {
        return Ok(table);
    };
    let rel = ext.as_str().with_context(|| format!("{origin}: extends: expected a file path (a string), found {ext}"))?;
    let base_path = dir.join(rel);
    let mut base = read_table(&base_path, chain).with_context(|| format!("{origin}: extends = {rel:?}"))?;
    merge(&mut base, table);
    Ok(base)
}

/// Lays `over` onto `base`: tables merge recursively, other values replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies `sets` to `table` and deserializes it into `T`, naming the failing field.
fn from_table<T: DeserializeOwned>(mut table: toml::Table, origin: &str, sets: &[String]) -> Result<T> {
    for s in sets {
        apply_set(&mut table, s)?;
    }
    let de = toml::Value::Table(table);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        anyhow::anyhow!("{origin}: {}: {}", if field == "." { "(top level)".into() } else { field }, e.inner())
    })
}

/// The key and the raw value of one "a.b.c=value" override.
pub fn split_set(set: &str) -> Result<(&str, &str)> {
    let (key, raw) = set.split_once('=').with_context(|| format!("--set {set}: expected key=value"))?;
    let key = key.trim();
    anyhow::ensure!(!key.is_empty(), "--set {set}: empty key");
    Ok((key, raw))
}

/// Applies one "a.b.c=value" override to `table`.
pub fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) = split_set(set)?;
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").context("parsed value")?,
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().with_context(|| format!("--set {set}: '{p}' is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Writes the resolved config as TOML to `path` (atomically).
pub fn save<T: serde::Serialize>(cfg: &T, path: &Path) -> Result<()> {
    let text = toml::to_string_pretty(cfg).context("serializing the resolved config")?;
    crate::checkpoint::write_atomic(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Train {
        lr: f64,
        epochs: usize,
        name: String,
    }
    #[derive(Deserialize, Debug, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Cfg {
        seed: u64,
        train: Train,
    }

    #[test]
    fn overrides_and_typos() {
        let c: Cfg = load(None, &["train.lr=0.5".into(), "seed=3".into(), "train.name=abc".into()]).unwrap();
        assert_eq!(c, Cfg { seed: 3, train: Train { lr: 0.5, epochs: 0, name: "abc".into() } });
        let e = load::<Cfg>(None, &["train.lrr=0.5".into()]).unwrap_err().to_string();
        assert!(e.contains("train.lrr") && e.contains("unknown field"), "{e}");
        let e = load::<Cfg>(None, &["train.epochs=\"x\"".into()]).unwrap_err().to_string();
        assert!(e.contains("train.epochs"), "{e}");
    }

    #[test]
    fn extends_merges_tables_and_replaces_values() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("base.toml"), "seed = 1\n[train]\nlr = 0.1\nepochs = 3\nname = \"base\"\n").unwrap();
        // A chain: sub/mid.toml extends ../base.toml (relative to sub/), top.toml extends sub/mid.toml.
        std::fs::write(d.path().join("sub/mid.toml"), "extends = \"../base.toml\"\n[train]\nepochs = 5\n").unwrap();
        std::fs::write(d.path().join("top.toml"), "extends = \"sub/mid.toml\"\nseed = 7\n[train]\nname = \"top\"\n").unwrap();
        let c: Cfg = load(Some(&d.path().join("top.toml")), &["train.lr=0.5".into()]).unwrap();
        assert_eq!(c, Cfg { seed: 7, train: Train { lr: 0.5, epochs: 5, name: "top".into() } });
        let c: Cfg = load(Some(&d.path().join("sub/mid.toml")), &[]).unwrap();
        assert_eq!(c, Cfg { seed: 1, train: Train { lr: 0.1, epochs: 5, name: "base".into() } });
        // A typo in the child is still named; a missing base names both files; a cycle names the chain.
        std::fs::write(d.path().join("typo.toml"), "extends = \"base.toml\"\n[train]\nlrr = 1.0\n").unwrap();
        let e = load::<Cfg>(Some(&d.path().join("typo.toml")), &[]).unwrap_err().to_string();
        assert!(e.contains("typo.toml") && e.contains("train.lrr"), "{e}");
        std::fs::write(d.path().join("orphan.toml"), "extends = \"nowhere.toml\"\n").unwrap();
        let e = format!("{:#}", load::<Cfg>(Some(&d.path().join("orphan.toml")), &[]).unwrap_err());
        assert!(e.contains("orphan.toml") && e.contains("nowhere.toml"), "{e}");
        std::fs::write(d.path().join("a.toml"), "extends = \"b.toml\"\n").unwrap();
        std::fs::write(d.path().join("b.toml"), "extends = \"a.toml\"\n").unwrap();
        let e = format!("{:#}", load::<Cfg>(Some(&d.path().join("a.toml")), &[]).unwrap_err());
        assert!(e.contains("cycle") && e.contains("a.toml -> ") && e.contains("b.toml"), "{e}");
        let e = format!("{:#}", load_str::<Cfg>("extends = 3", "x.toml", &[]).unwrap_err());
        assert!(e.contains("x.toml: extends"), "{e}");
    }
}
