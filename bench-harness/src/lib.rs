//! The benchmark harness behind `loss-bench`.
//!
//! - [`verify`]: every backend on every conformance case;
//! - [`run`]: the cross-checked throughput grid, over [`cells`], backend [`instances`] made
//!   ready as a [`subject`] and timed by [`timing`], with the [`bandwidth`] probe and the
//!   [`peers`] (PyTorch and JAX through Python, candle behind the `peers` feature);
//! - [`ab`]: two builds timed in one run, interleaved, each a [`worker`] process;
//! - [`counts`]: deterministic instruction and cache-miss counts under Valgrind;
//! - [`schema`] and [`format`](mod@format): the result file and its renderings;
//! - [`compare`], [`plot`], [`profile`]: regressions, pictures, and picking a backend in code.

pub mod ab;
pub mod backends;
pub mod bandwidth;
#[cfg(feature = "peers")]
pub mod candle_peer;
pub mod cells;
pub mod compare;
pub mod counts;
pub mod error;
pub mod format;
pub mod instances;
pub mod machine;
pub mod options;
pub mod peers;
#[cfg(feature = "cli")]
pub mod plot;
pub mod profile;
pub mod progress;
pub mod run;
pub mod schema;
pub mod subject;
pub mod timing;
pub mod verify;
pub mod worker;
pub mod workload;

/// Versions of the workspace crates linked into this harness.
pub const CRATE_VERSIONS: &[(&str, &str)] = &[
    ("loss-core", loss_core::VERSION),
    ("loss-cpu", loss_cpu::VERSION),
    ("loss-rayon", loss_rayon::VERSION),
    ("loss-wgpu", loss_wgpu::VERSION),
];
