//! The row kernels, public so that `loss-rayon` distributes them instead of copying them.
//!
//! The formulas are loss-core's ([the loss](loss_core#the-loss), [the gradient](loss_core#the-gradient));
//! this module is about how they are evaluated.
//!
//! # Work units and determinism
//!
//! A [`Plan`] cuts the positions into *units* of whole batch rows: `BLOCK / inner` rows each, but
//! no more than [`UNIT_LOGITS`] logits' worth (and at least one row), so a unit covers at most
//! [`BLOCK`] positions, is small enough for long rows to give a parallel caller work to share,
//! and spans a contiguous range of logits (and of the
//! gradient). A unit's losses are added in position order into one `f64` partial, and the batch
//! total is the sum of the unit partials in unit order. A caller that runs units on several
//! threads and then adds their partials in unit order therefore gets the same bits as
//! [`crate::CpuBackend`]; so does the mean's denominator ([`Plan::denominator_partial`]).
//! [`Plan::forward_unit`] and [`Plan::fused_unit`] agree to rounding (to the bit except on rows
//! longer than [`CHUNK`] with smoothing or probability targets, whose fused sums are re-based as
//! the max grows); each is bit-reproducible on its own, and in place equals out of place.
//!
//! # One read per row
//!
//! A contiguous row (`inner = 1`) is read in L1-sized chunks of [`CHUNK`] logits: a vector max over
//! the chunk, a rescale of the running sum when the max grew (one scalar `exp` per chunk, not one
//! per element), then the sum of `exp(x − max)` in `f32` lanes, folded into `f64` per chunk (so
//! `C = 256K` stays accurate). The chunk is re-read from L1, so memory sees one read; the next
//! chunk is prefetched meanwhile. The fused pass stores each `exp(x − max_k)` as it sums it and,
//! once the row's LSE is known, turns it into the gradient with one multiply per logit (`exp` is
//! evaluated once per logit), re-reading the row from cache. (Non-temporal stores for gradients
//! larger than the cache were tried and measured slower: NOTES.md #20.)
//!
//! Short rows (`C ≤ 32`, index targets) and K-dimensional input (`inner > 1`) are vectorised
//! *across positions*: one SIMD vector holds the same class of several positions (short rows are
//! first transposed into a stack tile), so there is no horizontal reduction and no per-row tail.
//!
//! The per-unit loops are in `units.rs`, the SIMD building blocks in `simd.rs`, the measured
//! reasons for each choice in the crate's `NOTES.md`.
//!
//! # Half logits and the extensions
//!
//! Each call takes one of three routes ([`Plan::route`], the one routing of every entry point):
//!
//! - **the fast kernels** above, for `f32` logits with or without a z-loss: the z-loss enters
//!   every epilogue as one scalar `z′ = z·D/V` ([`Plan::with_denominators`]);
//! - **widened units** ([`Plan::widened_unit`]) for half logits or a half gradient buffer and
//!   nothing that needs the staged path: the forward pass of contiguous index rows widens each
//!   chunk in L1 while the next chunk of the half input is prefetched (`half.rs`), every other
//!   case widens the unit into a per-thread L2 buffer, runs the fast kernels on it and narrows
//!   the gradient (`convert.rs`: AVX2 / F16C, or the `half` crate's conversions);
//! - **staged rows** ([`Plan::staged_unit`]) for soft-capping, position weights, half
//!   probability targets, the LSE / z outputs, and a half gradient with a z-loss: each row
//!   widened and capped into a scratch
//!   row, the long-row fused kernel on it, the epilogue in `f64` with `s_i` and `z·s_i·LSE²`,
//!   the cap's chain factor, one narrowing store.
//!
//! A gradient narrowed to a half type first has each row's cancelling element (a confident
//! row's target) restored from the row sum (`refine.rs`), so that it is exact to the half type's
//! rounding down to its subnormals.
//!
//! Half logits and the `f32` logits of the same widened values take the same route, and the
//! fast kernels on widened units give the bits of the `f32` problem, except the L1-widened
//! forward pass, which agrees with them to rounding (its epilogue is per row, in `f64`).

use core::ops::Range;

use loss_core::formula::{self, IndexCoefficients, RowStats, Scalars};
use loss_core::{DType, Layout, LossOptions, Outputs, Problem, Reduction, TargetData};
use pulp::{Arch, Simd, WithSimd};

pub mod convert;
mod half;
mod refine;
mod simd;
mod staged;
mod units;
mod x86;

pub use staged::{StagedCall, StagedOut, StagedPartial, StagedScales, tanh_slice};

use simd::{
    Extras, NoTerm, ProbTerm, SmoothTerm, Term, grad_row, prob_sums, row_lse, weighted_sum,
};
use units::{Forward, Fused, InPlace, Mode, UnitOp};

