//! The formulas of the [specification](crate#the-loss), each in one place.
//!
//! Every backend computes these quantities, and none writes them again: the host-side scalars of
//! a problem ([`Scalars`]: `W`, the smoothing), the mean's denominator `D` ([`DenominatorParts`],
//! summed by each backend in its own fixed order), the gradient's scale `s_i` ([`GradScale`]),
//! the final reduction ([`reduce`]), the smoothed target ([`Smoothing::target`]), a position's
//! loss from the statistics a kernel gathers in one pass over its row ([`RowStats`],
//! [`index_loss`], [`prob_loss`]), and its gradient, both factored for vector loops
//! ([`index_coefficients`], [`prob_coefficient`]) and element by element for the corners where
//! the factored form would turn `±∞` into NaN ([`index_grad`], [`prob_grad`]).
//!
//! The [reference](crate::reference) is the plain composition of these definitions in `f64`. A
//! kernel evaluates the row statistics its own way (SIMD lanes, a GPU workgroup) and hands them
//! here; a new per-position term of the loss is a change to this module plus the one place in
//! each backend where a row's statistics are turned into its loss and gradient coefficients.

use core::ops::{Add, Mul, Range, Sub};

use crate::problem::{Problem, Reduction, TargetData};

/// The arithmetic the per-position formulas need, so that one definition serves the scalar
/// `f64` of the reference and the SIMD lanes of a kernel (several positions at once).
pub trait Real: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> {
    /// The constant `v` in this representation (every lane `v`); `self` only lends its context
    /// (a SIMD token), not its value.
    fn lit(self, v: f64) -> Self;
}

impl Real for f64 {
    #[inline(always)]
    fn lit(self, v: f64) -> f64 {
        v
    }
}

/// Label smoothing as the formulas use it: `t' = keep·t + spread` with `keep = 1 − ε` and
/// `spread = ε/C`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoothing {
    /// `ε`.
    pub eps: f64,
    /// `1 − ε`.
    pub keep: f64,
    /// `ε / C`.
    pub spread: f64,
}

impl Smoothing {
    /// The smoothing `ε` over `classes` classes.
    pub fn new(eps: f32, classes: usize) -> Self {
        let eps = f64::from(eps);
        Smoothing {
            eps,
            keep: 1.0 - eps,
            spread: eps / classes.max(1) as f64,
        }
    }

    /// Whether `ε > 0`. When it is not, every smoothing term is left out entirely (not
    /// multiplied by 0): a masked class (logit −∞) must not make `0·∞ = NaN`.
    pub fn is_on(&self) -> bool {
        self.eps > 0.0
    }

    /// The smoothed probability target `t' = (1 − ε)·t + ε/C` (just `t` when `ε = 0`).
    pub fn target(&self, t: f64) -> f64 {
        if self.is_on() {
            self.keep * t + self.spread
        } else {
            t
        }
    }
}

/// `W = Σ_c w[c]` (`C` without weights).
pub fn total_weight(weight: Option<&[f32]>, classes: usize) -> f64 {
    match weight {
        Some(w) => w.iter().map(|&v| f64::from(v)).sum(),
        None => classes as f64,
    }
}

/// The scalars of a problem every position shares, computed once per call on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalars {
    /// `C`.
    pub classes: usize,
    /// The smoothing.
    pub smoothing: Smoothing,
    /// `W = Σ w`, which only the smoothing term uses; 0 when smoothing is off (then it is never
    /// read: summing `C` weights per call cost more than a whole 128K-class row, and `0·W` must
    /// not turn an infinite weight into NaN).
    pub total_weight: f64,
}

impl Scalars {
    /// The scalars of a validated problem.
    pub fn of(problem: &Problem<'_>) -> Self {
        let options = problem.options();
        Self::new(options.weight, problem.classes(), options.label_smoothing)
    }

    /// The scalars from a problem's parts.
    pub fn new(weight: Option<&[f32]>, classes: usize, label_smoothing: f32) -> Self {
        let smoothing = Smoothing::new(label_smoothing, classes);
        Scalars {
            classes,
            smoothing,
            total_weight: if smoothing.is_on() {
                total_weight(weight, classes)
            } else {
                0.0
            },
        }
    }
}

