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
        let mut data = data;
        for (at, v) in planted {
            let i = at.index(data.logits.len());
            data.logits[i] = v;
        }
        let p = data.problem().unwrap();
        let g: Vec<f32> = (0..p.loss_len()).map(|i| 0.5 + (i % 3) as f32).collect();
        let (l, gr) = CpuBackend::new().forward_backward(&p, &g).unwrap();
        let (rl, rg) = ReferenceBackend::new().forward_backward(&p, &g).unwrap();
        kit::assert_close("loss", &l, &widen(&rl), DEFAULT_TOLERANCE)?;
        kit::assert_close("grad", &gr, &widen(&rg), DEFAULT_TOLERANCE)?;
        let f = CpuBackend::new().forward(&p).unwrap();
        kit::assert_close("forward loss", &f, &widen(&rl), DEFAULT_TOLERANCE)?;
        let mut buf = data.logits.clone();
        let mut loss = vec![0.0; p.loss_len()];
        CpuBackend::new()
            .forward_backward_in_place(&mut buf, &data.shape, data.target(), data.options(), &g, &mut loss)
            .unwrap();
        prop_assert_eq!(bits(&loss), bits(&l));
        prop_assert_eq!(bits(&buf), bits(&gr));
    }
}
