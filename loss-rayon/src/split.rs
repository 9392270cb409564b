//! Splitting one row's classes across threads: the path for few rows and huge vocabularies.
//!
//! A row of `C` logits is cut into fixed chunks of [`SPLIT_CHUNK`] classes. Each chunk yields a
//! [`RowPartial`] — its [`LseState`] (max and `Σ exp(x − max)`, from loss-cpu's row kernel) and
//! the two weighted sums the loss needs — and partials of disjoint chunks [`merge`](RowPartial::merge)
//! exactly into the partial of their union. Merging in chunk order gives the row's log-sum-exp;
//! the gradient of every chunk then follows independently (loss-cpu's `softmax_scaled` plus the
//! target terms). Because the chunks are fixed by the shape, not by the thread count, the bits
//! are the same on any number of threads.
//!
//! The same merge lets a vocabulary be sharded over devices or processes: each shard computes the
//! partial of its classes, the partials are gathered and merged (in a fixed order), and each shard
//! writes its part of the gradient from the merged log-sum-exp.

use loss_core::{Problem, Reduction, TargetData};
use loss_cpu::kernel::{LseState, softmax_scaled};
use rayon::prelude::*;

/// Classes per task when a row is split (64 KiB of logits: long enough to amortise a task,
/// short enough that a 32K-class row already gives two tasks).
pub const SPLIT_CHUNK: usize = 16 * 1024;

/// Rows at or below which, with at least [`SPLIT_MIN_CLASSES`] classes, rows are split.
pub const SPLIT_MAX_ROWS: usize = 8;

/// Classes from which a row of a small batch is split across threads.
pub const SPLIT_MIN_CLASSES: usize = 32 * 1024;

/// Whether a problem takes the split-row path (decided by the shape alone, never by the thread
/// count, so that the result's bits do not depend on it).
pub fn splits_rows(problem: &Problem<'_>) -> bool {
    let l = problem.layout();
    l.inner == 1 && l.positions() <= SPLIT_MAX_ROWS && l.classes >= SPLIT_MIN_CLASSES
}

/// The mergeable partial state of part of a row: what a shard of the class dimension reports.
///
/// Sums over logits are kept *relative to the part's max* `m` (0 while `m = −∞`), so that a
/// large common offset of the logits cancels exactly instead of drowning the small terms:
///
/// - `lse`: `m` and `Σ exp(x − m)` (loss-cpu's [`LseState`]);
/// - `weighted_logits`: `Σ w[c]·(x[c] − m)` (index targets with smoothing) or
///   `Σ w[c]·t'[c]·(x[c] − m)` (probability targets), else 0;
/// - `weight_sum`: `Σ w[c]` (index targets with smoothing) or `Σ w[c]·t'[c]` (probability
///   targets), else 0: what re-bases `weighted_logits` when a merge raises the max.
///
/// With the merged state (max `M`, sum `S`), `LSE − M = ln S`, and the row's loss is
/// `(1−ε)·w[y]·((M − x[y]) + ln S) + (ε/C)·(W·ln S − weighted_logits)` for an index target `y`
/// (see [the loss](loss_core#the-loss)), and `weight_sum·ln S − weighted_logits` for
/// probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowPartial {
    /// Max and sum of exponentials.
    pub lse: LseState,
    /// `Σ w·(x − max)` or `Σ w·t'·(x − max)`.
    pub weighted_logits: f64,
    /// `Σ w` or `Σ w·t'`.
    pub weight_sum: f64,
}

/// The point a partial's sums are relative to: its max, or 0 while that is `−∞`.
fn origin(max: f32) -> f64 {
    if max == f32::NEG_INFINITY {
        0.0
    } else {
        f64::from(max)
    }
}

impl RowPartial {
    /// The partial of no classes.
    pub const EMPTY: RowPartial = RowPartial {
        lse: LseState::EMPTY,
        weighted_logits: 0.0,
        weight_sum: 0.0,
    };

    /// The partial of the union of two disjoint parts of a row.
    pub fn merge(self, other: RowPartial) -> RowPartial {
        let lse = self.lse.merge(other.lse);
        let to = origin(lse.max);
        let rebase = |p: RowPartial| {
            let shift = origin(p.lse.max) - to;
            if shift == 0.0 {
                p.weighted_logits
            } else {
                p.weighted_logits + shift * p.weight_sum
            }
        };
        RowPartial {
            lse,
            weighted_logits: rebase(self) + rebase(other),
            weight_sum: self.weight_sum + other.weight_sum,
        }
    }
}

