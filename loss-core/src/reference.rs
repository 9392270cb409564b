//! The reference backend: the oracle every other backend is checked against.
//!
//! It is written to be obviously correct rather than fast: the plain composition of the
//! [formulas](crate::formula) — each row's statistics straight from their definitions, every sum
//! accumulated in `f64`, positions visited in order. The `f64` entry points ([`forward_f64`], [`backward_f64`]) take the logits as
//! `f64` so that tests can differentiate the loss numerically.

use crate::backend::LossBackend;
use crate::error::{LossError, Result};
use crate::formula::{self, RowStats, Scalars};
use crate::problem::{Problem, Reduction, TargetData};

/// The reference backend (`name() == "reference"`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceBackend;

impl ReferenceBackend {
    /// A new reference backend.
    pub fn new() -> Self {
        ReferenceBackend
    }
}

/// Gathers the `C` logits of one position.
fn row(problem: &Problem<'_>, logits: &[f64], position: usize) -> Vec<f64> {
    let layout = problem.layout();
    (0..layout.classes)
        .map(|c| logits[layout.index(position, c)])
        .collect()
}

/// The smoothed probability targets `t'` of one position.
fn smoothed_targets(problem: &Problem<'_>, s: &Scalars, position: usize) -> Option<Vec<f64>> {
    let layout = problem.layout();
    match problem.target() {
        TargetData::Probs(t) => Some(
            (0..layout.classes)
                .map(|c| s.smoothing.target(f64::from(t[layout.index(position, c)])))
                .collect(),
        ),
        TargetData::Indices(_) => None,
    }
}

fn weight(problem: &Problem<'_>, c: usize) -> f64 {
    f64::from(problem.class_weight(c))
}

/// The statistics of one position, straight from their definitions in [`RowStats`]. A NaN
/// logit makes the whole row NaN; a row whose logits are all −∞ has no log-sum-exp (NaN).
fn row_stats(
    problem: &Problem<'_>,
    s: &Scalars,
    x: &[f64],
    targets: Option<&[f64]>,
    y: Option<usize>,
) -> RowStats {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ln_sum = if x.iter().any(|v| v.is_nan()) || max == f64::NEG_INFINITY {
        f64::NAN
    } else {
        x.iter().map(|&v| (v - max).exp()).sum::<f64>().ln()
    };
    let max = if ln_sum.is_nan() { f64::NAN } else { max };
    let (weighted, mass) = match targets {
        Some(t) => (
            (0..x.len())
                .map(|c| weight(problem, c) * t[c] * (x[c] - max))
                .sum(),
            (0..x.len()).map(|c| weight(problem, c) * t[c]).sum(),
        ),
        None if s.smoothing.is_on() => (
            (0..x.len())
                .map(|c| weight(problem, c) * (x[c] - max))
                .sum(),
            0.0,
        ),
        None => (0.0, 0.0),
    };
    RowStats {
        max,
        ln_sum,
        x_target: y.map_or(0.0, |y| x[y]),
        weighted,
        mass,
    }
}

/// The index target of a position, or `None` when it is ignored (or the target is soft).
fn valid_index(problem: &Problem<'_>, position: usize) -> Option<usize> {
    match problem.target() {
        TargetData::Indices(y) => formula::valid_class(y[position], problem.ignore_index()),
        TargetData::Probs(_) => None,
    }
}

/// Per-position losses `L_i` (0 where ignored), in `f64`.
pub fn position_losses_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
    let s = Scalars::of(problem);
    (0..problem.positions())
        .map(|i| {
            let x = row(problem, logits, i);
            match problem.target() {
                TargetData::Indices(_) => match valid_index(problem, i) {
                    None => 0.0,
                    Some(y) => {
                        let r = row_stats(problem, &s, &x, None, Some(y));
                        formula::index_loss(&s, weight(problem, y), &r)
                    }
                },
                TargetData::Probs(_) => {
                    let t = smoothed_targets(problem, &s, i);
                    formula::prob_loss(&row_stats(problem, &s, &x, t.as_deref(), None))
                }
            }
        })
        .collect()
}

/// The denominator of `mean`: `Σ_{valid i} w[y_i]` for index targets, `P` for probabilities.
pub fn mean_denominator(problem: &Problem<'_>) -> f64 {
    formula::denominator_over(problem, 0..problem.positions())
}

/// The reduced loss in `f64` ([`Problem::loss_len`] values).
pub fn forward_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
    let losses = position_losses_f64(problem, logits);
    match problem.reduction() {
        Reduction::None => losses,
        r => vec![formula::reduce(
            r,
            losses.iter().sum(),
            mean_denominator(problem),
        )],
    }
}

/// The gradient in `f64` of `Σ loss·grad_output` with respect to the logits.
///
/// # Panics
/// If `logits` or `grad_output` have the wrong length (the checked entry point is
/// [`LossBackend::backward`]).
pub fn backward_f64(problem: &Problem<'_>, logits: &[f64], grad_output: &[f64]) -> Vec<f64> {
    assert_eq!(logits.len(), problem.logits().len());
    assert_eq!(grad_output.len(), problem.loss_len());
    let layout = problem.layout();
    let s = Scalars::of(problem);
    let denominator = mean_denominator(problem);
    let mut grad = vec![0.0; logits.len()];
    for i in 0..problem.positions() {
        // `s_i` as `formula::grad_scale` defines it, in f64.
        let scale = match problem.reduction() {
            Reduction::None => grad_output[i],
            Reduction::Sum => grad_output[0],
            Reduction::Mean => grad_output[0] / denominator,
        };
        let x = row(problem, logits, i);
        let y = valid_index(problem, i);
        if matches!(problem.target(), TargetData::Indices(_)) && y.is_none() {
            // Ignored positions keep an exact zero, whatever the scale.
            continue;
        }
        let t = smoothed_targets(problem, &s, i);
        let r = row_stats(problem, &s, &x, t.as_deref(), y);
        let lse = r.lse();
        for c in 0..layout.classes {
            let p = (x[c] - lse).exp();
            grad[layout.index(i, c)] = match (y, &t) {
                (Some(y), _) => formula::index_grad(
                    &s,
                    scale,
                    p,
                    weight(problem, c),
                    weight(problem, y),
                    c == y,
                ),
                (None, Some(_)) => {
                    let raw = match problem.target() {
                        TargetData::Probs(t) => f64::from(t[layout.index(i, c)]),
                        TargetData::Indices(_) => 0.0,
                    };
                    formula::prob_grad(&s, scale, p, weight(problem, c), raw, r.mass)
                }
                (None, None) => 0.0,
            };
        }
    }
    grad
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

fn narrow_into(values: &[f64], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o = v as f32;
    }
}

impl LossBackend for ReferenceBackend {
    fn name(&self) -> &str {
        "reference"
    }

    fn forward_into(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<(), LossError> {
        problem.check_loss_buffer(loss)?;
        narrow_into(&forward_f64(problem, &widen(problem.logits())), loss);
        Ok(())
    }

    fn backward_into(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
        grad: &mut [f32],
    ) -> Result<(), LossError> {
        problem.check_backward(grad_output, grad)?;
        let g = backward_f64(problem, &widen(problem.logits()), &widen(grad_output));
        narrow_into(&g, grad);
        Ok(())
    }
}
