//! Benchmark inputs and their reference answers.
//!
//! Inputs are pseudo-random from a seed (the same cell gives the same bits on every machine):
//! logits uniform in `[-6, 6)`, targets uniform over the classes, weights uniform in `[0.5, 1.5)`.
//! The reference answer is computed once per cell, in row chunks so that no `f64` copy of a
//! large input is ever held, and every backend's output is compared with it before it is timed.

use loss_core::conformance::Tolerance;
use loss_core::reference;
use loss_core::{DType, Elems, LossOptions, OwnedElems, Problem, Reduction, Target};

use crate::cells::CellSpec;

pub use loss_core::rng::Rng;

/// The inputs of one grid cell: `(batch, classes)` logits with index targets.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `[N, C]`.
    pub shape: [usize; 2],
    /// `[N]`.
    pub target_shape: [usize; 1],
    /// Flat logits (in the cell's element type).
    pub logits: OwnedElems,
    /// One class per row.
    pub targets: Vec<i64>,
    /// Class weights, when weighted.
    pub weight: Option<Vec<f32>>,
    /// The reduction.
    pub reduction: Reduction,
    /// The z-loss coefficient (0: none).
    pub z_loss: f32,
    /// The soft-cap.
    pub softcap: Option<f32>,
    /// Position weights, uniform in `[0, 2)`.
    pub position_weight: Option<Vec<f32>>,
}

impl Workload {
    /// Generates a cell's inputs: the `f32` values of a plain cell, rounded to the cell's type
    /// (so that the same spec in `bf16` is the `f32` cell rounded).
    pub fn generate(spec: &CellSpec) -> Self {
        let (batch, classes, seed) = (spec.batch, spec.classes, spec.seed);
        let mut rng = Rng::new(seed ^ ((batch as u64) << 32) ^ classes as u64);
        let values: Vec<f32> = (0..batch * classes)
            .map(|_| rng.unit() * 12.0 - 6.0)
            .collect();
        let logits = OwnedElems::from_f32(spec.dtype, &values);
        let (weighted, reduction) = (spec.weighted, spec.reduction);
        let targets = (0..batch)
            .map(|_| (rng.next_u64() % classes as u64) as i64)
            .collect();
        let weight = weighted.then(|| (0..classes).map(|_| 0.5 + rng.unit()).collect());
        let position_weight = spec
            .position_weights
            .then(|| (0..batch).map(|_| 2.0 * rng.unit()).collect());
        Workload {
            shape: [batch, classes],
            target_shape: [batch],
            logits,
            targets,
            weight,
            reduction,
            z_loss: spec.z_loss.map_or(0.0, |z| z.0),
            softcap: spec.softcap.map(|a| a.0),
            position_weight,
        }
    }

    /// The options of the workload, with `reduction`.
    fn options(&self, reduction: Reduction) -> LossOptions<'_> {
        LossOptions::new()
            .maybe_weight(self.weight.as_deref())
            .reduction(reduction)
            .z_loss(self.z_loss)
            .softcap(self.softcap)
            .position_weight(self.position_weight.as_deref())
    }

    /// The problem over these logits.
    pub fn problem(&self) -> Problem<'_> {
        self.problem_on(self.logits.view())
    }

    /// The same problem over another copy of the logits (for rotating inputs).
    ///
    /// # Panics
    /// If `logits` has the wrong length (a harness bug, not an input error).
    pub fn problem_on<'a>(&'a self, logits: Elems<'a>) -> Problem<'a> {
        let options = self.options(self.reduction);
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
        self.logits.len() * self.logits.dtype().size()
    }
}

/// The tolerance of a gradient written in `dtype`: the file tolerance for `f32`, for a half type
/// at least the rtol of the vendored format-2 file's `grad_tolerance_by_dtype` (7.9e-3 for bf16,
/// 9.8e-4 for f16: just under 2⁻⁷ and 2⁻¹⁰, twice the types' rounding), keeping the file's atol.
pub fn grad_tolerance(dtype: DType, tol: Tolerance) -> Tolerance {
    let rtol = match dtype {
        DType::F32 => tol.rtol,
        DType::Bf16 => tol.rtol.max(7.9e-3),
        DType::F16 => tol.rtol.max(9.8e-4),
    };
    Tolerance::new(rtol, tol.atol)
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
    // The z part of a mean divides by V, not D: its gradient is the full one less the
    // cross-entropy's, from a second run without the z-loss.
    let z_on = w.z_loss > 0.0;
    let valid = loss_core::formula::valid_over(&full, 0..full.positions());
    let mut z_total = 0.0f64;
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
        let logits = w.logits.view().slice(start * classes..end * classes);
        let shape = [end - start, classes];
        let tshape = [end - start];
        let pw = w.position_weight.as_deref().map(|s| &s[start..end]);
        let options = w.options(chunk_reduction).position_weight(pw);
        let target = Target::Indices {
            data: &w.targets[start..end],
            shape: &tshape,
        };
        let sub = Problem::new(logits, &shape, target, options).expect("chunk of a valid problem");
        let x = logits.to_f64_vec();
        let mean_z = with_grad && z_on && w.reduction == Reduction::Mean;
        let up: Vec<f64> = match w.reduction {
            Reduction::None => upstream[start..end].iter().map(|&g| f64::from(g)).collect(),
            _ if mean_z => vec![1.0],
            _ => vec![scale],
        };
        let a = reference::answers_f64(&sub, &x, with_grad.then_some(up.as_slice()));
        match w.reduction {
            Reduction::None => losses.extend_from_slice(&a.loss),
            Reduction::Sum | Reduction::Mean => {
                total += a.loss[0] - a.z_loss[0];
                z_total += a.z_loss[0];
            }
        }
        if let Some(g) = a.grad {
            if mean_z {
                let ce_only = Problem::new(logits, &shape, target, options.z_loss(0.0))
                    .expect("chunk of a valid problem");
                let ce = reference::backward_f64(&ce_only, &x, &[1.0]);
                let g_out = f64::from(upstream[0]);
                grad.extend(g.iter().zip(&ce).map(|(&all, &ce)| {
                    (g_out / denominator * ce + g_out / valid * (all - ce)) as f32
                }));
            } else {
                grad.extend(g.into_iter().map(|g| g as f32));
            }
        }
    }
    if w.reduction != Reduction::None {
        let (loss, _) = loss_core::formula::reduce_with_z(
            w.reduction,
            total,
            z_total,
            denominator,
            valid,
            z_on,
        );
        losses.push(loss);
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
