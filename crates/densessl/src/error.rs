//! The library's error type: every variant names the file, key or step at fault.

use std::path::PathBuf;

/// Errors of the densessl library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device that cannot be used.
    #[error("{0}")]
    Device(String),
    /// A configuration file or override that cannot be read.
    #[error("config {source_name}: {message}")]
    Config {
        /// The file (or `--set` override) at fault.
        source_name: String,
        /// What is wrong, with line and key where known.
        message: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image or mask that cannot be decoded or is inconsistent.
    #[error("{path}: {message}")]
    Data {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint that cannot be read, written or applied.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Training diverged or could not continue.
    #[error("training stopped at step {step}: {message}")]
    Training {
        /// The step at which training stopped.
        step: usize,
        /// What happened.
        message: String,
    },
    /// An argument with an invalid value.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// A data error about one file.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Data { path: path.into(), message: message.into() }
    }
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