/// Positions per deterministic unit (see the [module docs](self)).
pub const BLOCK: usize = 256;
/// Logits per unit at most (256 KiB): with 32K-class rows a unit is two rows, so a batch of 256
/// such rows still splits into 128 units for loss-rayon (NOTES.md #19).
pub const UNIT_LOGITS: usize = 64 * 1024;
/// Logits of a contiguous row handled per online-softmax step (8 KiB: stays in L1 for the
/// second look and bounds the number of `f32` terms per lane before the `f64` fold).
pub const CHUNK: usize = 2048;
/// Classes per `f64` fold of the per-lane sums in the K-dimensional path.
const FOLD: usize = 512;
/// The widest vector pulp may hand us (AVX-512: 16 lanes).
const MAX_LANES: usize = 16;

/// The mergeable partial state of a log-sum-exp: the max of the logits seen and
/// `sum = Σ exp(x − max)` (relative to 0 instead while `max = −∞`, so that a chunk of masked
/// classes merges cleanly). Merging two states of disjoint parts of a row gives the state of
/// their union, so a row's classes may be split across threads or devices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LseState {
    /// Largest logit seen (`−∞` when none, or all masked).
    pub max: f32,
    /// `Σ exp(x − max)` over the logits seen (`max` read as 0 while it is `−∞`).
    pub sum: f64,
}

impl LseState {
    /// The state of no logits.
    pub const EMPTY: LseState = LseState {
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// The state of a slice of logits (one whole row, or a chunk of one).
    pub fn of(logits: &[f32]) -> LseState {
        Arch::new().dispatch(LseOp { x: logits })
    }

    /// Raises the max to `m` when `m` is larger (the online step of a chunked row): the sum is
    /// rescaled to the new max (0 while the old one was −∞, keeping a NaN). Returns, when the
    /// max grew, the shift of the origin, `origin(new) − origin(old)`, by which sums relative to
    /// it must move.
    #[inline(always)]
    pub(crate) fn raise_max(&mut self, m: f32) -> Option<f64> {
        // (`m > max` is false for a NaN `m`, as the original comparisons were.)
        if m.partial_cmp(&self.max) != Some(core::cmp::Ordering::Greater) {
            return None;
        }
        self.sum = if self.max == f32::NEG_INFINITY {
            self.sum * 0.0
        } else {
            self.sum * (f64::from(self.max) - f64::from(m)).exp()
        };
        let shift = f64::from(origin(m)) - f64::from(origin(self.max));
        self.max = m;
        Some(shift)
    }

    /// The state of the union of two disjoint parts.
    pub fn merge(self, other: LseState) -> LseState {
        if self.max.is_nan() || other.max.is_nan() {
            return LseState {
                max: f32::NAN,
                sum: f64::NAN,
            };
        }
        let max = self.max.max(other.max);
        let origin = f64::from(origin(max));
        let term = |s: LseState| {
            if s.max == f32::NEG_INFINITY {
                // sum is 0 (or NaN from a NaN logit, which must survive).
                s.sum * 0.0
            } else {
                s.sum * (f64::from(s.max) - origin).exp()
            }
        };
        LseState {
            max,
            sum: term(self) + term(other),
        }
    }

    /// `LSE = max + ln sum`; NaN when every logit is −∞ or one is NaN (as the reference).
    pub fn log_sum_exp(self) -> f64 {
        f64::from(self.max) + self.ln_sum()
    }

    /// `LSE − max = ln sum` (NaN as [`LseState::log_sum_exp`]): the losses use it with sums taken
    /// relative to the max, so that a large common offset of the logits cancels exactly.
    fn ln_sum(self) -> f64 {
        if self.max == f32::NEG_INFINITY {
            f64::NAN
        } else {
            self.sum.ln()
        }
    }

    /// The row's [`RowStats`] with its one `ln` (which costs as much as a short row's other
    /// work); the target logit and the extra sums are filled in by the caller.
    pub fn stats(self) -> RowStats {
        RowStats {
            max: f64::from(self.max),
            ln_sum: self.ln_sum(),
            ..RowStats::default()
        }
    }
}

/// The point the sums are taken relative to: the max, or 0 while the max is `−∞`.
#[inline(always)]
fn origin(max: f32) -> f32 {
    if max == f32::NEG_INFINITY { 0.0 } else { max }
}

/// Writes `out[c] = a · exp(x[c] − lse)` (a row chunk's softmax gradient given its row's final
/// `LSE`; the caller adds the target terms, e.g. `−a` at the target class).
///
/// # Panics
/// When the lengths differ.
pub fn softmax_scaled(logits: &[f32], lse: f32, a: f32, out: &mut [f32]) {
    assert_eq!(logits.len(), out.len(), "softmax_scaled: lengths differ");
    Arch::new().dispatch(SoftmaxOp {
        x: logits,
        out,
        lse,
        a,
    });
}

struct LseOp<'a> {
    x: &'a [f32],
}

impl WithSimd for LseOp<'_> {
    type Output = LseState;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> LseState {
        row_lse(simd, self.x)
    }
}

