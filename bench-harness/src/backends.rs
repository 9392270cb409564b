//! The registry of backends the harness knows, by name.

use loss_core::{LossBackend, LossError, ReferenceBackend};

/// How a backend is built: the thread count matters to parallel backends only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendConfig {
    /// Threads for parallel backends (`None`: all cores).
    pub threads: Option<usize>,
}

/// A backend the harness can build.
pub struct BackendSpec {
    /// Its `name()`.
    pub name: &'static str,
    /// Whether it takes a thread count.
    pub parallel: bool,
    /// Whether `run` times it by default (the reference is the oracle, too slow to time).
    pub timed_by_default: bool,
    /// A peer from outside the workspace (candle): timed beside ours, but never verified by
    /// default nor recommended.
    pub peer: bool,
    /// Builds it.
    pub build: fn(BackendConfig) -> Result<Box<dyn LossBackend>, LossError>,
}

/// Every backend, in report order.
pub fn registry() -> Vec<BackendSpec> {
    let mut specs = vec![BackendSpec {
        name: "reference",
        parallel: false,
        timed_by_default: false,
        peer: false,
        build: |_| Ok(Box::new(ReferenceBackend::new())),
    }];
    specs.push(BackendSpec {
        name: "cpu",
        parallel: false,
        timed_by_default: true,
        peer: false,
        build: |_| Ok(Box::new(loss_cpu::CpuBackend::new())),
    });
    specs.push(BackendSpec {
        name: "rayon",
        parallel: true,
        timed_by_default: true,
        peer: false,
        build: |c| {
            Ok(Box::new(loss_rayon::RayonBackend::new(
                c.threads.unwrap_or(0),
            )?))
        },
    });
    specs.push(BackendSpec {
        name: "wgpu",
        parallel: false,
        timed_by_default: true,
        peer: false,
        build: |_| Ok(Box::new(loss_wgpu::WgpuBackend::new()?)),
    });
    #[cfg(feature = "peers")]
    specs.push(BackendSpec {
        name: "candle",
        parallel: false,
        timed_by_default: true,
        peer: true,
        build: |_| Ok(Box::new(crate::candle_peer::CandleBackend::new())),
    });
    specs
}

/// Every backend name, in report order.
pub fn backend_names() -> Vec<&'static str> {
    registry().iter().map(|s| s.name).collect()
}

/// The spec of the backend called `name`.
pub fn spec(name: &str) -> Result<BackendSpec, LossError> {
    registry()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| LossError::Unsupported {
            backend: name.to_string(),
            feature: format!(
                "this harness (known backends: {})",
                backend_names().join(", ")
            ),
        })
}

/// Builds the backend called `name`.
///
/// An unknown name is an [`LossError::Unsupported`]; a backend that cannot run on this machine
/// (no GPU adapter, say) is an [`LossError::Unavailable`].
pub fn make_backend(name: &str, config: BackendConfig) -> Result<Box<dyn LossBackend>, LossError> {
    (spec(name)?.build)(config)
}

/// A backend by name, or why it could not be built.
pub type Resolved = (String, Result<Box<dyn LossBackend>, LossError>);

/// Resolves a list of names (every workspace backend when empty), keeping unknown or unavailable ones as
/// errors so that reports can say why they are missing.
pub fn resolve(names: &[String], config: BackendConfig) -> Vec<Resolved> {
    let names: Vec<String> = if names.is_empty() {
        registry()
            .iter()
            .filter(|s| !s.peer)
            .map(|s| s.name.to_string())
            .collect()
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