/// What a row needs besides its logits.
struct RowCtx<'a> {
    problem: &'a Problem<'a>,
    eps: f64,
    total_weight: f64,
}

impl RowCtx<'_> {
    fn w(&self, c: usize) -> f64 {
        f64::from(self.problem.class_weight(c))
    }

    fn tprime(&self, t: f32) -> f64 {
        if self.eps > 0.0 {
            (1.0 - self.eps) * f64::from(t) + self.eps / self.problem.classes() as f64
        } else {
            f64::from(t)
        }
    }

    /// The valid index target of row `r`, `None` when ignored; `Err(probs row)` for soft targets.
    fn target(&self, r: usize) -> Result<Option<usize>, &[f32]> {
        let c = self.problem.classes();
        match self.problem.target() {
            TargetData::Indices(y) => {
                Ok((y[r] != self.problem.ignore_index()).then_some(y[r] as usize))
            }
            TargetData::Probs(t) => Err(&t[r * c..(r + 1) * c]),
        }
    }

    fn chunk_partial(&self, r: usize, c0: usize, x: &[f32]) -> RowPartial {
        let lse = LseState::of(x);
        let o = origin(lse.max);
        let (weighted_logits, weight_sum) = match self.target(r) {
            Ok(_) if self.eps > 0.0 => {
                x.iter().enumerate().fold((0.0, 0.0), |(wx, ws), (k, &v)| {
                    let w = self.w(c0 + k);
                    (wx + w * (f64::from(v) - o), ws + w)
                })
            }
            Ok(_) => (0.0, 0.0),
            Err(t) => x.iter().enumerate().fold((0.0, 0.0), |(wx, m), (k, &v)| {
                let wt = self.w(c0 + k) * self.tprime(t[c0 + k]);
                (wx + wt * (f64::from(v) - o), m + wt)
            }),
        };
        RowPartial {
            lse,
            weighted_logits,
            weight_sum,
        }
    }

    fn row_loss(&self, r: usize, x_row: &[f32], p: RowPartial) -> f64 {
        if p.lse.max.is_nan() || p.lse.max == f32::NEG_INFINITY {
            // A NaN logit, or every class masked: NaN, as the reference gives.
            return match self.target(r) {
                Ok(None) => 0.0,
                _ => f64::NAN,
            };
        }
        let top = f64::from(p.lse.max);
        let ln_sum = p.lse.sum.ln();
        match self.target(r) {
            Ok(None) => 0.0,
            Ok(Some(y)) => {
                let nll = (1.0 - self.eps) * self.w(y) * ((top - f64::from(x_row[y])) + ln_sum);
                if self.eps > 0.0 {
                    let c = self.problem.classes() as f64;
                    nll + self.eps / c * (self.total_weight * ln_sum - p.weighted_logits)
                } else {
                    nll
                }
            }
            Err(_) => p.weight_sum * ln_sum - p.weighted_logits,
        }
    }

    /// Writes the gradient of one chunk of row `r`, given the row's merged partial.
    fn chunk_grad(&self, r: usize, c0: usize, x: &[f32], p: RowPartial, s: f32, out: &mut [f32]) {
        let lse = p.lse.log_sum_exp();
        let c = self.problem.classes() as f64;
        let s64 = f64::from(s);
        // p[c] = exp(x − max) / sum: the exponent stays exact for logits of any magnitude.
        let fast = s.is_finite() && lse.is_finite() && p.lse.sum.is_finite();
        let inv_sum = 1.0 / p.lse.sum;
        match self.target(r) {
            Ok(None) => out.fill(0.0),
            Ok(Some(y)) => {
                let keep = (1.0 - self.eps) * self.w(y);
                let spread = self.eps / c;
                if !fast {
                    for (k, (o, &v)) in out.iter_mut().zip(x).enumerate() {
                        let pc = (f64::from(v) - lse).exp();
                        let onehot = if c0 + k == y { 1.0 } else { 0.0 };
                        let mut g = keep * (pc - onehot);
                        if self.eps > 0.0 {
                            g += spread * (self.total_weight * pc - self.w(c0 + k));
                        }
                        *o = (s64 * g) as f32;
                    }
                    return;
                }
                let a = s64
                    * (keep
                        + if self.eps > 0.0 {
                            spread * self.total_weight
                        } else {
                            0.0
                        });
                softmax_scaled(x, p.lse.max, (a * inv_sum) as f32, out);
                if self.eps > 0.0 {
                    for (k, o) in out.iter_mut().enumerate() {
                        *o -= (s64 * spread * self.w(c0 + k)) as f32;
                    }
                }
                if (c0..c0 + x.len()).contains(&y) {
                    out[y - c0] -= (s64 * keep) as f32;
                }
            }
            Err(t) => {
                let mass = p.weight_sum;
                if !fast || !mass.is_finite() {
                    for (k, (o, &v)) in out.iter_mut().zip(x).enumerate() {
                        let pc = (f64::from(v) - lse).exp();
                        let g = pc * mass - self.w(c0 + k) * self.tprime(t[c0 + k]);
                        *o = (s64 * g) as f32;
                    }
                    return;
                }
                softmax_scaled(x, p.lse.max, (s64 * mass * inv_sum) as f32, out);
                for (k, o) in out.iter_mut().enumerate() {
                    *o -= (s64 * self.w(c0 + k) * self.tprime(t[c0 + k])) as f32;
                }
            }
        }
    }
}

