//! # loss-rayon: deterministic multi-threaded cross-entropy
//!
//! [`RayonBackend`] distributes loss-cpu's row kernels over a thread pool of its own; it has no
//! kernels of its own. Two paths, chosen from the problem's shape alone:
//!
//! - **Rows in blocks.** loss-cpu's [`Plan`] cuts the positions into fixed units of whole rows
//!   (about 256 positions each). Units run in parallel, each returning its `f64` loss partial and
//!   writing its own span of the gradient; the partials are then added in unit order. That is
//!   exactly the order [`loss_cpu::CpuBackend`] adds them in, so the result has the same bits as
//!   loss-cpu's, for any thread count.
//! - **Few rows, huge vocabularies** (at most [`split::SPLIT_MAX_ROWS`] rows of at least
//!   [`split::SPLIT_MIN_CLASSES`] classes: LLM decoding, small batches; for the gradient only
//!   with [`RayonBackend::with_split_gradients`], see there why): each row's classes are
//!   cut into fixed chunks whose mergeable partial states ([`RowPartial`], built on loss-cpu's
//!   [`LseState`]) are computed in parallel and merged in chunk order; the gradient chunks are
//!   then written in parallel. The chunks depend on the shape only, so the bits do not depend
//!   on the thread count either.
//!
//! Reductions are never `par_iter().sum()` on floats: every float sum has a fixed order.
//!
//! Below [`SEQUENTIAL_BELOW`] units of work ([`work`]: logits plus [`ROW_COST`] per position; twice that for a forward pass) the
//! work runs on the calling thread (same units, same order, same bits), so small problems pay no
//! parallel overhead.
//!
//! [`Plan`]: loss_cpu::kernel::Plan
//! [`LseState`]: loss_cpu::kernel::LseState

pub mod split;

use loss_core::{LossBackend, LossError, Outputs, Problem, Reduction, Result};
use loss_cpu::kernel::{Plan, Route, StagedPartial};
use rayon::prelude::*;

pub use loss_cpu::kernel::LseState;
pub use split::RowPartial;

/// Problems of less [`work`] than this run on the calling thread: the measured crossover of the
/// parallel path on the reference machine (NOTES.md, "Sequential below").
pub const SEQUENTIAL_BELOW: usize = 512 * 1024;

/// The cost of a position's own work (its `ln`, loss and target) in logits: loss-cpu takes about
/// 6 ns per 3-class row and 0.5 ns per logit of long rows (NOTES.md, "Sequential below").
pub const ROW_COST: usize = 12;

/// A problem's work in logit-equivalents: `N·C + ROW_COST·N` (N positions).
pub fn work(problem: &Problem<'_>) -> usize {
    problem.len() + ROW_COST * problem.layout().positions()
}

/// Logits per rayon task at least (groups of units), so small-row problems do not drown in
/// task overhead.
const MIN_TASK_LOGITS: usize = 64 * 1024;

/// One unit's job: its index, its loss and `D` partials, its gradient span and its `none` losses.
type UnitJob<'a> = (
    usize,
    (
        (&'a mut (f64, f64), Option<&'a mut [f32]>),
        Option<&'a mut [f32]>,
    ),
);

/// The rayon backend (`name() == "rayon"`), with a thread pool of its own.
pub struct RayonBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    sequential_below: usize,
    split_gradients: bool,
}

impl std::fmt::Debug for RayonBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RayonBackend")
            .field("threads", &self.threads)
            .field("sequential_below", &self.sequential_below)
            .finish()
    }
}

