//! The staged path: problems that soft-cap, weight positions, have half probability targets, a
//! z-loss that does not fold into one coefficient (an infinite `D`), or ask for the
//! per-position LSE or z part, whatever the logits' type.
//!
//! Each position's row is *staged*: widened to `f32` (exactly) into a scratch row that stays in
//! L1 (L2 for rows past 8K classes), soft-capped there with a vectorised `tanh` ([`tanh_lanes`]).
//! Then the long-row fused kernel runs on the scratch: one pass for the max, the sum of
//! exponentials (each `exp(x − max)` stored, `exp` evaluated once per logit) and the smoothing or
//! probability sums; the epilogue in `f64` from loss-core's formulas, with the position weight
//! and the z-loss (its gradient is one more term of the coefficient of `p[c]`); one pass turning
//! the stored exponentials into the gradient; the soft-cap's chain factor; and one narrowing
//! store into the caller's buffer (`f32`, `bf16` or `f16`, rounded once to nearest even). Memory
//! sees one read of the logits and one write of the gradient, in their own element type.
//!
//! A half input and the `f32` input of the same widened values take this same path, so they give
//! the same bits. The other problems take the fast kernels of the [parent module](super), on
//! widened units for half logits (a scratch copy would cost a plain row a pass over L1).

use loss_core::formula;
use loss_core::{Elems, ElemsMut, Outputs, Reduction, TargetData};
use pulp::{Simd, WithSimd};

use super::simd::{
    Extras, MAX_CHUNKS, NoTerm, ProbTerm, SmoothTerm, fused_row_first, fused_row_second, lanes_of,
    load,
};
use super::{CHUNK, GradScale, Plan, Strided, Tgt, refine};

/// The upstream scales of a staged gradient before the position weights: the cross-entropy
/// part's (`g_i`, `g` or `g/D`) and the z-loss part's (`g_i`, `g` or `g/V`).
#[derive(Debug, Clone, Copy)]
pub struct StagedScales<'g> {
    /// The cross-entropy part's.
    pub ce: GradScale<'g>,
    /// The z-loss part's.
    pub z: GradScale<'g>,
}

/// Where one staged unit writes: each output is the unit's part (its positions, or its span of
/// the gradient), `None` when not wanted.
#[derive(Debug, Default)]
pub struct StagedOut<'o> {
    /// Per-position losses `s_i·L_i + z_i` (reduction `none`).
    pub losses: Option<&'o mut [f32]>,
    /// Per-position LSE.
    pub lse: Option<&'o mut [f32]>,
    /// Per-position z part `z_i` (reduction `none`).
    pub z_loss: Option<&'o mut [f32]>,
    /// The gradient: the scales and the unit's span of the buffer.
    pub grad: Option<(StagedScales<'o>, ElemsMut<'o>)>,
}

/// A staged unit's partials, each added in position order: `Σ s_i·L_i` and `Σ z_i`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StagedPartial {
    /// The cross-entropy part.
    pub ce: f64,
    /// The z-loss part.
    pub z: f64,
}

/// A whole staged call cut into units: run [`Plan::staged_unit`] on each of
/// [`StagedCall::units`] (in any order, on any threads), then [`StagedCall::finish`] with the
/// partials in unit order.
#[derive(Debug)]
pub struct StagedCall<'o> {
    /// One output per unit, in unit order.
    pub units: Vec<StagedOut<'o>>,
    loss: Option<&'o mut [f32]>,
    z_loss: Option<&'o mut [f32]>,
    reduction: Reduction,
    z: f64,
    denominator: f64,
    valid: f64,
}

