//! Property tests of the reference backend, plus unit tests of extremes and of the ndarray entry
//! point.

use loss_core::reference::{self, ReferenceBackend};
use loss_core::{
    ErrorKind, LossBackend, LossOptions, NdTarget, Problem, Reduction, Target,
    backend_property_tests,
};
use ndarray::{Array2, Array3, ArrayD, IxDyn};

backend_property_tests!(ReferenceBackend::new(), 96);

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
    use loss_core::{NdTarget, OwnedTarget, Problem};
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
            let Ok(logits) = ArrayViewD::from_shape(IxDyn(&data.shape), &data.logits) else {
                return Ok(());
            };
            let target = match &data.target {
                OwnedTarget::Indices(t) => ArrayViewD::from_shape(IxDyn(&data.target_shape), t)
                    .map(NdTarget::Indices),
                OwnedTarget::Probs(t) => ArrayViewD::from_shape(IxDyn(&data.target_shape), t)
                    .map(NdTarget::Probs),
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
