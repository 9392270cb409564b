//! The accuracy of the vectorised `exp` against `f64::exp`, in ulps of the `f32` result.

use loss_cpu::exp::{EXP_MAX_ARG, exp_slice, exp_slice_scalar};

/// Distance in units of the last place of `f32` (subnormals: units of `2^-149`).
fn ulps(got: f32, exact: f64) -> f64 {
    let e = exact as f32;
    let ulp = if e == 0.0 || e.is_subnormal() {
        f64::from(f32::from_bits(1))
    } else {
        f64::from(f32::from_bits(e.to_bits() + 1) - e)
    };
    (f64::from(got) - exact).abs() / ulp
}

/// Every `step`-th `f32` from `lo` to `hi` (by bit pattern, so dense where values are dense).
fn sample(lo: f32, hi: f32, step: u32) -> Vec<f32> {
    let mut out = Vec::new();
    let mut x = lo;
    while x <= hi {
        out.push(x);
        let bits = x.to_bits();
        // Walk toward +inf: negative numbers shrink in magnitude as their bits decrease.
        let next = if x < 0.0 {
            if bits <= step | 0x8000_0000 {
                0
            } else {
                bits - step
            }
        } else {
            bits + step
        };
        x = f32::from_bits(next);
        if x == 0.0 && out.last() == Some(&0.0) {
            break;
        }
    }
    out
}

fn worst(x: &[f32], f: fn(&[f32], &mut [f32])) -> (f64, f32) {
    let mut out = vec![0.0; x.len()];
    f(x, &mut out);
    x.iter()
        .zip(&out)
        .map(|(&x, &y)| (ulps(y, f64::from(x).exp()), x))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
}

#[test]
fn normal_range_within_2_5_ulp() {
    // Results in the normal range: x ∈ [-87.3, EXP_MAX_ARG].
    let x = sample(-87.3, EXP_MAX_ARG, 29);
    assert!(x.len() > 500_000);
    for (name, f) in [
        ("dispatched", exp_slice as fn(&[f32], &mut [f32])),
        ("scalar", exp_slice_scalar),
    ] {
        let (u, at) = worst(&x, f);
        eprintln!("{name}: worst {u:.3} ulp at {at}");
        assert!(u <= 2.5, "{name}: {u} ulp at x = {at}");
    }
}

#[test]
fn underflow_region_within_1_5_subnormal_ulp() {
    let x = sample(-104.0, -87.3, 1);
    for f in [exp_slice as fn(&[f32], &mut [f32]), exp_slice_scalar] {
        let (u, at) = worst(&x, f);
        eprintln!("underflow: worst {u:.3} ulp(2^-149) at {at}");
        assert!(u <= 1.5, "{u} ulp(2^-149) at x = {at}");
    }
}

#[test]
fn special_values() {
    let x = [
        0.0,
        -0.0,
        f32::NEG_INFINITY,
        f32::NAN,
        -104.5,
        -1e30,
        f32::MIN,
        1.0,
        -1.0,
    ];
    for f in [exp_slice as fn(&[f32], &mut [f32]), exp_slice_scalar] {
        let mut out = [9.0f32; 9];
        f(&x, &mut out);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[1], 1.0);
        assert_eq!(out[2], 0.0);
        assert!(out[3].is_nan());
        assert_eq!(out[4], 0.0);
        assert_eq!(out[5], 0.0);
        assert_eq!(out[6], 0.0);
        assert!(ulps(out[7], 1f64.exp()) <= 2.5, "{}", out[7]);
        assert!(ulps(out[8], (-1f64).exp()) <= 2.5, "{}", out[8]);
    }
}

#[test]
fn above_the_domain_clamps() {
    let mut out = [0.0f32; 2];
    exp_slice(&[80.0, f32::INFINITY], &mut out);
    let at_max = (f64::from(EXP_MAX_ARG)).exp();
    assert!(ulps(out[0], at_max) <= 2.5);
    assert!(ulps(out[1], at_max) <= 2.5);
}

#[test]
fn kernel_exp_accuracy() {
    use loss_cpu::exp::exp_shifted_slice;
    // Where the probabilities that move a loss lie.
    let near = sample(-20.0, 0.0, 7);
    let (u, at) = worst(&near, exp_shifted_slice);
    eprintln!("exp_shifted on [-20, 0]: worst {u:.3} ulp at {at}");
    assert!(u <= 2.6, "{u} ulp at {at}");
    let far = sample(-87.3, -20.0, 7);
    let (u, at) = worst(&far, exp_shifted_slice);
    eprintln!("exp_shifted on [-87.3, -20]: worst {u:.3} ulp at {at}");
    assert!(u <= 5.0, "{u} ulp at {at}");
    let under = sample(-104.0, -87.3, 1);
    let (u, at) = worst(&under, exp_shifted_slice);
    eprintln!("exp_shifted underflow: worst {u:.3} ulp(2^-149) at {at}");
    assert!(u <= 3.0, "{u} ulp(2^-149) at {at}");
    let mut out = [9.0f32; 4];
    exp_shifted_slice(&[0.0, f32::NEG_INFINITY, f32::NAN, -1e30], &mut out);
    assert_eq!(out[0], 1.0);
    assert_eq!(out[1], 0.0);
    assert!(out[2].is_nan());
    assert_eq!(out[3], 0.0);
}

#[test]
fn ln_sum_within_2_ulp_on_its_domain() {
    use loss_cpu::exp::{ln_sum_slice, ln_sum_slice_scalar};
    // Every 7th f32 of [1, 2^24] (about 1.9 million values), and the ends.
    let mut x = sample(1.0, 16_777_216.0, 7);
    x.push(16_777_216.0);
    for (f, name) in [
        (ln_sum_slice as fn(&[f32], &mut [f32]), "dispatched"),
        (ln_sum_slice_scalar, "scalar"),
    ] {
        let mut out = vec![0.0; x.len()];
        f(&x, &mut out);
        let (worst, at) = x
            .iter()
            .zip(&out)
            .map(|(&x, &y)| (ulps(y, f64::from(x).ln()), x))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(worst <= 2.0, "{name}: {worst} ulp at {at}");
        // ln 1 = 0 exactly, and NaN stays NaN.
        let mut one = [0.0f32; 2];
        f(&[1.0, f32::NAN], &mut one);
        assert_eq!(one[0], 0.0, "{name}");
        assert!(one[1].is_nan(), "{name}");
    }
}
