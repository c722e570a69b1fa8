//! Run configuration from TOML plus command-line overrides (`--set section.key=value`), parsed
//! into typed structs with `deny_unknown_fields`, so that a typo fails at load time with the field
//! path named ("train.lrr: unknown field `lrr`, expected one of ..."). The resolved config is saved
//! with every run.
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads `path` (if any) as TOML, applies `sets` ("a.b.c=value"; the value is a TOML literal, or a
/// bare string), and deserializes into `T`.
pub fn load<T: DeserializeOwned>(path: Option<&Path>, sets: &[String]) -> Result<T> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
            load_str(&text, &p.display().to_string(), sets)
        }
        None => load_str("", "command-line config", sets),
    }
}

/// [`load`] from TOML text; `origin` names it in errors (a file, or a built-in preset).
pub fn load_str<T: DeserializeOwned>(text: &str, origin: &str, sets: &[String]) -> Result<T> {
    let mut table = toml::from_str::<toml::Table>(text).with_context(|| format!("{origin}: invalid TOML"))?;
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
}
