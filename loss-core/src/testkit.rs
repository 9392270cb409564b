//! Property tests that any backend runs with one macro call (feature `testkit`).
//!
//! ```ignore
//! loss_core::backend_property_tests!(my_crate::MyBackend::new());
//! ```
//!
//! The generated tests draw random problems (unbatched, 2-D and K-dimensional shapes, empty
//! batches, weights, ignore patterns including an `ignore_index` that is a real class, label
//! smoothing, every reduction, index and probability targets) and check, against the
//! [reference](crate::reference):
//! agreement; invariance under shifting one position's logits; the gradient against central
//! finite differences of the `f64` reference loss; `sum = Σ none` and `mean = sum / D`;
//! fused = forward + backward; bit-identical repeated calls; and a typed error, never a panic,
//! for malformed input (shapes, targets, options, upstream gradients, output buffers), also
//! through a backend's own entry point for raw input. The problems carry the extensions too
//! (bf16 and f16 logits, soft-capping, z-loss, position weights), and three properties are
//! about them: finite differences through the cap and the z-loss (in the gradient check above),
//! a zero position weight equals ignoring the position in `sum`, and half logits give what the
//! `f32` path gives on the same widened values (bit for bit when the problem has extensions,
//! which every backend runs through one kernel whatever the input type).
//! [`large_problems`] runs the agreement on
//! rows past every backend's path thresholds. The generator ([`Rng`]), the closeness checks
//! ([`check_close`], [`assert_close`], [`expect_close`]) and the shape strategies are the ones
//! every test of the workspace uses.

use std::panic::{AssertUnwindSafe, catch_unwind};

pub use proptest;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::conformance::Tolerance;
use crate::dtype::{DType, OwnedElems};
use crate::problem::{Outputs, OwnedTarget, ProblemData, Reduction};
use crate::reference::{self, ReferenceBackend};
use crate::{ErrorKind, LossBackend, LossError};

pub use crate::conformance::DEFAULT_TOLERANCE;

pub use crate::rng::Rng;

/// Where `got` and `expected` differ by more than `tol`: the first few mismatches with their
/// indices, or `Ok` (lengths must agree too).
pub fn check_close(
    what: &str,
    got: &[f32],
    expected: &[f64],
    tol: Tolerance,
) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            expected.len()
        ));
    }
    let bad: Vec<String> = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|&(_, (&g, &e))| !tol.allows(f64::from(g), e))
        .take(4)
        .map(|(i, (g, e))| format!("[{i}] got {g:e} expected {e:e}"))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}", bad.join(", ")))
    }
}

/// [`check_close`] for unit tests: panics with the mismatches.
///
/// # Panics
/// When the values differ beyond `tol`.
pub fn expect_close(what: &str, got: &[f32], expected: &[f64], tol: Tolerance) {
    if let Err(e) = check_close(what, got, expected, tol) {
        panic!("{e}");
    }
}

/// The bits of each value (for bit-identity checks).
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|x| x.to_bits()).collect()
}

/// `f32` values as `f64`.
pub fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&x| f64::from(x)).collect()
}

/// Floats uniform in `[lo, hi]` on a grid of 2^24 steps. (proptest's own `f32` ranges trip a
/// debug assertion of its float sampler on some seeds — seen here with `0.1f32..2.0` — while
/// integers mapped to floats cannot.)
pub fn uniform(lo: f32, hi: f32) -> impl Strategy<Value = f32> + Clone {
    const STEPS: u32 = 1 << 24;
    (0..=STEPS).prop_map(move |k| {
        let t = k as f32 / STEPS as f32;
        (lo + (hi - lo) * t).clamp(lo, hi)
    })
}

fn class_axis(shape: &[usize]) -> usize {
    usize::from(shape.len() > 1)
}

/// Random logit shapes: unbatched, 2-D (empty batches included) and K-dimensional.
pub fn shapes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        (1usize..12).prop_map(|c| vec![c]),
        (0usize..6, 1usize..12).prop_map(|(n, c)| vec![n, c]),
        (1usize..4, 1usize..8, 1usize..5).prop_map(|(n, c, d)| vec![n, c, d]),
        (1usize..3, 1usize..6, 1usize..3, 1usize..4).prop_map(|(n, c, d, e)| vec![n, c, d, e]),
    ]
}

