//! A vectorised single-precision `exp` for the softmax, and the `ln` that turns a row's sum of
//! exponentials into its log-sum-exp, lanes at a time ([`ln_sum`]).
//!
//! Cody–Waite range reduction `x = n·ln2 + r` with `|r| ≤ ln2/2` (`ln2` split in two so that
//! `n·LN2_HI` is exact), a degree-5 minimax polynomial for `e^r` (Horner, 5 FMAs), and the scale
//! `2^n` built directly in the exponent bits. Every step is lane-wise, so a value does not depend on the lane
//! it sits in (the kernels rely on this for bit-identical results however the work is split).
//!
//! **Accuracy** (measured against `f64::exp` by `tests/exp_accuracy.rs`, every 29th `f32` of the
//! normal range and every `f32` of the underflow region): at most 2.0 ulp with fused multiply-adds
//! (measured with AVX2+FMA; NEON fuses too) and 2.3 ulp on the scalar fallback, which rounds the multiply and the add separately
//! (the test allows 2.5); at most 1.5 units of the smallest subnormal (`2^-149`) in the
//! gradual-underflow region `x ∈ [-104, -87.3]`; `exp(0) = 1` exactly, `exp(-inf) = 0`,
//! `exp(NaN) = NaN`, arguments below `-104` give `0` (the true value rounds to 0 there too). The
//! loss needs far less (`rtol 1e-4`); the bound is there so that a regression shows.
//!
//! The kernels use [`exp`]'s cheaper sibling [`exp_shifted`] (one FMA fewer, a few ulp less
//! accurate far from 0, documented there).
//!
//! **Domain**: `x ≤` [`EXP_MAX_ARG`]. The scale `2^n` is built with 24 spare exponent steps so that
//! results down to the subnormals need one multiply only; the price is that `n` must stay below
//! 104. The kernels only ever take `exp(x − max) ≤ 1`, so [`exp`] clamps larger arguments to
//! [`EXP_MAX_ARG`] rather than spend instructions on overflow.

use pulp::Simd;

/// The largest argument [`exp`] evaluates; larger ones are clamped to it (`e^71 ≈ 6.8e30`).
pub const EXP_MAX_ARG: f32 = 71.0;
/// Below this every `exp` rounds to zero in `f32` (`e^-104 < 2^-150`); the clamp also turns `-inf`
/// into a finite argument, so the range reduction never computes `inf − inf`.
const EXP_MIN_ARG: f32 = -104.0;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n·LN2_HI` is exact for `|n| < 2^11` (Cephes' constants).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5·2^23`: adding it rounds to an integer and leaves that integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// The spare exponent steps of the scale (see the module docs); folded into the polynomial.
const TWO_M24: f32 = 1.0 / 16_777_216.0;
/// `127 + 24`: the exponent bias plus the spare steps, added to `n` before the shift.
const SCALE_BIAS: u32 = 151;

// Degree-5 polynomial for e^r on [−ln2/2, ln2/2] with p(0) = 1 exactly, fitted for least
// maximal relative error (Lawson iteration; 1.5·2^-24 before rounding), pre-multiplied by 2^-24
// (exact: a power of two).
const P5: f32 = 8.290_315e-3 * TWO_M24;
const P4: f32 = 4.189_793e-2 * TWO_M24;
const P3: f32 = 1.666_763_6e-1 * TWO_M24;
const P2: f32 = 4.999_915e-1 * TWO_M24;
const P1: f32 = 9.999_997e-1 * TWO_M24;
const P0: f32 = TWO_M24;

/// `e^x` lane-wise for `x ≤` [`EXP_MAX_ARG`] (larger arguments are clamped); see the module docs
/// for the accuracy.
#[inline(always)]
pub fn exp<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    // A compare and a select rather than `min`: `min` drops NaN on some targets.
    let high = simd.greater_than_f32s(x, simd.splat_f32s(EXP_MAX_ARG));
    let x = simd.select_f32s_m32s(high, simd.splat_f32s(EXP_MAX_ARG), x);
    exp_core::<S, true>(simd, x)
}