/// The class of an index-target position, or `None` when it is ignored.
pub fn valid_class(target: i64, ignore_index: i64) -> Option<usize> {
    (target != ignore_index).then_some(target as usize)
}

/// The parts of a problem its denominators depend on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenominatorParts<'a> {
    /// The target.
    pub target: TargetData<'a>,
    /// `ignore_index`.
    pub ignore_index: i64,
    /// Class weights.
    pub weight: Option<&'a [f32]>,
    /// Position weights `s_i`.
    pub position_weight: Option<&'a [f32]>,
}

impl<'a> DenominatorParts<'a> {
    /// The parts of a validated problem.
    pub fn of(problem: &Problem<'a>) -> Self {
        let o = problem.options();
        DenominatorParts {
            target: problem.target(),
            ignore_index: o.ignore_index,
            weight: o.weight,
            position_weight: o.position_weight,
        }
    }

    /// The parts of the z-loss's denominator `V = Σ_{valid i} s_i`: `D`'s without class weights.
    pub fn valid(self) -> Self {
        DenominatorParts {
            weight: None,
            ..self
        }
    }

    /// A position's contribution to the mean's denominator `D`: `s_i·w[y_i]` for a valid index
    /// target, 0 for an ignored one, `s_i` for a probability target (whose mean divides by
    /// `Σ s_i`, `P` without position weights).
    pub fn term(&self, position: usize) -> f64 {
        let s = self.position_weight.map_or(1.0, |s| f64::from(s[position]));
        match self.target {
            TargetData::Indices(y) => valid_class(y[position], self.ignore_index)
                .map_or(0.0, |c| s * self.weight.map_or(1.0, |w| f64::from(w[c]))),
            TargetData::Probs(_) => s,
        }
    }

    /// The denominator over a range of positions: [`DenominatorParts::term`] of each, added in
    /// a fixed order (four running sums by position modulo 4, then added in order; four
    /// independent additions per step instead of one long dependent chain). Backends that split
    /// it into parts add the parts in a fixed order of their own, so that their bits do not
    /// depend on threads.
    pub fn over(&self, positions: Range<usize>) -> f64 {
        let mut sums = [0.0f64; 4];
        match (self.target, self.position_weight) {
            // Without branches on the target (ignored positions add an exact 0); position k goes
            // to sum k mod 4, four at a time so that the sums stay in registers.
            (TargetData::Indices(y), None) => {
                let (ignore_index, weight) = (self.ignore_index, self.weight);
                let term = |t: i64| match (valid_class(t, ignore_index), weight) {
                    (None, _) => 0.0,
                    (Some(_), None) => 1.0,
                    (Some(c), Some(w)) => f64::from(w[c]),
                };
                let y = &y[positions];
                let quads = y.chunks_exact(4);
                let rest = quads.remainder();
                for q in quads {
                    for (s, &t) in sums.iter_mut().zip(q) {
                        *s += term(t);
                    }
                }
                for (s, &t) in sums.iter_mut().zip(rest) {
                    *s += term(t);
                }
            }
            (TargetData::Probs(_), None) => {
                let n = positions.len();
                for (k, s) in sums.iter_mut().enumerate() {
                    // The count of positions p < n with p mod 4 = k: what adding 1 per position
                    // gives, exactly (counts below 2^53 are exact in f64).
                    *s = n.saturating_sub(k).div_ceil(4) as f64;
                }
            }
            (_, Some(_)) => {
                for (k, p) in positions.enumerate() {
                    sums[k % 4] += self.term(p);
                }
            }
        }
        (sums[0] + sums[1]) + (sums[2] + sums[3])
    }
}

/// `D` of a problem over a range of positions ([`DenominatorParts::over`]).
pub fn denominator_over(problem: &Problem<'_>, positions: Range<usize>) -> f64 {
    DenominatorParts::of(problem).over(positions)
}

