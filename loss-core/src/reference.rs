//! The reference backend: the oracle every other backend is checked against.
//!
//! It is written to be obviously correct rather than fast: the plain composition of the
//! [formulas](crate::formula) — each row's statistics straight from their definitions, every sum
//! accumulated in `f64`, positions visited in order, half inputs widened exactly, the soft-cap
//! and the z-loss in `f64`. The `f64` entry points ([`answers_f64`], [`forward_f64`],
//! [`backward_f64`]) take the raw logits as `f64` so that tests can differentiate the loss
//! numerically.

use crate::backend::LossBackend;
use crate::error::{LossError, Result};
use crate::formula::{self, RowStats, Scalars};
use crate::problem::{Outputs, Problem, Reduction, TargetData};

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
                .map(|c| {
                    s.smoothing
                        .target(f64::from(t.get(layout.index(position, c))))
                })
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

/// The reference's answers in `f64`: everything an [`Outputs`] can ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// The loss ([`Problem::loss_len`] values).
    pub loss: Vec<f64>,
    /// The per-position LSE of the (capped) logits.
    pub lse: Vec<f64>,
    /// The z-loss part, reduced as the loss ([`Problem::loss_len`] values; zeros when `z = 0`).
    pub z_loss: Vec<f64>,
    /// The gradient, when an upstream gradient was given.
    pub grad: Option<Vec<f64>>,
}

/// Everything at once, in `f64`, from the raw (uncapped) logits `logits` widened to `f64` and,
/// for the gradient, the upstream gradient.
///
/// # Panics
/// If `logits` or `grad_output` have the wrong length (the checked entry point is
/// [`LossBackend::compute`]).
pub fn answers_f64(problem: &Problem<'_>, logits: &[f64], grad_output: Option<&[f64]>) -> Answers {
    assert_eq!(logits.len(), problem.len());
    let layout = problem.layout();
    let s = Scalars::of(problem);
    let cap = problem.softcap().map(f64::from);
    let z = f64::from(problem.z_loss());
    let x_all: Vec<f64> = match cap {
        Some(a) => logits.iter().map(|&x| formula::softcap(x, a)).collect(),
        None => logits.to_vec(),
    };
    let denominator = mean_denominator(problem);
    let valid_count = formula::valid_over(problem, 0..problem.positions());
    let reduction = problem.reduction();
    let (mut ce, mut zs, mut lses) = (Vec::new(), Vec::new(), Vec::new());
    let mut grad = grad_output.map(|g| {
        assert_eq!(g.len(), problem.loss_len());
        vec![0.0; logits.len()]
    });
    for i in 0..problem.positions() {
        let x = row(problem, &x_all, i);
        let y = valid_index(problem, i);
        let valid = y.is_some() || matches!(problem.target(), TargetData::Probs(_));
        let t = smoothed_targets(problem, &s, i);
        let r = row_stats(problem, &s, &x, t.as_deref(), y);
        let lse = r.lse();
        let sw = f64::from(problem.position_weight_at(i));
        let loss = match (y, valid) {
            (_, false) => 0.0,
            (Some(y), true) => formula::index_loss(&s, weight(problem, y), &r),
            (None, true) => formula::prob_loss(&r),
        };
        let weighted = if problem.position_weight().is_some() {
            sw * loss
        } else {
            loss
        };
        let zp = if z > 0.0 && valid {
            formula::z_part(z, sw, lse)
        } else {
            0.0
        };
        ce.push(weighted);
        zs.push(zp);
        lses.push(lse);
        let (Some(grad), Some(g)) = (grad.as_mut(), grad_output) else {
            continue;
        };
        if !valid {
            // Ignored positions keep an exact zero, whatever the scale.
            continue;
        }
        // `s_i` of formula::grad_scale, in f64, times the position weight; the z part's scale
        // divides by V instead of D.
        let (base, z_base) = match reduction {
            Reduction::None => (g[i], g[i]),
            Reduction::Sum => (g[0], g[0]),
            Reduction::Mean => (g[0] / denominator, g[0] / valid_count),
        };
        let scale = if problem.position_weight().is_some() {
            base * sw
        } else {
            base
        };
        let zc = if z > 0.0 {
            formula::z_coefficient(z_base, z, sw, lse)
        } else {
            0.0
        };
        for c in 0..layout.classes {
            let p = (x[c] - lse).exp();
            let mut gc = match (y, &t) {
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
                        TargetData::Probs(t) => f64::from(t.get(layout.index(i, c))),
                        TargetData::Indices(_) => 0.0,
                    };
                    formula::prob_grad(&s, scale, p, weight(problem, c), raw, r.mass)
                }
                (None, None) => 0.0,
            };
            if z > 0.0 {
                gc += zc * p;
            }
            if let Some(a) = cap {
                gc *= formula::softcap_slope(x[c], a);
            }
            grad[layout.index(i, c)] = gc;
        }
    }
    let (loss, z_loss) = match reduction {
        Reduction::None => (
            ce.iter()
                .zip(&zs)
                .map(|(&c, &zp)| if z > 0.0 { c + zp } else { c })
                .collect(),
            zs,
        ),
        r => {
            let (loss, z_part) = formula::reduce_with_z(
                r,
                ce.iter().sum(),
                zs.iter().sum(),
                denominator,
                valid_count,
                z > 0.0,
            );
            (vec![loss], vec![z_part])
        }
    };
    Answers {
        loss,
        lse: lses,
        z_loss,
        grad,
    }
}

/// The denominator of `mean`: `Σ_{valid i} s_i·w[y_i]` for index targets, `Σ s_i` for
/// probabilities.
pub fn mean_denominator(problem: &Problem<'_>) -> f64 {
    formula::denominator_over(problem, 0..problem.positions())
}

/// The reduced loss in `f64` ([`Problem::loss_len`] values) from the raw logits in `f64`.
pub fn forward_f64(problem: &Problem<'_>, logits: &[f64]) -> Vec<f64> {
    answers_f64(problem, logits, None).loss
}

/// The gradient in `f64` of `Σ loss·grad_output` with respect to the raw logits.
///
/// # Panics
/// If `logits` or `grad_output` have the wrong length (the checked entry point is
/// [`LossBackend::backward`]).
pub fn backward_f64(problem: &Problem<'_>, logits: &[f64], grad_output: &[f64]) -> Vec<f64> {
    answers_f64(problem, logits, Some(grad_output))
        .grad
        .expect("an upstream gradient was given")
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

    fn compute(&self, problem: &Problem<'_>, mut out: Outputs<'_>) -> Result<(), LossError> {
        problem.check_outputs(&out)?;
        let logits = problem.logits().to_f64_vec();
        let upstream = out.grad.as_ref().map(|g| {
            g.grad_output
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>()
        });
        let a = answers_f64(problem, &logits, upstream.as_deref());
        if let Some(l) = out.loss.as_deref_mut() {
            narrow_into(&a.loss, l);
        }
        if let Some(l) = out.lse.as_deref_mut() {
            narrow_into(&a.lse, l);
        }
        if let Some(l) = out.z_loss.as_deref_mut() {
            narrow_into(&a.z_loss, l);
        }
        if let (Some(req), Some(g)) = (out.grad.as_mut(), &a.grad) {
            for (i, &v) in g.iter().enumerate() {
                req.grad.set_f64(i, v);
            }
        }
        Ok(())
    }
}
