//! The kernels beyond the shared suites: in place, huge rows, the K-dimensional vector path,
//! splitting into units (what loss-rayon does), the mergeable LSE state, and the extremes.

use loss_core::conformance::Tolerance;
use loss_core::reference::ReferenceBackend;
use loss_core::{LossBackend, LossOptions, OwnedTarget, ProblemData, Reduction};
use loss_cpu::CpuBackend;
use loss_cpu::kernel::{LseState, Plan, softmax_scaled};

const TOL: Tolerance = Tolerance::new(1e-4, 1e-5);

use loss_core::testkit::{Rng, bits};

fn index_problem(shape: &[usize], seed: u64, ignore_every: usize) -> ProblemData {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    let classes = if shape.len() > 1 { shape[1] } else { shape[0] };
    let positions = len / classes;
    let logits: Vec<f32> = (0..len).map(|_| rng.uniform(-12.0, 12.0)).collect();
    let target = (0..positions)
        .map(|i| {
            if ignore_every > 0 && i % ignore_every == 1 {
                -100
            } else {
                rng.below(classes) as i64
            }
        })
        .collect();
    let target_shape = if shape.len() > 1 {
        shape
            .iter()
            .enumerate()
            .filter(|&(a, _)| a != 1)
            .map(|(_, &d)| d)
            .collect()
    } else {
        vec![]
    };
    ProblemData {
        logits: logits.into(),
        shape: shape.to_vec(),
        target: OwnedTarget::Indices(target),
        target_shape,
        weight: Some((0..classes).map(|_| rng.uniform(0.2, 2.0)).collect()),
        ignore_index: -100,
        reduction: Reduction::Mean,
        label_smoothing: 0.0,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    }
}

fn close(what: &str, got: &[f32], expected: &[f32], tol: Tolerance) {
    loss_core::testkit::expect_close(what, got, &loss_core::testkit::widen(expected), tol);
}

fn upstream(data: &ProblemData) -> Vec<f32> {
    let problem = data.problem().unwrap();
    (0..problem.loss_len())
        .map(|i| 0.5 + (i % 3) as f32)
        .collect()
}

/// Checks loss and gradient against the reference, for every reduction and smoothing.
fn matches_reference(data: &ProblemData) {
    for reduction in Reduction::ALL {
        for eps in [0.0, 0.1] {
            let d = ProblemData {
                reduction,
                label_smoothing: eps,
                ..data.clone()
            };
            let p = d.problem().unwrap();
            let g = upstream(&d);
            let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
            let (rl, rg) = ReferenceBackend::new().forward_backward(&p, &g).unwrap();
            let what = format!("{:?} {reduction} eps={eps}", d.shape);
            close(&format!("{what} loss"), &l, &rl, TOL);
            close(&format!("{what} grad"), &gr, &rg, TOL);
            // Forward alone agrees with the fused loss (to rounding: on rows longer than a chunk
            // the fused pass re-bases its smoothing sums as the max grows).
            let f = CpuBackend::new().forward(&p).unwrap();
            close(&format!("{what} forward"), &f, &l, TOL);
        }
    }
}

fn with_probs(mut data: ProblemData, seed: u64) -> ProblemData {
    let mut rng = Rng::new(seed);
    data.target = OwnedTarget::Probs(
        (0..data.logits.len())
            .map(|_| rng.uniform(0.0, 1.0))
            .collect::<Vec<f32>>()
            .into(),
    );
    data.target_shape = data.shape.clone();
    data
}

#[test]
fn small_and_odd_class_counts() {
    for c in [
        1, 2, 3, 7, 8, 9, 10, 15, 16, 17, 31, 32, 33, 100, 1000, 2049, 5000,
    ] {
        let data = index_problem(&[13, c], c as u64 + 1, 4);
        matches_reference(&data);
        matches_reference(&with_probs(data, 7));
    }
}

#[test]
fn k_dimensional_vector_path() {
    // inner = 37 (full vectors and a tail), inner = 300 (more than one unit per row block).
    for shape in [
        vec![3, 11, 37],
        vec![2, 5, 300],
        vec![4, 7, 3, 13],
        vec![600, 3, 2],
    ] {
        let data = index_problem(&shape, 99, 5);
        matches_reference(&data);
        matches_reference(&with_probs(data, 3));
    }
}

#[test]
fn huge_rows_stay_accurate() {
    // C = 256K: the per-chunk f64 fold keeps the sum of exp accurate.
    let data = index_problem(&[3, 262_144], 5, 0);
    matches_reference(&data);
    // One dominant logit far along the row (the running max grows late).
    let mut d = data.clone();
    let mut x = d.logits.to_f32_vec();
    x[262_000] = 60.0;
    d.logits = x.into();
    matches_reference(&d);
    // Longer than the single-exp fused path takes (128 chunks): the two-exp path.
    matches_reference(&index_problem(&[2, 300_000], 6, 0));
}