/// `V = Σ_{valid i} s_i` over a range of positions: the z-loss's denominator for `mean`.
pub fn valid_over(problem: &Problem<'_>, positions: Range<usize>) -> f64 {
    DenominatorParts::of(problem).valid().over(positions)
}

/// The upstream gradient as the kernels see it: `s_i` of [the gradient](crate#the-gradient).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradScale<'g> {
    /// One `s` for every position (sum: `g`; mean: `g / D`).
    Uniform(f32),
    /// `s_i = g_i` (reduction none), indexed by global position.
    PerPosition(&'g [f32]),
}

impl GradScale<'_> {
    /// `s_i`.
    #[inline(always)]
    pub fn at(&self, position: usize) -> f32 {
        match *self {
            GradScale::Uniform(s) => s,
            GradScale::PerPosition(g) => g[position],
        }
    }
}

/// The scale of the gradient for an upstream gradient: `g_i` (none), `g` (sum), `g / D` (mean).
///
/// # Panics
/// When `grad_output` is empty for sum or mean (validated callers pass [`Problem::loss_len`]
/// values).
pub fn grad_scale(reduction: Reduction, grad_output: &[f32], denominator: f64) -> GradScale<'_> {
    match reduction {
        Reduction::None => GradScale::PerPosition(grad_output),
        Reduction::Sum => GradScale::Uniform(grad_output[0]),
        Reduction::Mean => GradScale::Uniform((f64::from(grad_output[0]) / denominator) as f32),
    }
}

/// The reduced loss and its z part from the sums of the per-position cross-entropies (`s_i·L_i`)
/// and z parts (`z·s_i·LSE_i²`): for `mean` the cross-entropy over `D` and the z part over `V`,
/// else the sums; the loss is their sum. With `z_on = false` the z part is left out entirely
/// (0), so that a mean over `V = 0` does not add `0/0`. Returns `(loss, z part)`; meaningless for
/// `none`.
pub fn reduce_with_z(
    reduction: Reduction,
    ce_total: f64,
    z_total: f64,
    denominator: f64,
    valid: f64,
    z_on: bool,
) -> (f64, f64) {
    let ce = reduce(reduction, ce_total, denominator);
    if z_on {
        let z = reduce(reduction, z_total, valid);
        (ce + z, z)
    } else {
        (ce, 0.0)
    }
}

/// The soft-capped logit `a·tanh(x/a)` (in `f64`; kernels evaluate it their own way within the
/// bound they state).
pub fn softcap(x: f64, a: f64) -> f64 {
    a * (x / a).tanh()
}

/// The chain-rule factor of the soft-cap: `d(a·tanh(x/a))/dx = 1 − tanh²(x/a)`, written through
/// the capped value `x̃` as `1 − (x̃/a)²`.
pub fn softcap_slope(capped: f64, a: f64) -> f64 {
    let t = capped / a;
    1.0 - t * t
}

/// The z-loss of a valid position: `z·s_i·LSE²`. Callers leave it out entirely when `z = 0`
/// (so that a NaN LSE of a masked row does not become `0·NaN`).
pub fn z_part(z: f64, position_weight: f64, lse: f64) -> f64 {
    z * position_weight * lse * lse
}

/// The z-loss's gradient coefficient of `p[c]` at a valid position: `∂(z·s_i·LSE²)/∂x[c] =
/// 2·z·s_i·LSE·p[c]`, times the z part's upstream scale (`g/V` for mean). Added to the
/// cross-entropy's coefficient `a` of `p[c]`.
pub fn z_coefficient(z_scale: f64, z: f64, position_weight: f64, lse: f64) -> f64 {
    z_scale * 2.0 * z * position_weight * lse
}

