//! The harness's errors: one enum, so that a caller (a CI script, a deployment loading a
//! profile) can tell a missing file from a bad flag from a backend failure.

use std::path::PathBuf;

use loss_core::LossError;

/// Everything that can go wrong in the harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the JSON it should be.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A file of another schema (or another version of ours).
    #[error("{}: schema {found:?}, expected {expected:?}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// Its schema tag.
        found: String,
        /// The tag this build reads.
        expected: &'static str,
    },
    /// A profile could not be read or written.
    #[error(transparent)]
    Profile(#[from] loss_profile::ProfileError),
    /// A flag or argument that makes no sense.
    #[error("{0}")]
    Usage(String),
    /// Two files that cannot be compared.
    #[error("{0}")]
    Mismatch(String),
    /// A worker process (of `ab` or a round of `run`) failed or spoke another protocol.
    #[error("{0}")]
    Worker(String),
    /// Valgrind could not count (`run --counts`).
    #[error("{0}")]
    Counts(String),
    /// The Python peers could not run (the reason becomes a skip entry).
    #[error("{0}")]
    Peers(String),
    /// A picture could not be drawn.
    #[error("{0}")]
    Plot(String),
    /// A configuration whose single call exceeds the per-call budget.
    #[error("one call took {seconds:.2} s, over the per-call budget of {budget:.0} s")]
    OverBudget {
        /// The call's time.
        seconds: f64,
        /// The budget.
        budget: f64,
    },
    /// A backend's error.
    #[error(transparent)]
    Loss(#[from] LossError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads a JSON file into `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
