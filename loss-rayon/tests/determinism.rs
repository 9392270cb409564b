//! Bit-identical results for 1, 2, 3, 4 and 8 threads and from run to run; the block path equals
//! loss-cpu bit for bit; the split-row path agrees with the reference.

use loss_core::conformance::DEFAULT_TOLERANCE;
use loss_core::{LossBackend, OwnedTarget, ProblemData, Reduction, ReferenceBackend};
use loss_cpu::CpuBackend;
use loss_rayon::{RayonBackend, split};

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 40) as f32 / (1u64 << 24) as f32
}

fn problem(shape: &[usize], probs: bool, smoothing: f32, reduction: Reduction) -> ProblemData {
    let mut s = shape.iter().product::<usize>() as u64 + 17;
    let len: usize = shape.iter().product();
    let c = shape[1];
    let positions = len / c;
    let logits: loss_core::OwnedElems = (0..len).map(|_| lcg(&mut s) * 16.0 - 8.0).collect();
    let weight = Some((0..c).map(|_| 0.25 + lcg(&mut s)).collect());
    let (target, target_shape) = if probs {
        (
            OwnedTarget::Probs((0..len).map(|_| lcg(&mut s)).collect()),
            shape.to_vec(),
        )
    } else {
        let mut t: Vec<i64> = (0..positions)
            .map(|_| (lcg(&mut s) * c as f32) as i64 % c as i64)
            .collect();
        t[0] = -100; // one ignored position
        let mut tshape = shape.to_vec();
        tshape.remove(1);
        (OwnedTarget::Indices(t), tshape)
    };
    ProblemData {
        logits,
        shape: shape.to_vec(),
        target,
        target_shape,
        weight,
        ignore_index: -100,
        reduction,
        label_smoothing: smoothing,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    }
}

/// `d` in `dtype` with every extension on (the staged path).
fn extended(d: ProblemData, dtype: loss_core::DType) -> ProblemData {
    let positions = d.logits.len() / d.shape[1];
    ProblemData {
        z_loss: 1e-3,
        softcap: Some(20.0),
        position_weight: Some((0..positions).map(|i| (i % 4) as f32 * 0.5).collect()),
        ..d.with_dtype(dtype)
    }
}

fn cases() -> Vec<ProblemData> {
    vec![
        problem(&[4096, 100], false, 0.0, Reduction::Mean),
        problem(&[777, 33], false, 0.1, Reduction::None),
        problem(&[16, 20, 300], false, 0.1, Reduction::Sum),
        problem(&[64, 1000], true, 0.2, Reduction::Mean),
        problem(&[3, 100_000], false, 0.1, Reduction::Mean),
        problem(&[8, 40_000], true, 0.0, Reduction::None),
        problem(&[1, 128_256], false, 0.0, Reduction::Sum),
        extended(
            problem(&[4096, 100], false, 0.1, Reduction::Mean),
            loss_core::DType::Bf16,
        ),
        extended(
            problem(&[16, 20, 300], true, 0.0, Reduction::None),
            loss_core::DType::F16,
        ),
        extended(
            problem(&[64, 1000], false, 0.0, Reduction::Sum),
            loss_core::DType::F32,
        ),
        // The fast kernels with a z-loss (D/V folded into one coefficient), on f32 and on
        // widened bf16 units; bf16 alone (the widened units and the half forward pass).
        ProblemData {
            z_loss: 1e-3,
            ..problem(&[2048, 300], false, 0.1, Reduction::Mean)
        },
        ProblemData {
            z_loss: 1e-3,
            ..problem(&[16, 20, 300], false, 0.0, Reduction::Mean)
                .with_dtype(loss_core::DType::Bf16)
        },
        problem(&[512, 3000], false, 0.1, Reduction::Mean).with_dtype(loss_core::DType::F16),
        ProblemData {
            z_loss: 1e-3,
            ..problem(&[3, 100_000], false, 0.1, Reduction::Mean)
        },
    ]
}

use loss_core::testkit::bits;

/// Fused loss and gradient bits, plus forward-alone loss bits; backward alone must equal the
/// fused gradient bit for bit.
fn run(b: &dyn LossBackend, d: &ProblemData) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let p = d.problem().unwrap();
    let g: Vec<f32> = (0..p.loss_len())
        .map(|i| 1.0 + (i % 3) as f32 * 0.5)
        .collect();
    let (l, gr) = b.forward_backward(&p, &g).unwrap();
    let l2 = b.forward(&p).unwrap();
    let g2 = b.backward(&p, &g).unwrap();
    assert_eq!(
        bits(&gr),
        bits(&g2),
        "{}: backward differs from fused",
        b.name()
    );
    (bits(&l), bits(&gr), bits(&l2))
}