impl StagedCall<'_> {
    /// `plan` set up for the fast kernels with this call's `D` and `V` (computed once, here):
    /// what [`Plan::widened_unit`] runs with, on the same per-unit outputs.
    pub fn fast_plan<'a>(&self, plan: &Plan<'a>) -> Plan<'a> {
        plan.with_denominators(self.denominator, self.valid)
    }

    /// Writes the reduced loss and z part (sum and mean) from the units' partials, added in
    /// unit order.
    ///
    /// # Panics
    /// When `partials` is not one per unit.
    pub fn finish(self, partials: &[StagedPartial]) {
        assert_eq!(partials.len(), self.units.len(), "one partial per unit");
        if self.reduction == Reduction::None {
            return;
        }
        let ce = partials.iter().fold(0.0, |acc, p| acc + p.ce);
        let z = partials.iter().fold(0.0, |acc, p| acc + p.z);
        let (loss, z) = formula::reduce_with_z(
            self.reduction,
            ce,
            z,
            self.denominator,
            self.valid,
            self.z > 0.0,
        );
        if let Some(l) = self.loss {
            l[0] = loss as f32;
        }
        if let Some(l) = self.z_loss {
            l[0] = z as f32;
        }
    }
}

impl<'a> Plan<'a> {
    /// Cuts a call's (checked) outputs into units for [`Plan::staged_unit`], with the mean's
    /// denominators and the gradient's scales computed once.
    pub fn staged_call<'o>(&self, out: Outputs<'o>) -> StagedCall<'o> {
        let reduction = self.reduction;
        let z = f64::from(self.z_loss);
        let mean = reduction == Reduction::Mean;
        let denominator = if mean {
            self.mean_denominator()
        } else {
            f64::NAN
        };
        let valid = if mean && z > 0.0 {
            self.valid_count()
        } else {
            f64::NAN
        };
        let Outputs {
            loss,
            lse,
            z_loss,
            grad,
            ..
        } = out;
        let none = reduction == Reduction::None;
        let (mut per_loss, mut per_z, loss, z_loss) = if none {
            (loss, z_loss, None, None)
        } else {
            (None, None, loss, z_loss)
        };
        let mut lse = lse;
        let mut grad = grad.map(|g| {
            let scales = StagedScales {
                ce: formula::grad_scale(reduction, g.grad_output, denominator),
                z: formula::grad_scale(reduction, g.grad_output, valid),
            };
            (scales, g.grad)
        });
        let mut units = Vec::with_capacity(self.units());
        for u in 0..self.units() {
            let n = self.unit_positions(u).len();
            let span = self.unit_logits(u).len();
            units.push(StagedOut {
                losses: take(&mut per_loss, n),
                lse: take(&mut lse, n),
                z_loss: take(&mut per_z, n),
                grad: grad.take().map(|(scales, g)| {
                    let (head, rest) = g.split_at_mut(span);
                    grad = Some((scales, rest));
                    (scales, head)
                }),
            });
        }
        StagedCall {
            units,
            loss,
            z_loss,
            reduction,
            z,
            denominator,
            valid,
        }
    }

    /// One unit of the [staged path](crate::kernel#half-logits-and-the-extensions): `logits` is the unit's span
    /// ([`Plan::unit_logits`]) in any element type, `out` the unit's outputs.
    ///
    /// # Panics
    /// When `logits` or an output is not the unit's length.
    pub fn staged_unit(&self, unit: usize, logits: Elems<'_>, out: StagedOut<'_>) -> StagedPartial {
        let span = self.unit_logits(unit).len();
        let n = self.unit_positions(unit).len();
        assert_eq!(logits.len(), span, "logits are not the unit's span");
        for o in [&out.losses, &out.lse, &out.z_loss].into_iter().flatten() {
            assert_eq!(o.len(), n, "output is not the unit's positions");
        }
        if let Some((_, g)) = &out.grad {
            assert_eq!(g.len(), span, "grad is not the unit's span");
        }
        thread_local! {
            static SCRATCH: core::cell::RefCell<Scratch> = const {
                core::cell::RefCell::new(Scratch { rows: Vec::new() })
            };
        }
        // Per-thread rows, reused across calls (a fresh 128 KiB row per unit was a page-faulting
        // `mmap` each time).
        // The staged rows compute the z part themselves (with `s_i`): a plan set up for the fast
        // kernels (`Plan::ready`) must not add its folded `z′` here too.
        let plan = &Plan {
            z_plain: 0.0,
            ..*self
        };
        SCRATCH.with_borrow_mut(|scratch| {
            let classes = plan.layout.classes;
            let chunks = classes.div_ceil(CHUNK).max(1);
            scratch.rows.resize(3 * classes + chunks, 0.0);
            plan.arch.dispatch(StagedOp {
                plan,
                unit,
                logits,
                out,
                scratch: &mut scratch.rows,
            })
        })
    }
}