/// Random valid problems of the given shapes (logits in ±30, positive weights).
pub fn problems_of(
    shapes: impl Strategy<Value = Vec<usize>>,
) -> impl Strategy<Value = ProblemData> {
    shapes
        .prop_flat_map(|shape| {
            let len: usize = shape.iter().product();
            let classes = shape[class_axis(&shape)];
            let positions = len / classes;
            (
                Just(shape),
                prop::collection::vec(uniform(-30.0, 30.0), len),
                prop::option::of(prop::collection::vec(uniform(0.1, 2.0), classes)),
                prop_oneof![Just(-100i64), Just(-1i64), 0..classes as i64],
                prop::collection::vec((0..classes as i64, prop::bool::weighted(0.2)), positions),
                prop::option::weighted(0.3, prop::collection::vec(uniform(0.0, 1.0), len)),
                prop::sample::select(Reduction::ALL.to_vec()),
                prop_oneof![Just(0.0f32), uniform(0.0, 1.0)],
                extensions(positions),
            )
        })
        .prop_map(
            |(shape, logits, weight, ignore, picks, probs, reduction, label_smoothing, ext)| {
                let (dtype, z_loss, softcap, position_weight) = ext;
                let logits = OwnedElems::from_f32(dtype, &logits);
                let (target, target_shape, ignore_index) = match probs {
                    Some(p) => (
                        OwnedTarget::Probs(OwnedElems::from_f32(dtype, &p)),
                        shape.clone(),
                        ignore.min(-1),
                    ),
                    None => {
                        let axis = class_axis(&shape);
                        let tshape = shape
                            .iter()
                            .enumerate()
                            .filter(|&(a, _)| a != axis)
                            .map(|(_, &d)| d)
                            .collect();
                        let idx = picks
                            .into_iter()
                            .map(|(c, ignored)| if ignored { ignore } else { c })
                            .collect();
                        (OwnedTarget::Indices(idx), tshape, ignore)
                    }
                };
                ProblemData {
                    logits,
                    shape,
                    target,
                    target_shape,
                    weight,
                    ignore_index,
                    reduction,
                    label_smoothing,
                    z_loss,
                    softcap,
                    position_weight,
                }
            },
        )
}

/// The extensions of a random problem: the logits' type (f32 most often), a z-loss coefficient,
/// a soft-cap and position weights (negative, zero and positive), each often off.
#[allow(clippy::type_complexity)] // a tuple strategy
fn extensions(
    positions: usize,
) -> impl Strategy<Value = (DType, f32, Option<f32>, Option<Vec<f32>>)> {
    (
        prop_oneof![
            3 => Just(DType::F32),
            1 => Just(DType::Bf16),
            1 => Just(DType::F16),
        ],
        prop_oneof![2 => Just(0.0f32), 1 => uniform(0.0, 0.5)],
        prop::option::weighted(0.3, uniform(2.0, 40.0)),
        prop::option::weighted(
            0.3,
            prop::collection::vec(
                prop_oneof![3 => uniform(-1.0, 2.0), 1 => Just(0.0f32)],
                positions,
            ),
        ),
    )
}

/// The problem without z-loss and soft-cap, in `f32` (for properties those terms break, such as
/// shift invariance).
fn without_lse_terms(data: &ProblemData) -> ProblemData {
    ProblemData {
        z_loss: 0.0,
        softcap: None,
        ..data.clone().with_dtype(DType::F32)
    }
}

/// Random valid problems of [`shapes`].
pub fn problems() -> impl Strategy<Value = ProblemData> {
    problems_of(shapes())
}

/// Rows larger than the small shapes reach, where backends change paths: past loss-cpu's
/// 2048-logit chunk, around the wgpu backend's switch from one position per invocation to a
/// workgroup per position (64 classes), and few rows of at least 32K classes (loss-rayon's
/// split path). Each backend runs the same properties on them.
pub fn large_shapes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        (1usize..4, 2049usize..6000).prop_map(|(n, c)| vec![n, c]),
        (1usize..40, 60usize..70).prop_map(|(n, c)| vec![n, c]),
        (1usize..3, 32768usize..40000).prop_map(|(n, c)| vec![n, c]),
        (2049usize..2200).prop_map(|c| vec![c]),
        (1usize..3, 60usize..70, 3usize..9).prop_map(|(n, c, d)| vec![n, c, d]),
    ]
}

/// Random valid problems of [`large_shapes`].
pub fn large_problems() -> impl Strategy<Value = ProblemData> {
    problems_of(large_shapes())
}

/// The layouts a half gradient is computed in, which the generator of
/// [`half_gradient_problems`] cycles through: each reaches a different kernel of a backend.
const HALF_LAYOUTS: usize = 6;

/// Problems whose half gradients reach below the half type's smallest normal (`f16`: `6.1·10⁻⁵`),
/// with the LSE asked for or not (it moves a backend to another route). Every layout a backend
/// has a kernel for — short rows (rows as lanes), medium rows, long rows, rows long enough to be
/// split, K-dimensional tiles, unbatched — holds *confident* rows: the target's logit sits a margin
/// of `ln C + 8…17` above the others, so `1 − p_y` runs from about `10⁻⁷` to `3·10⁻⁴` and the
/// target's gradient `s·w_y·(p_y − 1)` is a difference of two numbers near `s` that cancel into a
/// half subnormal. Index targets (some ignored) or near-one-hot probability targets; every
/// reduction, class weights, sometimes smoothing, and sometimes a z-loss, position weights or a
/// soft-cap (other routes again).
pub fn half_gradient_problems() -> impl Strategy<Value = (ProblemData, bool)> {
    (0..HALF_LAYOUTS, any::<u64>(), 0usize..8, prop::bool::ANY).prop_map(
        |(layout, seed, extension, stats)| (half_gradient_problem(layout, seed, extension), stats),
    )
}

