//! HF safetensors folders: `model.safetensors`, or shards listed in `model.safetensors.index.json`.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The safetensors files of an HF folder, in index order (sharded) or the single file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::parse(&index, e))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::parse(&index, "no \"weight_map\" object"))?;
        let mut files: Vec<PathBuf> = vec![];
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| Error::parse(&index, "weight_map values must be file names"))?;
            let p = dir.join(f);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        for f in &files {
            if !f.exists() {
                return Err(Error::NotFound { path: f.clone(), hint: format!(" (listed in {})", index.display()) });
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::NotFound { path: single, hint: " (nor model.safetensors.index.json)".into() })
}

/// Reads every tensor of an HF folder, in its stored kind, on the CPU.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut out = vec![];
    for f in weight_files(dir)? {
        out.extend(read_file(&f)?);
    }
    Ok(out)
}

pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| Error::parse(path, format!("reading safetensors: {e}")))
}

/// Writes tensors (contiguous, on the CPU) as one safetensors file, atomically (tmp + rename).
pub fn write_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let cpu: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&cpu, &tmp).map_err(|e| Error::parse(&tmp, format!("writing safetensors: {e}")))?;
    if let Some(e) = crate::checkpoint::injected_failure(path) {
        // As a full disk would leave it: half written.
        let len = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::OpenOptions::new().write(true).open(&tmp).and_then(|f| f.set_len(len / 2));
        return Err(Error::io(&tmp, e));
    }
    crate::checkpoint::sync_path(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