struct SoftmaxOp<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    lse: f32,
    a: f32,
}

impl WithSimd for SoftmaxOp<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        grad_row(simd, Some(self.x), self.out, self.lse, self.a, &NoTerm);
    }
}

/// Label smoothing in the `f32` the vector loops use: [`formula::Smoothing`]'s `keep` and
/// `spread`, rounded once.
#[derive(Debug, Clone, Copy)]
struct Smoothing {
    /// `1 − ε`.
    keep: f32,
    /// `ε / C`.
    spread: f32,
}

pub use loss_core::formula::GradScale;

/// How a call is computed ([module docs](self#half-logits-and-the-extensions)): chosen once per
/// call by [`Plan::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The fast kernels on the `f32` logits, writing an `f32` gradient.
    Plain,
    /// The fast kernels on units widened to `f32` ([`Plan::widened_unit`]).
    Widened,
    /// The staged rows ([`Plan::staged_unit`]).
    Staged,
}

/// Everything about a problem the kernels need, computed once per call (`W = Σ w`, the unit
/// geometry, the instruction set). Holds no logits, so the same plan serves out-of-place and
/// in-place calls.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    layout: Layout,
    /// The target as the fast kernels read it (`f32` probabilities; plain problems only).
    target: Tgt<'a>,
    /// The target as validated (probabilities in the logits' type), for the staged path.
    target_data: TargetData<'a>,
    /// The options' extensions (the staged path's).
    z_loss: f32,
    /// The z-loss coefficient the plain kernels apply, `z·D/V` for mean (`z` otherwise; 0 until
    /// [`Plan::with_denominators`] sets it): see [`Plan::with_denominators`].
    z_plain: f64,
    softcap: Option<f32>,
    position_weight: Option<&'a [f32]>,
    weight: Option<&'a [f32]>,
    ignore_index: i64,
    reduction: Reduction,
    scalars: Scalars,
    rows_per_unit: usize,
    arch: Arch,
}

impl<'a> Plan<'a> {
    /// The plan of a validated problem.
    pub fn new(problem: &Problem<'a>) -> Self {
        Self::from_parts(problem.layout(), problem.target(), problem.options())
    }

    /// The plan from the parts of a problem that [`Problem::new`] accepted (its layout, target
    /// and options): what an in-place caller uses once it has dropped the problem that borrowed
    /// the logits. Parts that were not validated may make the kernels panic (out-of-range
    /// indices), never read out of bounds.
    pub fn from_parts(layout: Layout, target: TargetData<'a>, options: LossOptions<'a>) -> Self {
        Plan {
            layout,
            target: match target {
                TargetData::Indices(y) => Tgt::Indices(y),
                // Half probabilities are only read through `target_data` (the staged path).
                TargetData::Probs(t) => Tgt::Probs(t.as_f32().unwrap_or(&[])),
            },
            target_data: target,
            z_loss: options.z_loss,
            z_plain: 0.0,
            softcap: options.softcap,
            position_weight: options.position_weight,
            weight: options.weight,
            ignore_index: options.ignore_index,
            reduction: options.reduction,
            scalars: Scalars::new(options.weight, layout.classes, options.label_smoothing),
            rows_per_unit: (BLOCK / layout.inner.max(1))
                .min(UNIT_LOGITS / (layout.classes * layout.inner).max(1))
                .max(1),
            arch: Arch::new(),
        }
    }

    /// The layout of the logits.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The reduction.
    pub fn reduction(&self) -> Reduction {
        self.reduction
    }

    /// Number of units (0 when there are no positions).
    pub fn units(&self) -> usize {
        if self.layout.positions() == 0 {
            0
        } else {
            self.layout.batch.div_ceil(self.rows_per_unit)
        }
    }

    fn unit_rows(&self, unit: usize) -> Range<usize> {
        let start = unit * self.rows_per_unit;
        start..(start + self.rows_per_unit).min(self.layout.batch)
    }

    /// The positions of a unit (where its `none` losses go).
    pub fn unit_positions(&self, unit: usize) -> Range<usize> {
        let rows = self.unit_rows(unit);
        rows.start * self.layout.inner..rows.end * self.layout.inner
    }

    /// The span of the flat logits (and of the gradient) a unit covers.
    pub fn unit_logits(&self, unit: usize) -> Range<usize> {
        let rows = self.unit_rows(unit);
        let row = self.layout.classes * self.layout.inner;
        rows.start * row..rows.end * row
    }

