//! Property tests of the reference backend — against the specification's definitions evaluated
//! literally (never against itself), and the shared properties that do not need an oracle —
//! plus unit tests of extremes and of the ndarray entry point.

use loss_core::reference::{self, ReferenceBackend};
use loss_core::testkit::{self as kit, DEFAULT_TOLERANCE};
use loss_core::{ErrorKind, LossBackend, LossOptions, NdTarget, Problem, Reduction, Target};
use ndarray::{Array2, Array3, ArrayD, IxDyn};
use proptest::prelude::*;

/// The specification's definitions evaluated literally, in `f64`, without the factored forms
/// of `loss_core::formula`: `Σ_c w[c]·(LSE − x[c])` summed as written, `p = exp(x − LSE)`.
/// The reference (the composition of the formulas) is checked against this, so that no suite
/// judges the reference by itself.
mod definition {
    use loss_core::{Problem, Reduction, TargetData};

    /// Gathers the `C` logits of one position.
    fn row(problem: &Problem<'_>, logits: &[f64], position: usize) -> Vec<f64> {
        let layout = problem.layout();
        (0..layout.classes)
            .map(|c| logits[layout.index(position, c)])
            .collect()
    }

    /// `m + ln Σ exp(x − m)` with `m` the maximum; NaN in, NaN out.
    fn log_sum_exp(x: &[f64]) -> f64 {
        if x.iter().any(|v| v.is_nan()) {
            return f64::NAN;
        }
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = x.iter().map(|&v| (v - m).exp()).sum();
        m + s.ln()
    }

    fn weight(problem: &Problem<'_>, c: usize) -> f64 {
        f64::from(problem.class_weight(c))
    }

    /// The smoothed probability target `t' = (1 − ε)·t + ε/C` (just `t` when `ε = 0`).
    fn smoothed(problem: &Problem<'_>, t: f32) -> f64 {
        let eps = f64::from(problem.label_smoothing());
        if eps > 0.0 {
            (1.0 - eps) * f64::from(t) + eps / problem.classes() as f64
        } else {
            f64::from(t)
        }
    }

    /// The index target of a position, or `None` when it is ignored (or the target is soft).
    fn valid_index(problem: &Problem<'_>, position: usize) -> Option<usize> {
        match problem.target() {
            TargetData::Indices(y) if y[position] != problem.ignore_index() => {
                Some(y[position] as usize)
            }
            _ => None,
        }
    }

    /// The logits after the soft-cap `a·tanh(x/a)` (unchanged without one).
    fn capped(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
        match problem.softcap() {
            Some(a) => {
                let a = f64::from(a);
                logits.iter().map(|&x| a * (x / a).tanh()).collect()
            }
            None => logits.to_vec(),
        }
    }

    /// `s_i`.
    fn position_weight(problem: &Problem<'_>, i: usize) -> f64 {
        f64::from(problem.position_weight_at(i))
    }

    /// Whether position `i` counts (not ignored).
    fn valid(problem: &Problem<'_>, i: usize) -> bool {
        matches!(problem.target(), TargetData::Probs(_)) || valid_index(problem, i).is_some()
    }