/// One problem of [`half_gradient_problems`]: `layout` picks the shape's kind, `extension` an
/// extension (values 4 and up: none).
pub fn half_gradient_problem(layout: usize, seed: u64, extension: usize) -> ProblemData {
    let mut rng = Rng::new(seed);
    let mut int = |lo: usize, hi: usize| lo + rng.below(hi - lo);
    let shape: Vec<usize> = match layout % HALF_LAYOUTS {
        0 => vec![int(1, 40), int(2, 17)],
        1 => vec![int(1, 24), int(17, 600)],
        2 => vec![int(1, 3), int(2049, 5000)],
        3 => vec![int(1, 3), int(32768, 33500)],
        4 => match int(0, 2) {
            0 => vec![int(1, 3), int(2, 40), int(2, 19)],
            _ => vec![int(1, 3), int(2, 20), int(2, 5), int(2, 5)],
        },
        _ => vec![int(2, 3000)],
    };
    let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let axis = class_axis(&shape);
    let classes = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let len: usize = shape.iter().product();
    let positions = len / classes;
    let dtype = if rng.below(4) == 0 {
        DType::Bf16
    } else {
        DType::F16
    };
    let probs = !layout.is_multiple_of(HALF_LAYOUTS) && rng.below(5) == 0;
    let mut logits: Vec<f32> = (0..len).map(|_| rng.unit() * 8.0 - 4.0).collect();
    let mut targets = Vec::with_capacity(positions);
    let mut t = vec![0.0f32; if probs { len } else { 0 }];
    for p in 0..positions {
        let at = |c: usize| (p / inner) * classes * inner + p % inner + c * inner;
        let y = rng.below(classes);
        let top = (0..classes)
            .filter(|&c| c != y)
            .map(|c| logits[at(c)])
            .fold(-4.0f32, f32::max);
        logits[at(y)] = top + (classes as f32).ln() + 8.0 + 9.0 * rng.unit();
        if probs {
            let spill = 1e-3 * rng.unit();
            for c in 0..classes {
                t[at(c)] = if c == y {
                    1.0 - spill
                } else {
                    spill / (classes - 1).max(1) as f32
                };
            }
        }
        targets.push(if rng.below(10) == 0 { -100 } else { y as i64 });
    }
    let reduction = [Reduction::Sum, Reduction::None, Reduction::Mean][rng.below(3)];
    let weight =
        (rng.below(2) == 0).then(|| (0..classes).map(|_| 0.5 + 1.5 * rng.unit()).collect());
    let label_smoothing = if rng.below(5) == 0 {
        0.05 * rng.unit()
    } else {
        0.0
    };
    let (z_loss, softcap, position_weight) = match extension {
        0 => (1e-4 + 1e-2 * rng.unit(), None, None),
        1 => (0.0, Some(60.0), None),
        2 => (
            0.0,
            None,
            Some((0..positions).map(|_| 0.25 + 1.5 * rng.unit()).collect()),
        ),
        _ => (0.0, None, None),
    };
    let target_shape = if probs {
        shape.clone()
    } else {
        shape
            .iter()
            .enumerate()
            .filter(|&(a, _)| a != axis)
            .map(|(_, &d)| d)
            .collect()
    };
    ProblemData {
        logits: OwnedElems::from_f32(dtype, &logits),
        target: if probs {
            OwnedTarget::Probs(OwnedElems::from_f32(dtype, &t))
        } else {
            OwnedTarget::Indices(targets)
        },
        shape,
        target_shape,
        weight,
        ignore_index: if probs {
            -100
        } else {
            crate::DEFAULT_IGNORE_INDEX
        },
        reduction,
        label_smoothing,
        z_loss,
        softcap,
        position_weight,
    }
}

/// A valid problem made malformed in one of several ways, with the error kind it must give.
pub fn malformed_problems() -> impl Strategy<Value = (ProblemData, ErrorKind)> {
    (problems(), 0usize..13, any::<u32>()).prop_map(|(data, how, salt)| corrupt(data, how, salt))
}

/// Elements with one more (`grow`) or one fewer value.
fn resized(e: &OwnedElems, grow: bool) -> OwnedElems {
    let mut v = e.to_f32_vec();
    if grow {
        v.push(0.5);
    } else {
        v.pop();
    }
    OwnedElems::from_f32(e.dtype(), &v)
}