/// The staged path's per-thread rows: the staged logits, the exponentials (then the gradient),
/// the staged probabilities, the chunk maxes.
struct Scratch {
    rows: Vec<f32>,
}

/// The first `n` values of an optional buffer (the rest stays for the next unit).
fn take<'o>(buf: &mut Option<&'o mut [f32]>, n: usize) -> Option<&'o mut [f32]> {
    let b = buf.take()?;
    let (head, rest) = b.split_at_mut(n);
    *buf = Some(rest);
    Some(head)
}

struct StagedOp<'p, 'a, 'l, 'o, 's> {
    plan: &'p Plan<'a>,
    unit: usize,
    logits: Elems<'l>,
    out: StagedOut<'o>,
    scratch: &'s mut [f32],
}

/// Widens the classes of one position (`base + c·stride`) into `row`.
fn gather(src: Elems<'_>, base: usize, stride: usize, row: &mut [f32]) {
    if stride == 1 {
        super::convert::widen(src.slice(base..base + row.len()), row);
    } else {
        for (c, v) in row.iter_mut().enumerate() {
            *v = src.get(base + c * stride);
        }
    }
}

impl WithSimd for StagedOp<'_, '_, '_, '_, '_> {
    type Output = StagedPartial;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> StagedPartial {
        let StagedOp {
            plan,
            unit,
            logits,
            mut out,
            scratch,
        } = self;
        let layout = plan.layout;
        let (classes, inner) = (layout.classes, layout.inner);
        let positions = plan.unit_positions(unit);
        let unit_start = plan.unit_logits(unit).start;
        let probs = match plan.target_data {
            TargetData::Probs(t) => Some(t),
            TargetData::Indices(_) => None,
        };
        let (x, rest) = scratch.split_at_mut(classes);
        let (e, rest) = rest.split_at_mut(classes);
        let (t, maxes) = rest.split_at_mut(classes);
        let cap = plan.softcap;
        let z = f64::from(plan.z_loss);
        let smooth = plan.smoothing();
        let weighted = plan.position_weight.is_some();
        let mut partial = StagedPartial::default();
        for (k, p) in positions.enumerate() {
            // The unit-relative offset of the position's class 0; classes `inner` apart.
            let base = (p / inner) * classes * inner + p % inner - unit_start;
            // f32 rows without a cap are read in place; the others are staged.
            let x: &[f32] = match (logits, cap) {
                (Elems::F32(src), None) if inner == 1 => &src[base..base + classes],
                _ => {
                    gather(logits, base, inner, x);
                    if let Some(a) = cap {
                        softcap_row(simd, x, a);
                    }
                    x
                }
            };
            if let Some(tp) = probs {
                gather(tp, unit_start + base, inner, t);
            }
            let y = match plan.target {
                Tgt::Indices(ys) => formula::valid_class(ys[p], plan.ignore_index),
                Tgt::Probs(_) => None,
            };
            let valid = probs.is_some() || y.is_some();
            let extras = match (probs, y) {
                (Some(_), _) => Extras::Probs {
                    t,
                    w: plan.weight,
                    smooth,
                },
                (None, Some(_)) if plan.smoothed() => Extras::WeightedSum(plan.weight),
                _ => Extras::Nothing,
            };
            let (state, e1, e2) = fused_row_first(simd, Some(x), e, maxes, extras);
            let r = state.stats();
            let lse = r.lse();
            let sw = plan.position_weight.map_or(1.0, |s| f64::from(s[p]));
            let ce = match (y, valid) {
                (Some(y), _) => plan.index_loss(r, x[y], y, e1),
                (None, true) => Plan::prob_loss(r, e1, e2),
                (None, false) => 0.0,
            };
            let ce = if weighted { sw * ce } else { ce };
            let zp = if z > 0.0 && valid {
                formula::z_part(z, sw, lse)
            } else {
                0.0
            };
            partial.ce += ce;
            partial.z += zp;
            if let Some(l) = out.losses.as_deref_mut() {
                l[k] = (if z > 0.0 { ce + zp } else { ce }) as f32;
            }
            if let Some(l) = out.lse.as_deref_mut() {
                l[k] = lse as f32;
            }
            if let Some(l) = out.z_loss.as_deref_mut() {
                l[k] = zp as f32;
            }
            let Some((scales, grad)) = out.grad.as_mut() else {
                continue;
            };
            if valid {
                let s = if weighted {
                    (f64::from(scales.ce.at(p)) * sw) as f32
                } else {
                    scales.ce.at(p)
                };
                let zc = if z > 0.0 {
                    formula::z_coefficient(f64::from(scales.z.at(p)), z, sw, lse)
                } else {
                    0.0
                };
                let fast = s.is_finite() && !zc.is_infinite() && classes <= MAX_CHUNKS * CHUNK;
                match (y, fast) {
                    (Some(y), true) => {
                        // (The staged plan's own z-loss, with the position weight, is `zc`.)
                        let (a, b, fix) = plan.index_coefficients(s, y, lse);
                        let a = if z > 0.0 {
                            (f64::from(a) + zc) as f32
                        } else {
                            a
                        };
                        if plan.smoothed() {
                            let term = SmoothTerm { b, w: plan.weight };
                            fused_row_second(simd, e, maxes, state, lse, a, &term);
                        } else {
                            fused_row_second(simd, e, maxes, state, lse, a, &NoTerm);
                        }
                        e[y] -= fix;
                    }
                    (None, true) => {
                        let a = (formula::prob_coefficient(f64::from(s), e1) + zc) as f32;
                        let term = ProbTerm {
                            s,
                            t,
                            w: plan.weight,
                            smooth,
                        };
                        fused_row_second(simd, e, maxes, state, lse, a, &term);
                    }
                    (_, false) => plan.slow_position(
                        Some(x),
                        e,
                        probs.map(|_| &t[..]),
                        Strided::row(classes),
                        lse,
                        s,
                        y,
                        if probs.is_some() { e1 } else { 0.0 },
                        zc,
                    ),
                }
                if grad.dtype().is_half() {
                    // Exact to the half type's rounding (`refine.rs`); before the cap's factor,
                    // which the row sum does not hold.
                    let class = match y {
                        Some(y) => Some(y),
                        None => refine::dominant_class(classes, |c| {
                            let w = f64::from(plan.class_weight(c));
                            w * plan.scalars.smoothing.target(f64::from(t[c]))
                        }),
                    };
                    if let Some(k) = class {
                        refine::restore_cancelled(e, Strided::row(classes), k, zc);
                    }
                }
                if let Some(a) = cap {
                    softcap_slope_row(simd, e, x, a);
                }
            } else {
                // Ignored positions keep an exact zero, whatever the scale.
                e.fill(0.0);
            }
            if inner == 1 {
                super::convert::narrow(e, grad.slice_mut(base..base + classes));
            } else {
                for (c, &g) in e.iter().enumerate() {
                    grad.set_f64(base + c * inner, f64::from(g));
                }
            }
        }
        partial
    }
}

