//! Explicit extremes: numerical stability, non-finite logits, empty and fully ignored
//! batches, and bit-for-bit determinism on a large input.

mod common;

use common::{Rng, assert_close, check_against_reference};
use loss_core::conformance::DEFAULT_TOLERANCE;
use loss_core::{LossBackend, LossOptions, OwnedTarget, Problem, ProblemData, Reduction, Target};
use loss_wgpu::WgpuBackend;

fn two_d(logits: Vec<f32>, classes: usize, target: Vec<i64>, reduction: Reduction) -> ProblemData {
    let n = logits.len() / classes;
    ProblemData {
        logits: logits.into(),
        shape: vec![n, classes],
        target: OwnedTarget::Indices(target),
        target_shape: vec![n],
        weight: None,
        ignore_index: -100,
        reduction,
        label_smoothing: 0.0,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    }
}

fn huge_logits_are_stable_on(backend: &WgpuBackend) {
    let data = two_d(vec![1234.0, 0.0], 2, vec![0], Reduction::None);
    let problem = data.problem().unwrap();
    let (loss, grad) = backend.forward_backward(&problem, &[1.0]).unwrap();
    assert_eq!(loss, [0.0]);
    assert_eq!(grad, [0.0, 0.0]);
    let probs = backend.backward(&problem, &[1.0]).unwrap();
    assert_eq!(probs, [0.0, 0.0]);
    // Softmax of [1234, 0] is exactly [1, 0]: with target 1 the gradient is [1, -1].
    let data = two_d(vec![1234.0, 0.0], 2, vec![1], Reduction::Sum);
    let (loss, grad) = backend
        .forward_backward(&data.problem().unwrap(), &[1.0])
        .unwrap();
    assert_eq!(loss, [1234.0]);
    assert_eq!(grad, [1.0, -1.0]);
    // Large finite magnitudes and a wide spread.
    let data = two_d(
        vec![3.0e4, 2.9999e4, -3.0e4, 1.0e-3, -1.0e-3, 0.0],
        3,
        vec![1, 2],
        Reduction::None,
    );
    check_against_reference(backend, &data, DEFAULT_TOLERANCE);
}

fn non_finite_logits_propagate_like_the_reference_on(backend: &WgpuBackend) {
    let (inf, nan) = (f32::INFINITY, f32::NAN);
    let logits = vec![
        1.0, nan, 0.0, // NaN logit: NaN loss and gradient
        -inf, 2.0, 1.0, // masked class: probability 0, gradient 0
        -inf, 2.0, 1.0, // -inf on the target: +inf loss
        -inf, -inf, -inf, // every class masked: NaN
        inf, 0.0, 1.0, // +inf: NaN
        -inf, 2.0, 1.0, // ignored: exactly 0
    ];
    for reduction in Reduction::ALL {
        for eps in [0.0, 0.2] {
            let mut data = two_d(logits.clone(), 3, vec![0, 1, 0, 1, 2, -100], reduction);
            data.label_smoothing = eps;
            check_against_reference(backend, &data, DEFAULT_TOLERANCE);
            data.weight = Some(vec![0.5, 0.0, 2.0]);
            check_against_reference(backend, &data, DEFAULT_TOLERANCE);
        }
    }
    let data = two_d(logits[3..6].to_vec(), 3, vec![1], Reduction::None);
    let (loss, grad) = backend
        .forward_backward(&data.problem().unwrap(), &[1.0])
        .unwrap();
    assert!(loss[0].is_finite());
    assert_eq!(grad[0], 0.0, "a masked class gets an exact 0");
}

