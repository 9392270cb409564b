//! The reference backend: the oracle every other backend is checked against.
//!
//! It is written to be obviously correct rather than fast: one formula of the
//! [crate-level definition](crate#the-loss) per line, every sum accumulated in `f64`, positions
//! visited in order. The `f64` entry points ([`forward_f64`], [`backward_f64`]) take the logits as
//! `f64` so that tests can differentiate the loss numerically.

use crate::backend::LossBackend;
use crate::error::{LossError, Result};
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

/// `m + ln Σ exp(x − m)` with `m` the maximum; NaN in, NaN out.
fn log_sum_exp(x: &[f64]) -> f64 {
    if x.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = x.iter().map(|&v| (v - m).exp()).sum();
    m + s.ln()
}

fn weight(problem: &Problem<'_>, c: usize) -> f64 {
    f64::from(problem.class_weight(c))
}

/// The smoothed probability target `t' = (1 − ε)·t + ε/C` (just `t` when `ε = 0`).
fn smoothed(problem: &Problem<'_>, t: f32) -> f64 {
    let eps = f64::from(problem.label_smoothing());
    if eps > 0.0 {
        (1.0 - eps) * f64::from(t) + eps / problem.classes() as f64
    } else {
        f64::from(t)
    }
}

/// The index target of a position, or `None` when it is ignored (or the target is soft).
fn valid_index(problem: &Problem<'_>, position: usize) -> Option<usize> {
    match problem.target() {
        TargetData::Indices(y) if y[position] != problem.ignore_index() => {
            Some(y[position] as usize)
        }
        _ => None,
    }
}

/// Per-position losses `L_i` (0 where ignored), in `f64`.
pub fn position_losses_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
    let classes = problem.classes();
    let eps = f64::from(problem.label_smoothing());
    (0..problem.positions())
        .map(|i| {
            let x = row(problem, logits, i);
            let lse = log_sum_exp(&x);
            match problem.target() {
                TargetData::Indices(_) => match valid_index(problem, i) {
                    None => 0.0,
                    Some(y) => {
                        let nll = (1.0 - eps) * weight(problem, y) * (lse - x[y]);
                        if eps > 0.0 {
                            let smooth: f64 = (0..classes)
                                .map(|c| weight(problem, c) * (lse - x[c]))
                                .sum();
                            nll + eps / classes as f64 * smooth
                        } else {
                            nll
                        }
                    }
                },
                TargetData::Probs(t) => (0..classes)
                    .map(|c| {
                        let tc = smoothed(problem, t[problem.layout().index(i, c)]);
                        weight(problem, c) * tc * (lse - x[c])
                    })
                    .sum(),
            }
        })
        .collect()
}

/// The denominator of `mean`: `Σ_{valid i} w[y_i]` for index targets, `P` for probabilities.
pub fn mean_denominator(problem: &Problem<'_>) -> f64 {
    match problem.target() {
        TargetData::Indices(_) => (0..problem.positions())
            .filter_map(|i| valid_index(problem, i))
            .map(|y| weight(problem, y))
            .sum(),
        TargetData::Probs(_) => problem.positions() as f64,
    }
}

/// The reduced loss in `f64` ([`Problem::loss_len`] values).
pub fn forward_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
    let losses = position_losses_f64(problem, logits);
    match problem.reduction() {
        Reduction::None => losses,
        Reduction::Sum => vec![losses.iter().sum()],
        Reduction::Mean => vec![losses.iter().sum::<f64>() / mean_denominator(problem)],
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
    let classes = problem.classes();
    let eps = f64::from(problem.label_smoothing());
    let total_weight: f64 = (0..classes).map(|c| weight(problem, c)).sum();
    let denominator = mean_denominator(problem);
    let mut grad = vec![0.0; logits.len()];
    for i in 0..problem.positions() {
        let scale = match problem.reduction() {
            Reduction::None => grad_output[i],
            Reduction::Sum => grad_output[0],
            Reduction::Mean => grad_output[0] / denominator,
        };
        let x = row(problem, logits, i);
        let lse = log_sum_exp(&x);
        let p = |c: usize| (x[c] - lse).exp();
        match problem.target() {
            TargetData::Indices(_) => {
                // Ignored positions keep an exact zero, whatever the scale.
                let Some(y) = valid_index(problem, i) else {
                    continue;
                };
                let wy = weight(problem, y);
                for c in 0..classes {
                    let onehot = if c == y { 1.0 } else { 0.0 };
                    let mut g = (1.0 - eps) * wy * (p(c) - onehot);
                    if eps > 0.0 {
                        g += eps / classes as f64 * (total_weight * p(c) - weight(problem, c));
                    }
                    grad[layout.index(i, c)] = scale * g;
                }
            }
            TargetData::Probs(t) => {
                let tprime: Vec<f64> = (0..classes)
                    .map(|c| smoothed(problem, t[layout.index(i, c)]))
                    .collect();
                let mass: f64 = (0..classes).map(|k| weight(problem, k) * tprime[k]).sum();
                for c in 0..classes {
                    grad[layout.index(i, c)] =
                        scale * (p(c) * mass - weight(problem, c) * tprime[c]);
                }
            }
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
