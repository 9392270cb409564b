//! Benchmark inputs and their reference answers.
//!
//! Inputs are pseudo-random from a seed (the same cell gives the same bits on every machine):
//! logits uniform in `[-6, 6)`, targets uniform over the classes, weights uniform in `[0.5, 1.5)`.
//! The reference answer is computed once per cell, in row chunks so that no `f64` copy of a
//! large input is ever held, and every backend's output is compared with it before it is timed.

use loss_core::conformance::Tolerance;
use loss_core::reference;
use loss_core::{LossOptions, Problem, Reduction, Target};

pub use loss_core::rng::Rng;

/// The inputs of one grid cell: `(batch, classes)` logits with index targets.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `[N, C]`.
    pub shape: [usize; 2],
    /// `[N]`.
    pub target_shape: [usize; 1],
    /// Flat logits.
    pub logits: Vec<f32>,
    /// One class per row.
    pub targets: Vec<i64>,
    /// Class weights, when weighted.
    pub weight: Option<Vec<f32>>,
    /// The reduction.
    pub reduction: Reduction,
}

impl Workload {
    /// Generates a cell's inputs.
    pub fn generate(
        batch: usize,
        classes: usize,
        weighted: bool,
        reduction: Reduction,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed ^ ((batch as u64) << 32) ^ classes as u64);
        let logits = (0..batch * classes)
            .map(|_| rng.unit() * 12.0 - 6.0)
            .collect();
        let targets = (0..batch)
            .map(|_| (rng.next_u64() % classes as u64) as i64)
            .collect();
        let weight = weighted.then(|| (0..classes).map(|_| 0.5 + rng.unit()).collect());
        Workload {
            shape: [batch, classes],
            target_shape: [batch],
            logits,
            targets,
            weight,
            reduction,
        }
    }

    /// The problem over these logits.
    pub fn problem(&self) -> Problem<'_> {
        self.problem_on(&self.logits)
    }

    /// The same problem over another copy of the logits (for rotating inputs).
    ///
    /// # Panics
    /// If `logits` has the wrong length (a harness bug, not an input error).
    pub fn problem_on<'a>(&'a self, logits: &'a [f32]) -> Problem<'a> {
        let options = LossOptions::new()
            .maybe_weight(self.weight.as_deref())
            .reduction(self.reduction);
        let target = Target::Indices {
            data: &self.targets,
            shape: &self.target_shape,
        };
        Problem::new(logits, &self.shape, target, options).expect("generated workloads are valid")
    }

    /// The upstream gradient the harness uses: all ones, of the loss's length.
    pub fn upstream(&self) -> Vec<f32> {
        vec![1.0; self.problem().loss_len()]
    }

    /// Bytes of logits.
    pub fn bytes(&self) -> usize {
        self.logits.len() * 4
    }
}

/// The reference's answer for a workload and upstream gradient.
#[derive(Debug, Clone)]
pub struct ReferenceAnswer {
    /// The loss, in `f64`.
    pub loss: Vec<f64>,
    /// The gradient, rounded to `f32` (an error of at most half an ulp, far inside any tolerance),
    /// or empty when not asked for.
    pub grad: Vec<f32>,
}

/// Rows per reference chunk: about 4M logits.
fn chunk_rows(classes: usize) -> usize {
    ((4 << 20) / classes.max(1)).max(1)
}

/// Computes the reference answer row chunk by row chunk.
pub fn reference_answer(w: &Workload, upstream: &[f32], with_grad: bool) -> ReferenceAnswer {
    let full = w.problem();
    let [batch, classes] = w.shape;
    let denominator = reference::mean_denominator(&full);
    let mut losses = Vec::with_capacity(full.loss_len());
    let mut total = 0.0f64;
    let mut grad = if with_grad {
        Vec::with_capacity(w.logits.len())
    } else {
        Vec::new()
    };
    let rows = chunk_rows(classes);
    let chunk_reduction = match w.reduction {
        Reduction::None => Reduction::None,
        Reduction::Sum | Reduction::Mean => Reduction::Sum,
    };
    let scale = match w.reduction {
        Reduction::None => 1.0,
        Reduction::Sum => f64::from(upstream[0]),
        Reduction::Mean => f64::from(upstream[0]) / denominator,
    };
    for start in (0..batch).step_by(rows) {
        let end = (start + rows).min(batch);
        let logits = &w.logits[start * classes..end * classes];
        let shape = [end - start, classes];
        let tshape = [end - start];
        let options = LossOptions::new()
            .maybe_weight(w.weight.as_deref())
            .reduction(chunk_reduction);
        let target = Target::Indices {
            data: &w.targets[start..end],
            shape: &tshape,
        };
        let sub = Problem::new(logits, &shape, target, options).expect("chunk of a valid problem");
        let x: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        let l = reference::forward_f64(&sub, &x);
        match w.reduction {
            Reduction::None => losses.extend_from_slice(&l),
            Reduction::Sum | Reduction::Mean => total += l[0],
        }
        if with_grad {
            let up: Vec<f64> = match w.reduction {
                Reduction::None => upstream[start..end].iter().map(|&g| f64::from(g)).collect(),
                _ => vec![scale],
            };
            grad.extend(
                reference::backward_f64(&sub, &x, &up)
                    .into_iter()
                    .map(|g| g as f32),
            );
        }
    }
    match w.reduction {
        Reduction::None => {}
        Reduction::Sum => losses.push(total),
        Reduction::Mean => losses.push(total / denominator),
    }
    ReferenceAnswer { loss: losses, grad }
}

/// The largest `|got − ref| / (|ref| + atol/rtol)` (`f64::MAX` for a non-finite mismatch), and
/// whether every element is within `tol`.
pub fn agreement(pairs: impl IntoIterator<Item = (f64, f64)>, tol: Tolerance) -> (f64, bool) {
    let floor = tol.atol / tol.rtol;
    let mut worst = 0.0f64;
    let mut agrees = true;
    for (got, expected) in pairs {
        agrees &= tol.allows(got, expected);
        let err = if tol.excess(got, expected).is_infinite() {
            f64::INFINITY
        } else {
            (got - expected).abs() / (expected.abs() + floor)
        };
        worst = worst.max(err);
    }
    // JSON has no infinity: a non-finite mismatch is written as the largest finite double.
    (worst.min(f64::MAX), agrees)
}
