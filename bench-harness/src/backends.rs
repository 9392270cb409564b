//! The registry of backends the harness knows, by name.

use loss_core::{LossBackend, LossError, ReferenceBackend};

/// Every backend name, in report order.
pub const BACKEND_NAMES: &[&str] = &["reference"];

/// How a backend is built: the thread count matters to parallel backends only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendConfig {
    /// Threads for parallel backends (`None`: all cores).
    pub threads: Option<usize>,
}

/// Builds the backend called `name`.
///
/// An unknown name is an [`LossError::Unsupported`]; a backend that cannot run on this machine
/// (no GPU adapter, say) is an [`LossError::Unavailable`].
pub fn make_backend(name: &str, config: BackendConfig) -> Result<Box<dyn LossBackend>, LossError> {
    let _ = config;
    match name {
        "reference" => Ok(Box::new(ReferenceBackend::new())),
        other => Err(LossError::Unsupported {
            backend: other.to_string(),
            feature: format!(
                "this harness (known backends: {})",
                BACKEND_NAMES.join(", ")
            ),
        }),
    }
}

/// A backend by name, or why it could not be built.
pub type Resolved = (String, Result<Box<dyn LossBackend>, LossError>);

/// Resolves a list of names (all backends when empty), keeping unknown or unavailable ones as
/// errors so that reports can say why they are missing.
pub fn resolve(names: &[String], config: BackendConfig) -> Vec<Resolved> {
    let names: Vec<String> = if names.is_empty() {
        BACKEND_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        names.to_vec()
    };
    names
        .into_iter()
        .map(|n| {
            let b = make_backend(&n, config);
            (n, b)
        })
        .collect()
}
