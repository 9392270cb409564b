//! The device-resident API: upload once, run many times, read back only what is asked.

mod common;

use common::Rng;
use loss_core::{ErrorKind, LossBackend, LossOptions, Problem, Reduction, Target};

use common::bits;

#[test]
fn resident_runs_match_end_to_end() {
    let backend = backend_or_skip!();
    let mut rng = Rng::new(11);
    let logits = rng.logits(64 * 10 * 3, 6.0);
    let target: Vec<i64> = (0..64 * 3).map(|i| (i % 10) as i64).collect();
    let weight: Vec<f32> = (0..10).map(|c| 0.5 + c as f32 * 0.1).collect();
    for reduction in Reduction::ALL {
        let options = LossOptions::new()
            .weight(&weight)
            .reduction(reduction)
            .label_smoothing(0.1)
            .ignore_index(4);
        let problem = Problem::new(
            &logits,
            &[64, 10, 3],
            Target::Indices {
                data: &target,
                shape: &[64, 3],
            },
            options,
        )
        .unwrap();
        let g: Vec<f32> = (0..problem.loss_len()).map(|i| 1.0 + i as f32).collect();
        let (loss, grad) = backend.forward_backward(&problem, &g).unwrap();

        let mut resident = backend.upload(&problem).unwrap();
        assert_eq!(resident.loss_len(), problem.loss_len());
        assert_eq!(resident.grad_len(), logits.len());
        let mut out = vec![0.0; grad.len()];
        let err = resident.read_grad(&mut out).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend, "no gradient yet: {err}");

        assert_eq!(bits(&resident.forward().unwrap()), bits(&loss));
        for _ in 0..3 {
            assert_eq!(bits(&resident.forward_backward(&g).unwrap()), bits(&loss));
        }
        resident.read_grad(&mut out).unwrap();
        assert_eq!(bits(&out), bits(&grad));

        // backward alone, with another upstream gradient, then read.
        let g2: Vec<f32> = g.iter().map(|v| v * 2.0).collect();
        resident.backward(&g2).unwrap();
        resident.read_grad(&mut out).unwrap();
        assert_eq!(bits(&out), bits(&backend.backward(&problem, &g2).unwrap()));
        // A forward-only run leaves the last gradient readable.
        resident.forward().unwrap();
        resident.read_grad(&mut out).unwrap();
        assert_eq!(bits(&out), bits(&backend.backward(&problem, &g2).unwrap()));
    }
}

#[test]
fn resident_problems_are_independent() {
    let backend = backend_or_skip!();
    let mut rng = Rng::new(12);
    let a = rng.logits(8 * 5, 4.0);
    let b = rng.logits(3 * 7, 4.0);
    let ta = [0i64, 1, 2, 3, 4, 0, 1, 2];
    let tb = [6i64, 0, 3];
    let pa = Problem::new(
        &a,
        &[8, 5],
        Target::Indices {
            data: &ta,
            shape: &[8],
        },
        LossOptions::new(),
    )
    .unwrap();
    let pb = Problem::new(
        &b,
        &[3, 7],
        Target::Indices {
            data: &tb,
            shape: &[3],
        },
        LossOptions::new().reduction(Reduction::Sum),
    )
    .unwrap();
    let mut ra = backend.upload(&pa).unwrap();
    let mut rb = backend.upload(&pb).unwrap();
    // End-to-end calls in between use the backend's own buffers, not the resident ones.
    let la = backend.forward(&pa).unwrap();
    let lb = backend.forward(&pb).unwrap();
    assert_eq!(ra.forward().unwrap(), la);
    assert_eq!(rb.forward().unwrap(), lb);
    assert_eq!(ra.forward().unwrap(), la);
}

