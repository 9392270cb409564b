//! Half gradients: the one element of a position whose terms cancel, restored from the others.
//!
//! The gradient of a confident row's target is `a·p_y − fix` with `p_y → 1`: two terms of the
//! size of the scale `s` that cancel, so computed in `f32` it keeps an absolute error of a few
//! `f32` ulps of `s` (from `Σ exp` and `p_y` in `f32`; the K-dimensional tiles also round the
//! `LSE` to `f32`). An `f32` gradient is judged against an absolute tolerance far above that. A
//! half gradient is not: `f16`'s subnormal steps are `6·10⁻⁸`, so such an element came out several
//! steps off, or 0. The other elements carry no cancellation (`a·p[c]`, exact to a few relative
//! ulps), and the row's gradient sums to a known value ([`formula::gradient_sum`]), so the
//! cancelling element is restored as that sum minus the others, in `f64`: exact to the half
//! type's rounding. Every route that narrows a gradient to a half type calls this first.

use loss_core::formula;

use super::Strided;

/// Sets element `k` of one position's gradient (the classes `at` describes in `g`) to
/// `gradient_sum(zc) − Σ_{c≠k} g[c]`, the others added in `f64` in a fixed order. A position
/// whose gradient is not finite (a NaN logit, an infinite scale) is left as computed.
pub(super) fn restore_cancelled(g: &mut [f32], at: Strided, k: usize, zc: f64) {
    debug_assert!(at.first_class == 0 && k < at.classes);
    let others = if at.stride == 1 {
        let row = &g[at.base..at.base + at.classes];
        sum_f64(&row[..k]) + sum_f64(&row[k + 1..])
    } else {
        let mut acc = [0.0f64; 4];
        for c in (0..at.classes).filter(|&c| c != k) {
            acc[c % 4] += f64::from(g[at.base + c * at.stride]);
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    };
    let i = at.base + k * at.stride;
    let v = formula::gradient_sum(zc) - others;
    if v.is_finite() && g[i].is_finite() {
        g[i] = v as f32;
    }
}

/// `Σ x` in `f64`, four running sums (a fixed order).
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let quads = x.chunks_exact(4);
    let tail = quads.remainder();
    for q in quads {
        for (a, &v) in acc.iter_mut().zip(q) {
            *a += f64::from(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += f64::from(v);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// The class of a probability target whose weighted target `w[c]·t'[c]` is at least half of
/// the position's `Σ w·t'` (the one element that can cancel to far below the others), if any.
/// `wt(c)` is `w[c]·t'[c]`.
pub(super) fn dominant_class(classes: usize, wt: impl Fn(usize) -> f64) -> Option<usize> {
    let (mut best, mut top, mut total) = (0, f64::NEG_INFINITY, 0.0);
    for c in 0..classes {
        let v = wt(c);
        total += v;
        if v > top {
            (best, top) = (c, v);
        }
    }
    (top.is_finite() && top > 0.0 && 2.0 * top >= total).then_some(best)
}