/// The sum over its classes of one valid position's gradient, `Σ_c ∂L_i/∂x[c]`, given the
/// position's z-loss coefficient of `p[c]` ([`z_coefficient`]; 0 without a z-loss).
///
/// The cross-entropy part sums to zero for both kinds of target, whatever the weights and the
/// smoothing: with `Σ_c p[c] = 1`, an index target's `a·Σp − b·W − fix` is `0` because
/// `a = fix + b·W` ([`IndexCoefficients`]), and a probability target's `s·(mass − Σ w·t')` is `0`
/// by the definition of `mass`. Only the z-loss's `zc·p[c]` is left, and it sums to `zc`.
///
/// This is what lets a kernel restore the one element whose terms cancel — the target of a
/// confident row, `a·p_y − fix` with `p_y → 1` — from the other elements, which carry no
/// cancellation: `g[k] = gradient_sum(zc) − Σ_{c≠k} g[c]`. Computed directly in `f32`, that
/// element keeps an absolute error of a few `f32` ulps of `s`, far above a half gradient's
/// subnormal steps.
pub fn gradient_sum(z_coefficient: f64) -> f64 {
    z_coefficient
}

/// The reduced loss from the sum of the per-position losses: the sum itself, or for `mean` the
/// sum over `D` (NaN when `D = 0`, as PyTorch). Meaningless for `none`, whose losses are the
/// per-position ones.
pub fn reduce(reduction: Reduction, total: f64, denominator: f64) -> f64 {
    match reduction {
        Reduction::Mean => total / denominator,
        Reduction::Sum | Reduction::None => total,
    }
}

/// What one pass over a position's logits gathers, everything relative to the row's max `m`
/// (so that a large common offset of the logits cancels exactly):
///
/// - `max = m` and `ln_sum = ln Σ exp(x − m)`, so `LSE = max + ln_sum`;
/// - `x_target`: the target class's logit (index targets);
/// - `weighted`: `Σ w·(x − m)` (index targets with smoothing) or `Σ w·t'·(x − m)` (probability
///   targets);
/// - `mass`: `Σ w·t'` (probability targets).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RowStats<R = f64> {
    /// The row's max.
    pub max: R,
    /// `ln Σ exp(x − max)`.
    pub ln_sum: R,
    /// The target class's logit.
    pub x_target: R,
    /// `Σ w·(x − max)` or `Σ w·t'·(x − max)`.
    pub weighted: R,
    /// `Σ w·t'`.
    pub mass: R,
}

impl<R: Real> RowStats<R> {
    /// `LSE = max + ln Σ exp(x − max)`.
    pub fn lse(&self) -> R {
        self.max + self.ln_sum
    }
}

/// The loss of a valid index-target position with target weight `w_y`:
/// `(1−ε)·w_y·(LSE − x_y) + (ε/C)·(W·ln_sum − Σ w·(x − max))`, the smoothing term being
/// `(ε/C)·Σ_c w[c]·(LSE − x[c])` rewritten relative to the max.
#[inline(always)]
pub fn index_loss<R: Real>(s: &Scalars, w_y: R, r: &RowStats<R>) -> R {
    let sm = s.smoothing;
    let nll = w_y.lit(sm.keep) * w_y * ((r.max - r.x_target) + r.ln_sum);
    if sm.is_on() {
        nll + w_y.lit(sm.spread) * (w_y.lit(s.total_weight) * r.ln_sum - r.weighted)
    } else {
        nll
    }
}

/// The loss of a probability-target position: `Σ w·t'·(LSE − x) = mass·ln_sum − Σ w·t'·(x − max)`.
#[inline(always)]
pub fn prob_loss<R: Real>(r: &RowStats<R>) -> R {
    r.mass * r.ln_sum - r.weighted
}

/// The gradient of a valid index-target position, factored for vector loops:
/// `g[c] = a·p[c] − b·w[c] − fix·[c = y]` (the `b` term only when smoothing is on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexCoefficients<R = f64> {
    /// Coefficient of `p[c]`: `s·((1−ε)·w_y + (ε/C)·W)`.
    pub a: R,
    /// Coefficient of `w[c]`: `s·ε/C`.
    pub b: R,
    /// Subtracted at the target class: `s·(1−ε)·w_y`.
    pub fix: R,
}