/// `tanh` in lanes: a rational minimax approximation `x·P(x²)/Q(x²)` (degrees 13/6, Eigen's
/// `generic_fast_tanh_float` coefficients) on `x` clamped to `±7.905` (where `tanh` is within
/// `3·10⁻⁷` of ±1) and exactly ±1 from ±9 on. One division, no `exp`. (Near 0 the ratio's
/// constant term `α₁/β₀` is `1 − 1.3·10⁻⁷`, inside the bound, so no separate small-`x` branch.)
/// Relative error below `5·10⁻⁷` (`tests/softcap.rs` measures it against `f64::tanh` on a dense
/// grid); `tanh(±∞) = ±1`, NaN stays NaN.
#[inline(always)]
pub(super) fn tanh_lanes<S: Simd>(simd: S, y: S::f32s) -> S::f32s {
    const CLAMP: f32 = 7.905_311;
    const ALPHA: [f32; 7] = [
        -2.760_768_5e-16,
        2.000_188e-13,
        -8.604_672e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ];
    const BETA: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_7e-3, 4.893_525e-3];
    // A compare and a select rather than `min`/`max`: those drop NaN on some targets.
    let hi = simd.splat_f32s(CLAMP);
    let lo = simd.splat_f32s(-CLAMP);
    let x = simd.select_f32s_m32s(simd.greater_than_f32s(y, hi), hi, y);
    let x = simd.select_f32s_m32s(simd.less_than_f32s(x, lo), lo, x);
    let x2 = simd.mul_f32s(x, x);
    let mut p = simd.splat_f32s(ALPHA[0]);
    for &a in &ALPHA[1..] {
        p = simd.mul_add_e_f32s(x2, p, simd.splat_f32s(a));
    }
    let p = simd.mul_f32s(x, p);
    let mut q = simd.splat_f32s(BETA[0]);
    for &b in &BETA[1..] {
        q = simd.mul_add_e_f32s(x2, q, simd.splat_f32s(b));
    }
    let t = simd.div_f32s(p, q);
    // Exactly ±1 from ±9 on (tanh(9) rounds to 1 in f32), so that a −∞ logit caps to −a.
    let one = simd.splat_f32s(1.0);
    let t = simd.select_f32s_m32s(
        simd.greater_than_or_equal_f32s(y, simd.splat_f32s(9.0)),
        one,
        t,
    );
    simd.select_f32s_m32s(
        simd.less_than_or_equal_f32s(y, simd.splat_f32s(-9.0)),
        simd.neg_f32s(one),
        t,
    )
}

