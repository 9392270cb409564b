//! Random problems of every path (short rows as lanes, rows, K-dimensional tiles, probabilities)
//! with extreme logits planted: ±∞, NaN, ±1e30. Loss and gradient must match the reference
//! within the conformance tolerance (sums are taken relative to each row's max, so a huge common
//! offset cancels exactly), and in place must equal out of place bit for bit (NaN payloads
//! aside).

use loss_core::testkit::{self as kit, DEFAULT_TOLERANCE};
use loss_core::{LossBackend, ReferenceBackend};
use loss_cpu::CpuBackend;
use proptest::prelude::*;

fn extreme() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => kit::uniform(-30.0, 30.0),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NAN),
        1 => kit::uniform(-1e30, 1e30),
    ]
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The bits, every NaN written as one: in place and out of place are compiled separately, and
/// where two NaNs meet in an addition x86 keeps the first operand's, whose order is the
/// compiler's choice (NaN payloads carry no meaning; every other bit must match).
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| {
            if x.is_nan() {
                f32::NAN.to_bits()
            } else {
                x.to_bits()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn extreme_logits_follow_the_reference(
        data in kit::problems_of(prop_oneof![
            (1usize..40, 1usize..80).prop_map(|(n, c)| vec![n, c]),
            (1usize..4, 1usize..20, 1usize..40).prop_map(|(n, c, d)| vec![n, c, d]),
            (1usize..100).prop_map(|c| vec![c]),
        ]),
        planted in prop::collection::vec((any::<prop::sample::Index>(), extreme()), 0..12),
    ) {
        // f32 logits (the in-place call's type), the extensions kept.
        let mut data = data.with_dtype(loss_core::DType::F32);
        let mut x = data.logits.to_f32_vec();
        for (at, v) in planted {
            let i = at.index(x.len());
            x[i] = v;
        }
        data.logits = x.into();
        let p = data.problem().unwrap();
        let g: Vec<f32> = (0..p.loss_len()).map(|i| 0.5 + (i % 3) as f32).collect();
        let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
        let (rl, rg) = ReferenceBackend::new().forward_backward(&p, &g).unwrap();
        kit::assert_close("loss", &l, &widen(&rl), DEFAULT_TOLERANCE)?;
        kit::assert_close("grad", &gr, &widen(&rg), DEFAULT_TOLERANCE)?;
        let f = CpuBackend::new().forward(&p).unwrap();
        kit::assert_close("forward loss", &f, &widen(&rl), DEFAULT_TOLERANCE)?;
        let mut buf = data.logits.to_f32_vec();
        let mut loss = vec![0.0; p.loss_len()];
        CpuBackend::new()
            .forward_backward_in_place(&mut buf, &data.shape, data.target(), data.options(), &g, &mut loss)
            .unwrap();
        prop_assert_eq!(bits(&loss), bits(&l));
        prop_assert_eq!(bits(&buf), bits(&gr));
    }

    /// Non-finite upstream gradients (±∞, NaN) at some positions, or in the one value of a
    /// sum or mean: those positions take the kernels' `f64` element path, chosen before anything
    /// is written (in place included: the gradient is written over the logits it needs).
    #[test]
    fn non_finite_upstream_gradients_follow_the_reference(
        data in kit::problems_of(prop_oneof![
            (1usize..40, 1usize..80).prop_map(|(n, c)| vec![n, c]),
            (1usize..4, 1usize..20, 1usize..40).prop_map(|(n, c, d)| vec![n, c, d]),
        ]),
        // Finite values of order 1: a finite scale takes the f32 path, where the target's
        // `a·p − fix` cancels, and the tolerance's absolute part does not scale with `s`.
        upstream in prop::collection::vec(prop_oneof![
            4 => kit::uniform(-2.0, 2.0),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NAN),
        ], 1..200),
    ) {
        let data = data.with_dtype(loss_core::DType::F32);
        let p = data.problem().unwrap();
        let g: Vec<f32> = (0..p.loss_len()).map(|i| upstream[i % upstream.len()]).collect();
        let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
        let (rl, rg) = ReferenceBackend::new().forward_backward(&p, &g).unwrap();
        kit::assert_close("loss", &l, &widen(&rl), DEFAULT_TOLERANCE)?;
        // Where the reference's element is finite (a finite scale, or an ignored position's 0),
        // it must be matched; where it is not, ∞·(p − [c = y]) is ±∞ or NaN by the rounding of
        // `p − 1` alone (f64 there, f32 sums here), so only non-finiteness is required.
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for (i, (&a, &b)) in gr.iter().zip(&rg).enumerate() {
            if b.is_finite() {
                got.push(a);
                want.push(b);
            } else {
                prop_assert!(!a.is_finite(), "grad[{}] = {} where the reference has {}", i, a, b);
            }
        }
        kit::assert_close("grad", &got, &widen(&want), DEFAULT_TOLERANCE)?;
        let mut buf = data.logits.to_f32_vec();
        let mut loss = vec![0.0; p.loss_len()];
        CpuBackend::new()
            .forward_backward_in_place(&mut buf, &data.shape, data.target(), data.options(), &g, &mut loss)
            .unwrap();
        prop_assert_eq!(bits(&loss), bits(&l));
        prop_assert_eq!(bits(&buf), bits(&gr));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The in-place entry takes `compute`'s route (one routing): with a z-loss and infinite or
    /// zero class weights — where a mean's `D` is infinite and the z-loss cannot fold into one
    /// coefficient — and every other option the generator draws, in place equals out of place
    /// bit for bit (NaN payloads aside).
    #[test]
    fn in_place_equals_compute_with_z_loss_and_infinite_weights(
        data in kit::problems_of(prop_oneof![
            (1usize..40, 1usize..80).prop_map(|(n, c)| vec![n, c]),
            (1usize..4, 1usize..20, 1usize..40).prop_map(|(n, c, d)| vec![n, c, d]),
            (1usize..100).prop_map(|c| vec![c]),
        ]),
        z in kit::uniform(1e-4, 0.5),
        planted in prop::collection::vec((any::<prop::sample::Index>(), prop_oneof![
            2 => Just(f32::INFINITY),
            1 => Just(0.0f32),
            1 => kit::uniform(0.1, 2.0),
        ]), 1..4),
    ) {
        let mut data = data.with_dtype(loss_core::DType::F32);
        data.z_loss = z;
        let classes = data.shape[usize::from(data.shape.len() > 1)];
        let mut w = data.weight.take().unwrap_or_else(|| vec![1.0; classes]);
        for (at, v) in planted {
            let i = at.index(w.len());
            w[i] = v;
        }
        data.weight = Some(w);
        let p = data.problem().unwrap();
        let g: Vec<f32> = (0..p.loss_len()).map(|i| 0.5 + (i % 3) as f32).collect();
        let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
        let mut buf = data.logits.to_f32_vec();
        let mut loss = vec![0.0; p.loss_len()];
        CpuBackend::new()
            .forward_backward_in_place(&mut buf, &data.shape, data.target(), data.options(), &g, &mut loss)
            .unwrap();
        prop_assert_eq!(bits(&loss), bits(&l));
        prop_assert_eq!(bits(&buf), bits(&gr));
    }
}

/// The case: 8 positions of 40 classes, z-loss, mean, an infinite weight on one
/// position's target class: `compute` gives NaN on that position's 40 gradient elements only,
/// and so does the in-place entry (it once folded the z-loss as `z·D/V` and gave NaN on all 320).
#[test]
fn in_place_z_loss_with_an_infinite_target_weight() {
    let (n, c) = (8usize, 40usize);
    let logits: Vec<f32> = (0..n * c)
        .map(|i| ((i * 37) % 23) as f32 * 0.25 - 2.0)
        .collect();
    let targets: Vec<i64> = (0..n as i64).map(|i| i * 3).collect();
    let mut weight = vec![1.0f32; c];
    weight[9] = f32::INFINITY;
    let options = loss_core::LossOptions::new().weight(&weight).z_loss(1e-3);
    let target = loss_core::Target::Indices {
        data: &targets,
        shape: &[n],
    };
    let p = loss_core::Problem::new(&logits, &[n, c], target, options).unwrap();
    let (l, gr) = CpuBackend::new().forward_backward(&p, &[1.0]).unwrap();
    let nan_positions: Vec<usize> = (0..n)
        .filter(|&i| gr[i * c..(i + 1) * c].iter().any(|g| g.is_nan()))
        .collect();
    assert_eq!(
        nan_positions,
        vec![3],
        "compute: NaN only where the target weight is infinite"
    );
    let mut buf = logits.clone();
    let mut loss = vec![0.0];
    CpuBackend::new()
        .forward_backward_in_place(&mut buf, &[n, c], target, options, &[1.0], &mut loss)
        .unwrap();
    assert_eq!(bits(&loss), bits(&l));
    assert_eq!(bits(&buf), bits(&gr));
    assert_eq!(buf.iter().filter(|g| g.is_nan()).count(), c);
}