fn corrupt(mut d: ProblemData, how: usize, salt: u32) -> (ProblemData, ErrorKind) {
    let classes = d.shape[class_axis(&d.shape)];
    let positions = d.logits.len() / classes;
    let salt = salt as usize;
    let dtype = d.logits.dtype();
    match how {
        0 => {
            d.logits = resized(&d.logits, d.logits.is_empty() || salt.is_multiple_of(2));
            (d, ErrorKind::ShapeMismatch)
        }
        1 => {
            match &mut d.target {
                OwnedTarget::Indices(v) => v.push(0),
                OwnedTarget::Probs(v) => *v = resized(v, true),
            }
            (d, ErrorKind::ShapeMismatch)
        }
        9 => {
            d.z_loss = [-0.1, f32::NAN, f32::INFINITY, f32::NEG_INFINITY][salt % 4];
            (d, ErrorKind::InvalidOption)
        }
        10 => {
            d.softcap = Some([0.0, -30.0, f32::NAN, f32::INFINITY, -0.0][salt % 5]);
            (d, ErrorKind::InvalidOption)
        }
        11 => {
            let n = if salt.is_multiple_of(2) {
                positions + 1 + salt % 3
            } else {
                positions.saturating_sub(1)
            };
            d.position_weight = Some(vec![1.0; if n == positions { n + 1 } else { n }]);
            (d, ErrorKind::ShapeMismatch)
        }
        12 => {
            // Probability targets of another element type than the logits'.
            let other = DType::ALL
                [(DType::ALL.iter().position(|&t| t == dtype).unwrap_or(0) + 1 + salt % 2) % 3];
            d.target = OwnedTarget::Probs(OwnedElems::zeros(other, d.logits.len()));
            d.target_shape = d.shape.clone();
            d.ignore_index = -100;
            (d, ErrorKind::ShapeMismatch)
        }
        2 => {
            // Same number of elements, wrong shape.
            d.target_shape.push(1);
            (d, ErrorKind::ShapeMismatch)
        }
        3 => {
            d.weight = Some(vec![1.0; classes + 1 + salt % 3]);
            (d, ErrorKind::ShapeMismatch)
        }
        4 if positions > 0 => {
            let bad = [
                classes as i64,
                classes as i64 + 7,
                -2,
                -3,
                i64::MAX,
                i64::MIN,
            ]
            .into_iter()
            .filter(|&b| b != d.ignore_index)
            .nth(salt % 5)
            .unwrap_or(classes as i64);
            let axis = class_axis(&d.shape);
            let mut idx = vec![0i64; positions];
            idx[salt % positions] = bad;
            d.target = OwnedTarget::Indices(idx);
            d.target_shape = d
                .shape
                .iter()
                .enumerate()
                .filter(|&(a, _)| a != axis)
                .map(|(_, &x)| x)
                .collect();
            (d, ErrorKind::InvalidTarget)
        }
        5 => {
            d.label_smoothing = [-0.1, 1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY][salt % 5];
            (d, ErrorKind::InvalidOption)
        }
        6 => {
            d.target = OwnedTarget::Probs(OwnedElems::from_f32(dtype, &vec![0.5; d.logits.len()]));
            d.target_shape = d.shape.clone();
            d.ignore_index = (salt % classes) as i64;
            (d, ErrorKind::InvalidOption)
        }
        7 => {
            d.shape = if salt.is_multiple_of(2) {
                vec![]
            } else {
                vec![positions.max(1), 0]
            };
            (d, ErrorKind::ShapeMismatch)
        }
        _ => {
            // Each kind of target with the other kind's shape (ranks differ by one, so this is
            // wrong for every C), its data length fitting the claimed shape.
            let axis = class_axis(&d.shape);
            let index_shape: Vec<usize> = d
                .shape
                .iter()
                .enumerate()
                .filter(|&(a, _)| a != axis)
                .map(|(_, &x)| x)
                .collect();
            (d.target, d.target_shape) = match d.target {
                OwnedTarget::Probs(_) => (
                    OwnedTarget::Indices(vec![0; d.logits.len()]),
                    d.shape.clone(),
                ),
                OwnedTarget::Indices(_) => (
                    OwnedTarget::Probs(OwnedElems::from_f32(dtype, &vec![0.5; positions])),
                    index_shape,
                ),
            };
            (d, ErrorKind::ShapeMismatch)
        }
    }
}

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| TestCaseError::fail(format!("{what} panicked")))
}

/// [`check_close`] inside a property test.
pub fn assert_close(
    what: &str,
    got: &[f32],
    expected: &[f64],
    tol: Tolerance,
) -> Result<(), TestCaseError> {
    check_close(what, got, expected, tol).map_err(TestCaseError::fail)
}

fn upstream(data: &ProblemData, loss_len: usize) -> Vec<f32> {
    // A fixed, non-trivial upstream gradient (one per loss value).
    (0..loss_len)
        .map(|i| {
            if data.reduction == Reduction::None {
                0.5 + (i % 5) as f32 * 0.25
            } else {
                1.5
            }
        })
        .collect()
}

/// The backend agrees with the reference on loss and gradient.
pub fn check_matches_reference(
    backend: &dyn LossBackend,
    data: &ProblemData,
) -> Result<(), TestCaseError> {
    let problem = data
        .problem()
        .map_err(|e| TestCaseError::fail(format!("valid problem rejected: {e}")))?;
    let g = upstream(data, problem.loss_len());
    let tol = backend.tolerance(DEFAULT_TOLERANCE);
    let reference = ReferenceBackend;
    let (rl, rg) = reference.forward_backward(&problem, &g).map_err(fail)?;
    let (l, gr) = guarded("forward_backward", || {
        backend.forward_backward(&problem, &g)
    })?
    .map_err(fail)?;
    assert_close("loss", &l, &widen(&rl), tol)?;
    assert_close("grad", &gr, &widen(&rg), tol)?;
    // The per-position LSE and the z part, asked for beside the loss.
    let stats = |b: &dyn LossBackend| -> crate::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let mut loss = vec![0.0; problem.loss_len()];
        let mut lse = vec![0.0; problem.positions()];
        let mut z = vec![0.0; problem.loss_len()];
        b.compute(
            &problem,
            Outputs::new().loss(&mut loss).lse(&mut lse).z_loss(&mut z),
        )?;
        Ok((loss, lse, z))
    };
    let (rl2, rlse, rz) = stats(&reference).map_err(fail)?;
    let (l2, lse, z) = guarded("compute", || stats(backend))?.map_err(fail)?;
    assert_close("loss beside lse", &l2, &widen(&rl2), tol)?;
    assert_close("lse", &lse, &widen(&rlse), tol)?;
    assert_close("z_loss", &z, &widen(&rz), tol)
}