/// The row partials of every row, chunks merged in order (chunks computed in parallel when
/// `parallel`).
fn row_partials(ctx: &RowCtx<'_>, parallel: bool) -> Vec<RowPartial> {
    let c = ctx.problem.classes();
    let logits = ctx.problem.logits();
    (0..ctx.problem.positions())
        .map(|r| {
            let row = &logits[r * c..(r + 1) * c];
            let part = |(k, x): (usize, &[f32])| ctx.chunk_partial(r, k * SPLIT_CHUNK, x);
            let parts: Vec<RowPartial> = if parallel {
                row.par_chunks(SPLIT_CHUNK).enumerate().map(part).collect()
            } else {
                row.chunks(SPLIT_CHUNK).enumerate().map(part).collect()
            };
            parts.into_iter().fold(RowPartial::EMPTY, RowPartial::merge)
        })
        .collect()
}

fn context<'a>(problem: &'a Problem<'a>) -> RowCtx<'a> {
    // W is only used by the smoothing term; summing C weights serially costs about as much as
    // the LSE of the row (measured: 1×128256 forward at 0.49 G/s with it, loss-cpu's 0.70).
    let total_weight = if problem.label_smoothing() > 0.0 {
        (0..problem.classes())
            .map(|c| f64::from(problem.class_weight(c)))
            .sum()
    } else {
        0.0
    };
    RowCtx {
        problem,
        eps: f64::from(problem.label_smoothing()),
        total_weight,
    }
}

fn denominator(ctx: &RowCtx<'_>) -> f64 {
    (0..ctx.problem.positions())
        .map(|r| match ctx.target(r) {
            Ok(Some(y)) => ctx.w(y),
            Ok(None) => 0.0,
            Err(_) => 1.0,
        })
        .sum()
}

/// Forward and/or backward over split rows. `loss` and `grad` are the caller's checked buffers.
pub(crate) fn run<'a>(
    problem: &'a Problem<'a>,
    parallel: bool,
    loss: Option<&mut [f32]>,
    grad: Option<(&[f32], &mut [f32])>,
) {
    let ctx = context(problem);
    let partials = row_partials(&ctx, parallel);
    let c = problem.classes();
    let logits = problem.logits();
    let d = denominator(&ctx);
    if let Some(loss) = loss {
        let losses = partials
            .iter()
            .enumerate()
            .map(|(r, &p)| ctx.row_loss(r, &logits[r * c..(r + 1) * c], p));
        match problem.reduction() {
            Reduction::None => loss.iter_mut().zip(losses).for_each(|(o, l)| *o = l as f32),
            Reduction::Sum => loss[0] = losses.fold(0.0, |a, l| a + l) as f32,
            Reduction::Mean => loss[0] = (losses.fold(0.0, |a, l| a + l) / d) as f32,
        }
    }
    if let Some((grad_output, grad)) = grad {
        for (r, &p) in partials.iter().enumerate() {
            let s = match problem.reduction() {
                Reduction::None => grad_output[r],
                Reduction::Sum => grad_output[0],
                Reduction::Mean => (f64::from(grad_output[0]) / d) as f32,
            };
            let row = &logits[r * c..(r + 1) * c];
            let out = &mut grad[r * c..(r + 1) * c];
            let write = |(k, (o, x)): (usize, (&mut [f32], &[f32]))| {
                ctx.chunk_grad(r, k * SPLIT_CHUNK, x, p, s, o)
            };
            if parallel {
                out.par_chunks_mut(SPLIT_CHUNK)
                    .zip(row.par_chunks(SPLIT_CHUNK))
                    .enumerate()
                    .for_each(write);
            } else {
                out.chunks_mut(SPLIT_CHUNK)
                    .zip(row.chunks(SPLIT_CHUNK))
                    .enumerate()
                    .for_each(write);
            }
        }
    }
}
