//! The extensions (soft-cap, z-loss, position weights, the per-position LSE) and the half element
//! types on the device: bf16 and f16 problems with every extension on, against the reference, on
//! every kernel family; half-typed gradient buffers against the reference rounded to that type
//! (and bit for bit against the device's own `f32` gradient narrowed on the host); the packing
//! pass's rounding; the soft-cap's accuracy; the element loads' exactness; every combination of
//! outputs; resident problems.

mod common;

use common::{Rng, assert_close, bits};
use loss_core::conformance::{DEFAULT_TOLERANCE, Tolerance};
use loss_core::{
    DType, LossBackend, Outputs, OwnedElems, OwnedTarget, ProblemData, Reduction, ReferenceBackend,
    bf16, f16, formula,
};
use loss_wgpu::{WgpuBackend, WgpuOptions};

/// A problem of `shape` with every extension on (z-loss, soft-cap, position weights with zeros),
/// class weights, label smoothing, ignored positions and masked (−∞) logits, in `dtype`.
fn every_extension(
    shape: &[usize],
    dtype: DType,
    probs: bool,
    reduction: Reduction,
    seed: u64,
) -> ProblemData {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    let axis = usize::from(shape.len() > 1);
    let classes = shape[axis];
    let positions = len / classes;
    let mut logits = rng.logits(len, 12.0);
    for x in logits.iter_mut().step_by(13) {
        *x = f32::NEG_INFINITY;
    }
    let index_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .filter(|&(a, _)| a != axis)
        .map(|(_, &d)| d)
        .collect();
    let (target, target_shape) = if probs {
        let t: Vec<f32> = (0..len).map(|_| rng.uniform(0.0, 1.0)).collect();
        (OwnedTarget::Probs(t.into()), shape.to_vec())
    } else {
        let y = (0..positions)
            .map(|i| {
                if i % 7 == 3 {
                    -100
                } else {
                    rng.below(classes) as i64
                }
            })
            .collect();
        (OwnedTarget::Indices(y), index_shape)
    };
    ProblemData {
        logits: logits.into(),
        shape: shape.to_vec(),
        target,
        target_shape,
        weight: Some((0..classes).map(|_| rng.uniform(0.2, 2.0)).collect()),
        ignore_index: -100,
        reduction,
        label_smoothing: 0.1,
        z_loss: 0.05,
        softcap: Some(8.0),
        position_weight: Some(
            (0..positions)
                .map(|i| {
                    if i % 5 == 1 {
                        0.0
                    } else {
                        rng.uniform(0.1, 2.0)
                    }
                })
                .collect(),
        ),
    }
    .with_dtype(dtype)
}

/// Every output of one call, the gradient in `grad_dtype`.
struct All {
    loss: Vec<f32>,
    lse: Vec<f32>,
    z: Vec<f32>,
    grad: OwnedElems,
}