    /// `z·s_i·LSE_i²` of each position (0 where ignored, and everywhere when `z = 0`).
    fn z_parts(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
        let z = f64::from(problem.z_loss());
        let x = capped(problem, logits);
        (0..problem.positions())
            .map(|i| {
                if z > 0.0 && valid(problem, i) {
                    let lse = log_sum_exp(&row(problem, &x, i));
                    z * position_weight(problem, i) * lse * lse
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// `V = Σ_{valid i} s_i`.
    fn valid_weight(problem: &Problem<'_>) -> f64 {
        (0..problem.positions())
            .filter(|&i| valid(problem, i))
            .map(|i| position_weight(problem, i))
            .sum()
    }

    /// Per-position cross-entropy `s_i·L_i` (0 where ignored), in `f64`, of the raw logits.
    pub(crate) fn position_losses_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
        let x = capped(problem, logits);
        position_losses_capped(problem, &x)
            .iter()
            .enumerate()
            .map(|(i, l)| position_weight(problem, i) * l)
            .collect()
    }

    /// Per-position `L_i` of capped logits.
    fn position_losses_capped(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
        let classes = problem.classes();
        let eps = f64::from(problem.label_smoothing());
        (0..problem.positions())
            .map(|i| {
                let x = row(problem, logits, i);
                let lse = log_sum_exp(&x);
                match problem.target() {
                    TargetData::Indices(_) => match valid_index(problem, i) {
                        None => 0.0,
                        Some(y) => {
                            let nll = (1.0 - eps) * weight(problem, y) * (lse - x[y]);
                            if eps > 0.0 {
                                let smooth: f64 = (0..classes)
                                    .map(|c| weight(problem, c) * (lse - x[c]))
                                    .sum();
                                nll + eps / classes as f64 * smooth
                            } else {
                                nll
                            }
                        }
                    },
                    TargetData::Probs(t) => (0..classes)
                        .map(|c| {
                            let tc = smoothed(problem, t.get(problem.layout().index(i, c)));
                            weight(problem, c) * tc * (lse - x[c])
                        })
                        .sum(),
                }
            })
            .collect()
    }

    /// The denominator of `mean`: `Σ_{valid i} s_i·w[y_i]` for index targets, `Σ s_i` for
    /// probabilities.
    pub(crate) fn mean_denominator(problem: &Problem<'_>) -> f64 {
        match problem.target() {
            TargetData::Indices(_) => (0..problem.positions())
                .filter_map(|i| valid_index(problem, i).map(|y| (i, y)))
                .map(|(i, y)| position_weight(problem, i) * weight(problem, y))
                .sum(),
            TargetData::Probs(_) => (0..problem.positions())
                .map(|i| position_weight(problem, i))
                .sum(),
        }
    }

    /// The reduced loss in `f64` ([`Problem::loss_len`] values): cross-entropy over `D` plus
    /// the z-loss over `V` for mean.
    pub(crate) fn forward_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
        let losses = position_losses_f64(problem, logits);
        let z = z_parts(problem, logits);
        let z_on = problem.z_loss() > 0.0;
        let zsum: f64 = z.iter().sum();
        match problem.reduction() {
            Reduction::None => losses.iter().zip(&z).map(|(l, z)| l + z).collect(),
            Reduction::Sum => vec![losses.iter().sum::<f64>() + zsum],
            Reduction::Mean => {
                let ce = losses.iter().sum::<f64>() / mean_denominator(problem);
                vec![if z_on {
                    ce + zsum / valid_weight(problem)
                } else {
                    ce
                }]
            }
        }
    }

    /// The gradient in `f64` of `Σ loss·grad_output` with respect to the logits.
    ///
    /// # Panics
    /// If `logits` or `grad_output` have the wrong length (the checked entry point is
    /// [`LossBackend::backward`]).
    pub(crate) fn backward_f64(
        problem: &Problem<'_>,
        logits: &[f64],
        grad_output: &[f64],
    ) -> Vec<f64> {
        assert_eq!(logits.len(), problem.logits().len());
        assert_eq!(grad_output.len(), problem.loss_len());
        let layout = problem.layout();
        let classes = problem.classes();
        let eps = f64::from(problem.label_smoothing());
        let total_weight: f64 = (0..classes).map(|c| weight(problem, c)).sum();
        let denominator = mean_denominator(problem);
        let v = valid_weight(problem);
        let z = f64::from(problem.z_loss());
        let capped_all = capped(problem, logits);
        let mut grad = vec![0.0; logits.len()];
        for i in 0..problem.positions() {
            let (scale, z_scale) = match problem.reduction() {
                Reduction::None => (grad_output[i], grad_output[i]),
                Reduction::Sum => (grad_output[0], grad_output[0]),
                Reduction::Mean => (grad_output[0] / denominator, grad_output[0] / v),
            };
            let s = position_weight(problem, i);
            let scale = scale * s;
            let x = row(problem, &capped_all, i);
            let lse = log_sum_exp(&x);
            let p = |c: usize| (x[c] - lse).exp();
            // ∂(z·s·LSE²)/∂x̃_c = 2·z·s·LSE·p_c.
            let zc = if z > 0.0 && valid(problem, i) {
                z_scale * 2.0 * z * s * lse
            } else {
                0.0
            };
            match problem.target() {
                TargetData::Indices(_) => {
                    // Ignored positions keep an exact zero, whatever the scale.
                    let Some(y) = valid_index(problem, i) else {
                        continue;
                    };
                    let wy = weight(problem, y);
                    for c in 0..classes {
                        let onehot = if c == y { 1.0 } else { 0.0 };
                        let mut g = (1.0 - eps) * wy * (p(c) - onehot);
                        if eps > 0.0 {
                            g += eps / classes as f64 * (total_weight * p(c) - weight(problem, c));
                        }
                        grad[layout.index(i, c)] = scale * g + zc * p(c);
                    }
                }
                TargetData::Probs(t) => {
                    let tprime: Vec<f64> = (0..classes)
                        .map(|c| smoothed(problem, t.get(layout.index(i, c))))
                        .collect();
                    let mass: f64 = (0..classes).map(|k| weight(problem, k) * tprime[k]).sum();
                    for c in 0..classes {
                        grad[layout.index(i, c)] =
                            scale * (p(c) * mass - weight(problem, c) * tprime[c]) + zc * p(c);
                    }
                }
            }
        }
        // Through the cap: d(a·tanh(x/a))/dx = 1 − tanh²(x/a).
        if let Some(a) = problem.softcap() {
            let a = f64::from(a);
            for (g, &x) in grad.iter_mut().zip(logits) {
                let t = (x / a).tanh();
                *g *= 1.0 - t * t;
            }
        }
        grad
    }
}

fn matches_definition(data: &loss_core::ProblemData) -> Result<(), TestCaseError> {
    let p = data.problem().unwrap();
    let x = p.logits().to_f64_vec();
    let g: Vec<f64> = (0..p.loss_len())
        .map(|i| 0.5 + (i % 5) as f64 * 0.25)
        .collect();
    let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
    let (l, gr) = ReferenceBackend.forward_backward(&p, &g32).unwrap();
    kit::assert_close(
        "loss",
        &l,
        &definition::forward_f64(&p, &x),
        DEFAULT_TOLERANCE,
    )?;
    kit::assert_close(
        "grad",
        &gr,
        &definition::backward_f64(&p, &x, &g),
        DEFAULT_TOLERANCE,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn reference_matches_the_definition(data in kit::problems()) {
        matches_definition(&data)?;
    }

    #[test]
    fn reference_matches_the_definition_on_large_rows(data in kit::large_problems()) {
        matches_definition(&data)?;
    }

    #[test]
    fn shift_invariant(data in kit::problems(), shift in kit::uniform(-20.0, 20.0), which in 0usize..64) {
        kit::check_shift_invariance(&ReferenceBackend, &data, shift, which)?;
    }

    #[test]
    fn gradient_matches_finite_differences(data in kit::problems()) {
        kit::check_finite_differences(&ReferenceBackend, &data)?;
    }

    #[test]
    fn reductions_consistent(data in kit::problems()) {
        kit::check_reductions(&ReferenceBackend, &data)?;
    }

    #[test]
    fn fused_matches_separate_and_repeats(data in kit::problems()) {
        kit::check_fused_and_deterministic(&ReferenceBackend, &data)?;
    }

    #[test]
    fn malformed_input_is_a_typed_error((data, kind) in kit::malformed_problems()) {
        kit::check_malformed(&ReferenceBackend, &data, kind)?;
    }

    #[test]
    fn wrong_buffers_are_a_typed_error(data in kit::problems(), extra in 1usize..3) {
        kit::check_bad_buffers(&ReferenceBackend, &data, extra)?;
    }
}

fn idx<'a>(data: &'a [i64], shape: &'a [usize]) -> Target<'a> {
    Target::Indices { data, shape }
}

#[test]
fn large_logits_do_not_overflow() {
    let x = [1234.0f32, 0.0];
    let p = Problem::new(&x, &[1, 2], idx(&[0], &[1]), LossOptions::new()).unwrap();
    let (l, g) = ReferenceBackend.forward_backward(&p, &[1.0]).unwrap();
    assert_eq!(l, vec![0.0]);
    assert_eq!(g, vec![0.0, 0.0]);
    let p = Problem::new(&x, &[1, 2], idx(&[1], &[1]), LossOptions::new()).unwrap();
    let (l, g) = ReferenceBackend.forward_backward(&p, &[1.0]).unwrap();
    assert_eq!(l, vec![1234.0]);
    assert_eq!(g, vec![1.0, -1.0]);
}

#[test]
fn masked_classes_and_nan() {
    let x = [f32::NEG_INFINITY, 0.0, 1.0, f32::NAN, 0.0, 1.0];
    let p = Problem::new(
        &x,
        &[2, 3],
        idx(&[1, 1], &[2]),
        LossOptions::new().reduction(Reduction::None),
    )
    .unwrap();
    let (l, g) = ReferenceBackend.forward_backward(&p, &[1.0, 1.0]).unwrap();
    assert!(l[0].is_finite());
    assert_eq!(g[0], 0.0, "a masked class has zero gradient");
    assert!(l[1].is_nan());
    // Target on a masked class: +inf.
    let p = Problem::new(&x[..3], &[1, 3], idx(&[0], &[1]), LossOptions::new()).unwrap();
    assert_eq!(ReferenceBackend.forward(&p).unwrap(), vec![f32::INFINITY]);
}

#[test]
fn ignored_positions_have_exact_zero_gradient_even_when_mean_is_nan() {
    let x = [0.3f32, -0.2, 0.9, 0.1];
    let p = Problem::new(&x, &[2, 2], idx(&[-100, -100], &[2]), LossOptions::new()).unwrap();
    let (l, g) = ReferenceBackend.forward_backward(&p, &[1.0]).unwrap();
    assert!(l[0].is_nan());
    assert!(g.iter().all(|&v| v == 0.0 && v.is_sign_positive()));
}

#[test]
fn huge_class_count_stays_accurate() {
    // Uniform logits: the loss is exactly ln C.
    let c = 256 * 1024;
    let x = vec![0.25f32; c];
    let p = Problem::new(&x, &[c], idx(&[7], &[]), LossOptions::new()).unwrap();
    let l = ReferenceBackend.forward(&p).unwrap()[0];
    assert!((f64::from(l) - (c as f64).ln()).abs() < 1e-5, "{l}");
}

#[test]
fn ndarray_views_match_slices() {
    let logits = Array3::from_shape_fn((2, 3, 4), |(n, c, d)| (n * 7 + c * 3 + d) as f32 * 0.1);
    let target =
        ArrayD::from_shape_vec(IxDyn(&[2, 4]), vec![0i64, 1, 2, -100, 2, 2, 1, 0]).unwrap();
    let w = [0.5f32, 1.0, 2.0];
    let opts = LossOptions::new().weight(&w).label_smoothing(0.1);
    let from_nd =
        Problem::from_ndarray(logits.view(), &NdTarget::Indices(target.view()), opts).unwrap();
    let flat = logits.as_slice().unwrap();
    let from_slice = Problem::new(
        flat,
        &[2, 3, 4],
        idx(target.as_slice().unwrap(), &[2, 4]),
        opts,
    )
    .unwrap();
    assert_eq!(from_nd, from_slice);
    assert_eq!(
        ReferenceBackend.forward(&from_nd).unwrap(),
        ReferenceBackend.forward(&from_slice).unwrap()
    );
}

#[test]
fn ndarray_errors_are_typed() {
    let logits = Array2::<f32>::zeros((3, 4));
    let t = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 5, 1]).unwrap();
    let e = Problem::from_ndarray(
        logits.view(),
        &NdTarget::Indices(t.view()),
        LossOptions::new(),
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidTarget);
    // A transposed (non-contiguous) view is refused, not copied or misread.
    let t = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0i64, 1, 2, 0]).unwrap();
    let e = Problem::from_ndarray(logits.t(), &NdTarget::Indices(t.view()), LossOptions::new());
    assert_eq!(e.unwrap_err().kind(), ErrorKind::ShapeMismatch);
    let probs = Array2::<f32>::zeros((3, 5));
    let e = Problem::from_ndarray(
        logits.view(),
        &NdTarget::Probs(probs.view().into_dyn()),
        LossOptions::new(),
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::ShapeMismatch);
    let probs = Array2::<f32>::zeros((3, 4));
    let e = Problem::from_ndarray(
        logits.view(),
        &NdTarget::Probs(probs.view().into_dyn()),
        LossOptions::new().ignore_index(0),
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidOption);
}