/// The kernels' `exp`, of `x − max ≤ 0`: [`exp`] without the upper clamp (larger arguments than
/// [`EXP_MAX_ARG`] give meaningless values) and with a one-step range reduction
/// `r = x − n·ln2_f32` (one FMA fewer, ≈ 10 % faster kernels). The reduction's error grows with
/// `|n|`: measured ≤ 2.6 ulp for `x ∈ [−20, 0]` (where every probability that can move a loss
/// lies), ≤ 5 ulp down to −87.3, and within 3 units of `2^-149` for subnormal results
/// (`tests/exp_accuracy.rs`).
#[inline(always)]
pub fn exp_shifted<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    exp_core::<S, false>(simd, x)
}

/// [`exp`] below the upper clamp; `SPLIT_LN2` selects the two-step (exact) reduction.
#[inline(always)]
fn exp_core<S: Simd, const SPLIT_LN2: bool>(simd: S, x: S::f32s) -> S::f32s {
    // `max(LO, x)` returns its second operand for NaN with AVX/AVX-512 and propagates NaN on
    // NEON; Rust's scalar `max` drops NaN, so the scalar path compares and selects instead.
    let lo = simd.splat_f32s(EXP_MIN_ARG);
    let x = if S::IS_SCALAR {
        simd.select_f32s_m32s(simd.less_than_f32s(x, lo), lo, x)
    } else {
        simd.max_f32s(lo, x)
    };
    let t = simd.mul_add_e_f32s(x, simd.splat_f32s(LOG2_E), simd.splat_f32s(ROUND_MAGIC));
    let n = simd.sub_f32s(t, simd.splat_f32s(ROUND_MAGIC));
    let r = if SPLIT_LN2 {
        let r = simd.mul_add_e_f32s(n, simd.splat_f32s(-LN2_HI), x);
        simd.mul_add_e_f32s(n, simd.splat_f32s(-LN2_LO), r)
    } else {
        simd.mul_add_e_f32s(n, simd.splat_f32s(-core::f32::consts::LN_2), x)
    };
    // Horner: 5 FMAs (the cost that bounds the kernels).
    let mut y = simd.splat_f32s(P5);
    y = simd.mul_add_e_f32s(y, r, simd.splat_f32s(P4));
    y = simd.mul_add_e_f32s(y, r, simd.splat_f32s(P3));
    y = simd.mul_add_e_f32s(y, r, simd.splat_f32s(P2));
    y = simd.mul_add_e_f32s(y, r, simd.splat_f32s(P1));
    y = simd.mul_add_e_f32s(y, r, simd.splat_f32s(P0));
    // The low mantissa bits of `t` hold n (two's complement); the magic's own bits shift out.
    let biased = simd.add_u32s(simd.transmute_u32s_f32s(t), simd.splat_u32s(SCALE_BIAS));
    let scale = simd.wrapping_dyn_shl_u32s(biased, simd.splat_u32s(23));
    simd.mul_f32s(y, simd.transmute_f32s_u32s(scale))
}

// Cephes' `logf` polynomial for ln(1 + f), f ∈ [√½ − 1, √2 − 1].
const LN_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_5e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// `ln x` lane-wise for the sums of exponentials a row produces: `x ∈ [1, 2^24]` (the row's max
/// contributes exactly 1, and each of at most 2^24 terms at most 1) or NaN, which propagates.
/// Cephes' `logf` (`x = 2^e·m`, `m ∈ [√½, √2)`, a degree-9 polynomial in `m − 1`, `e·ln2` added
/// in two parts): within 2 ulp of `f64::ln` over that domain (`tests/exp_accuracy.rs`); other
/// arguments give meaningless values.
#[inline(always)]
pub fn ln_sum<S: Simd>(simd: S, x: S::f32s) -> S::f32s {
    let bits = simd.transmute_u32s_f32s(x);
    // The biased exponent as a float: its integer in the low mantissa bits of 2^23.
    let biased = simd.wrapping_dyn_shr_u32s(bits, simd.splat_u32s(23));
    let e = simd.sub_f32s(
        simd.transmute_f32s_u32s(simd.or_u32s(biased, simd.splat_u32s(0x4B00_0000))),
        simd.splat_f32s(8_388_608.0 + 126.0),
    );
    // m ∈ [0.5, 1): the mantissa with the exponent of 0.5.
    let m = simd.transmute_f32s_u32s(simd.or_u32s(
        simd.and_u32s(bits, simd.splat_u32s(0x007f_ffff)),
        simd.splat_u32s(0x3f00_0000),
    ));
    // Below √½: m ← 2m, e ← e − 1, so that f = m − 1 ∈ [√½ − 1, √2 − 1).
    let low = simd.less_than_f32s(m, simd.splat_f32s(SQRT_HALF));
    let e = simd.sub_f32s(
        e,
        simd.select_f32s_m32s(low, simd.splat_f32s(1.0), simd.splat_f32s(0.0)),
    );
    let f = simd.sub_f32s(
        simd.add_f32s(m, simd.select_f32s_m32s(low, m, simd.splat_f32s(0.0))),
        simd.splat_f32s(1.0),
    );
    let z = simd.mul_f32s(f, f);
    let mut y = simd.splat_f32s(LN_P[0]);
    for &c in &LN_P[1..] {
        y = simd.mul_add_e_f32s(y, f, simd.splat_f32s(c));
    }
    let y = simd.mul_f32s(simd.mul_f32s(y, f), z);
    let y = simd.mul_add_e_f32s(e, simd.splat_f32s(LN2_LO), y);
    let y = simd.mul_add_e_f32s(z, simd.splat_f32s(-0.5), y);
    let r = simd.mul_add_e_f32s(e, simd.splat_f32s(LN2_HI), simd.add_f32s(f, y));
    // NaN in, NaN out (its bits would otherwise give a number).
    let nan = simd.not_m32s(simd.equal_f32s(x, x));
    simd.select_f32s_m32s(nan, x, r)
}