/// [`IndexCoefficients`] for scale `s_i = scale` and target weight `w_y`.
#[inline(always)]
pub fn index_coefficients<R: Real>(s: &Scalars, scale: R, w_y: R) -> IndexCoefficients<R> {
    let sm = s.smoothing;
    let nll = w_y.lit(sm.keep) * w_y;
    IndexCoefficients {
        a: scale * (nll + w_y.lit(sm.spread * s.total_weight)),
        b: scale * w_y.lit(sm.spread),
        fix: scale * nll,
    }
}

/// The gradient of a probability-target position, factored: `g[c] = a·p[c] − s·w[c]·t'[c]` with
/// `a = s·mass`.
#[inline(always)]
pub fn prob_coefficient<R: Real>(scale: R, mass: R) -> R {
    scale * mass
}

/// One element of a valid index-target position's gradient, directly:
/// `s·[(1−ε)·w_y·(p − [c = y]) + (ε/C)·(W·p − w_c)]`.
pub fn index_grad(s: &Scalars, scale: f64, p: f64, w_c: f64, w_y: f64, is_target: bool) -> f64 {
    let sm = s.smoothing;
    let onehot = if is_target { 1.0 } else { 0.0 };
    let mut g = sm.keep * w_y * (p - onehot);
    if sm.is_on() {
        g += sm.spread * (s.total_weight * p - w_c);
    }
    scale * g
}

/// One element of a probability-target position's gradient, directly:
/// `s·(p·mass − w_c·t'_c)`.
pub fn prob_grad(s: &Scalars, scale: f64, p: f64, w_c: f64, t_c: f64, mass: f64) -> f64 {
    scale * (p * mass - w_c * s.smoothing.target(t_c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factored_and_direct_gradients_agree() {
        let s = Scalars {
            classes: 4,
            smoothing: Smoothing::new(0.2, 4),
            total_weight: 3.5,
        };
        let (scale, w_y) = (0.7, 1.3);
        let k = index_coefficients(&s, scale, w_y);
        for (p, w_c, target) in [(0.1, 0.5, false), (0.6, 1.3, true)] {
            let factored = k.a * p - k.b * w_c - if target { k.fix } else { 0.0 };
            let direct = index_grad(&s, scale, p, w_c, w_y, target);
            assert!((factored - direct).abs() < 1e-15, "{factored} {direct}");
        }
        let (mass, t_c, w_c, p) = (0.9, 0.25, 2.0, 0.3);
        let factored = prob_coefficient(scale, mass) * p - scale * w_c * s.smoothing.target(t_c);
        assert!((factored - prob_grad(&s, scale, p, w_c, t_c, mass)).abs() < 1e-15);
    }

    #[test]
    fn smoothing_off_leaves_no_term() {
        let s = Scalars::new(Some(&[f32::INFINITY, 1.0]), 2, 0.0);
        assert_eq!(s.total_weight, 0.0);
        // A masked non-target class (weighted = −∞) does not reach the loss without smoothing.
        let r = RowStats {
            max: 1.0,
            ln_sum: 0.5,
            x_target: 1.0,
            weighted: f64::NEG_INFINITY,
            mass: 0.0,
        };
        assert_eq!(index_loss(&s, 2.0, &r), 1.0);
        assert_eq!(Smoothing::new(0.0, 3).target(0.25), 0.25);
        assert!((Smoothing::new(0.3, 3).target(0.25) - (0.7 * 0.25 + 0.1)).abs() < 1e-7);
    }

    #[test]
    fn reductions() {
        assert_eq!(reduce(Reduction::Sum, 6.0, 2.0), 6.0);
        assert_eq!(reduce(Reduction::Mean, 6.0, 2.0), 3.0);
        assert!(reduce(Reduction::Mean, 0.0, 0.0).is_nan());
        let g = [2.0f32];
        assert_eq!(
            grad_scale(Reduction::Mean, &g, 4.0),
            GradScale::Uniform(0.5)
        );
        assert_eq!(grad_scale(Reduction::Sum, &g, 4.0).at(9), 2.0);
        let per = [1.0f32, 3.0];
        assert_eq!(grad_scale(Reduction::None, &per, f64::NAN).at(1), 3.0);
    }
}
