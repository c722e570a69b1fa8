//! Reading weights into HF-named tensors, with every missing, unexpected or mis-shaped tensor
//! reported by name. Formats: `safetensors` (single file or sharded with an index), `gguf`.
pub mod gguf;
pub mod gguf_check;
pub mod safetensors;

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Tensors by HF name, taken one by one by the model constructors. What is left at the end is an
/// error (`finish`), except for names on an allow-list (e.g. a tied `lm_head.weight`).
pub struct WeightMap {
    pub source: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    missing: Vec<String>,
}

impl WeightMap {
    pub fn new(source: impl Into<PathBuf>, tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        WeightMap { source: source.into(), tensors: tensors.into_iter().collect(), missing: vec![] }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Takes `name` as f32, checking its shape. A missing name is recorded and reported by `finish`
    /// together with all the others; a zero tensor of the right shape stands in until then.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        match self.tensors.remove(name) {
            Some(t) => {
                if t.size() != shape {
                    return Err(Error::ShapeMismatch { path: self.source.clone(), name: name.into(), got: t.size(), want: shape.to_vec() });
                }
                Ok(t.to_kind(Kind::Float))
            }
            None => {
                self.missing.push(name.to_string());
                Ok(Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu)))
            }
        }
    }

    /// Takes `name` if present (optional tensors such as a tied lm_head).
    pub fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Errors on any missing tensor, then on any tensor left over that is not in `allow`.
    pub fn finish(self, allow: &[&str]) -> Result<()> {
        if !self.missing.is_empty() {
            return Err(Error::MissingTensors { path: self.source, names: summarize(&self.missing) });
        }
        let left: Vec<String> = self.tensors.into_keys().filter(|n| !allow.contains(&n.as_str())).collect();
        if !left.is_empty() {
            return Err(Error::UnexpectedTensors { path: self.source, names: summarize(&left) });
        }
        Ok(())
    }
}

fn summarize(names: &[String]) -> String {
    const SHOW: usize = 8;
    let mut s = names.iter().take(SHOW).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOW {
        s.push_str(&format!(" ... and {} more", names.len() - SHOW));
    }
    s
}

/// Where a model lives: an HF folder (config.json + safetensors) or a single GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

impl ModelSource {
    /// Resolves a user-given path or a built-in alias (see `crate::paths::resolve_model`).
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = crate::paths::resolve_model(spec)?;
        if path.is_dir() {
            Ok(ModelSource::HfDir(path))
        } else if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
            Ok(ModelSource::Gguf(path))
        } else {
            Err(Error::parse(&path, "not a model: expected an HF folder (config.json + *.safetensors) or a .gguf file"))
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfDir(p) | ModelSource::Gguf(p) => p,
        }
    }
}
