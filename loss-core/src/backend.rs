//! The [`LossBackend`] trait: what every compute backend provides.

use crate::error::Result;
use crate::problem::{Outputs, Problem, ProblemData};
use crate::tolerance::Tolerance;

/// A cross-entropy implementation. Object safe: the harness holds `Box<dyn LossBackend>`.
///
/// Two methods are required: [`LossBackend::name`] and [`LossBackend::compute`], which writes
/// whatever an [`Outputs`] asks for (loss, per-position LSE, z-loss part, gradient in `f32` or in
/// a half type) from as few passes over the logits as the backend can manage. The forward,
/// backward and fused entry points are thin wrappers over it.
///
/// Contract for every method:
/// - The buffers are checked first ([`Problem::check_loss_buffer`], [`Problem::check_backward`]);
///   a wrong length is a [`crate::LossError::ShapeMismatch`] and nothing is written.
/// - `loss` has [`Problem::loss_len`] values: one per position for `none`, else one.
/// - `grad_output` is the upstream gradient, of the loss's length: one value for sum and mean,
///   one per position for none. `grad` receives `∂(Σ loss·grad_output)/∂logits`, laid out like
///   the logits.
/// - A feature the backend lacks is a [`crate::LossError::Unsupported`], never a silent
///   fallback to another backend.
/// - The same input gives the same bits on every call.
pub trait LossBackend: Send + Sync {
    /// Short stable name for reports and flags (`reference`, `cpu`, `rayon`, `wgpu`, …).
    fn name(&self) -> &str;

    /// Writes every output `out` requests. Checks the buffers first
    /// ([`Problem::check_outputs`]); a combination the backend cannot do is a
    /// [`crate::LossError::Unsupported`] (nothing written).
    fn compute(&self, problem: &Problem<'_>, out: Outputs<'_>) -> Result<()>;

    /// Writes the loss into `loss`.
    fn forward_into(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<()> {
        self.compute(problem, Outputs::new().loss(loss))
    }

    /// Writes the gradient with respect to the logits (in `f32`), for upstream gradient
    /// `grad_output`.
    fn backward_into(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
        grad: &mut [f32],
    ) -> Result<()> {
        self.compute(problem, Outputs::new().grad(grad_output, grad))
    }

    /// Writes the loss and the gradient (in `f32`) in one call.
    fn forward_backward_into(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
        loss: &mut [f32],
        grad: &mut [f32],
    ) -> Result<()> {
        self.compute(problem, Outputs::new().loss(loss).grad(grad_output, grad))
    }

    /// The loss, in a new vector.
    fn forward(&self, problem: &Problem<'_>) -> Result<Vec<f32>> {
        let mut loss = vec![0.0; problem.loss_len()];
        self.forward_into(problem, &mut loss)?;
        Ok(loss)
    }

    /// The gradient, in a new vector.
    fn backward(&self, problem: &Problem<'_>, grad_output: &[f32]) -> Result<Vec<f32>> {
        problem.check_grad_output(grad_output)?;
        let mut grad = vec![0.0; problem.len()];
        self.backward_into(problem, grad_output, &mut grad)?;
        Ok(grad)
    }

    /// The loss and the gradient, in new vectors.
    fn forward_backward(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        problem.check_grad_output(grad_output)?;
        let mut loss = vec![0.0; problem.loss_len()];
        let mut grad = vec![0.0; problem.len()];
        self.forward_backward_into(problem, grad_output, &mut loss, &mut grad)?;
        Ok((loss, grad))
    }

    /// The tolerance this backend is checked with, given a vector file's tolerance. The default
    /// keeps the file's; a backend that loosens it documents why (e.g. the accuracy of a
    /// device's `exp`).
    fn tolerance(&self, file: Tolerance) -> Tolerance {
        file
    }

    /// Whether the loss this backend writes is rounded to the logits' element type (as PyTorch
    /// returns a half loss for half logits); `false` (the default) for an `f32` loss, as the
    /// specification asks. The conformance kit holds such a loss to the half type's tolerance.
    fn loss_in_logits_type(&self) -> bool {
        false
    }

    /// Runs unvalidated problem data through this backend's own entry point for raw input, if it
    /// has one besides the trait's (which takes validated [`Problem`]s): loss-cpu's in-place
    /// call, say. `None` (the default) when it has none. The test kit sends malformed data
    /// through it, which must come back as the same typed error validation gives.
    fn solve_raw(&self, data: &ProblemData) -> Option<Result<()>> {
        let _ = data;
        None
    }
}

/// Forwards every method of the trait to the backend behind a pointer, so that `Box<B>`,
/// `Arc<B>` and `&B` are backends wherever `B` is (`B` may be `dyn LossBackend`).
macro_rules! forward_backend_impl {
    ($($ptr:ty),*) => {$(
        impl<B: LossBackend + ?Sized> LossBackend for $ptr {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn compute(&self, problem: &Problem<'_>, out: Outputs<'_>) -> Result<()> {
                (**self).compute(problem, out)
            }
            fn forward_into(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<()> {
                (**self).forward_into(problem, loss)
            }
            fn backward_into(
                &self,
                problem: &Problem<'_>,
                grad_output: &[f32],
                grad: &mut [f32],
            ) -> Result<()> {
                (**self).backward_into(problem, grad_output, grad)
            }
            fn forward_backward_into(
                &self,
                problem: &Problem<'_>,
                grad_output: &[f32],
                loss: &mut [f32],
                grad: &mut [f32],
            ) -> Result<()> {
                (**self).forward_backward_into(problem, grad_output, loss, grad)
            }
            fn tolerance(&self, file: Tolerance) -> Tolerance {
                (**self).tolerance(file)
            }
            fn loss_in_logits_type(&self) -> bool {
                (**self).loss_in_logits_type()
            }
            fn solve_raw(&self, data: &ProblemData) -> Option<Result<()>> {
                (**self).solve_raw(data)
            }
        }
    )*};
}

forward_backend_impl!(Box<B>, std::sync::Arc<B>, &B);