impl RayonBackend {
    /// A backend on `threads` threads (0: one per available core). The pool is its own: no
    /// global rayon state is touched.
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("loss-rayon-{i}"))
            .build()
            .map_err(|e| LossError::Unavailable {
                backend: "rayon".into(),
                reason: format!("cannot start a pool of {threads} threads: {e}"),
            })?;
        Ok(RayonBackend {
            pool,
            threads,
            sequential_below: SEQUENTIAL_BELOW,
            split_gradients: false,
        })
    }

    /// Overrides the sequential threshold (in [`work`] units); 0 forces the parallel path everywhere
    /// (the determinism tests use it). Does not change any result bit.
    pub fn with_sequential_below(mut self, logits: usize) -> Self {
        self.sequential_below = logits;
        self
    }

    /// Also split rows across threads when a gradient is asked for (off by default: the split
    /// gradient pays a second `exp` pass, which measured slower than rows handed out whole on
    /// the reference machine, NOTES.md, "Split gradients"). Machines with more bandwidth per
    /// core are where it pays; the bits do not depend on the thread count either way.
    pub fn with_split_gradients(mut self, split: bool) -> Self {
        self.split_gradients = split;
        self
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether to use the pool. A forward pass does about half the work of a gradient pass per
    /// logit, so it needs twice the [`work`] to pay for the pool (NOTES.md, "Sequential below").
    fn parallel(&self, problem: &Problem<'_>, grad: bool) -> bool {
        let threshold = if grad {
            self.sequential_below
        } else {
            self.sequential_below.saturating_mul(2)
        };
        self.threads > 1 && work(problem) >= threshold
    }

    /// Whether the problem runs as loss-cpu's own sequential loop (not parallel, and not the
    /// split path, whose chunked sums have bits of their own): then the trait methods hand it
    /// to loss-cpu before doing anything, so a small call costs what loss-cpu's does.
    fn as_cpu(&self, problem: &Problem<'_>, grad: bool) -> bool {
        !self.parallel(problem, grad)
            && !(split::splits_rows(problem) && (!grad || self.split_gradients))
    }

    /// Runs `f` in the pool when parallel, else on this thread.
    fn in_pool<T: Send>(&self, parallel: bool, f: impl FnOnce() -> T + Send) -> T {
        if parallel { self.pool.install(f) } else { f() }
    }

    /// The block path on the pool: units in parallel, partials added in unit order.
    fn units(
        &self,
        problem: &Problem<'_>,
        loss: Option<&mut [f32]>,
        grad: Option<(&[f32], &mut [f32])>,
    ) {
        let plan = Plan::new(problem);
        let units = plan.units();
        let none = plan.reduction() == Reduction::None;
        let logits = problem
            .logits()
            .as_f32()
            .expect("plain problems have f32 logits");
        // D of the mean, from per-unit partials added in unit order (as loss-cpu does): first,
        // in a pass of its own, when the gradient's scale needs it; else in the units' jobs
        // (one fork-join fewer).
        // (A z-loss needs D and V before the jobs: `Plan::with_denominators`.)
        let mean = plan.reduction() == Reduction::Mean;
        let z = plan.z_loss() != 0.0;
        let d_in_jobs = mean && grad.is_none() && !z;
        let sum_parts = |part: &(dyn Fn(usize) -> f64 + Sync)| {
            let mut parts = vec![0.0f64; units];
            parts
                .par_iter_mut()
                .enumerate()
                .with_min_len(64)
                .for_each(|(u, d)| *d = part(u));
            parts.iter().fold(0.0, |a, &d| a + d)
        };
        let denominator = if mean && !d_in_jobs {
            sum_parts(&|u| plan.denominator_partial(u))
        } else {
            f64::NAN
        };
        let valid = if mean && z {
            sum_parts(&|u| plan.valid_partial(u))
        } else {
            f64::NAN
        };
        let plan = plan.with_denominators(denominator, valid);
        if units == 0 {
            if let Some(loss) = loss
                && !none
            {
                loss[0] = plan.reduce(0.0, if d_in_jobs { 0.0 } else { denominator });
            }
            return;
        }
        let span = plan.unit_logits(0).len();
        let positions = plan.unit_positions(0).len();
        let min_len = MIN_TASK_LOGITS.div_ceil(span).max(1);
        // One job per unit: its loss partial, and its own spans of the gradient and (for `none`)
        // of the per-position losses. The spans are disjoint, so the jobs can run anywhere.
        let mut partials = vec![(0.0f64, 0.0f64); units];
        let (scalar_loss, none_losses) = match loss {
            Some(l) if none => (None, Some(l)),
            other => (other, None),
        };
        let mut loss_spans: Vec<Option<&mut [f32]>> = match none_losses {
            Some(l) => l.chunks_mut(positions).map(Some).collect(),
            None => (0..units).map(|_| None).collect(),
        };
        let (scale, mut grad_spans): (_, Vec<Option<&mut [f32]>>) = match grad {
            Some((grad_output, g)) => (
                Some(plan.grad_scale(grad_output, denominator)),
                g.chunks_mut(span).map(Some).collect(),
            ),
            None => (None, (0..units).map(|_| None).collect()),
        };
        let job = |(u, ((partial, g), l)): UnitJob<'_>| {
            let x = &logits[plan.unit_logits(u)];
            partial.0 = match (g, scale) {
                (Some(g), Some(scale)) => plan.fused_unit(u, x, scale, l, g),
                _ => plan.forward_unit(u, x, l),
            };
            if d_in_jobs {
                partial.1 = plan.denominator_partial(u);
            }
        };
        let jobs = partials
            .iter_mut()
            .zip(grad_spans.iter_mut().map(Option::take));
        let jobs = jobs
            .zip(loss_spans.iter_mut().map(Option::take))
            .enumerate();
        jobs.collect::<Vec<_>>()
            .into_par_iter()
            .with_min_len(min_len)
            .for_each(job);
        if let Some(loss) = scalar_loss {
            // The partials in unit order: loss-cpu's order, hence loss-cpu's bits.
            let total = partials.iter().fold(0.0, |a, p| a + p.0);
            let denominator = if d_in_jobs {
                partials.iter().fold(0.0, |a, p| a + p.1)
            } else {
                denominator
            };
            loss[0] = plan.reduce(total, denominator);
        }
    }

    fn dispatch(
        &self,
        problem: &Problem<'_>,
        loss: Option<&mut [f32]>,
        grad: Option<(&[f32], &mut [f32])>,
    ) -> Result<()> {
        let parallel = self.parallel(problem, grad.is_some());
        // The split path's bits depend only on the shape and on `split_gradients`, never on the
        // thread count.
        if split::splits_rows(problem) && (grad.is_none() || self.split_gradients) {
            self.in_pool(parallel, || split::run(problem, parallel, loss, grad));
            return Ok(());
        }
        if !parallel {
            // The sequential block path is loss-cpu's own loop: call it, with no bookkeeping.
            let cpu = loss_cpu::CpuBackend::new();
            return match (loss, grad) {
                (Some(l), Some((g, out))) => cpu.forward_backward_into(problem, g, l, out),
                (Some(l), None) => cpu.forward_into(problem, l),
                (None, Some((g, out))) => cpu.backward_into(problem, g, out),
                (None, None) => Ok(()),
            };
        }
        self.in_pool(true, || self.units(problem, loss, grad));
        Ok(())
    }
}