fn fail(e: LossError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Adding a constant to every logit of one position changes neither loss nor gradient.
pub fn check_shift_invariance(
    backend: &dyn LossBackend,
    data: &ProblemData,
    shift: f32,
    which: usize,
) -> Result<(), TestCaseError> {
    // The soft-cap and the z-loss are not shift invariant, and a shifted half value is rounded.
    let data = &without_lse_terms(data);
    let problem = data.problem().map_err(fail)?;
    let positions = problem.positions();
    if positions == 0 {
        return Ok(());
    }
    let position = which % positions;
    let mut shifted = data.clone();
    let layout = problem.layout();
    let mut x = data.logits.to_f32_vec();
    for c in 0..layout.classes {
        x[layout.index(position, c)] += shift;
    }
    shifted.logits = OwnedElems::from_f32(DType::F32, &x);
    let g = upstream(data, problem.loss_len());
    let (l0, g0) = backend.forward_backward(&problem, &g).map_err(fail)?;
    let moved = shifted.problem().map_err(fail)?;
    let (l1, g1) = backend.forward_backward(&moved, &g).map_err(fail)?;
    // Shifting rounds each logit once more in f32: allow a few f32 ulps of the largest logit.
    let tol = Tolerance::new(2e-4, 2e-4);
    assert_close("shifted loss", &l1, &widen(&l0), tol)?;
    assert_close("shifted grad", &g1, &widen(&g0), tol)
}

/// The gradient matches central finite differences of the `f64` reference loss.
pub fn check_finite_differences(
    backend: &dyn LossBackend,
    data: &ProblemData,
) -> Result<(), TestCaseError> {
    let problem = data.problem().map_err(fail)?;
    let g = upstream(data, problem.loss_len());
    let g64 = widen(&g);
    let grad = backend.backward(&problem, &g).map_err(fail)?;
    let x = problem.logits().to_f64_vec();
    let objective = |x: &[f64]| -> f64 {
        reference::forward_f64(&problem, x)
            .iter()
            .zip(&g64)
            .map(|(l, g)| l * g)
            .sum()
    };
    let h = 1e-5;
    let mut numeric = Vec::with_capacity(x.len());
    let mut probe = x.clone();
    for i in 0..x.len() {
        probe[i] = x[i] + h;
        let up = objective(&probe);
        probe[i] = x[i] - h;
        let down = objective(&probe);
        probe[i] = x[i];
        numeric.push((up - down) / (2.0 * h));
    }
    // NaN-valued objectives (a mean over D = 0) have no derivative to compare.
    if numeric.iter().any(|v| !v.is_finite()) {
        return Ok(());
    }
    assert_close(
        "grad vs finite differences",
        &grad,
        &numeric,
        Tolerance::new(1e-3, 1e-4),
    )
}

/// `sum` equals the sum of `none`, and `mean` equals `sum / D` (the specification's
/// denominator), for loss and gradient.
pub fn check_reductions(
    backend: &dyn LossBackend,
    data: &ProblemData,
) -> Result<(), TestCaseError> {
    // Without the z-loss, whose mean divides by V, not D (the vectors check that part).
    let with = |r: Reduction| ProblemData {
        reduction: r,
        z_loss: 0.0,
        ..data.clone()
    };
    let (none_d, sum_d, mean_d) = (
        with(Reduction::None),
        with(Reduction::Sum),
        with(Reduction::Mean),
    );
    let none_p = none_d.problem().map_err(fail)?;
    let sum_p = sum_d.problem().map_err(fail)?;
    let mean_p = mean_d.problem().map_err(fail)?;
    let ones = vec![1.0f32; none_p.loss_len()];
    let (none_l, none_g) = backend.forward_backward(&none_p, &ones).map_err(fail)?;
    let (sum_l, sum_g) = backend.forward_backward(&sum_p, &[1.0]).map_err(fail)?;
    let (mean_l, mean_g) = backend.forward_backward(&mean_p, &[1.0]).map_err(fail)?;
    let tol = backend.tolerance(DEFAULT_TOLERANCE);
    let total: f64 = none_l.iter().map(|&v| f64::from(v)).sum();
    // Tolerance of a sum: scale the absolute part by the number of terms.
    let sum_tol = Tolerance::new(tol.rtol, tol.atol * (none_l.len().max(1) as f64));
    assert_close("sum vs Σ none", &sum_l, &[total], sum_tol)?;
    assert_close("sum grad vs none grad", &sum_g, &widen(&none_g), tol)?;
    let d = reference::mean_denominator(&mean_p);
    if d != 0.0 && d.is_finite() {
        assert_close("mean vs sum / D", &mean_l, &[f64::from(sum_l[0]) / d], tol)?;
        let scaled: Vec<f64> = sum_g.iter().map(|&v| f64::from(v) / d).collect();
        assert_close("mean grad vs sum grad / D", &mean_g, &scaled, tol)?;
    } else {
        prop_assert!(
            mean_l[0].is_nan(),
            "mean over D = 0 must be NaN, got {}",
            mean_l[0]
        );
    }
    Ok(())
}

/// The fused call gives what forward and backward give separately, and repeating any call gives
/// the same bits.
pub fn check_fused_and_deterministic(
    backend: &dyn LossBackend,
    data: &ProblemData,
) -> Result<(), TestCaseError> {
    let problem = data.problem().map_err(fail)?;
    let g = upstream(data, problem.loss_len());
    let l = backend.forward(&problem).map_err(fail)?;
    let gr = backend.backward(&problem, &g).map_err(fail)?;
    let (fl, fg) = backend.forward_backward(&problem, &g).map_err(fail)?;
    let tol = backend.tolerance(DEFAULT_TOLERANCE);
    assert_close("fused loss", &fl, &widen(&l), tol)?;
    assert_close("fused grad", &fg, &widen(&gr), tol)?;
    let (fl2, fg2) = backend.forward_backward(&problem, &g).map_err(fail)?;
    prop_assert_eq!(bits(&fl), bits(&fl2), "repeated loss differs");
    prop_assert_eq!(bits(&fg), bits(&fg2), "repeated grad differs");
    Ok(())
}

/// Malformed problem data gives the expected error kind, never a panic and never a number: from
/// validation ([`ProblemData::problem`], the only way to a [`crate::Problem`], hence to every
/// entry point of the trait), and from the backend's own entry point for raw input when it has
/// one ([`LossBackend::solve_raw`]).
pub fn check_malformed(
    backend: &dyn LossBackend,
    data: &ProblemData,
    kind: ErrorKind,
) -> Result<(), TestCaseError> {
    match guarded("Problem::new", || data.problem().map(|_| ()))? {
        Ok(()) => {
            return Err(TestCaseError::fail(format!(
                "accepted malformed input; expected {kind}"
            )));
        }
        Err(e) => prop_assert_eq!(e.kind(), kind, "wrong error: {}", e),
    }
    match guarded("solve_raw", || backend.solve_raw(data))? {
        None => Ok(()),
        Some(Ok(())) => Err(TestCaseError::fail(format!(
            "{}'s raw entry point accepted malformed input; expected {kind}",
            backend.name()
        ))),
        Some(Err(e)) => {
            prop_assert_eq!(
                e.kind(),
                kind,
                "{}'s raw entry point: {}",
                backend.name(),
                e
            );
            Ok(())
        }
    }
}

/// Wrong-length upstream gradients and output buffers give `shape_mismatch` from every entry
/// point of the backend, never a panic and never a number.
pub fn check_bad_buffers(
    backend: &dyn LossBackend,
    data: &ProblemData,
    extra: usize,
) -> Result<(), TestCaseError> {
    let problem = data.problem().map_err(fail)?;
    let n = problem.loss_len();
    let len = problem.len();
    let bad_g = vec![1.0f32; n + extra];
    let short_g = vec![1.0f32; n.saturating_sub(extra)];
    let good_g = vec![1.0f32; n];
    let expect = |what: &str, r: crate::Result<()>| -> Result<(), TestCaseError> {
        match r {
            Ok(()) => Err(TestCaseError::fail(format!(
                "{what}: accepted a wrong length"
            ))),
            Err(e) => {
                prop_assert_eq!(e.kind(), ErrorKind::ShapeMismatch, "{}: {}", what, e);
                Ok(())
            }
        }
    };
    for g in [&bad_g, &short_g] {
        if g.len() == n {
            continue;
        }
        expect(
            "backward",
            guarded("backward", || backend.backward(&problem, g).map(|_| ()))?,
        )?;
        expect(
            "forward_backward",
            guarded("forward_backward", || {
                backend.forward_backward(&problem, g).map(|_| ())
            })?,
        )?;
    }
    let mut loss_bad = vec![0.0f32; n + extra];
    let mut loss_ok = vec![0.0f32; n];
    let mut grad_bad = vec![0.0f32; len + extra];
    let mut grad_ok = vec![0.0f32; len];
    expect(
        "forward_into",
        guarded("forward_into", || {
            backend.forward_into(&problem, &mut loss_bad)
        })?,
    )?;
    expect(
        "backward_into",
        guarded("backward_into", || {
            backend.backward_into(&problem, &good_g, &mut grad_bad)
        })?,
    )?;
    expect(
        "forward_backward_into (loss)",
        guarded("forward_backward_into", || {
            backend.forward_backward_into(&problem, &good_g, &mut loss_bad, &mut grad_ok)
        })?,
    )?;
    expect(
        "forward_backward_into (grad)",
        guarded("forward_backward_into", || {
            backend.forward_backward_into(&problem, &good_g, &mut loss_ok, &mut grad_bad)
        })?,
    )
}

/// A zero position weight equals ignoring that position, in `sum` (loss and gradient; index
/// targets): position `which` gets weight 0 in one problem and `ignore_index` in the other.
pub fn check_zero_position_weight(
    backend: &dyn LossBackend,
    data: &ProblemData,
    which: usize,
) -> Result<(), TestCaseError> {
    let positions = data.problem().map_err(fail)?.positions();
    let OwnedTarget::Indices(y) = &data.target else {
        return Ok(());
    };
    if positions == 0 || data.ignore_index >= 0 {
        return Ok(());
    }
    let k = which % positions;
    let mut weights = data
        .position_weight
        .clone()
        .unwrap_or_else(|| vec![1.0; positions]);
    weights[k] = 0.0;
    let zeroed = ProblemData {
        reduction: Reduction::Sum,
        position_weight: Some(weights.clone()),
        ..data.clone()
    };
    let mut y = y.clone();
    y[k] = data.ignore_index;
    let ignored = ProblemData {
        target: OwnedTarget::Indices(y),
        reduction: Reduction::Sum,
        position_weight: Some(weights),
        ..data.clone()
    };
    let (a, b) = (
        zeroed.problem().map_err(fail)?,
        ignored.problem().map_err(fail)?,
    );
    let (la, ga) = backend.forward_backward(&a, &[1.0]).map_err(fail)?;
    let (lb, gb) = backend.forward_backward(&b, &[1.0]).map_err(fail)?;
    let tol = backend.tolerance(DEFAULT_TOLERANCE);
    let sum_tol = Tolerance::new(tol.rtol, tol.atol * positions as f64);
    assert_close("zero weight vs ignored: loss", &la, &widen(&lb), sum_tol)?;
    assert_close("zero weight vs ignored: grad", &ga, &widen(&gb), tol)
}

/// The gradient written in the logits' half type (with the loss, and the LSE when `stats`)
/// agrees with the reference's `f64` gradient to that type's gradient tolerance
/// ([`crate::grad_tolerance`]) — to the half type's rounding, subnormals included. For
/// [`half_gradient_problems`].
pub fn check_half_gradient_exact(
    backend: &dyn LossBackend,
    data: &ProblemData,
    stats: bool,
) -> Result<(), TestCaseError> {
    let problem = data.problem().map_err(fail)?;
    let dtype = problem.dtype();
    let g = upstream(data, problem.loss_len());
    let logits = problem.logits().to_f64_vec();
    let g64 = widen(&g);
    let expected = reference::answers_f64(&problem, &logits, Some(&g64))
        .grad
        .expect("a gradient was asked for");
    let mut loss = vec![0.0; problem.loss_len()];
    let mut lse = vec![0.0; problem.positions()];
    let mut grad = OwnedElems::zeros(dtype, problem.len());
    guarded("compute", || {
        let out = Outputs::new().loss(&mut loss).grad(&g, grad.view_mut());
        backend.compute(&problem, if stats { out.lse(&mut lse) } else { out })
    })?
    .map_err(fail)?;
    let tol = backend.tolerance(crate::grad_tolerance(dtype));
    assert_close(
        &format!("{} gradient", dtype.as_str()),
        &grad.to_f32_vec(),
        &expected,
        tol,
    )
}

/// Half logits give what the `f32` path gives on the same widened values: the loss, the `f32`
/// gradient, the LSE. Bit for bit when the problem has an extension on (every backend runs those
/// through one kernel whatever the input type); within the tolerance otherwise (a backend may
/// keep a separate kernel for plain `f32` problems).
pub fn check_half_matches_f32(
    backend: &dyn LossBackend,
    data: &ProblemData,
    half: DType,
) -> Result<(), TestCaseError> {
    let halved = data.clone().with_dtype(half);
    let widened = ProblemData {
        logits: OwnedElems::F32(halved.logits.to_f32_vec()),
        target: match &halved.target {
            OwnedTarget::Probs(t) => OwnedTarget::Probs(OwnedElems::F32(t.to_f32_vec())),
            t => t.clone(),
        },
        ..halved.clone()
    };
    let (h, w) = (
        halved.problem().map_err(fail)?,
        widened.problem().map_err(fail)?,
    );
    let g = upstream(data, h.loss_len());
    let run = |p: &crate::Problem<'_>| -> crate::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let mut loss = vec![0.0; p.loss_len()];
        let mut lse = vec![0.0; p.positions()];
        let mut grad = vec![0.0; p.len()];
        backend.compute(
            p,
            Outputs::new()
                .loss(&mut loss)
                .lse(&mut lse)
                .grad(&g, &mut grad),
        )?;
        Ok((loss, lse, grad))
    };
    let (hl, hlse, hg) = guarded("compute", || run(&h))?.map_err(fail)?;
    let (wl, wlse, wg) = run(&w).map_err(fail)?;
    if widened.options().has_extensions() {
        prop_assert_eq!(bits(&hl), bits(&wl), "half vs f32 loss bits");
        prop_assert_eq!(bits(&hlse), bits(&wlse), "half vs f32 lse bits");
        prop_assert_eq!(bits(&hg), bits(&wg), "half vs f32 grad bits");
        Ok(())
    } else {
        let tol = backend.tolerance(DEFAULT_TOLERANCE);
        assert_close("half vs f32 loss", &hl, &widen(&wl), tol)?;
        assert_close("half vs f32 lse", &hlse, &widen(&wlse), tol)?;
        assert_close("half vs f32 grad", &hg, &widen(&wg), tol)
    }
}

