//! The soft-cap's vectorised `tanh` against `f64::tanh`, and the staged path's outputs.

use loss_core::testkit::{self as kit, DEFAULT_TOLERANCE, widen};
use loss_core::{
    DType, LossBackend, Outputs, OwnedElems, OwnedTarget, ProblemData, Reduction, ReferenceBackend,
};
use loss_cpu::CpuBackend;
use loss_cpu::kernel::tanh_slice;

#[test]
fn tanh_is_within_its_stated_bound() {
    // A dense grid around 0 and the switch at 1/4, a coarse one out to saturation.
    let mut x: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 2.5e-6).collect();
    x.extend((-100_000..=100_000).map(|i| i as f32 * 2e-4));
    x.extend([
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-30,
        -1e-30,
        0.0,
        0.25,
        -0.25,
    ]);
    let mut t = vec![0.0; x.len()];
    tanh_slice(&x, &mut t);
    let mut worst = 0.0f64;
    for (&v, &got) in x.iter().zip(&t) {
        let want = f64::from(v).tanh();
        let err = if want == 0.0 {
            f64::from(got).abs()
        } else {
            ((f64::from(got) - want) / want).abs()
        };
        worst = worst.max(err);
    }
    assert!(worst < 5e-7, "worst relative error {worst:e}");
    eprintln!("tanh: worst relative error {worst:e}");
    let mut ends = [0.0; 2];
    tanh_slice(&[f32::NEG_INFINITY, f32::INFINITY], &mut ends);
    assert_eq!(ends, [-1.0, 1.0]);
    let mut nan = [0.0];
    tanh_slice(&[f32::NAN], &mut nan);
    assert!(nan[0].is_nan());
}

/// Every extension at once on each path's shapes, in bf16 and f16 with a gradient of the
/// logits' type: loss, LSE and z part within the tolerance of the reference, the gradient within
/// the half type's rounding.
#[test]
fn half_logits_with_every_extension_follow_the_reference() {
    for (shape, probs) in [
        (vec![9usize, 5], false),
        (vec![7, 40], true),
        (vec![6, 1000], false),
        (vec![2, 40_000], false),
        (vec![2, 6, 3, 4], true),
    ] {
        for dtype in [DType::Bf16, DType::F16] {
            let mut rng = kit::Rng::new(shape.iter().product::<usize>() as u64);
            let len: usize = shape.iter().product();
            let classes = shape[1];
            let positions = len / classes;
            let x: Vec<f32> = (0..len).map(|_| rng.uniform(-8.0, 8.0)).collect();
            let (target, target_shape) = if probs {
                let t: Vec<f32> = (0..len).map(|_| rng.uniform(0.0, 0.3)).collect();
                (
                    OwnedTarget::Probs(OwnedElems::from_f32(dtype, &t)),
                    shape.clone(),
                )
            } else {
                let mut ts = shape.clone();
                ts.remove(1);
                let y = (0..positions)
                    .map(|i| {
                        if i % 4 == 3 {
                            -100
                        } else {
                            (i * 7 % classes) as i64
                        }
                    })
                    .collect();
                (OwnedTarget::Indices(y), ts)
            };
            let data = ProblemData {
                logits: OwnedElems::from_f32(dtype, &x),
                shape: shape.clone(),
                target,
                target_shape,
                weight: Some((0..classes).map(|c| 0.5 + (c % 3) as f32 * 0.5).collect()),
                ignore_index: -100,
                reduction: Reduction::Mean,
                label_smoothing: 0.1,
                z_loss: 1e-3,
                softcap: Some(6.0),
                position_weight: Some((0..positions).map(|i| (i % 5) as f32 * 0.5).collect()),
            };
            let p = data.problem().unwrap();
            let run = |b: &dyn LossBackend| {
                let mut loss = vec![0.0];
                let mut z = vec![0.0];
                let mut lse = vec![0.0; positions];
                let mut grad = OwnedElems::zeros(dtype, len);
                b.compute(
                    &p,
                    Outputs::new()
                        .loss(&mut loss)
                        .lse(&mut lse)
                        .z_loss(&mut z)
                        .grad(&[1.0], grad.view_mut()),
                )
                .unwrap();
                (loss, lse, z, grad.to_f32_vec())
            };
            let (l, lse, z, g) = run(&CpuBackend::new());
            let (rl, rlse, rz, _) = run(&ReferenceBackend::new());
            let what = format!("{shape:?} {dtype}");
            kit::expect_close(&format!("{what} loss"), &l, &widen(&rl), DEFAULT_TOLERANCE);
            kit::expect_close(
                &format!("{what} lse"),
                &lse,
                &widen(&rlse),
                DEFAULT_TOLERANCE,
            );
            kit::expect_close(&format!("{what} z"), &z, &widen(&rz), DEFAULT_TOLERANCE);
            // The exact gradient rounded once to the type, against ours: one rounding apart.
            let exact = ReferenceBackend::new().backward(&p, &[1.0]).unwrap();
            let half_tol = match dtype {
                DType::Bf16 => loss_core::Tolerance::new(8e-3, 1e-6),
                _ => loss_core::Tolerance::new(1e-3, 1e-7),
            };
            kit::expect_close(&format!("{what} grad"), &g, &widen(&exact), half_tol);
        }
    }
}

/// An infinite class weight makes the mean's `D` infinite: the z-loss then cannot fold into the
/// fast kernels' one coefficient (`0·∞`), and the staged path must give what the reference
/// gives, element by element (NaN where it has NaN).
#[test]
fn z_loss_with_an_infinite_class_weight_follows_the_reference() {
    let x: Vec<f32> = (0..4 * 6).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
    let y = [1i64, 0, 2, 1];
    for dtype in [DType::F32, DType::Bf16] {
        let data = ProblemData {
            logits: OwnedElems::from_f32(dtype, &x),
            shape: vec![4, 6],
            target: OwnedTarget::Indices(y.to_vec()),
            target_shape: vec![4],
            weight: Some(vec![f32::INFINITY, 1.0, 2.0, 1.0, 1.0, 1.0]),
            ignore_index: -100,
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
            z_loss: 0.3,
            softcap: None,
            position_weight: None,
        };
        let p = data.problem().unwrap();
        let (l, g) = CpuBackend::new().forward_backward(&p, &[1.0]).unwrap();
        let (rl, rg) = ReferenceBackend::new()
            .forward_backward(&p, &[1.0])
            .unwrap();
        for (a, b) in l.iter().chain(&g).zip(rl.iter().chain(&rg)) {
            assert!(
                (a.is_nan() && b.is_nan())
                    || DEFAULT_TOLERANCE.allows(f64::from(*a), f64::from(*b)),
                "{dtype}: {a} vs {b}"
            );
        }
        assert!(g.iter().any(|v| v.is_finite() && *v != 0.0), "{g:?}");
    }
}