#[test]
fn in_place_equals_out_of_place_bit_for_bit() {
    for (shape, probs) in [
        (vec![17, 10], false),
        (vec![300, 33], false),
        (vec![4, 3000], true),
        (vec![3, 9, 41], false),
        (vec![2, 6, 20], true),
        (vec![12], false),
    ] {
        for reduction in Reduction::ALL {
            for eps in [0.0, 0.2] {
                let mut data = index_problem(&shape, 11, 3);
                if probs {
                    data = with_probs(data, 5);
                }
                data.reduction = reduction;
                data.label_smoothing = eps;
                let p = data.problem().unwrap();
                let g = upstream(&data);
                let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
                let mut buf = data.logits.to_f32_vec();
                let mut loss = vec![0.0; p.loss_len()];
                CpuBackend::new()
                    .forward_backward_in_place(
                        &mut buf,
                        &data.shape,
                        data.target(),
                        data.options(),
                        &g,
                        &mut loss,
                    )
                    .unwrap();
                assert_eq!(bits(&loss), bits(&l), "{shape:?} {reduction} loss");
                assert_eq!(bits(&buf), bits(&gr), "{shape:?} {reduction} grad");
            }
        }
    }
}

#[test]
fn in_place_validates_before_writing() {
    let data = index_problem(&[4, 5], 1, 0);
    let mut buf = data.logits.to_f32_vec();
    let mut loss = [0.0f32; 2];
    let err = CpuBackend::new()
        .forward_backward_in_place(
            &mut buf,
            &data.shape,
            data.target(),
            data.options(),
            &[1.0],
            &mut loss,
        )
        .unwrap_err();
    assert_eq!(err.kind(), loss_core::ErrorKind::ShapeMismatch);
    assert_eq!(bits(&buf), bits(&data.logits.to_f32_vec()));
}

/// What loss-rayon does: run the units in any order (here: back to front, each into its own
/// slice), then add the partials in unit order. The result must be the backend's, bit for bit.
#[test]
fn units_in_any_order_give_the_same_bits() {
    for shape in [
        vec![1000, 37],
        vec![1000, 20],
        vec![5, 9, 200],
        vec![70, 3, 5],
    ] {
        for reduction in [Reduction::Sum, Reduction::Mean, Reduction::None] {
            let mut data = index_problem(&shape, 21, 6);
            data.reduction = reduction;
            let p = data.problem().unwrap();
            let g = upstream(&data);
            let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();

            let plan = Plan::new(&p);
            assert!(plan.units() > 1, "{shape:?}: want several units");
            let mut d_parts = vec![0.0; plan.units()];
            for u in (0..plan.units()).rev() {
                d_parts[u] = plan.denominator_partial(u);
            }
            let denominator = d_parts.iter().fold(0.0, |a, &b| a + b);
            let scale = plan.grad_scale(&g, denominator);
            let mut grad = vec![0.0; gr.len()];
            let mut losses = vec![0.0; p.positions()];
            let mut parts = vec![0.0; plan.units()];
            for u in (0..plan.units()).rev() {
                let span = plan.unit_logits(u);
                let out = &mut losses[plan.unit_positions(u)];
                parts[u] = plan.fused_unit(
                    u,
                    &p.logits().as_f32().unwrap()[span.clone()],
                    scale,
                    Some(out),
                    &mut grad[span],
                );
            }
            let total = parts.iter().fold(0.0, |a, &b| a + b);
            let loss = if reduction == Reduction::None {
                losses
            } else {
                vec![plan.reduce(total, denominator)]
            };
            assert_eq!(bits(&loss), bits(&l), "{shape:?} {reduction}");
            assert_eq!(bits(&grad), bits(&gr), "{shape:?} {reduction}");
        }
    }
}

#[test]
fn lse_state_merges_split_rows() {
    let data = index_problem(&[1, 50_000], 8, 0);
    let x = &data.logits.to_f32_vec();
    let whole = LseState::of(x);
    let merged = x
        .chunks(7_777)
        .map(LseState::of)
        .fold(LseState::EMPTY, LseState::merge);
    let exact = {
        let m = x
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
        m + x
            .iter()
            .map(|&v| (f64::from(v) - m).exp())
            .sum::<f64>()
            .ln()
    };
    for s in [whole, merged] {
        assert!(
            (s.log_sum_exp() - exact).abs() < 1e-5 * exact.abs(),
            "{s:?} vs {exact}"
        );
    }
    // Masked chunks merge cleanly; NaN survives; all masked is NaN (as the reference).
    let masked = LseState::of(&[f32::NEG_INFINITY; 5]);
    assert_eq!(masked.merge(whole).log_sum_exp(), whole.log_sum_exp());
    assert!(
        LseState::of(&[f32::NAN, 1.0])
            .merge(whole)
            .log_sum_exp()
            .is_nan()
    );
    assert!(masked.log_sum_exp().is_nan());
    // The chunk gradient: softmax times a scale.
    let mut out = vec![0.0; 1000];
    softmax_scaled(&x[..1000], whole.log_sum_exp() as f32, 2.0, &mut out);
    let expect = 2.0 * (f64::from(x[10]) - exact).exp();
    assert!((f64::from(out[10]) - expect).abs() <= 1e-4 * expect);
}

