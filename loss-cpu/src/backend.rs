//! [`CpuBackend`]: the [`LossBackend`] over the [`kernel`](crate::kernel) units, in order.

use loss_core::{
    LossBackend, LossOptions, Problem, ProblemData, Reduction, Result, Target, TargetData,
};

use crate::kernel::Plan;

/// The single-threaded fused SIMD backend (`name() == "cpu"`).
///
/// The `_into` methods allocate nothing: they walk the [`Plan`]'s units in order and add their
/// `f64` partials in that order (which is what makes a threaded caller bit-identical).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// A new backend.
    pub fn new() -> Self {
        CpuBackend
    }

    /// Loss and gradient in one pass, the gradient written over `logits` (no `N×C` buffer).
    /// `logits`, `shape`, `target` and `options` are as for [`Problem::new`], and are validated
    /// the same way (nothing is written on error); `grad_output` and `loss` have
    /// [`Problem::loss_len`] values. The result equals [`LossBackend::forward_backward_into`]'s
    /// bit for bit, but for the payload of a NaN (the two are compiled separately).
    pub fn forward_backward_in_place(
        &self,
        logits: &mut [f32],
        shape: &[usize],
        target: Target<'_>,
        options: LossOptions<'_>,
        grad_output: &[f32],
        loss: &mut [f32],
    ) -> Result<()> {
        let layout = {
            let problem = Problem::new(&*logits, shape, target, options)?;
            problem.check_loss_buffer(loss)?;
            problem.check_grad_output(grad_output)?;
            problem.layout()
        };
        let target = match target {
            Target::Indices { data, .. } => TargetData::Indices(data),
            Target::Probs { data, .. } => TargetData::Probs(data),
        };
        let plan = Plan::from_parts(layout, target, options);
        let denominator = mean_denominator(&plan);
        let scale = plan.grad_scale(grad_output, denominator);
        let none = plan.reduction() == Reduction::None;
        let mut total = 0.0;
        for unit in 0..plan.units() {
            let span = plan.unit_logits(unit);
            let losses = none.then(|| &mut loss[plan.unit_positions(unit)]);
            total += plan.fused_unit_in_place(unit, &mut logits[span], scale, losses);
        }
        if !none {
            loss[0] = plan.reduce(total, denominator);
        }
        Ok(())
    }
}

/// `D` when the reduction is a mean (the cheap O(P) pass that must precede a fused mean
/// gradient); unused otherwise.
fn mean_denominator(plan: &Plan<'_>) -> f64 {
    if plan.reduction() == Reduction::Mean {
        plan.mean_denominator()
    } else {
        f64::NAN
    }
}

impl LossBackend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    /// [`CpuBackend::forward_backward_in_place`], which takes unvalidated parts.
    fn solve_raw(&self, data: &ProblemData) -> Option<Result<()>> {
        let mut logits = data.logits.clone();
        // The loss's length as the shape claims it (validation judges the shape itself).
        let loss_len = match (data.reduction, data.shape.as_slice()) {
            (Reduction::None, [n, _, rest @ ..]) => rest.iter().product::<usize>() * n,
            _ => 1,
        };
        let upstream = vec![1.0f32; loss_len];
        let mut loss = vec![0.0f32; loss_len];
        Some(self.forward_backward_in_place(
            &mut logits,
            &data.shape,
            data.target(),
            data.options(),
            &upstream,
            &mut loss,
        ))
    }

    fn forward_into(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<()> {
        problem.check_loss_buffer(loss)?;
        let plan = Plan::new(problem);
        let logits = problem.logits();
        let none = plan.reduction() == Reduction::None;
        let mut total = 0.0;
        for unit in 0..plan.units() {
            let x = &logits[plan.unit_logits(unit)];
            let losses = none.then(|| &mut loss[plan.unit_positions(unit)]);
            total += plan.forward_unit(unit, x, losses);
        }
        if !none {
            loss[0] = plan.reduce(total, mean_denominator(&plan));
        }
        Ok(())
    }

    fn backward_into(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
        grad: &mut [f32],
    ) -> Result<()> {
        problem.check_backward(grad_output, grad)?;
        let plan = Plan::new(problem);
        let scale = plan.grad_scale(grad_output, mean_denominator(&plan));
        let logits = problem.logits();
        for unit in 0..plan.units() {
            let span = plan.unit_logits(unit);
            plan.fused_unit(unit, &logits[span.clone()], scale, None, &mut grad[span]);
        }
        Ok(())
    }

    fn forward_backward_into(
        &self,
        problem: &Problem<'_>,
        grad_output: &[f32],
        loss: &mut [f32],
        grad: &mut [f32],
    ) -> Result<()> {
        problem.check_loss_buffer(loss)?;
        problem.check_backward(grad_output, grad)?;
        let plan = Plan::new(problem);
        let denominator = mean_denominator(&plan);
        let scale = plan.grad_scale(grad_output, denominator);
        let logits = problem.logits();
        let none = plan.reduction() == Reduction::None;
        let mut total = 0.0;
        for unit in 0..plan.units() {
            let span = plan.unit_logits(unit);
            let losses = none.then(|| &mut loss[plan.unit_positions(unit)]);
            total += plan.fused_unit(unit, &logits[span.clone()], scale, losses, &mut grad[span]);
        }
        if !none {
            loss[0] = plan.reduce(total, denominator);
        }
        Ok(())
    }
}
