//! Splitting one row's classes across threads: the path for few rows and huge vocabularies.
//!
//! A row of `C` logits is cut into fixed chunks of [`SPLIT_CHUNK`] classes. Each chunk yields a
//! [`RowPartial`] (loss-cpu's mergeable row state, from loss-cpu's chunk kernel
//! `Plan::chunk_partial`), and partials of disjoint chunks [`merge`](RowPartial::merge) exactly
//! into the partial of their union. Merging in chunk order gives the row's log-sum-exp and loss
//! (`Plan::partial_loss`); the gradient of every chunk then follows independently
//! (`Plan::chunk_grad`). This module only distributes: it has no kernel and no formula of its
//! own. Because the chunks are fixed by the shape, not by the thread count, the bits are the
//! same on any number of threads.
//!
//! The same merge lets a vocabulary be sharded over devices or processes: each shard computes the
//! partial of its classes, the partials are gathered and merged (in a fixed order), and each shard
//! writes its part of the gradient from the merged log-sum-exp.

use loss_core::{Problem, Reduction};
use loss_cpu::kernel::Plan;
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

pub use loss_cpu::kernel::RowPartial;

/// The partial of each row: its chunks' partials (in parallel or not) merged in chunk order.
fn row_partials(plan: &Plan<'_>, logits: &[f32], parallel: bool) -> Vec<RowPartial> {
    let c = plan.layout().classes;
    (0..plan.layout().positions())
        .map(|r| {
            let row = &logits[r * c..(r + 1) * c];
            let part = |(k, x): (usize, &[f32])| plan.chunk_partial(r, k * SPLIT_CHUNK, x);
            let parts: Vec<RowPartial> = if parallel {
                row.par_chunks(SPLIT_CHUNK).enumerate().map(part).collect()
            } else {
                row.chunks(SPLIT_CHUNK).enumerate().map(part).collect()
            };
            parts.into_iter().fold(RowPartial::EMPTY, RowPartial::merge)
        })
        .collect()
}

/// The split path of a validated problem: the loss when `loss` is given, the gradient for the
/// upstream gradient when `grad` is. Every formula is loss-cpu's `Plan`'s (hence loss-core's).
pub(crate) fn run<'a>(
    problem: &'a Problem<'a>,
    parallel: bool,
    loss: Option<&mut [f32]>,
    grad: Option<(&[f32], &mut [f32])>,
) {
    let (plan, d) = Plan::new(problem).ready();
    let logits = problem
        .logits()
        .as_f32()
        .expect("plain problems have f32 logits");
    let partials = row_partials(&plan, logits, parallel);
    let c = problem.classes();
    if let Some(loss) = loss {
        let losses = partials
            .iter()
            .enumerate()
            .map(|(r, &p)| plan.partial_loss(r, &logits[r * c..(r + 1) * c], p));
        match problem.reduction() {
            Reduction::None => loss.iter_mut().zip(losses).for_each(|(o, l)| *o = l as f32),
            Reduction::Sum | Reduction::Mean => {
                loss[0] = plan.reduce(losses.fold(0.0, |a, l| a + l), d);
            }
        }
    }
    if let Some((grad_output, grad)) = grad {
        let scale = plan.grad_scale(grad_output, d);
        for (r, &p) in partials.iter().enumerate() {
            let s = scale.at(r);
            let row = &logits[r * c..(r + 1) * c];
            let out = &mut grad[r * c..(r + 1) * c];
            let write = |(k, (o, x)): (usize, (&mut [f32], &[f32]))| {
                plan.chunk_grad(r, k * SPLIT_CHUNK, x, p, s, o)
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
