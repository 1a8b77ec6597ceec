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
    /// A setting that cannot work: a recipe key, a flag or a spec value, named in the message.
    #[error("{0}")]
    Config(String),
    /// Data that does not fit its use: labels, splits, predictions, stored tensors' shapes.
    /// (`Data` and `InvalidWeights` name the file when there is one.)
    #[error("{0}")]
    InvalidData(String),
    /// A numeric method failed on its input: a factorization, an SVD, a non-finite gradient.
    #[error("{0}")]
    Numeric(String),
    /// Training diverged: the loss became non-finite at `step` (1-based) of `epoch` (1-based).
    /// `last_checkpoint` is where to resume from with other settings.
    #[error(
        "the loss is {loss} at epoch {epoch}, step {step}: training stopped; {}",
        match .last_checkpoint {
            Some(dir) => format!("the last good checkpoint is {}", dir.display()),
            None => "no checkpoint was written yet".into(),
        }
    )]
    Diverged {
        loss: f64,
        epoch: usize,
        step: usize,
        last_checkpoint: Option<PathBuf>,
    },
    /// What the library was doing when `source` happened; [`Error::root`] is the kind to act on.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
    /// A broken internal invariant: a bug in qpeft, not a mistake of its user.
    #[error("internal error (a bug in qpeft): {0}")]
    Internal(String),
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
    /// This error with what the library was doing when it happened.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The error under any contexts: the kind a caller acts on.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