    fn denominator_parts(&self) -> formula::DenominatorParts<'a> {
        formula::DenominatorParts {
            target: self.target_data,
            ignore_index: self.ignore_index,
            weight: self.weight,
            position_weight: self.position_weight,
        }
    }

    /// The mean's denominator `D` over a unit's positions ([`formula::DenominatorParts::over`]).
    pub fn denominator_partial(&self, unit: usize) -> f64 {
        self.denominator_parts().over(self.unit_positions(unit))
    }

    /// The z-loss's denominator `V = Σ_{valid i} s_i` over a unit's positions.
    pub fn valid_partial(&self, unit: usize) -> f64 {
        self.denominator_parts()
            .valid()
            .over(self.unit_positions(unit))
    }

    /// `V` of the mean: the unit partials added in unit order.
    pub fn valid_count(&self) -> f64 {
        (0..self.units()).fold(0.0, |acc, u| acc + self.valid_partial(u))
    }

    /// The route of a call ([module docs](self#half-logits-and-the-extensions)) with logits of
    /// type `logits`, a gradient written in `grad` (if any), and the LSE or z outputs asked for
    /// when `wants_stats`: the one routing every entry point (out of place, in place, threaded)
    /// follows.
    pub fn route(&self, logits: DType, grad: Option<DType>, wants_stats: bool) -> Route {
        let half_grad = grad.is_some_and(DType::is_half);
        let staged = wants_stats
            || self.target_data_is_half()
            || self.softcap.is_some()
            || self.position_weight.is_some()
            || !self.z_folds()
            // A half gradient restores its cancelling element from the row sum, which holds the
            // z-loss's coefficient: the staged rows know each row's LSE, the fast kernels do not.
            || (half_grad && self.z_loss != 0.0);
        if staged {
            Route::Staged
        } else if logits.is_half() || half_grad {
            Route::Widened
        } else {
            Route::Plain
        }
    }

    /// The route of a call asking for `out` ([`Plan::route`]).
    pub fn route_of(&self, logits: DType, out: &Outputs<'_>) -> Route {
        let grad = out.grad.as_ref().map(|g| g.grad.dtype());
        self.route(logits, grad, out.wants_stats())
    }

    /// Whether the z-loss folds into one finite coefficient `z′ = z·D/V` for the fast kernels
    /// (always without a z-loss or a mean). An infinite class weight makes `D` infinite, and
    /// then `s = g/D = 0` times `z′ = ∞` would be NaN where the z part's gradient `g/V·…` is
    /// finite: such problems take the staged path, which scales the z part by `g/V` itself.
    fn z_folds(&self) -> bool {
        if self.z_loss == 0.0 || self.reduction != Reduction::Mean {
            return true;
        }
        let (d, v) = (self.mean_denominator(), self.valid_count());
        d.is_finite() && v != 0.0 && (f64::from(self.z_loss) * d / v).is_finite()
    }

    /// The plan with the z-loss set up for the fast kernels, given the mean's `D` and `V`
    /// (ignored for sum and none). The kernels add `z′·LSE²` to each valid position's loss and
    /// `s·2·z′·LSE` to the coefficient of `p[c]`, with `z′ = z·D/V` for mean (else `z`): the
    /// loss partial over `D` is then `Σ L/D + Σ z·LSE²/V`, and the gradient scale `s = g/D` gives
    /// the z part's `g/V`, which is what the definition asks for — one scalar, no second partial.
    /// (Position weights, whose z part is `z·s_i·LSE²`, take the staged path.)
    pub fn with_denominators(mut self, d: f64, v: f64) -> Self {
        let z = f64::from(self.z_loss);
        self.z_plain = match self.reduction {
            _ if z == 0.0 => 0.0,
            Reduction::Mean => z * d / v,
            Reduction::Sum | Reduction::None => z,
        };
        self
    }

    /// The plan ready for the fast kernels, and the mean's `D` (NaN for sum and none, where it
    /// is not used): `D` (and `V` with a z-loss) computed once, the z-loss set up
    /// ([`Plan::with_denominators`]).
    pub fn ready(self) -> (Self, f64) {
        if self.reduction != Reduction::Mean {
            return (self.with_denominators(f64::NAN, f64::NAN), f64::NAN);
        }
        let d = self.mean_denominator();
        let v = if self.z_loss != 0.0 {
            self.valid_count()
        } else {
            f64::NAN
        };
        (self.with_denominators(d, v), d)
    }

    /// `z′·LSE²`: the z part of a valid position's loss in the fast kernels (0 without z-loss).
    #[inline(always)]
    fn z_term(&self, r: &RowStats) -> f64 {
        if self.z_plain == 0.0 {
            0.0
        } else {
            formula::z_part(self.z_plain, 1.0, r.lse())
        }
    }

    /// `s·2·z′·LSE`: the z part of the coefficient of `p[c]` (0 without z-loss).
    #[inline(always)]
    fn z_coef(&self, s: f32, lse: f64) -> f64 {
        if self.z_plain == 0.0 {
            0.0
        } else {
            formula::z_coefficient(f64::from(s), self.z_plain, 1.0, lse)
        }
    }

    /// Whether the fast kernels add a z-loss.
    #[inline(always)]
    fn z_on(&self) -> bool {
        self.z_plain != 0.0
    }

    fn target_data_is_half(&self) -> bool {
        matches!(self.target_data, TargetData::Probs(t) if t.dtype().is_half())
    }

    /// The z-loss coefficient.
    pub fn z_loss(&self) -> f32 {
        self.z_loss
    }

    /// One unit of a problem that is plain but for its element types (half logits, or a half
    /// gradient buffer; no extension but a z-loss, `f32` or index targets), on the unit's outputs
    /// of [`Plan::staged_call`] and with the plan [`StagedCall::fast_plan`] gives: the unit's
    /// logits widened into a per-thread `f32` buffer (at most [`UNIT_LOGITS`] logits, or one
    /// row: L2-sized), the plain kernels run on it ([`Plan::forward_unit`], or
    /// [`Plan::fused_unit_in_place`] and the gradient narrowed into the unit's span of the
    /// buffer). The same bits as the plain kernels on the widened logits, except the forward pass
    /// of contiguous index-target rows, which widens each chunk in L1 (`half.rs`) and agrees
    /// with them to rounding. Returns the unit's partial (its z part is in the cross-entropy's:
    /// the fast kernels fold it).
    ///
    /// # Panics
    /// On wrong lengths, as [`Plan::forward_unit`].
    pub fn widened_unit(
        &self,
        unit: usize,
        logits: loss_core::Elems<'_>,
        out: StagedOut<'_>,
    ) -> StagedPartial {
        let ce = self.widened_unit_loss(unit, logits, out.losses, out.grad);
        // (The z-loss, folded into the fast kernels' `z′`, is in the cross-entropy's partial.)
        StagedPartial { ce, z: 0.0 }
    }

    fn widened_unit_loss(
        &self,
        unit: usize,
        logits: loss_core::Elems<'_>,
        losses: Option<&mut [f32]>,
        grad: Option<(StagedScales<'_>, loss_core::ElemsMut<'_>)>,
    ) -> f64 {
        thread_local! {
            static STAGE: core::cell::RefCell<Vec<f32>> = const { core::cell::RefCell::new(Vec::new()) };
        }
        if grad.is_none()
            && self.layout.inner == 1
            && matches!(self.target, Tgt::Indices(_))
            && logits.dtype().is_half()
        {
            // The forward pass widens in L1 instead (see `half.rs`).
            return self.arch.dispatch(half::HalfForwardOp {
                plan: self,
                unit,
                logits,
                losses,
            });
        }
        STAGE.with_borrow_mut(|stage| {
            stage.resize(logits.len(), 0.0);
            convert::widen(logits, stage);
            match grad {
                None => self.forward_unit(unit, stage, losses),
                Some((scales, out)) => {
                    let partial = self.fused_unit_in_place(unit, stage, scales.ce, losses);
                    if out.dtype().is_half() {
                        self.restore_unit(unit, stage);
                    }
                    convert::narrow(stage, out);
                    partial
                }
            }
        })
    }

    /// Restores the cancelling element of each valid position of a unit's `f32` gradient `g`
    /// (the unit's span) before it is narrowed to a half type (`refine.rs`). Plain problems
    /// only: no z-loss (the route sends those to the staged rows), so each row sums to 0.
    fn restore_unit(&self, unit: usize, g: &mut [f32]) {
        let Layout { classes, inner, .. } = self.layout;
        let unit_start = self.unit_logits(unit).start;
        for (k, p) in self.unit_positions(unit).enumerate() {
            let at = Strided::column((k / inner) * classes * inner + k % inner, inner, classes);
            let class = match self.target {
                Tgt::Indices(y) => formula::valid_class(y[p], self.ignore_index),
                Tgt::Probs(t) => {
                    let sm = self.scalars.smoothing;
                    refine::dominant_class(classes, |c| {
                        let tc = f64::from(t[unit_start + at.base + c * inner]);
                        f64::from(self.class_weight(c)) * sm.target(tc)
                    })
                }
            };
            if let Some(c) = class {
                refine::restore_cancelled(g, at, c, 0.0);
            }
        }
    }

    /// `D` of the mean: the unit partials added in unit order.
    pub fn mean_denominator(&self) -> f64 {
        (0..self.units()).fold(0.0, |acc, u| acc + self.denominator_partial(u))
    }

    /// The reduced loss from the total of the unit partials (in unit order) and, for `mean`, `D`
    /// (ignored otherwise). Meaningless for `none`, whose losses the units write themselves.
    pub fn reduce(&self, total: f64, denominator: f64) -> f32 {
        formula::reduce(self.reduction, total, denominator) as f32
    }

    /// The scale of the gradient for an upstream gradient; `denominator` is `D` (used for `mean`
    /// only).
    ///
    /// # Panics
    /// When `grad_output` is empty for `sum` or `mean` (validated callers pass
    /// [`Problem::loss_len`] values).
    pub fn grad_scale<'g>(&self, grad_output: &'g [f32], denominator: f64) -> GradScale<'g> {
        formula::grad_scale(self.reduction, grad_output, denominator)
    }

    /// The losses of one unit: returns their sum (an `f64` partial, in position order) and, when
    /// `losses` is given, writes each position's loss there.
    ///
    /// # Panics
    /// When `logits` is not the unit's span ([`Plan::unit_logits`]) or `losses` not its positions'
    /// length.
    pub fn forward_unit(&self, unit: usize, logits: &[f32], losses: Option<&mut [f32]>) -> f64 {
        self.run(UnitOp {
            plan: self,
            unit,
            mode: Forward(logits),
            scale: GradScale::Uniform(0.0),
            losses,
        })
    }

    /// Loss and gradient of one unit in one pass; `grad` is the unit's span of the gradient.
    /// Returns the unit's loss partial as [`Plan::forward_unit`] does.
    ///
    /// # Panics
    /// On wrong lengths, as [`Plan::forward_unit`].
    pub fn fused_unit(
        &self,
        unit: usize,
        logits: &[f32],
        scale: GradScale<'_>,
        losses: Option<&mut [f32]>,
        grad: &mut [f32],
    ) -> f64 {
        self.run(UnitOp {
            plan: self,
            unit,
            mode: Fused { logits, grad },
            scale,
            losses,
        })
    }

    /// [`Plan::fused_unit`] with the gradient written over the logits (`logits_grad` is the
    /// unit's span of the logits on entry and of the gradient on return).
    ///
    /// # Panics
    /// On wrong lengths, as [`Plan::forward_unit`].
    pub fn fused_unit_in_place(
        &self,
        unit: usize,
        logits_grad: &mut [f32],
        scale: GradScale<'_>,
        losses: Option<&mut [f32]>,
    ) -> f64 {
        self.run(UnitOp {
            plan: self,
            unit,
            mode: InPlace(logits_grad),
            scale,
            losses,
        })
    }

    fn run<M: Mode>(&self, mut op: UnitOp<'_, '_, '_, M>) -> f64 {
        let span = self.unit_logits(op.unit).len();
        assert_eq!(
            op.mode.logits().len(),
            span,
            "logits are not the unit's span"
        );
        if M::GRAD {
            assert_eq!(op.mode.parts().1.len(), span, "grad is not the unit's span");
        }
        if let Some(l) = &op.losses {
            assert_eq!(l.len(), self.unit_positions(op.unit).len(), "losses length");
        }
        self.arch.dispatch(op)
    }

    #[inline(always)]
    fn class_weight(&self, c: usize) -> f32 {
        self.weight.map_or(1.0, |w| w[c])
    }

    /// The formula scalars of the problem (`W`, the smoothing).
    pub fn scalars(&self) -> &Scalars {
        &self.scalars
    }

    fn smoothing(&self) -> Smoothing {
        let sm = self.scalars.smoothing;
        Smoothing {
            keep: sm.keep as f32,
            spread: sm.spread as f32,
        }
    }

    /// Whether label smoothing is on (then the kernels gather `Σ w·(x − max)` too).
    #[inline(always)]
    fn smoothed(&self) -> bool {
        self.scalars.smoothing.is_on()
    }

    /// `L_i` of a valid index-target position ([`formula::index_loss`]) from its row state, its
    /// target logit and `wx = Σ_c w[c]·(x[c] − max)` (read only with smoothing).
    #[inline(always)]
    fn index_loss(&self, r: RowStats, x_y: f32, y: usize, wx: f64) -> f64 {
        let r = RowStats {
            x_target: f64::from(x_y),
            weighted: wx,
            ..r
        };
        formula::index_loss(&self.scalars, f64::from(self.class_weight(y)), &r)
    }

    /// `L_i` of a probability-target position ([`formula::prob_loss`]) from its row state,
    /// `mass = Σ w·t'` and `dot = Σ w·t'·(x − max)`.
    #[inline(always)]
    fn prob_loss(r: RowStats, mass: f64, dot: f64) -> f64 {
        formula::prob_loss(&RowStats {
            mass,
            weighted: dot,
            ..r
        })
    }

    /// `(a, b, fix)` of [`formula::index_coefficients`] in `f32`: the gradient of a valid
    /// index-target position is `a·p[c] − b·w[c]`, minus `fix` at the target class; `a`
    /// includes the z-loss's term ([`Plan::with_denominators`]) given the row's `LSE`.
    #[inline(always)]
    fn index_coefficients(&self, s: f32, y: usize, lse: f64) -> (f32, f32, f32) {
        let IndexCoefficients { a, b, fix } = formula::index_coefficients(
            &self.scalars,
            f64::from(s),
            f64::from(self.class_weight(y)),
        );
        let a = if self.z_on() {
            a + self.z_coef(s, lse)
        } else {
            a
        };
        (a as f32, b as f32, fix as f32)
    }

    /// [`formula::prob_coefficient`] plus the z-loss's term, given the row's `LSE`.
    #[inline(always)]
    fn prob_coefficient(&self, s: f32, mass: f64, lse: f64) -> f64 {
        let a = formula::prob_coefficient(f64::from(s), mass);
        if self.z_on() {
            a + self.z_coef(s, lse)
        } else {
            a
        }
    }

    /// The gradient of one position element by element in `f64` ([`formula::index_grad`],
    /// [`formula::prob_grad`]): for a non-finite scale (a mean over `D = 0`, or a non-finite
    /// upstream gradient), where the factored form of the fast path would turn `±∞` into NaN.
    /// `at` says where the position's classes lie in `src`/`dst` (and `probs`).
    #[allow(clippy::too_many_arguments)] // one strided position: every argument is a coordinate
    fn slow_position(
        &self,
        src: Option<&[f32]>,
        dst: &mut [f32],
        probs: Option<&[f32]>,
        at: Strided,
        lse: f64,
        s: f32,
        y: Option<usize>,
        mass: f64,
        extra: f64,
    ) {
        let s = f64::from(s);
        for k in 0..at.classes {
            let c = at.first_class + k;
            let i = at.base + k * at.stride;
            let x = f64::from(src.map_or(dst[i], |x| x[i]));
            let p = (x - lse).exp();
            let w = f64::from(self.class_weight(c));
            let g = match (probs, y) {
                (Some(t), _) => formula::prob_grad(&self.scalars, s, p, w, f64::from(t[i]), mass),
                (None, Some(y)) => {
                    let w_y = f64::from(self.class_weight(y));
                    formula::index_grad(&self.scalars, s, p, w, w_y, c == y)
                }
                (None, None) => 0.0,
            };
            // The z-loss's coefficient of p (0 without one; left out then, so that 0·∞ stays out).
            let g = if extra != 0.0 { g + extra * p } else { g };
            dst[i] = g as f32;
        }
    }

    /// The [`RowPartial`] of classes `c0..c0 + x.len()` of `position`'s row (contiguous rows
    /// only: `inner = 1`), whose logits are `x`.
    pub fn chunk_partial(&self, position: usize, c0: usize, x: &[f32]) -> RowPartial {
        let classes = self.layout.classes;
        let span = c0..c0 + x.len();
        let extras = match self.target {
            Tgt::Probs(t) => Extras::Probs {
                t: &t[position * classes + span.start..position * classes + span.end],
                w: self.weight.map(|w| &w[span]),
                smooth: self.smoothing(),
            },
            Tgt::Indices(_) if self.smoothed() => {
                Extras::WeightedSum(self.weight.map(|w| &w[span]))
            }
            Tgt::Indices(_) => Extras::Nothing,
        };
        self.arch.dispatch(ChunkPartialOp { x, extras })
    }

    /// The loss of `position` from the merged [`RowPartial`] of its whole row (`row` is the
    /// row's logits, for the target's).
    pub fn partial_loss(&self, position: usize, row: &[f32], p: RowPartial) -> f64 {
        let r = p.lse.stats();
        match self.target {
            Tgt::Indices(y) => match formula::valid_class(y[position], self.ignore_index) {
                None => 0.0,
                Some(y) => self.index_loss(r, row[y], y, p.weighted) + self.z_term(&r),
            },
            Tgt::Probs(_) => Self::prob_loss(r, p.weight, p.weighted) + self.z_term(&r),
        }
    }

    /// The gradient of classes `c0..c0 + x.len()` of `position`'s row into `out`, from the
    /// merged [`RowPartial`] of the whole row and the position's scale `s`.
    pub fn chunk_grad(
        &self,
        position: usize,
        c0: usize,
        x: &[f32],
        p: RowPartial,
        s: f32,
        out: &mut [f32],
    ) {
        let classes = self.layout.classes;
        let span = c0..c0 + x.len();
        let lse = p.lse.log_sum_exp();
        let at = Strided {
            base: 0,
            stride: 1,
            first_class: c0,
            classes: x.len(),
        };
        let fast = s.is_finite() && lse.is_finite() && p.lse.sum.is_finite();
        let weight = self.weight.map(|w| &w[span.clone()]);
        match self.target {
            Tgt::Indices(y) => {
                let Some(y) = formula::valid_class(y[position], self.ignore_index) else {
                    out.fill(0.0);
                    return;
                };
                if !fast {
                    let z = self.z_coef(s, lse);
                    self.slow_position(Some(x), out, None, at, lse, s, Some(y), 0.0, z);
                    return;
                }
                let (a, b, fix) = self.index_coefficients(s, y, lse);
                // a·exp(x − LSE) = (a / sum)·exp(x − max): the max is exact in f32, LSE is not.
                let a = (f64::from(a) / p.lse.sum) as f32;
                let term = self.smoothed().then_some(SmoothTerm { b, w: weight });
                self.arch.dispatch(ChunkGradOp {
                    x,
                    out,
                    max: p.lse.max,
                    a,
                    term,
                    probs: None,
                });
                if span.contains(&y) {
                    out[y - c0] -= fix;
                }
            }
            Tgt::Probs(t) => {
                let t = &t[position * classes + span.start..position * classes + span.end];
                if !fast || !p.weight.is_finite() {
                    let z = self.z_coef(s, lse);
                    self.slow_position(Some(x), out, Some(t), at, lse, s, None, p.weight, z);
                    return;
                }
                let a = (self.prob_coefficient(s, p.weight, lse) / p.lse.sum) as f32;
                let term = ProbTerm {
                    s,
                    t,
                    w: weight,
                    smooth: self.smoothing(),
                };
                self.arch.dispatch(ChunkGradOp::<SmoothTerm<'_>> {
                    x,
                    out,
                    max: p.lse.max,
                    a,
                    term: None,
                    probs: Some(term),
                });
            }
        }
    }
}