#[test]
fn non_finite_logits_follow_the_reference() {
    let ninf = f32::NEG_INFINITY;
    let rows: Vec<(Vec<f32>, i64)> = vec![
        (vec![1.0, ninf, 2.0, ninf, 0.5, 3.0, ninf, 1.0, 2.0, 0.0], 0),
        (vec![1.0, ninf, 2.0, ninf, 0.5, 3.0, ninf, 1.0, 2.0, 0.0], 1),
        (
            vec![f32::NAN, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            2,
        ),
        (vec![ninf; 10], 3),
        (
            vec![f32::INFINITY, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            2,
        ),
        (vec![1e30, -1e30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0),
        (
            vec![f32::NAN, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            -100,
        ),
    ];
    for eps in [0.0, 0.3] {
        for reduction in Reduction::ALL {
            let logits: Vec<f32> = rows.iter().flat_map(|r| r.0.clone()).collect();
            let data = ProblemData {
                logits: logits.into(),
                shape: vec![rows.len(), 10],
                target: OwnedTarget::Indices(rows.iter().map(|r| r.1).collect()),
                target_shape: vec![rows.len()],
                weight: None,
                ignore_index: -100,
                reduction,
                label_smoothing: eps,
                z_loss: 0.0,
                softcap: None,
                position_weight: None,
            };
            let p = data.problem().unwrap();
            let g = upstream(&data);
            let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
            let (rl, rg) = ReferenceBackend::new().forward_backward(&p, &g).unwrap();
            close(&format!("{reduction} {eps} loss"), &l, &rl, TOL);
            close(&format!("{reduction} {eps} grad"), &gr, &rg, TOL);
        }
    }
}

#[test]
fn zero_denominator_and_ignored_positions() {
    // Mean over D = 0: NaN loss; ignored positions keep an exact zero gradient; valid ones with
    // zero weight get what the reference gives (NaN or ±inf).
    for eps in [0.0, 0.25] {
        for targets in [vec![-100i64, -100, -100], vec![0, -100, 0]] {
            let data = ProblemData {
                logits: (0..30)
                    .map(|i| (i as f32 * 0.37).sin() * 5.0)
                    .collect::<Vec<f32>>()
                    .into(),
                shape: vec![3, 10],
                target: OwnedTarget::Indices(targets.clone()),
                target_shape: vec![3],
                weight: Some((0..10).map(|c| if c == 0 { 0.0 } else { 1.0 }).collect()),
                ignore_index: -100,
                reduction: Reduction::Mean,
                label_smoothing: eps,
                z_loss: 0.0,
                softcap: None,
                position_weight: None,
            };
            let p = data.problem().unwrap();
            let (l, gr) = CpuBackend::new().forward_backward(&p, &[1.0]).unwrap();
            let (rl, rg) = ReferenceBackend::new()
                .forward_backward(&p, &[1.0])
                .unwrap();
            // With smoothing the numerator is positive: +inf rather than NaN, as the reference.
            close("D = 0 loss", &l, &rl, TOL);
            if eps == 0.0 {
                assert!(l[0].is_nan());
            }
            assert!(gr[10..20].iter().all(|&v| v.to_bits() == 0), "{gr:?}");
            close("D = 0 grad", &gr, &rg, TOL);
        }
    }
}

#[test]
fn ignore_index_that_is_a_real_class() {
    let mut data = index_problem(&[40, 12], 4, 0);
    data.ignore_index = 3;
    matches_reference(&data);
    let opts = LossOptions::new().ignore_index(3);
    assert_eq!(opts.ignore_index, 3);
}

#[test]
fn gradients_larger_than_the_cache() {
    // 16 MiB of logits, smoothing, both target kinds; in place equals out of place.
    for probs in [false, true] {
        let mut data = index_problem(&[1050, 4001], 77, 5);
        if probs {
            data = with_probs(data, 78);
        }
        data.label_smoothing = 0.05;
        let p = data.problem().unwrap();
        let g = upstream(&data);
        let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
        let (rl, rg) = ReferenceBackend::new().forward_backward(&p, &g).unwrap();
        close("large loss", &l, &rl, TOL);
        close("large grad", &gr, &rg, TOL);
        let mut buf = data.logits.to_f32_vec();
        let mut loss = vec![0.0; p.loss_len()];
        CpuBackend::new()
            .forward_backward_in_place(
                &mut buf,
                &data.shape,
                data.target(),
                data.options(),
                &g,
                &mut loss,
            )
            .unwrap();
        assert_eq!(bits(&loss), bits(&l));
        assert_eq!(bits(&buf), bits(&gr));
    }
}
