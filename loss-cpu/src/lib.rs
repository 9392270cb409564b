//! # loss-cpu: the single-threaded fused SIMD cross-entropy backend
//!
//! [`CpuBackend`] computes loss-core's [weighted softmax cross-entropy](loss_core#the-loss) with
//! one read of each row: an online (chunked) log-sum-exp, and in [`forward_backward_into`] the
//! gradient written while the row is still in cache. SIMD comes from `pulp` with runtime dispatch
//! (AVX2+FMA on x86-64, NEON on aarch64, else the scalar fallback; pulp's AVX-512 path needs a
//! nightly feature, so stable builds use AVX2 there too); no `-C target-cpu` is needed.
//!
//! - [`kernel`]: the row kernels and the unit decomposition that `loss-rayon` distributes;
//! - [`exp`]: the vectorised `exp` and its accuracy.
//!
//! [`forward_backward_into`]: loss_core::LossBackend::forward_backward_into

mod backend;
pub mod exp;
pub mod kernel;

pub use backend::CpuBackend;

/// This crate's version, for reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