/// `x ← a·tanh(x/a)` over a row.
#[inline(always)]
fn softcap_row<S: Simd>(simd: S, x: &mut [f32], a: f32) {
    // x·(1/a): one rounding more than x/a (≤ 1 ulp of the argument), a division less.
    let av = simd.splat_f32s(a);
    let inv = simd.splat_f32s(1.0 / a);
    let (head, tail) = S::as_mut_simd_f32s(x);
    for v in head {
        *v = simd.mul_f32s(av, tanh_lanes(simd, simd.mul_f32s(*v, inv)));
    }
    if !tail.is_empty() {
        let v = simd.partial_load_f32s(tail);
        let r = simd.mul_f32s(av, tanh_lanes(simd, simd.mul_f32s(v, inv)));
        simd.partial_store_f32s(tail, r);
    }
}

/// `g ← g·(1 − (x̃/a)²)` over a row: the soft-cap's chain factor from the capped logits `x̃`.
#[inline(always)]
fn softcap_slope_row<S: Simd>(simd: S, g: &mut [f32], capped: &[f32], a: f32) {
    let lanes = S::F32_LANES;
    let inv = simd.splat_f32s(1.0 / a);
    let one = simd.splat_f32s(1.0);
    let full = g.len() / lanes * lanes;
    let (head, tail) = S::as_mut_simd_f32s(g);
    for (i, v) in head.iter_mut().enumerate() {
        let t = simd.mul_f32s(load::<S>(capped, i * lanes), inv);
        *v = simd.mul_f32s(*v, simd.mul_add_e_f32s(simd.neg_f32s(t), t, one));
    }
    if !tail.is_empty() {
        let t = simd.mul_f32s(simd.partial_load_f32s(&capped[full..]), inv);
        let v = simd.partial_load_f32s(tail);
        let r = simd.mul_f32s(v, simd.mul_add_e_f32s(simd.neg_f32s(t), t, one));
        simd.partial_store_f32s(tail, r);
    }
}

struct TanhSlice<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for TanhSlice<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        for (o, &v) in self.out.iter_mut().zip(self.x) {
            *o = lanes_of(simd, tanh_lanes(simd, simd.splat_f32s(v)))[0];
        }
    }
}

/// The soft-cap's `tanh` of each value (the vector kernel, one value at a time: for tests).
///
/// # Panics
/// When the lengths differ.
pub fn tanh_slice(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "tanh_slice: lengths differ");
    pulp::Arch::new().dispatch(TanhSlice { x, out });
}
