//! Downloading a model from the Hugging Face hub into the local cache (`hf-hub`'s blocking
//! client), when a hub id is not cached and the network allows: the files r2m reads of a decoder
//! (config, tokenizer, safetensors weights, sharded or not), in the layout `huggingface_hub`
//! writes, so that later runs find them offline.
use crate::error::{Error, Result};
use crate::paths::hub_id;
use std::path::{Path, PathBuf};

/// `HF_HUB_OFFLINE` set to 1/true/yes/on: no download is tried.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// `HF_ENDPOINT`, for mirrors; the hub itself when unset.
pub fn endpoint() -> Option<String> {
    std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty())
}

/// Downloads `spec` (`org/name[@revision]`) into the hub cache at `cache` and returns its snapshot
/// folder. A failure is an error naming the id, the cache and what failed.
pub fn download(spec: &str, cache: &Path, endpoint: Option<String>) -> Result<PathBuf> {
    let (id, rev) = hub_id(spec).ok_or_else(|| Error::Input(format!("{spec:?} is not a hub id (org/name or org/name@revision)")))?;
    let fail = |what: String| Error::NotFound {
        path: cache.join(hf_hub::Repo::model(id.to_string()).folder_name()),
        hint: format!(
            " ('{id}' at revision '{rev}' is not in the local Hugging Face cache {}, and downloading it failed: {what}; \
             set HF_HUB_OFFLINE=1 to skip the download)",
            cache.display()
        ),
    };
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(false).with_retries(2);
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e);
    }
    let api = builder.build().map_err(|e| fail(e.to_string()))?;
    let repo = api.repo(hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, rev.to_string()));
    let get = |file: &str| repo.get(file).map_err(|e| fail(format!("{file}: {e}")));
    let config = get("config.json")?;
    get("tokenizer.json")?;
    // Optional files: a 404 leaves them out.
    for file in ["tokenizer_config.json", "generation_config.json", "special_tokens_map.json"] {
        let _ = repo.get(file);
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::parse(&index, e))?;
            let map = v["weight_map"].as_object().ok_or_else(|| Error::parse(&index, "no weight_map"))?;
            let shards: std::collections::BTreeSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
            for shard in shards {
                get(shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A minimal hub: serves `files` at `/{id}/resolve/{rev}/{name}` with the headers `hf-hub`
    /// reads (commit, etag, content range), honouring `Range: bytes=a-b` / `bytes=a-`.
    fn serve(files: Vec<(String, Vec<u8>)>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut range = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap();
                        range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                    }
                }
                let name = path.rsplit('/').next().unwrap_or("");
                let found = files.iter().find(|(n, _)| n == name && path.contains("/resolve/main/"));
                let response = match found {
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    Some((_, body)) => {
                        let (a, b) = range.map(|(a, b)| (a, b.unwrap_or(body.len() - 1))).unwrap_or((0, body.len() - 1));
                        let part = &body[a..=b.min(body.len() - 1)];
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\n\
                             ETag: \"e{}\"\r\nX-Repo-Commit: c0ffee\r\nConnection: close\r\n\r\n",
                            part.len(),
                            body.len(),
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(part);
                        r
                    }
                };
                let _ = stream.write_all(&response);
                let _ = stream.flush();
                let mut rest = vec![];
                let _ = reader.read_to_end(&mut rest);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn downloads_a_sharded_model_into_the_cache_then_finds_it_offline() {
        let index = br#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        let files: Vec<(String, Vec<u8>)> = [
            ("config.json", br#"{"model_type": "llama"}"#.to_vec()),
            ("tokenizer.json", b"{}".to_vec()),
            ("model.safetensors.index.json", index.to_vec()),
            ("model-00001-of-00002.safetensors", vec![7u8; 3000]),
            ("model-00002-of-00002.safetensors", vec![9u8; 10]),
        ]
        .into_iter()
        .map(|(n, b)| (n.to_string(), b))
        .collect();
        let endpoint = serve(files);
        let cache = tempfile::tempdir().unwrap();
        let dir = download("org/tiny", cache.path(), Some(endpoint)).unwrap();
        assert_eq!(std::fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap(), vec![7u8; 3000]);
        assert_eq!(std::fs::read_to_string(dir.join("config.json")).unwrap(), r#"{"model_type": "llama"}"#);
        assert!(dir.starts_with(cache.path().join("models--org--tiny/snapshots")));
        // Now in the cache: resolved offline.
        assert_eq!(crate::paths::resolve_hub_id("org/tiny", cache.path()).unwrap(), dir);
    }

    #[test]
    fn a_failed_download_names_the_id_and_the_cache() {
        let endpoint = serve(vec![("config.json".into(), b"{}".to_vec())]);
        let cache = tempfile::tempdir().unwrap();
        let e = download("org/tiny", cache.path(), Some(endpoint)).unwrap_err().to_string();
        assert!(e.contains("org/tiny") && e.contains(&cache.path().display().to_string()) && e.contains("tokenizer.json"), "{e}");
    }
}