#[test]
fn resident_wrong_lengths_are_typed_errors() {
    let backend = backend_or_skip!();
    let logits = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let problem = Problem::new(
        &logits,
        &[2, 3],
        Target::Indices {
            data: &[0, 2],
            shape: &[2],
        },
        LossOptions::new().reduction(Reduction::None),
    )
    .unwrap();
    let mut resident = backend.upload(&problem).unwrap();
    let kind = |r: loss_core::Result<()>| r.unwrap_err().kind();
    assert_eq!(kind(resident.backward(&[1.0])), ErrorKind::ShapeMismatch);
    assert_eq!(
        kind(resident.forward_backward(&[1.0; 3]).map(|_| ())),
        ErrorKind::ShapeMismatch
    );
    assert_eq!(
        kind(resident.forward_into(&mut [0.0; 1])),
        ErrorKind::ShapeMismatch
    );
    resident.backward(&[1.0, 1.0]).unwrap();
    assert_eq!(
        kind(resident.read_grad(&mut [0.0; 5])),
        ErrorKind::ShapeMismatch
    );
}

#[test]
fn threads_share_one_backend() {
    let backend = backend_or_skip!();
    let mut rng = Rng::new(13);
    let logits = rng.logits(200 * 33, 5.0);
    let target: Vec<i64> = (0..200).map(|i| (i * 7 % 33) as i64).collect();
    let problem = Problem::new(
        &logits,
        &[200, 33],
        Target::Indices {
            data: &target,
            shape: &[200],
        },
        LossOptions::new(),
    )
    .unwrap();
    let (loss, grad) = backend.forward_backward(&problem, &[1.0]).unwrap();
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut resident = backend.upload(&problem).unwrap();
                    for _ in 0..5 {
                        let (l, g) = backend.forward_backward(&problem, &[1.0]).unwrap();
                        assert_eq!(bits(&l), bits(&loss));
                        assert_eq!(bits(&g), bits(&grad));
                        assert_eq!(bits(&resident.forward().unwrap()), bits(&loss));
                    }
                })
            })
            .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
}

#[test]
fn reports_its_adapter() {
    let backend = backend_or_skip!();
    assert_eq!(backend.name(), "wgpu");
    let info = backend.adapter_info();
    assert!(backend.describe().contains(&info.name));
    assert!(format!("{backend:?}").contains(&info.name));
    assert!(backend.max_binding_bytes() >= 1 << 20);
}

/// A resident call is one queue submission (dispatches, loss reduction and the loss's copy to
/// the staging buffer in one command buffer), on every kernel variant, and an end-to-end fused
/// call whose results fit the staging buffer is one too.
#[test]
fn one_submit_per_call() {
    if common::backend().is_none() {
        return;
    }
    // Backends of this test's own: other tests submit on the shared ones meanwhile.
    let options = std::iter::once(loss_wgpu::WgpuOptions::default())
        .chain(common::Variant::ALL.iter().map(|v| v.options()));
    for options in options {
        let backend = &loss_wgpu::WgpuBackend::with_options(&options).unwrap();
        let mut rng = Rng::new(5);
        for (n, c) in [(8usize, 40usize), (4, 700), (2, 3000)] {
            let logits = rng.logits(n * c, 4.0);
            let target: Vec<i64> = (0..n).map(|i| (i * 7 % c) as i64).collect();
            let (shape, target_shape) = ([n, c], [n]);
            let problem = Problem::new(
                &logits,
                &shape,
                Target::Indices {
                    data: &target,
                    shape: &target_shape,
                },
                LossOptions::new().label_smoothing(0.1),
            )
            .unwrap();
            let mut resident = backend.upload(&problem).unwrap();
            for _ in 0..3 {
                let before = backend.submissions();
                let loss = resident.forward_backward(&[1.0]).unwrap();
                assert_eq!(
                    backend.submissions() - before,
                    1,
                    "fused {n}x{c} on {backend:?}"
                );
                assert!(loss[0].is_finite());
                let before = backend.submissions();
                resident.forward().unwrap();
                assert_eq!(backend.submissions() - before, 1, "forward {n}x{c}");
                let before = backend.submissions();
                resident.backward(&[1.0]).unwrap();
                assert_eq!(backend.submissions() - before, 1, "backward {n}x{c}");
            }
            let before = backend.submissions();
            backend.forward_backward(&problem, &[1.0]).unwrap();
            assert_eq!(backend.submissions() - before, 1, "end to end {n}x{c}");
        }
    }
}
