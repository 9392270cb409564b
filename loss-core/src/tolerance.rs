//! Tolerances: how close a backend's number must be to the expected one.

use crate::dtype::DType;

/// An element passes when `|got − expected| ≤ atol + rtol·|expected|`; infinities must match
/// exactly and NaN is matched only by NaN.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative part.
    pub rtol: f64,
    /// Absolute part.
    pub atol: f64,
}

impl Tolerance {
    /// A tolerance from its two parts.
    pub const fn new(rtol: f64, atol: f64) -> Self {
        Tolerance { rtol, atol }
    }

    /// The error of `got` in units of the allowed error: ≤ 1 passes. Infinite when a NaN or an
    /// infinity is not matched exactly; 0 when it is.
    pub fn excess(&self, got: f64, expected: f64) -> f64 {
        if expected.is_nan() || got.is_nan() {
            return if expected.is_nan() && got.is_nan() {
                0.0
            } else {
                f64::INFINITY
            };
        }
        if expected.is_infinite() || got.is_infinite() {
            return if got == expected { 0.0 } else { f64::INFINITY };
        }
        (got - expected).abs() / (self.atol + self.rtol * expected.abs())
    }

    /// Whether `got` passes against `expected`.
    pub fn allows(&self, got: f64, expected: f64) -> bool {
        self.excess(got, expected) <= 1.0
    }
}

/// The tolerance of the vendored vectors, used wherever no file gives one (property tests, the
/// harness's cross-checks). Backends may loosen it through [`crate::LossBackend::tolerance`].
pub const DEFAULT_TOLERANCE: Tolerance = Tolerance::new(1e-4, 1e-5);

/// The tolerance of a gradient *written in* `dtype` where no vector file gives one: the vendored
/// format-2 file's `grad_tolerance_by_dtype` (it allows the rounding of the answer to that type:
/// about half a unit of its last place relatively, and a fraction of its smallest normal
/// absolutely, so `f16`'s subnormal steps of `6·10⁻⁸` count), [`DEFAULT_TOLERANCE`] for `f32`.
pub fn grad_tolerance(dtype: DType) -> Tolerance {
    match dtype {
        DType::F32 => DEFAULT_TOLERANCE,
        DType::Bf16 => Tolerance::new(7.9e-3, 1e-6),
        DType::F16 => Tolerance::new(9.8e-4, 1e-7),
    }
}
