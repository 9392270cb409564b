//! Typed errors. Every failure a caller can cause maps onto one [`ErrorKind`].

use thiserror::Error;

/// The coarse class of a [`LossError`]. The first three are the kinds the specification names
/// (and the conformance vectors expect); the last three are about the backend, not the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An index target outside `[0, C)` that is not `ignore_index`.
    InvalidTarget,
    /// A length or a shape that does not fit the problem.
    ShapeMismatch,
    /// An option outside its domain.
    InvalidOption,
    /// The backend does not implement this feature; no other backend was substituted.
    Unsupported,
    /// The backend cannot run on this machine (no adapter, say).
    Unavailable,
    /// The backend failed while running (a device error, a lost device, a failed map).
    Backend,
}

impl ErrorKind {
    /// The snake-case name used by the conformance format and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidTarget => "invalid_target",
            ErrorKind::ShapeMismatch => "shape_mismatch",
            ErrorKind::InvalidOption => "invalid_option",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Backend => "backend",
        }
    }

    /// Parses the snake-case name; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            ErrorKind::InvalidTarget,
            ErrorKind::ShapeMismatch,
            ErrorKind::InvalidOption,
            ErrorKind::Unsupported,
            ErrorKind::Unavailable,
            ErrorKind::Backend,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong, with enough structure to say where.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LossError {
    /// An index target outside `[0, C)` that is not `ignore_index`.
    #[error(
        "invalid target {target} at position {position}: classes are 0..{classes} and ignore_index is {ignore_index}"
    )]
    InvalidTarget {
        /// Flat position of the offending target.
        position: usize,
        /// The offending value.
        target: i64,
        /// Number of classes `C`.
        classes: usize,
        /// The `ignore_index` in force.
        ignore_index: i64,
    },
    /// A buffer length or shape that does not fit the problem.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which input or output is wrong (`"logits"`, `"target"`, `"weight"`, `"grad_output"`, …).
        what: &'static str,
        /// What was expected, in words or as a shape.
        expected: String,
        /// What was given.
        got: String,
    },
    /// An option outside its domain.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// The backend does not implement a feature of the specification.
    #[error("backend {backend} does not support {feature}")]
    Unsupported {
        /// The backend's `name()`.
        backend: String,
        /// The missing feature.
        feature: String,
    },
    /// The backend cannot run here.
    #[error("backend {backend} is unavailable: {reason}")]
    Unavailable {
        /// The backend's `name()`.
        backend: String,
        /// Why (no adapter, missing driver, …).
        reason: String,
    },
    /// The backend failed while running.
    #[error("backend {backend} failed: {message}")]
    Backend {
        /// The backend's `name()`.
        backend: String,
        /// What failed.
        message: String,
    },
}

impl LossError {
    /// The coarse kind, as named by the specification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LossError::InvalidTarget { .. } => ErrorKind::InvalidTarget,
            LossError::ShapeMismatch { .. } => ErrorKind::ShapeMismatch,
            LossError::InvalidOption { .. } => ErrorKind::InvalidOption,
            LossError::Unsupported { .. } => ErrorKind::Unsupported,
            LossError::Unavailable { .. } => ErrorKind::Unavailable,
            LossError::Backend { .. } => ErrorKind::Backend,
        }
    }

    pub(crate) fn shape(what: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        LossError::ShapeMismatch {
            what,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = LossError> = std::result::Result<T, E>;