/// [`ln_sum`] of every element of `x` into `out`, with the best instruction set of this machine
/// (for its tests).
pub fn ln_sum_slice(x: &[f32], out: &mut [f32]) {
    pulp::Arch::new().dispatch(LnSlice { x, out });
}

/// [`ln_sum_slice`] on the portable scalar instruction set.
pub fn ln_sum_slice_scalar(x: &[f32], out: &mut [f32]) {
    use pulp::WithSimd;
    LnSlice { x, out }.with_simd(pulp::Scalar::new());
}

struct LnSlice<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for LnSlice<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let len = self.x.len().min(self.out.len());
        let (xs, xt) = S::as_simd_f32s(&self.x[..len]);
        let (os, ot) = S::as_mut_simd_f32s(&mut self.out[..len]);
        for (o, &v) in os.iter_mut().zip(xs) {
            *o = ln_sum(simd, v);
        }
        let v = simd.partial_load_f32s(xt);
        simd.partial_store_f32s(ot, ln_sum(simd, v));
    }
}

/// Writes `e^x` of every element of `x` into `out` (the first `min(len)` elements), with the best
/// instruction set of this machine: for tests and for callers outside a SIMD context.
pub fn exp_slice(x: &[f32], out: &mut [f32]) {
    pulp::Arch::new().dispatch(ExpSlice {
        x,
        out,
        shifted: false,
    });
}

/// [`exp_slice`] with [`exp_shifted`] (for its tests).
pub fn exp_shifted_slice(x: &[f32], out: &mut [f32]) {
    pulp::Arch::new().dispatch(ExpSlice {
        x,
        out,
        shifted: true,
    });
}

/// [`exp_slice`] with the portable scalar instruction set, whatever the machine (tests use it to
/// check the fallback path).
pub fn exp_slice_scalar(x: &[f32], out: &mut [f32]) {
    use pulp::WithSimd;
    ExpSlice {
        x,
        out,
        shifted: false,
    }
    .with_simd(pulp::Scalar::new());
}

struct ExpSlice<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    shifted: bool,
}

impl pulp::WithSimd for ExpSlice<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let len = self.x.len().min(self.out.len());
        let (xs, xt) = S::as_simd_f32s(&self.x[..len]);
        let (os, ot) = S::as_mut_simd_f32s(&mut self.out[..len]);
        // Branches, not a closure: a closure would lose the dispatch's target features.
        for (o, &v) in os.iter_mut().zip(xs) {
            *o = if self.shifted {
                exp_shifted(simd, v)
            } else {
                exp(simd, v)
            };
        }
        let v = simd.partial_load_f32s(xt);
        let v = if self.shifted {
            exp_shifted(simd, v)
        } else {
            exp(simd, v)
        };
        simd.partial_store_f32s(ot, v);
    }
}