fn empty_and_fully_ignored_batches_on(backend: &WgpuBackend) {
    // No positions: sum 0, mean NaN, none empty.
    for reduction in Reduction::ALL {
        let data = two_d(Vec::new(), 4, Vec::new(), reduction);
        let problem = data.problem().unwrap();
        let g = vec![1.0; problem.loss_len()];
        let (loss, grad) = backend.forward_backward(&problem, &g).unwrap();
        assert!(grad.is_empty());
        match reduction {
            Reduction::None => assert!(loss.is_empty()),
            Reduction::Sum => assert_eq!(loss, [0.0]),
            Reduction::Mean => assert!(loss[0].is_nan()),
        }
    }
    // Everything ignored: mean NaN, gradient exactly 0 (not 0·inf).
    let data = two_d(
        vec![1.0, 2.0, 3.0, 4.0],
        2,
        vec![-100, -100],
        Reduction::Mean,
    );
    let (loss, grad) = backend
        .forward_backward(&data.problem().unwrap(), &[1.0])
        .unwrap();
    assert!(loss[0].is_nan());
    assert_eq!(grad, [0.0; 4]);
    // An ignore_index that is a real class; zero weights on every chosen class (D = 0).
    let logits = [0.5f32, 1.0, -1.0, 2.0, 0.0, 0.0];
    let weight = [0.0f32, 1.0, 1.0];
    let problem = Problem::new(
        &logits,
        &[2, 3],
        Target::Indices {
            data: &[0, 1],
            shape: &[2],
        },
        LossOptions::new().weight(&weight).ignore_index(1),
    )
    .unwrap();
    let (loss, grad) = backend.forward_backward(&problem, &[1.0]).unwrap();
    assert!(loss[0].is_nan());
    assert!(grad[..3].iter().all(|g| g.is_nan()), "{grad:?}");
    assert_eq!(&grad[3..], &[0.0; 3]);
}

fn unbatched_input_on(backend: &WgpuBackend) {
    for reduction in Reduction::ALL {
        let data = ProblemData {
            logits: vec![0.3, -1.0, 2.0, 0.0].into(),
            shape: vec![4],
            target: OwnedTarget::Indices(vec![2]),
            target_shape: vec![],
            weight: Some(vec![1.0, 2.0, 0.5, 1.5]),
            ignore_index: -100,
            reduction,
            label_smoothing: 0.3,
            z_loss: 0.0,
            softcap: None,
            position_weight: None,
        };
        check_against_reference(backend, &data, DEFAULT_TOLERANCE);
    }
}

fn repeated_runs_give_the_same_bits_on(backend: &WgpuBackend) {
    let mut rng = Rng::new(21);
    let (n, c) = (4096, 300);
    let data = ProblemData {
        logits: rng.logits(n * c, 10.0).into(),
        shape: vec![n, c],
        target: OwnedTarget::Indices((0..n).map(|_| rng.below(c) as i64).collect()),
        target_shape: vec![n],
        weight: Some((0..c).map(|_| rng.uniform(0.1, 2.0)).collect()),
        ignore_index: -100,
        reduction: Reduction::Mean,
        label_smoothing: 0.1,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    };
    let problem = data.problem().unwrap();
    let first = backend.forward_backward(&problem, &[1.0]).unwrap();
    let expected = loss_core::ReferenceBackend.forward(&problem).unwrap();
    assert_close(
        "loss",
        &first.0,
        &[f64::from(expected[0])],
        DEFAULT_TOLERANCE,
    );
    let mut resident = backend.upload(&problem).unwrap();
    for _ in 0..3 {
        let again = backend.forward_backward(&problem, &[1.0]).unwrap();
        assert_eq!(first.0[0].to_bits(), again.0[0].to_bits());
        assert!(
            first
                .1
                .iter()
                .zip(&again.1)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        let resident_loss = resident.forward_backward(&[1.0]).unwrap();
        assert_eq!(first.0[0].to_bits(), resident_loss[0].to_bits());
    }
}

#[test]
fn huge_logits_are_stable() {
    for backend in common::all() {
        huge_logits_are_stable_on(backend);
    }
}

#[test]
fn non_finite_logits_propagate_like_the_reference() {
    for backend in common::all() {
        non_finite_logits_propagate_like_the_reference_on(backend);
    }
}

#[test]
fn empty_and_fully_ignored_batches() {
    for backend in common::all() {
        empty_and_fully_ignored_batches_on(backend);
    }
}

#[test]
fn unbatched_input() {
    for backend in common::all() {
        unbatched_input_on(backend);
    }
}

#[test]
fn repeated_runs_give_the_same_bits() {
    for backend in common::all() {
        repeated_runs_give_the_same_bits_on(backend);
    }
}
