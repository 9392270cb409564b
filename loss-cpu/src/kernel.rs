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
//! larger than the cache were tried and measured 1.3–2.9× slower: NOTES.md #20.)
//!
//! Short rows (`C ≤ 32`, index targets) and K-dimensional input (`inner > 1`) are vectorised
//! *across positions*: one SIMD vector holds the same class of several positions (short rows are
//! first transposed into a stack tile), so there is no horizontal reduction and no per-row tail.
//!
//! The per-unit loops are in `units.rs`, the SIMD building blocks in `simd.rs`, the measured
//! reasons for each choice in the crate's `NOTES.md`.

use core::ops::Range;

use loss_core::{Layout, LossOptions, Problem, Reduction, TargetData};
use pulp::{Arch, Simd, WithSimd};

mod simd;
mod units;

use simd::{NoTerm, grad_row, row_lse};
use units::UnitOp;

/// Positions per deterministic unit (see the [module docs](self)).
pub const BLOCK: usize = 256;
/// Logits per unit at most (256 KiB): with 32K-class rows a unit is two rows, so a batch of 256
/// such rows still splits into 128 units (measured: with 256-row units, 256×32000 ran on one
/// thread of two).
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

    /// `LSE` and `ln sum` with one `ln` (which costs as much as a short row's other work).
    fn row(self) -> RowLse {
        let ln_sum = self.ln_sum();
        RowLse {
            lse: f64::from(self.max) + ln_sum,
            ln_sum,
        }
    }
}

/// A row's log-sum-exp, evaluated once: `lse` and `ln_sum = lse − max`.
#[derive(Debug, Clone, Copy)]
struct RowLse {
    lse: f64,
    ln_sum: f64,
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

/// Label smoothing as the kernels use it: `t' = keep·t + spread`.
#[derive(Debug, Clone, Copy)]
struct Smoothing {
    /// `1 − ε`.
    keep: f32,
    /// `ε / C`.
    spread: f32,
}

/// The upstream gradient as the kernels see it: `s_i` of [the gradient](loss_core#the-gradient).
#[derive(Debug, Clone, Copy)]
pub enum GradScale<'g> {
    /// One `s` for every position (sum: `g`; mean: `g / D`).
    Uniform(f32),
    /// `s_i = g_i` (reduction none): the whole upstream gradient, indexed by global position.
    PerPosition(&'g [f32]),
}

impl GradScale<'_> {
    #[inline(always)]
    fn at(&self, position: usize) -> f32 {
        match *self {
            GradScale::Uniform(s) => s,
            GradScale::PerPosition(g) => g[position],
        }
    }
}

/// Everything about a problem the kernels need, computed once per call (`W = Σ w`, the unit
/// geometry, the instruction set). Holds no logits, so the same plan serves out-of-place and
/// in-place calls.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    layout: Layout,
    target: TargetData<'a>,
    weight: Option<&'a [f32]>,
    ignore_index: i64,
    reduction: Reduction,
    eps: f32,
    total_weight: f64,
    rows_per_unit: usize,
    arch: Arch,
}

impl<'a> Plan<'a> {
    /// The plan of a validated problem.
    pub fn new(problem: &Problem<'a>) -> Self {
        Self::from_parts(
            problem.layout(),
            problem.target(),
            LossOptions {
                weight: problem.weight(),
                ignore_index: problem.ignore_index(),
                reduction: problem.reduction(),
                label_smoothing: problem.label_smoothing(),
            },
        )
    }

