//! # loss-core: weighted softmax cross-entropy, exactly
//!
//! This crate defines what every backend of the workspace computes, and checks that it does:
//!
//! - [`Problem`], [`LossOptions`], [`Target`]: the input, validated once, in one place, into a
//!   [`LossError`] whose [`ErrorKind`] is one of the specification's kinds;
//! - [`LossBackend`]: the trait every backend implements; [`DeviceBackend`] for backends that
//!   can keep a problem on a device;
//! - [`formula`]: every quantity of the loss, once, for every backend to call;
//! - [`ReferenceBackend`]: the plain `f64` composition of those formulas: the oracle;
//! - [`conformance`]: reads PyTorch-generated vector files and runs any backend on them;
//! - `testkit` (feature `testkit`): property tests any backend can run with one macro.
//!
//! The semantics are PyTorch's `torch.nn.functional.cross_entropy`, corners included.
//!
//! ## Shapes
//!
//! Logits are `f32`, `bf16` or `f16` ([`DType`], [`Elems`]), row-major, of shape `(N, C)`, `(N, C, d1, …, dk)` or `(C)` (unbatched). A
//! *position* is one `(n, d1, …, dk)` index; there are `P = N·d1·…·dk` of them (1 unbatched). The
//! class axis is axis 1 (axis 0 unbatched), so in K-dimensional input the `C` logits of one
//! position are `d1·…·dk` apart ([`Layout`]). Index targets are `i64` of shape `(N, d1, …, dk)`
//! (`()` unbatched); probability targets have the logits' shape.
//!
//! ## The loss
//!
//! For position `i` with logits `x_i`:
//! `m_i = max_c x_i[c]`, `LSE_i = m_i + ln Σ_c exp(x_i[c] − m_i)`, `p_i[c] = exp(x_i[c] − LSE_i)`.
//! Class weights `w[c]` default to 1 and `W = Σ_c w[c]`; `ε` is the label smoothing.
//!
//! **Index targets.** A position is valid when `y_i ≠ ignore_index` (`ignore_index` may name a
//! real class: that class is then never a target, but still sits in every softmax). Its loss is
//!
//! `L_i = (1−ε)·w[y_i]·(LSE_i − x_i[y_i]) + (ε/C)·Σ_c w[c]·(LSE_i − x_i[c])`
//!
//! and 0 when it is not valid. With `ε = 0` the second term is left out entirely, so a masked
//! class (logit −∞) does not produce `0·∞ = NaN`. `sum` adds the `L_i`; `mean` divides that sum by
//! `D = Σ_{valid i} w[y_i]` (both terms by the same `D`), which is NaN when `D = 0` (nothing valid,
//! zero weights, no positions).
//!
//! **Probability targets.** With `t'_i[c] = (1−ε)·t_i[c] + ε/C` (targets need not sum to 1;
//! there is no `ignore_index`), `L_i = Σ_c w[c]·t'_i[c]·(LSE_i − x_i[c])`, and `mean` divides by `P`
//! (`Σ_i s_i` with position weights).
//!
//! ## The gradient
//!
//! For an upstream gradient `g` (one value for sum and mean, one per position for none), let
//! `s_i = g_i` (none), `g` (sum), `g/D` (mean; `g/P` for probability targets). Then
//!
//! - index targets, valid `i`:
//!   `∂/∂x_i[c] = s_i·[(1−ε)·w[y_i]·(p_i[c] − [c = y_i]) + (ε/C)·(W·p_i[c] − w[c])]`
//!   (the `ε` term left out when `ε = 0`); an ignored position's gradient is exactly 0, even
//!   when `D = 0`;
//! - probability targets: `∂/∂x_i[c] = s_i·(p_i[c]·Σ_k w[k]·t'_i[k] − w[c]·t'_i[c])`.
//!
//! ## Extensions (conformance format 2)
//!
//! With their defaults everything above holds unchanged.
//!
//! - **Element types.** Logits and probability targets may be `bf16` or `f16`; every sum is
//!   accumulated in at least `f32` on the exactly widened values, the loss, `LSE` and z part are
//!   `f32`, and the gradient is written in the buffer's type (the logits' for PyTorch's
//!   behaviour, or `f32`), rounded once to nearest even.
//! - **Soft-capping** `a > 0`: every logit becomes `x̃ = a·tanh(x/a)` first (−∞ becomes −a, so a
//!   cap un-masks masked classes); everything above uses `x̃`, and the gradient is multiplied by
//!   `1 − tanh²(x/a) = 1 − (x̃/a)²` ([`formula::softcap`], [`formula::softcap_slope`]).
//! - **Position weights** `s_i` (any numbers, default 1): `L_i` becomes `s_i·L_i`; index targets'
//!   `D = Σ_{valid i} s_i·w[y_i]`; probability targets' mean divides by `Σ_i s_i`
//!   ([`formula::DenominatorParts`]); the gradient scale is `s_i` times the one above.
//! - **z-loss** `z ≥ 0`: each valid position adds `z·s_i·LSE_i²`, not class-weighted
//!   ([`formula::z_part`]); `sum` adds it, `mean` divides it by `V = Σ_{valid i} s_i` while the
//!   cross-entropy keeps `D` ([`formula::reduce_with_z`]); its gradient adds
//!   `2·z·s_i·LSE_i·p_i[c]` times the z part's scale (`g/V` for mean) ([`formula::z_coefficient`]).
//! - **Outputs** ([`Outputs`]): besides the loss and the gradient, the per-position `LSE_i` (of the
//!   capped logits, ignored positions included) and the z part, reduced as the loss.
//!
//! ## Non-finite values and precision
//!
//! Non-finite values propagate as IEEE arithmetic does and are never an error: a NaN logit gives
//! its position a NaN loss; −∞ on a non-target class masks that class; −∞ on the target gives +∞.
//! The log-sum-exp subtracts the maximum, so finite logits of any size neither overflow nor
//! underflow. Backends accumulate in blocks or in `f64` so that results hold the conformance
//! tolerance (`rtol 1e-4`, `atol 1e-5`) at `C = 256K` and millions of positions, and reduce in a
//! fixed order so that the same input gives the same bits on every run and thread count.
//!
//! ## Errors
//!
//! | kind | when |
//! | --- | --- |
//! | `invalid_target` | an index target outside `[0, C)` that is not `ignore_index` |
//! | `shape_mismatch` | a data length that is not the product of its shape; a target shape that does not fit the logits; a weight length ≠ `C`; position weights ≠ `P`; probability targets of another element type than the logits'; an upstream gradient or output buffer of the wrong length |
//! | `invalid_option` | label smoothing outside `[0, 1]` or not finite; a non-negative `ignore_index` with probability targets; a z-loss coefficient negative or not finite; a soft-cap ≤ 0 or not finite (or below 2.9e-39, whose `1/a` overflows `f32`) |
//! | `unsupported`, `unavailable`, `backend` | the backend lacks a feature, cannot run here, or failed |

mod backend;
pub mod conformance;
mod device;
pub mod dtype;
mod error;
pub mod formula;
mod problem;
pub mod reference;
pub mod rng;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tolerance;

pub use backend::LossBackend;
pub use device::{DeviceBackend, ResidentProblem};
pub use dtype::{DType, Element, Elems, ElemsMut, OwnedElems, bf16, f16};
pub use error::{ErrorKind, LossError, Result};
pub use problem::{
    DEFAULT_IGNORE_INDEX, GradRequest, Layout, LossOptions, NdTarget, Outputs, OwnedTarget,
    Problem, ProblemData, Reduction, Target, TargetData, shape_from_i64,
};
pub use reference::ReferenceBackend;
pub use tolerance::{DEFAULT_TOLERANCE, Tolerance, grad_tolerance};

/// This crate's version, for reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
