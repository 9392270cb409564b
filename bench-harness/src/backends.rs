//! The registry of backends the harness knows, by name.

use std::sync::Arc;

use loss_core::{DeviceBackend, LossBackend, LossError};
use loss_profile::WorkspaceBackend;

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
    /// Whether it can keep problems on a device (then it is also timed resident).
    pub device: bool,
    /// Whether `run` times it by default (the reference is the oracle, too slow to time).
    pub timed_by_default: bool,
    /// A peer from outside the workspace (candle): timed beside ours, but never verified by
    /// default nor recommended.
    pub peer: bool,
    /// Builds it (from its name and the configuration).
    pub build: fn(&'static str, BackendConfig) -> Result<Built, LossError>,
}

/// A built backend: the [`LossBackend`], and the same object as a [`DeviceBackend`] when it can
/// keep problems on a device (then the harness also times it resident).
#[derive(Clone)]
pub struct Built {
    /// The backend.
    pub backend: Arc<dyn LossBackend>,
    /// The same backend as a device, when it is one.
    pub device: Option<Arc<dyn DeviceBackend>>,
}

impl Built {
    /// A backend that runs on the host.
    pub fn host(backend: impl LossBackend + 'static) -> Self {
        Built {
            backend: Arc::new(backend),
            device: None,
        }
    }

    /// A backend that can also keep problems on a device.
    pub fn device(backend: impl DeviceBackend + 'static) -> Self {
        let device: Arc<dyn DeviceBackend> = Arc::new(backend);
        Built {
            backend: device.clone(),
            device: Some(device),
        }
    }
}

/// A workspace backend, built by name through loss-profile's [`WorkspaceBackend`] (the one
/// place a name becomes a backend): `cpu` and `rayon` on the host, `wgpu` also as a device.
fn workspace(name: &'static str, config: BackendConfig) -> Result<Built, LossError> {
    Ok(match WorkspaceBackend::build(name, config.threads)? {
        #[cfg(not(feature = "planted-slowdown"))]
        WorkspaceBackend::Cpu(b) => Built::host(b),
        #[cfg(feature = "planted-slowdown")]
        WorkspaceBackend::Cpu(b) => Built::host(planted::Slowed(b)),
        WorkspaceBackend::Rayon(b) => Built::host(b),
        WorkspaceBackend::Wgpu(b) => Built::device(*b),
        WorkspaceBackend::Reference(b) => Built::host(b),
    })
}

/// Every backend, in report order.
pub fn registry() -> Vec<BackendSpec> {
    let mut specs = vec![BackendSpec {
        name: "reference",
        parallel: false,
        device: false,
        timed_by_default: false,
        peer: false,
        build: workspace,
    }];
    specs.push(BackendSpec {
        name: "cpu",
        parallel: false,
        device: false,
        timed_by_default: true,
        peer: false,
        build: workspace,
    });
    specs.push(BackendSpec {
        name: "rayon",
        parallel: true,
        device: false,
        timed_by_default: true,
        peer: false,
        build: workspace,
    });
    specs.push(BackendSpec {
        name: "wgpu",
        parallel: false,
        device: true,
        timed_by_default: true,
        peer: false,
        build: workspace,
    });
    #[cfg(feature = "peers")]
    specs.push(BackendSpec {
        name: "candle",
        parallel: false,
        device: false,
        timed_by_default: true,
        peer: true,
        build: |_, _| Ok(Built::host(crate::candle_peer::CandleBackend::new())),
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
    let spec = spec(name)?;
    Ok(Box::new((spec.build)(spec.name, config)?.backend))
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

/// A deliberately slower `cpu` backend, for measuring how well `ab` catches a real regression
/// (its power): every forward pass (a call asking for the loss and no gradient) first reads an
/// extra fifth of the logits — about 10 % slower on large forward cells. Built only with the
/// feature `planted-slowdown` (`scripts/figures.sh ab-gate` builds it); never a default.
#[cfg(feature = "planted-slowdown")]
mod planted {
    use loss_core::{LossBackend, Outputs, Problem, Result};

    /// The wrapped backend, slowed.
    pub struct Slowed<B>(pub B);

    impl<B: LossBackend> LossBackend for Slowed<B> {
        fn name(&self) -> &str {
            self.0.name()
        }

        fn compute(&self, problem: &Problem<'_>, out: Outputs<'_>) -> Result<()> {
            if out.grad.is_none() {
                let bytes = problem.logits().bytes();
                let fifth = &bytes[..bytes.len() / 5 / 4 * 4];
                let sum = fifth.chunks_exact(4).fold(0u32, |a, w| {
                    a.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                });
                std::hint::black_box(sum);
            }
            self.0.compute(problem, out)
        }
    }
}