impl RayonBackend {
    /// The staged rows (extensions, half probabilities, LSE and z outputs) or the widened units
    /// (half logits or gradients, nothing else): loss-cpu's unit functions on the pool, on the
    /// per-unit outputs of [`Plan::staged_call`], their partials added in unit order (loss-cpu's
    /// order, hence its bits).
    fn by_units(&self, problem: &Problem<'_>, plan: &Plan<'_>, staged: bool, out: Outputs<'_>) {
        let mut call = plan.staged_call(out);
        let fast = call.fast_plan(plan);
        let mut partials = vec![StagedPartial::default(); plan.units()];
        let span = plan.unit_logits(0).len().max(1);
        let min_len = MIN_TASK_LOGITS.div_ceil(span).max(1);
        let logits = problem.logits();
        self.pool.install(|| {
            partials
                .par_iter_mut()
                .zip(call.units.par_iter_mut())
                .enumerate()
                .with_min_len(min_len)
                .for_each(|(u, (p, o))| {
                    let (x, o) = (logits.slice(plan.unit_logits(u)), std::mem::take(o));
                    *p = if staged {
                        plan.staged_unit(u, x, o)
                    } else {
                        fast.widened_unit(u, x, o)
                    };
                });
        });
        call.finish(&partials);
    }
}

impl LossBackend for RayonBackend {
    fn name(&self) -> &str {
        "rayon"
    }

    fn compute(&self, problem: &Problem<'_>, mut out: Outputs<'_>) -> Result<()> {
        let wants_grad = out.grad.is_some();
        let plan = Plan::new(problem);
        let route = plan.route_of(problem.logits().dtype(), &out);
        let plain = route == Route::Plain;
        let staged = route == Route::Staged;
        if !plain || self.as_cpu(problem, wants_grad) {
            if plain || !self.parallel(problem, wants_grad) {
                return loss_cpu::CpuBackend::new().compute(problem, out);
            }
            problem.check_outputs(&out)?;
            self.by_units(problem, &plan, staged, out);
            return Ok(());
        }
        problem.check_outputs(&out)?;
        let loss = out.loss.take();
        let mut grad = out.grad.take();
        let grad = grad.as_mut().map(|g| {
            let buf = g.grad.as_f32_mut().expect("an f32 gradient buffer");
            (g.grad_output, buf)
        });
        if loss.is_none() && grad.is_none() {
            return Ok(());
        }
        self.dispatch(problem, loss, grad)
    }
}

/// This crate's version, for reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