/// The target as the fast kernels read it.
#[derive(Debug, Clone, Copy)]
enum Tgt<'a> {
    Indices(&'a [i64]),
    Probs(&'a [f32]),
}

/// Where one position's classes lie in a buffer: class `first_class + k` at `base + k·stride`.
#[derive(Debug, Clone, Copy)]
struct Strided {
    base: usize,
    stride: usize,
    first_class: usize,
    classes: usize,
}

impl Strided {
    /// A whole contiguous row of `classes` logits.
    fn row(classes: usize) -> Self {
        Strided {
            base: 0,
            stride: 1,
            first_class: 0,
            classes,
        }
    }

    /// A whole K-dimensional position: its classes `stride` apart from `base`.
    fn column(base: usize, stride: usize, classes: usize) -> Self {
        Strided {
            base,
            stride,
            first_class: 0,
            classes,
        }
    }
}

/// The mergeable partial state of part of a row (a chunk of its classes): its [`LseState`],
/// `weighted = Σ w·(x − m)` (index targets with smoothing) or `Σ w·t'·(x − m)` (probability
/// targets), and `weight = Σ w` or `Σ w·t'` — both relative to the part's max `m` (0 while it is
/// −∞), so that a large common offset of the logits cancels exactly.
///
/// Partials of disjoint parts [`merge`](RowPartial::merge) exactly into the partial of their
/// union, so a row's classes can be split across threads, devices or processes: each shard
/// computes its partial ([`Plan::chunk_partial`]), the partials are merged in a fixed order, and
/// each shard writes its part of the gradient from the merged state ([`Plan::chunk_grad`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowPartial {
    /// The part's log-sum-exp state.
    pub lse: LseState,
    /// `Σ w·(x − m)` or `Σ w·t'·(x − m)`.
    pub weighted: f64,
    /// `Σ w` or `Σ w·t'`.
    pub weight: f64,
}