#[test]
fn reduction_names_round_trip() {
    for r in Reduction::ALL {
        assert_eq!(Reduction::parse(r.as_str()).unwrap(), r);
    }
    assert_eq!(
        Reduction::parse("avg").unwrap_err().kind(),
        ErrorKind::InvalidOption
    );
}

#[test]
fn f64_entry_points_agree_with_f32_outputs() {
    let x = [0.5f32, -1.0, 2.0, 0.0, 0.25, -0.75];
    let p = Problem::new(
        &x,
        &[2, 3],
        idx(&[2, 0], &[2]),
        LossOptions::new().reduction(Reduction::Sum),
    )
    .unwrap();
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let l64 = reference::forward_f64(&p, &x64)[0];
    assert_eq!(ReferenceBackend.forward(&p).unwrap()[0], l64 as f32);
}

mod ndarray_entry_point {
    use loss_core::testkit::{malformed_problems, proptest::prelude::*};
    use loss_core::{DType, NdTarget, OwnedElems, OwnedTarget, Problem};
    use ndarray::{ArrayViewD, IxDyn};

    proptest! {
        /// `Problem::from_ndarray` judges malformed input like `Problem::new` (whenever the
        /// malformed data can be an ndarray at all: ndarray itself refuses a data length that
        /// does not fit its shape), and never panics.
        #[test]
        fn from_ndarray_gives_the_same_error_kind((data, kind) in malformed_problems()) {
            // ndarray accepts a slice longer than its shape needs; such data cannot be given
            // to from_ndarray malformed, so only exact fits are tried.
            let fits = |shape: &[usize], len: usize| shape.iter().product::<usize>() == len;
            let target_len = match &data.target {
                OwnedTarget::Indices(t) => t.len(),
                OwnedTarget::Probs(t) => t.len(),
            };
            if !fits(&data.shape, data.logits.len()) || !fits(&data.target_shape, target_len) {
                return Ok(());
            }
            // The views are typed, so probabilities of another element type than the logits'
            // cannot be expressed; f32 data is tried here (the half types share the code).
            let (OwnedElems::F32(x), probs) = (&data.logits, &data.target) else {
                return Ok(());
            };
            if matches!(probs, OwnedTarget::Probs(t) if t.dtype() != DType::F32) {
                return Ok(());
            }
            let Ok(logits) = ArrayViewD::from_shape(IxDyn(&data.shape), x.as_slice()) else {
                return Ok(());
            };
            let target = match &data.target {
                OwnedTarget::Indices(t) => ArrayViewD::from_shape(IxDyn(&data.target_shape), t)
                    .map(NdTarget::Indices),
                OwnedTarget::Probs(OwnedElems::F32(t)) => {
                    ArrayViewD::from_shape(IxDyn(&data.target_shape), t.as_slice())
                        .map(NdTarget::Probs)
                }
                OwnedTarget::Probs(_) => return Ok(()),
            };
            let Ok(target) = target else { return Ok(()) };
            let result = std::panic::catch_unwind(|| {
                Problem::from_ndarray(logits.clone(), &target, data.options()).map(|_| ())
            });
            let Ok(result) = result else {
                return Err(TestCaseError::fail("from_ndarray panicked"));
            };
            match result {
                Ok(()) => prop_assert!(false, "accepted malformed input; expected {}", kind),
                Err(e) => prop_assert_eq!(e.kind(), kind, "{}", e),
            }
        }
    }
}

/// The half-gradient generator does what it claims: in every layout, the answers of its `f16`
/// problems reach below `f16`'s smallest normal (without being 0), so the property that runs on
/// it (`half_gradients_are_exact_to_their_type`, on every backend) exercises the subnormals.
#[test]
fn half_gradient_problems_reach_the_subnormals() {
    const F16_MIN_NORMAL: f64 = 6.103_515_625e-5;
    for layout in 0..6 {
        let mut subnormal = 0;
        for seed in 0..24 {
            let data = kit::half_gradient_problem(layout, seed, 7);
            let problem = data.problem().expect("a valid problem");
            if problem.dtype() != loss_core::DType::F16 || problem.reduction() == Reduction::Mean {
                continue;
            }
            let g = vec![1.0; problem.loss_len()];
            let logits = problem.logits().to_f64_vec();
            let grad = reference::answers_f64(&problem, &logits, Some(&g))
                .grad
                .unwrap();
            subnormal += grad
                .iter()
                .filter(|v| v.abs() > 0.0 && v.abs() < F16_MIN_NORMAL)
                .count();
        }
        assert!(
            subnormal >= 10,
            "layout {layout}: {subnormal} subnormal gradients"
        );
    }
}
