//! The library's typed errors; the binary prints them with their whole chain.

use std::path::PathBuf;

/// Every failure the library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model: {0}")]
    Model(String),
    #[error("compile: {0}")]
    Compile(String),
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Mismatch(String),
    #[error("image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("dataset {path}: {message}")]
    Dataset { path: PathBuf, message: String },
    /// A payload that decoded but does not fit its parameters; refused before any use that
    /// would index or allocate by its hostile sizes.
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("GPU: {0}")]
    Gpu(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn malformed(what: &'static str, message: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            message: message.into(),
        }
    }

    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}