impl RowPartial {
    /// The partial of no classes.
    pub const EMPTY: RowPartial = RowPartial {
        lse: LseState::EMPTY,
        weighted: 0.0,
        weight: 0.0,
    };

    /// The partial of the union of two disjoint parts: the LSE states merge, and each weighted
    /// sum moves from its own max to the merged one (`Σ w·(x − m₁) = Σ w·(x − m) + (m − m₁)·Σ w`).
    pub fn merge(self, other: RowPartial) -> RowPartial {
        let lse = self.lse.merge(other.lse);
        let to = f64::from(origin(lse.max));
        let rebase = |p: RowPartial| {
            let shift = f64::from(origin(p.lse.max)) - to;
            if shift == 0.0 {
                p.weighted
            } else {
                p.weighted + shift * p.weight
            }
        };
        RowPartial {
            lse,
            weighted: rebase(self) + rebase(other),
            weight: self.weight + other.weight,
        }
    }
}

struct ChunkPartialOp<'a> {
    x: &'a [f32],
    extras: Extras<'a>,
}

impl WithSimd for ChunkPartialOp<'_> {
    type Output = RowPartial;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> RowPartial {
        let lse = row_lse(simd, self.x);
        let o = origin(lse.max);
        let (weighted, weight) = match self.extras {
            Extras::Nothing => (0.0, 0.0),
            Extras::WeightedSum(w) => weighted_sum(simd, self.x, w, o),
            Extras::Probs { t, w, smooth } => {
                let (mass, dot) = prob_sums(simd, self.x, t, w, smooth, o);
                (dot, mass)
            }
        };
        RowPartial {
            lse,
            weighted,
            weight,
        }
    }
}

struct ChunkGradOp<'a, T> {
    x: &'a [f32],
    out: &'a mut [f32],
    max: f32,
    a: f32,
    term: Option<T>,
    probs: Option<ProbTerm<'a>>,
}

impl<T: Term> WithSimd for ChunkGradOp<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let x = Some(self.x);
        match (&self.term, &self.probs) {
            (_, Some(p)) => grad_row(simd, x, self.out, self.max, self.a, p),
            (Some(t), None) => grad_row(simd, x, self.out, self.max, self.a, t),
            (None, None) => grad_row(simd, x, self.out, self.max, self.a, &NoTerm),
        }
    }
}
