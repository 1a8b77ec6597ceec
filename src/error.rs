//! The library's error type: every failure names the file, key or value it concerns.

use std::path::PathBuf;

/// Errors raised by the qpeft library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Display shows the path; the I/O error is the source, printed by `{:#}` chains.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    InvalidWeights { path: PathBuf, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("{0}")]
    ModelNotFound(String),
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("invalid device '{spec}': {message}")]
    InvalidDevice { spec: String, message: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("chart: {0}")]
    Plot(String),
    /// A data file that does not have the expected format; `line` is 1-based.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Data {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

/// Result alias for the qpeft library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