/// Generates the property tests of this module for a backend.
///
/// ```ignore
/// loss_core::backend_property_tests!(loss_cpu::CpuBackend::new());
/// loss_core::backend_property_tests!(loss_cpu::CpuBackend::new(), 64); // cases per property
/// // A backend that may be missing on this machine: an `Option`, evaluated once per test; when
/// // it is `None` each test prints one `SKIPPED` line and checks nothing (it never falls back
/// // to another backend).
/// loss_core::backend_property_tests!(available: my_gpu_backend(), 48);
/// ```
///
/// Every backend runs the same properties: on [`problems`] (small shapes of every kind) and on
/// [`large_problems`] (rows past the paths' thresholds, fewer cases).
#[macro_export]
macro_rules! backend_property_tests {
    ($make:expr) => {
        $crate::backend_property_tests!(@tests (::core::option::Option::Some($make)), 64);
    };
    (available: $opt:expr) => {
        $crate::backend_property_tests!(@tests ($opt), 64);
    };
    (available: $opt:expr, $cases:expr) => {
        $crate::backend_property_tests!(@tests ($opt), $cases);
    };
    ($make:expr, $cases:expr) => {
        $crate::backend_property_tests!(@tests (::core::option::Option::Some($make)), $cases);
    };
    (@tests ($opt:expr), $cases:expr) => {
        mod backend_properties {
            #[allow(unused_imports)] // the backend expression may name items of the parent
            use super::*;
            use $crate::testkit as kit;
            use $crate::testkit::proptest::prelude::*;

            fn config(cases: u32) -> kit::proptest::test_runner::Config {
                kit::proptest::test_runner::Config::with_cases(cases)
            }

            /// Runs `$body` with `$b` bound to the backend, or reports the test skipped.
            macro_rules! with_backend {
                ($b:ident => $body:block) => {{
                    let Some(backend) = $opt else {
                        eprintln!("SKIPPED: the backend is not available on this machine");
                        return;
                    };
                    let $b: &dyn $crate::LossBackend = &backend;
                    $body
                }};
            }

            #[test]
            fn matches_reference() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems())| {
                        kit::check_matches_reference(b, &data)?;
                    });
                })
            }

            #[test]
            fn large_rows_match_reference() {
                with_backend!(b => {
                    kit::proptest::proptest!(config(6), |(data in kit::large_problems())| {
                        kit::check_matches_reference(b, &data)?;
                        kit::check_fused_and_deterministic(b, &data)?;
                    });
                })
            }

            #[test]
            fn shift_invariant() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems(), shift in kit::uniform(-20.0, 20.0), which in 0usize..64)| {
                        kit::check_shift_invariance(b, &data, shift, which)?;
                    });
                })
            }

            #[test]
            fn gradient_matches_finite_differences() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems())| {
                        kit::check_finite_differences(b, &data)?;
                    });
                })
            }

            #[test]
            fn reductions_consistent() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems())| {
                        kit::check_reductions(b, &data)?;
                    });
                })
            }

            #[test]
            fn fused_matches_separate_and_repeats() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems())| {
                        kit::check_fused_and_deterministic(b, &data)?;
                    });
                })
            }

            #[test]
            fn zero_position_weight_is_ignoring() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems(), which in 0usize..64)| {
                        kit::check_zero_position_weight(b, &data, which)?;
                    });
                })
            }

            #[test]
            fn half_logits_match_f32_on_widened_values() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems(), half in kit::proptest::sample::select(vec![$crate::DType::Bf16, $crate::DType::F16]))| {
                        kit::check_half_matches_f32(b, &data, half)?;
                    });
                })
            }

            #[test]
            fn half_gradients_are_exact_to_their_type() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases.min(48)), |((data, stats) in kit::half_gradient_problems())| {
                        kit::check_half_gradient_exact(b, &data, stats)?;
                    });
                })
            }

            #[test]
            fn malformed_input_is_a_typed_error() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |((data, kind) in kit::malformed_problems())| {
                        kit::check_malformed(b, &data, kind)?;
                    });
                })
            }

            #[test]
            fn wrong_buffers_are_a_typed_error() {
                with_backend!(b => {
                    kit::proptest::proptest!(config($cases), |(data in kit::problems(), extra in 1usize..3)| {
                        kit::check_bad_buffers(b, &data, extra)?;
                    });
                })
            }
        }
    };
}

/// A reproducible `(batch, classes)` problem for benchmarks and measurements: logits uniform in
/// `[-6, 6)`, index targets uniform over the classes, weights in `[0.5, 1.5)`, weighted mean.
pub fn weighted_batch(batch: usize, classes: usize, seed: u64) -> ProblemData {
    let mut rng = Rng::new(seed);
    let mut unit = move || rng.unit();
    let logits: Vec<f32> = (0..batch * classes).map(|_| unit() * 12.0 - 6.0).collect();
    let targets = (0..batch)
        .map(|_| ((unit() * classes as f32) as i64).min(classes as i64 - 1))
        .collect();
    let weight = (0..classes).map(|_| 0.5 + unit()).collect();
    ProblemData {
        logits: logits.into(),
        shape: vec![batch, classes],
        target: OwnedTarget::Indices(targets),
        target_shape: vec![batch],
        weight: Some(weight),
        ignore_index: crate::DEFAULT_IGNORE_INDEX,
        reduction: Reduction::Mean,
        label_smoothing: 0.0,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    }
}