#[test]
fn same_bits_for_every_thread_count_and_run() {
    for d in cases() {
        for split in [false, true] {
            let one = run(
                &RayonBackend::new(1).unwrap().with_split_gradients(split),
                &d,
            );
            for threads in [2, 3, 4, 8] {
                let b = RayonBackend::new(threads)
                    .unwrap()
                    .with_sequential_below(0)
                    .with_split_gradients(split);
                assert_eq!(
                    run(&b, &d),
                    one,
                    "{:?}: {threads} threads differ from 1",
                    d.shape
                );
                assert_eq!(run(&b, &d), one, "{:?}: second run differs", d.shape);
            }
        }
    }
}

#[test]
fn with_gradients_rows_are_whole_and_equal_loss_cpu_bit_for_bit() {
    for d in cases() {
        let p = d.problem().unwrap();
        let b = RayonBackend::new(2).unwrap().with_sequential_below(0);
        let (rl, rg, rf) = run(&b, &d);
        let (cl, cg, cf) = run(&CpuBackend::new(), &d);
        // With a gradient, rows are handed out whole: loss-cpu's bits. Forward alone splits the
        // rows of small batches with huge vocabularies, so only other shapes match it there.
        assert_eq!((rl, rg), (cl, cg), "shape {:?}", d.shape);
        if !split::splits_rows(&p) {
            assert_eq!(rf, cf, "shape {:?}", d.shape);
        }
    }
}

#[test]
fn split_path_agrees_with_reference() {
    let mut split_cases = 0;
    for d in cases() {
        let p = d.problem().unwrap();
        if !split::splits_rows(&p) {
            continue;
        }
        split_cases += 1;
        let g = vec![1.0f32; p.loss_len()];
        let (rl, rg) = ReferenceBackend.forward_backward(&p, &g).unwrap();
        let b = RayonBackend::new(4)
            .unwrap()
            .with_sequential_below(0)
            .with_split_gradients(true);
        let (l, gr) = b.forward_backward(&p, &g).unwrap();
        let lf = b.forward(&p).unwrap();
        assert_eq!(bits(&l), bits(&lf), "split forward and fused loss differ");
        let tol = DEFAULT_TOLERANCE;
        for (i, (&x, &y)) in l.iter().zip(&rl).enumerate() {
            assert!(
                tol.allows(f64::from(x), f64::from(y)),
                "{:?} loss[{i}]: {x} vs {y}",
                d.shape
            );
        }
        for (i, (&x, &y)) in gr.iter().zip(&rg).enumerate() {
            assert!(
                tol.allows(f64::from(x), f64::from(y)),
                "{:?} grad[{i}]: {x} vs {y}",
                d.shape
            );
        }
    }
    assert_eq!(split_cases, 4);
}

/// Logits with a large common offset: the split path's sums are relative to the max, so the
/// offset cancels and the answer still matches the reference (which works in f64).
#[test]
fn split_path_survives_a_large_offset() {
    for (probs, eps) in [(false, 0.1), (true, 0.2), (false, 0.0)] {
        let mut d = problem(&[2, 50_000], probs, eps, Reduction::None);
        for x in d.logits.as_f32_mut().unwrap().iter_mut() {
            *x += 30_000.0;
        }
        let p = d.problem().unwrap();
        assert!(split::splits_rows(&p));
        let g = vec![1.0f32; p.loss_len()];
        let (rl, rg) = ReferenceBackend.forward_backward(&p, &g).unwrap();
        let b = RayonBackend::new(2).unwrap().with_split_gradients(true);
        let (l, gr) = b.forward_backward(&p, &g).unwrap();
        let lf = b.forward(&p).unwrap();
        assert_eq!(l, lf);
        let tol = DEFAULT_TOLERANCE;
        for (&x, &y) in l.iter().zip(&rl).chain(gr.iter().zip(&rg)) {
            assert!(
                tol.allows(f64::from(x), f64::from(y)),
                "probs={probs} eps={eps}: {x} vs {y}"
            );
        }
    }
}
