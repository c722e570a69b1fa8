//! Typed errors for the library: each variant names the file, field or tensor that failed.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file not found{hint}")]
    NotFound { path: PathBuf, hint: String },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: tensor '{name}' has shape {got:?}, config says {want:?}")]
    ShapeMismatch { path: PathBuf, name: String, got: Vec<i64>, want: Vec<i64> },
    #[error("{path}: missing tensors: {names}")]
    MissingTensors { path: PathBuf, names: String },
    #[error("{path}: unexpected tensors (not used by the model): {names}")]
    UnexpectedTensors { path: PathBuf, names: String },
    #[error("{path}: unsupported {what} '{value}' (supported: {supported})")]
    Unsupported { path: PathBuf, what: String, value: String, supported: String },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { path, hint: String::new() }
        } else {
            Error::Io { path, source }
        }
    }
    pub fn parse(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Parse { path: path.into(), msg: msg.to_string() }
    }
}

/// The message a panic carried (`panic!` with a literal or a formatted string), or `fallback`.
pub fn panic_message<'a>(payload: &'a (dyn std::any::Any + Send), fallback: &'a str) -> &'a str {
    payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or(fallback)
}