    /// The plan from the parts of a problem that [`Problem::new`] accepted (its layout, target
    /// and options): what an in-place caller uses once it has dropped the problem that borrowed
    /// the logits. Parts that were not validated may make the kernels panic (out-of-range
    /// indices), never read out of bounds.
    pub fn from_parts(layout: Layout, target: TargetData<'a>, options: LossOptions<'a>) -> Self {
        // W only enters through the smoothing term. Without smoothing it is left at 0: a serial
        // f64 sum over C weights per call cost more than the row itself for one 128K-class row
        // (measured 0.70 → 2.3 G logits/s), and 0·W must not turn an infinite weight into NaN.
        let total_weight = match options.weight {
            _ if options.label_smoothing <= 0.0 => 0.0,
            Some(w) => w.iter().map(|&v| f64::from(v)).sum(),
            None => layout.classes as f64,
        };
        Plan {
            layout,
            target,
            weight: options.weight,
            ignore_index: options.ignore_index,
            reduction: options.reduction,
            eps: options.label_smoothing,
            total_weight,
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

    /// The mean's denominator over a unit's positions: `Σ w[y_i]` over the valid ones (index
    /// targets) or their count (probabilities).
    pub fn denominator_partial(&self, unit: usize) -> f64 {
        let positions = self.unit_positions(unit);
        match self.target {
            TargetData::Indices(y) => y[positions]
                .iter()
                .filter(|&&t| t != self.ignore_index)
                .map(|&t| f64::from(self.class_weight(t as usize)))
                .sum(),
            TargetData::Probs(_) => positions.len() as f64,
        }
    }

    /// `D` of the mean: the unit partials added in unit order.
    pub fn mean_denominator(&self) -> f64 {
        (0..self.units()).fold(0.0, |acc, u| acc + self.denominator_partial(u))
    }

    /// The reduced loss from the total of the unit partials (in unit order) and, for `mean`, `D`
    /// (ignored otherwise). Meaningless for `none`, whose losses the units write themselves.
    pub fn reduce(&self, total: f64, denominator: f64) -> f32 {
        match self.reduction {
            Reduction::Mean => (total / denominator) as f32,
            Reduction::Sum | Reduction::None => total as f32,
        }
    }

    /// The scale of the gradient for an upstream gradient; `denominator` is `D` (used for `mean`
    /// only).
    ///
    /// # Panics
    /// When `grad_output` is empty for `sum` or `mean` (validated callers pass
    /// [`Problem::loss_len`] values).
    pub fn grad_scale<'g>(&self, grad_output: &'g [f32], denominator: f64) -> GradScale<'g> {
        match self.reduction {
            Reduction::None => GradScale::PerPosition(grad_output),
            Reduction::Sum => GradScale::Uniform(grad_output[0]),
            Reduction::Mean => GradScale::Uniform((f64::from(grad_output[0]) / denominator) as f32),
        }
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
            src: Some(logits),
            dst: None,
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
            src: Some(logits),
            dst: Some(grad),
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
            src: None,
            dst: Some(logits_grad),
            scale,
            losses,
        })
    }

    fn run(&self, op: UnitOp<'_, '_, '_>) -> f64 {
        let span = self.unit_logits(op.unit).len();
        let len = op
            .src
            .map_or_else(|| op.dst.as_ref().map_or(0, |d| d.len()), <[f32]>::len);
        assert_eq!(len, span, "logits are not the unit's span");
        if let Some(d) = &op.dst {
            assert_eq!(d.len(), span, "grad is not the unit's span");
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

    fn smoothing(&self) -> Smoothing {
        let classes = self.layout.classes as f32;
        Smoothing {
            keep: 1.0 - self.eps,
            spread: self.eps / classes,
        }
    }

    /// `L_i` of a valid index-target position, from the row's state and `wx = Σ_c w[c]·(x[c] −
    /// max)` (used when `ε > 0`): the smoothing term `Σ w·(LSE − x) = W·ln sum − wx` has no
    /// common offset left to cancel.
    #[inline(always)]
    fn index_loss(&self, r: RowLse, x_y: f32, y: usize, wx: f64) -> f64 {
        let eps = f64::from(self.eps);
        let nll = (1.0 - eps) * f64::from(self.class_weight(y)) * (r.lse - f64::from(x_y));
        if self.eps > 0.0 {
            nll + eps / self.layout.classes as f64 * (self.total_weight * r.ln_sum - wx)
        } else {
            nll
        }
    }

    /// `L_i` of a probability-target position from the row's state, `mass = Σ w·t'` and
    /// `dot = Σ w·t'·(x − max)`: `Σ w·t'·(LSE − x) = mass·ln sum − dot`.
    #[inline(always)]
    fn prob_loss(r: RowLse, mass: f64, dot: f64) -> f64 {
        mass * r.ln_sum - dot
    }

    /// `(a, b, fix)`: the gradient of a valid index-target position is `a·p[c] − b·w[c]`, minus
    /// `fix` at the target class.
    #[inline(always)]
    fn index_coefficients(&self, s: f32, y: usize) -> (f32, f32, f32) {
        let s = f64::from(s);
        let eps = f64::from(self.eps);
        let nll = (1.0 - eps) * f64::from(self.class_weight(y));
        let spread = eps / self.layout.classes as f64;
        (
            (s * (nll + spread * self.total_weight)) as f32,
            (s * spread) as f32,
            (s * nll) as f32,
        )
    }

    /// The gradient of one position, evaluated as the reference does, in `f64`: for a
    /// non-finite scale (a mean over `D = 0`, or a non-finite upstream gradient), where the
    /// factored form of the fast path would turn `±∞` into NaN.
    #[allow(clippy::too_many_arguments)] // one strided position: every argument is a coordinate
    fn slow_position(
        &self,
        src: Option<&[f32]>,
        dst: &mut [f32],
        probs: Option<&[f32]>,
        base: usize,
        stride: usize,
        lse: f64,
        s: f32,
        y: Option<usize>,
        mass: f64,
    ) {
        let s = f64::from(s);
        let eps = f64::from(self.eps);
        let classes = self.layout.classes;
        for c in 0..classes {
            let i = base + c * stride;
            let x = f64::from(src.map_or(dst[i], |x| x[i]));
            let p = (x - lse).exp();
            let w = f64::from(self.class_weight(c));
            let g = match (probs, y) {
                (Some(t), _) => {
                    let t = f64::from(t[i]);
                    let tp = if eps > 0.0 {
                        (1.0 - eps) * t + eps / classes as f64
                    } else {
                        t
                    };
                    p * mass - w * tp
                }
                (None, Some(y)) => {
                    let onehot = if c == y { 1.0 } else { 0.0 };
                    let mut g = (1.0 - eps) * f64::from(self.class_weight(y)) * (p - onehot);
                    if eps > 0.0 {
                        g += eps / classes as f64 * (self.total_weight * p - w);
                    }
                    g
                }
                (None, None) => 0.0,
            };
            dst[i] = (s * g) as f32;
        }
    }
}