fn everything(backend: &dyn LossBackend, data: &ProblemData, grad_dtype: DType) -> All {
    let problem = data.problem().expect("a valid problem");
    let g = upstream(problem.loss_len());
    let mut all = All {
        loss: vec![0.0; problem.loss_len()],
        lse: vec![0.0; problem.positions()],
        z: vec![0.0; problem.loss_len()],
        grad: OwnedElems::zeros(grad_dtype, problem.len()),
    };
    backend
        .compute(
            &problem,
            Outputs::new()
                .loss(&mut all.loss)
                .lse(&mut all.lse)
                .z_loss(&mut all.z)
                .grad(&g, all.grad.view_mut()),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", backend.name()));
    all
}

fn upstream(n: usize) -> Vec<f32> {
    (0..n).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Half values `got` (the device's `f32` gradient rounded) and `want` (the reference's `f64`
/// gradient rounded) agree: equal, or neighbours of the same sign (the `f32` value was within its
/// error of a rounding boundary), or both NaN, or within `tol` plus one step of the type (where
/// the `f32` gradient's own error, within `tol`, spans several steps: cancellation in tiny
/// values).
fn half_close(
    dtype: DType,
    got: &OwnedElems,
    want: &OwnedElems,
    tol: Tolerance,
) -> Result<(), String> {
    let raw = |e: &OwnedElems| -> Vec<u16> {
        match e {
            OwnedElems::Bf16(v) => v.iter().map(|x| x.to_bits()).collect(),
            OwnedElems::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
            OwnedElems::F32(_) => panic!("not a half buffer"),
        }
    };
    assert_eq!(got.dtype(), dtype);
    let (g, w) = (raw(got), raw(want));
    let (gv, wv) = (got.to_f32_vec(), want.to_f32_vec());
    for i in 0..g.len() {
        let (a, b) = (gv[i], wv[i]);
        let same_sign = (g[i] ^ w[i]) & 0x8000 == 0;
        // One step of the type at `b`: bf16 keeps 8 significant bits, f16 11 (down to 2^-24).
        let step = match dtype {
            DType::Bf16 => f64::from(b).abs() / 128.0,
            _ => (f64::from(b).abs() / 1024.0).max(2f64.powi(-24)),
        };
        let (a64, b64) = (f64::from(a), f64::from(b));
        let ok = (a.is_nan() && b.is_nan())
            || g[i] == w[i]
            || (same_sign && (g[i] & 0x7fff).abs_diff(w[i] & 0x7fff) <= 1)
            || (a64 - b64).abs() <= tol.atol + tol.rtol * b64.abs() + step;
        if !ok {
            return Err(format!(
                "[{i}] got {a:e} ({:#06x}), want {b:e} ({:#06x})",
                g[i], w[i]
            ));
        }
    }
    Ok(())
}

/// The f32 values narrowed on the host (the half crate: round to nearest even, once).
fn narrowed(values: &[f32], dtype: DType) -> OwnedElems {
    OwnedElems::from_f32(dtype, values)
}

/// The element of each valid position a half gradient restores from its row sum before packing
/// (`restore_main`: an index target's class; a probability target's class holding at least half
/// of `Σ w·t'`, approximated here by its largest `t`): the packed value there may differ from the
/// `f32` gradient narrowed — it is closer to the reference, which `half_close` checks.
fn restored(data: &ProblemData) -> std::collections::HashSet<usize> {
    let axis = usize::from(data.shape.len() > 1);
    let classes = data.shape[axis];
    let inner: usize = data.shape[axis + 1..].iter().product();
    let positions = data.logits.len() / classes.max(1);
    let at = |p: usize, c: usize| (p / inner) * classes * inner + p % inner + c * inner;
    (0..positions)
        .filter_map(|p| match &data.target {
            OwnedTarget::Indices(y) => (y[p] != data.ignore_index).then(|| at(p, y[p] as usize)),
            OwnedTarget::Probs(t) => {
                let t = t.to_f32_vec();
                (0..classes)
                    .max_by(|&a, &b| t[at(p, a)].total_cmp(&t[at(p, b)]))
                    .map(|c| at(p, c))
            }
        })
        .collect()
}

/// Bit for bit but at the indices of `except`.
fn same_bits_or_nan(
    what: &str,
    got: &OwnedElems,
    want: &OwnedElems,
    except: &std::collections::HashSet<usize>,
) {
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    assert_eq!(got.dtype(), want.dtype());
    let bad = (0..g.len()).filter(|i| !except.contains(i)).find(|&i| {
        if g[i].is_nan() || w[i].is_nan() {
            g[i].is_nan() != w[i].is_nan()
        } else {
            g[i].to_bits() != w[i].to_bits()
        }
    });
    if let Some(i) = bad {
        panic!("{what}: [{i}] device {:e}, host {:e}", g[i], w[i]);
    }
}

/// Checks one problem on one backend against the reference: every output with an `f32`
/// gradient, then the gradient in the logits' half type against the reference's gradient
/// rounded to it, and bit for bit against the device's `f32` gradient narrowed on the host.
fn check(backend: &WgpuBackend, data: &ProblemData, what: &str) {
    let dtype = data.logits.dtype();
    let reference = everything(&ReferenceBackend, data, DType::F32);
    let got = everything(backend, data, DType::F32);
    let tol = DEFAULT_TOLERANCE;
    let ctx = |out: &str| format!("{what} on {backend:?}: {out}");
    assert_close(&ctx("loss"), &got.loss, &widen(&reference.loss), tol);
    assert_close(&ctx("lse"), &got.lse, &widen(&reference.lse), tol);
    assert_close(&ctx("z_loss"), &got.z, &widen(&reference.z), tol);
    let grad = got.grad.to_f32_vec();
    assert_close(
        &ctx("grad"),
        &grad,
        &widen(&reference.grad.to_f32_vec()),
        tol,
    );
    if dtype.is_half() {
        let reference_half = everything(&ReferenceBackend, data, dtype);
        let half = everything(backend, data, dtype);
        assert_eq!(
            bits(&half.loss),
            bits(&got.loss),
            "{}",
            ctx("loss beside a half grad")
        );
        assert_eq!(
            bits(&half.lse),
            bits(&got.lse),
            "{}",
            ctx("lse beside a half grad")
        );
        same_bits_or_nan(
            &ctx("half grad vs f32 grad narrowed"),
            &half.grad,
            &narrowed(&grad, dtype),
            &restored(data),
        );
        // One step of the type where the f32 value is within its error of a rounding boundary;
        // tiny values to the tolerance's atol.
        half_close(dtype, &half.grad, &reference_half.grad, tol)
            .unwrap_or_else(|e| panic!("{}: {e}", ctx("half grad vs reference rounded")));
    }
}

/// Shapes covering every kernel family: rows of a few classes (`row_serial`), narrow rows
/// (`narrow_main`), rows in registers (`fused_main`), split rows (`split_*`: past the single
/// pass on every adapter), strided class axes (`row_serial`, and `row_main` for wide short
/// ones), unbatched.
const SHAPES: [&[usize]; 8] = [
    &[6, 5],
    &[9, 40],
    &[3, 1000],
    &[2, 40_000],
    &[2, 7, 3, 4],
    &[2, 100, 3],
    &[2, 3, 40],
    &[11],
];

#[test]
fn half_problems_with_every_extension_match_the_reference() {
    let backends = common::all();
    for (k, shape) in SHAPES.iter().enumerate() {
        for dtype in [DType::Bf16, DType::F16] {
            for reduction in Reduction::ALL {
                for probs in [false, true] {
                    let data = every_extension(shape, dtype, probs, reduction, k as u64);
                    let what = format!("{dtype} {shape:?} {reduction:?} probs {probs}");
                    for backend in &backends {
                        check(backend, &data, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn f32_problems_with_every_extension_match_the_reference() {
    let backends = common::all();
    for (k, shape) in SHAPES.iter().enumerate() {
        for reduction in Reduction::ALL {
            for probs in [false, true] {
                let data = every_extension(shape, DType::F32, probs, reduction, 100 + k as u64);
                let what = format!("f32 {shape:?} {reduction:?} probs {probs}");
                for backend in &backends {
                    check(backend, &data, &what);
                }
            }
        }
    }
}

#[test]
fn half_gradient_buffers_are_the_reference_rounded() {
    // Plain problems and extension problems, f32 and half logits, each gradient written in
    // both half types; across several bindings with odd element counts per chunk (600 × 37 in
    // chunks of 27 rows: 999 values), so a packed word never straddles two chunks.
    let Some(_) = common::backend() else {
        return;
    };
    let small = WgpuBackend::with_options(&WgpuOptions {
        max_binding_bytes: Some(4096),
        ..WgpuOptions::default()
    })
    .unwrap();
    let mut backends: Vec<&WgpuBackend> = common::all();
    backends.push(&small);
    for (seed, shape) in [[5usize, 3], [600, 37], [3, 1001]].iter().enumerate() {
        for logits_dtype in DType::ALL {
            for plain in [true, false] {
                let mut data =
                    every_extension(shape, logits_dtype, false, Reduction::Mean, seed as u64);
                if plain {
                    data.z_loss = 0.0;
                    data.softcap = None;
                    data.position_weight = None;
                    data.label_smoothing = 0.0;
                }
                for backend in &backends {
                    let f32_grad = everything(*backend, &data, DType::F32).grad.to_f32_vec();
                    for dtype in [DType::Bf16, DType::F16] {
                        let what = format!("{shape:?} {logits_dtype} plain {plain} into {dtype}");
                        let got = everything(*backend, &data, dtype).grad;
                        same_bits_or_nan(
                            &what,
                            &got,
                            &narrowed(&f32_grad, dtype),
                            &restored(&data),
                        );
                        let want = everything(&ReferenceBackend, &data, dtype).grad;
                        half_close(dtype, &got, &want, DEFAULT_TOLERANCE)
                            .unwrap_or_else(|e| panic!("{what} on {backend:?}: {e}"));
                    }
                }
            }
        }
    }
}

#[test]
fn narrowing_on_the_device_rounds_to_nearest_even() {
    let backend = backend_or_skip!();
    // bf16 rounds at bit 16: every sign, exponent and top mantissa half, with the low halves
    // around the tie (below, at, above it, with an even and an odd kept bit).
    let lows = [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff];
    let values: Vec<f32> = (0..1u32 << 16)
        .flat_map(|hi| lows.iter().map(move |&lo| f32::from_bits(hi << 16 | lo)))
        .collect();
    let got = backend.narrow_on_device(&values, DType::Bf16).unwrap();
    for (v, g) in values.iter().zip(&got) {
        let want = bf16::from_f32(*v);
        let g = bf16::from_bits(*g);
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "bf16 of {v:e} ({:#010x}): device {:#06x}, half {:#06x}",
            v.to_bits(),
            g.to_bits(),
            want.to_bits()
        );
    }
    // f16 rounds at bit 13 (normal range) or further up (subnormals): every sign, exponent and
    // top 10 mantissa bits, with the low 13 bits around the tie, plus a spread of low bits for
    // the subnormal range's other rounding points.
    let lows = [0u32, 1, 0x0fff, 0x1000, 0x1001, 0x1fff];
    let mut values: Vec<f32> = (0..1u32 << 19)
        .flat_map(|hi| lows.iter().map(move |&lo| f32::from_bits(hi << 13 | lo)))
        .collect();
    let mut rng = Rng::new(3);
    values.extend((0..200_000).map(|_| {
        // Magnitudes around f16's subnormal range (2^-25 .. 2^-14).
        f32::from_bits(
            ((rng.next_u64() as u32) & 0x807f_ffff) | ((101 + rng.below(14) as u32) << 23),
        )
    }));
    let got = backend.narrow_on_device(&values, DType::F16).unwrap();
    for (v, g) in values.iter().zip(&got) {
        let want = f16::from_f32(*v);
        let g = f16::from_bits(*g);
        assert!(
            g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
            "f16 of {v:e} ({:#010x}): device {:#06x}, half {:#06x}",
            v.to_bits(),
            g.to_bits(),
            want.to_bits()
        );
    }
    // An odd count: the last word's high half is padding.
    assert_eq!(
        backend
            .narrow_on_device(&[1.0, 2.0, 3.0], DType::F16)
            .unwrap(),
        [0x3c00, 0x4000, 0x4200]
    );
}

/// A `(P, 1)` problem's LSE is its (capped) logit itself: `m + ln 1`.
fn single_class_lse(backend: &WgpuBackend, logits: OwnedElems, softcap: Option<f32>) -> Vec<f32> {
    let p = logits.len();
    let data = ProblemData {
        logits,
        shape: vec![p, 1],
        target: OwnedTarget::Indices(vec![0; p]),
        target_shape: vec![p],
        weight: None,
        ignore_index: -100,
        reduction: Reduction::None,
        label_smoothing: 0.0,
        z_loss: 0.0,
        softcap,
        position_weight: None,
    };
    let problem = data.problem().unwrap();
    let mut lse = vec![0.0; p];
    backend
        .compute(&problem, Outputs::new().lse(&mut lse))
        .unwrap();
    lse
}

#[test]
fn softcap_is_accurate() {
    let backend = backend_or_skip!();
    let mut x: Vec<f32> = (0..=200_000).map(|k| -40.0 + k as f32 * 4e-4).collect();
    x.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-8,
        0.999,
        1.0,
        1.001,
        1e4,
        -1e4,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    for a in [4.0f32, 8.0, 30.0] {
        // Arguments around the switch between the polynomial and the exponential (|x/a| = 0.625).
        x.extend((-50..=50).map(|k| a * 0.625 * (1.0 + k as f32 * 1e-6)));
        let got = single_class_lse(backend, x.clone().into(), Some(a));
        let mut worst = (0.0f64, 0.0f32);
        for (&xi, &g) in x.iter().zip(&got) {
            let want = formula::softcap(f64::from(xi), f64::from(a));
            let w32 = want as f32;
            // One ulp of f32 at the expected value (the smallest normal's near 0).
            let ulp = f64::from(f32::from_bits(w32.abs().to_bits().max(0x0080_0000) + 1))
                - f64::from(f32::from_bits(w32.abs().to_bits().max(0x0080_0000)));
            let err = (f64::from(g) - want).abs() / ulp;
            if err > worst.0 {
                worst = (err, xi);
            }
        }
        eprintln!(
            "soft-cap a = {a}: worst {:.2} ulp at x = {:e} on {}",
            worst.0,
            worst.1,
            backend.describe()
        );
        assert!(
            worst.0 <= 8.0,
            "a = {a}: {:.2} ulp at x = {:e}",
            worst.0,
            worst.1
        );
        let specials = 200_001 + 14;
        assert_eq!(got[specials - 2..specials], [a, -a], "±∞ are capped to ±a");
        let nan = single_class_lse(backend, vec![f32::NAN].into(), Some(a));
        assert!(nan[0].is_nan(), "NaN stays NaN");
        x.truncate(specials);
    }
}

#[test]
fn half_elements_widen_exactly() {
    let backend = backend_or_skip!();
    // Every bit pattern of both half types, one per position: the LSE of a single-class row is
    // the widened logit itself (+∞ and NaN poison the row, −∞ leaves it empty: NaN).
    for dtype in [DType::Bf16, DType::F16] {
        let (logits, widened): (OwnedElems, Vec<f32>) = match dtype {
            DType::Bf16 => {
                let v: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
                let w = v.iter().map(|x| x.to_f32()).collect();
                (OwnedElems::Bf16(v), w)
            }
            _ => {
                let v: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
                let w = v.iter().map(|x| x.to_f32()).collect();
                (OwnedElems::F16(v), w)
            }
        };
        let got = single_class_lse(backend, logits, None);
        for (i, (&g, &w)) in got.iter().zip(&widened).enumerate() {
            if w.is_finite() {
                // `m + ln 1` is `w + 0`, which turns −0 into +0.
                let w = w + 0.0;
                assert_eq!(g.to_bits(), w.to_bits(), "{dtype} {i:#06x}: {g:e} vs {w:e}");
            } else {
                assert!(g.is_nan(), "{dtype} {i:#06x}: {g:e}");
            }
        }
        // And the f32 problem of the widened values gives the same bits.
        let f32_lse = single_class_lse(backend, widened.into(), None);
        assert_eq!(bits(&f32_lse), bits(&got), "{dtype}");
    }
}

#[test]
fn every_combination_of_outputs_gives_the_same_bits() {
    let Some(_) = common::backend() else {
        return;
    };
    let split = common::variant(common::Variant::Split).into_iter();
    for backend in common::backend().into_iter().chain(split) {
        for (dtype, shape) in [(DType::Bf16, [4usize, 300]), (DType::F32, [16, 20])] {
            for reduction in Reduction::ALL {
                let data = every_extension(&shape, dtype, false, reduction, 7);
                let problem = data.problem().unwrap();
                let g = upstream(problem.loss_len());
                for grad_dtype in [DType::F32, DType::F16] {
                    let all = everything(backend, &data, grad_dtype);
                    for mask in 0u32..16 {
                        let mut loss = vec![0.0; problem.loss_len()];
                        let mut lse = vec![0.0; problem.positions()];
                        let mut z = vec![0.0; problem.loss_len()];
                        let mut grad = OwnedElems::zeros(grad_dtype, problem.len());
                        let mut out = Outputs::new();
                        if mask & 1 != 0 {
                            out = out.loss(&mut loss);
                        }
                        if mask & 2 != 0 {
                            out = out.lse(&mut lse);
                        }
                        if mask & 4 != 0 {
                            out = out.z_loss(&mut z);
                        }
                        if mask & 8 != 0 {
                            out = out.grad(&g, grad.view_mut());
                        }
                        backend.compute(&problem, out).unwrap();
                        let what = format!("{dtype} {reduction:?} {grad_dtype} outputs {mask:04b}");
                        if mask & 1 != 0 {
                            assert_eq!(bits(&loss), bits(&all.loss), "{what}: loss");
                        }
                        if mask & 2 != 0 {
                            assert_eq!(bits(&lse), bits(&all.lse), "{what}: lse");
                        }
                        if mask & 4 != 0 {
                            assert_eq!(bits(&z), bits(&all.z), "{what}: z");
                        }
                        if mask & 8 != 0 {
                            same_bits_or_nan(&what, &grad, &all.grad, &Default::default());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn z_loss_part_is_zero_without_the_z_loss() {
    let backend = backend_or_skip!();
    for reduction in Reduction::ALL {
        let mut data = every_extension(&[5, 9], DType::F16, false, reduction, 9);
        data.z_loss = 0.0;
        let problem = data.problem().unwrap();
        let mut z = vec![f32::NAN; problem.loss_len()];
        backend
            .compute(&problem, Outputs::new().z_loss(&mut z))
            .unwrap();
        assert!(z.iter().all(|&v| v == 0.0), "{reduction:?}: {z:?}");
        let all = everything(backend, &data, DType::F32);
        assert!(
            all.z.iter().all(|&v| v == 0.0),
            "{reduction:?}: {:?}",
            all.z
        );
    }
}

#[test]
fn resident_half_problems_with_extensions_match_end_to_end() {
    let backend = backend_or_skip!();
    for (dtype, shape) in [(DType::Bf16, [8usize, 700]), (DType::F16, [33, 17])] {
        for reduction in Reduction::ALL {
            let data = every_extension(&shape, dtype, false, reduction, 5);
            let problem = data.problem().unwrap();
            let g = upstream(problem.loss_len());
            let (loss, grad) = backend.forward_backward(&problem, &g).unwrap();
            let mut resident = backend.upload(&problem).unwrap();
            assert_eq!(bits(&resident.forward().unwrap()), bits(&loss));
            assert_eq!(bits(&resident.forward_backward(&g).unwrap()), bits(&loss));
            let mut out = vec![0.0; grad.len()];
            resident.read_grad(&mut out).unwrap();
            assert_eq!(bits(&out), bits(&grad), "{dtype} {reduction:?}");
        }
    }
}
