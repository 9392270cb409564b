//! [`CpuBackend`]: the [`LossBackend`] over the [`kernel`](crate::kernel) units, in order.

use loss_core::{
    DType, Elems, LossBackend, LossOptions, Outputs, OwnedElems, Problem, ProblemData, Reduction,
    Result, Target, TargetData,
};

use crate::kernel::{Plan, Route, StagedPartial};

/// The single-threaded fused SIMD backend (`name() == "cpu"`).
///
/// `f32` problems allocate nothing: the `_into` methods walk the [`Plan`]'s units in order and
/// add their `f64` partials in that order (which is what makes a threaded caller
/// bit-identical). Half logits and the extensions take the widened units or the staged rows
/// ([routes](crate::kernel#half-logits-and-the-extensions), per-thread scratch), over the same
/// units and in the same order.
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
        let (layout, route) = {
            let problem = Problem::new(&*logits, shape, target, options)?;
            problem.check_loss_buffer(loss)?;
            problem.check_grad_output(grad_output)?;
            let route = Plan::new(&problem).route(DType::F32, Some(DType::F32), false);
            (problem.layout(), route)
        };
        if route != Route::Plain {
            // The same route as `compute` takes; the staged rows read the logits while they
            // write the gradient, so from a copy.
            let copy = logits.to_vec();
            let problem = Problem::new(&copy, shape, target, options)?;
            return self.compute(
                &problem,
                Outputs::new().loss(loss).grad(grad_output, &mut *logits),
            );
        }
        let target = match target {
            Target::Indices { data, .. } => TargetData::Indices(data),
            Target::Probs { data, .. } => TargetData::Probs(data),
        };
        let (plan, denominator) = Plan::from_parts(layout, target, options).ready();
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

impl LossBackend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    /// [`CpuBackend::forward_backward_in_place`], which takes unvalidated parts (`f32` logits:
    /// half data has no raw entry point here).
    fn solve_raw(&self, data: &ProblemData) -> Option<Result<()>> {
        let mut logits = match &data.logits {
            OwnedElems::F32(x) => x.clone(),
            _ => return None,
        };
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

    fn compute(&self, problem: &Problem<'_>, mut out: Outputs<'_>) -> Result<()> {
        problem.check_outputs(&out)?;
        let plan = Plan::new(problem);
        let logits = match (
            plan.route_of(problem.logits().dtype(), &out),
            problem.logits(),
        ) {
            (Route::Plain, Elems::F32(x)) => x,
            // Extensions, half probabilities, the LSE or z outputs: the staged rows; half logits
            // or a half gradient, nothing else: the plain kernels on widened units. Both on the
            // same per-unit outputs, their partials added in unit order.
            (route, logits) => {
                let staged = route == Route::Staged;
                let mut call = plan.staged_call(out);
                let fast = call.fast_plan(&plan);
                let partials: Vec<StagedPartial> = (0..plan.units())
                    .zip(call.units.iter_mut())
                    .map(|(u, o)| {
                        let (x, o) = (logits.slice(plan.unit_logits(u)), std::mem::take(o));
                        if staged {
                            plan.staged_unit(u, x, o)
                        } else {
                            fast.widened_unit(u, x, o)
                        }
                    })
                    .collect();
                call.finish(&partials);
                return Ok(());
            }
        };
        let loss = out.loss.take();
        let grad = out.grad.take();
        match (loss, grad) {
            (None, None) => Ok(()),
            (Some(loss), None) => {
                forward(&plan, logits, loss);
                Ok(())
            }
            (loss, Some(mut g)) => {
                let grad = g.grad.as_f32_mut().expect("an f32 gradient buffer");
                fused(&plan, logits, g.grad_output, loss, grad);
                Ok(())
            }
        }
    }
}

/// The plain forward pass over the units, in order.
fn forward(plan: &Plan<'_>, logits: &[f32], loss: &mut [f32]) {
    let (plan, denominator) = plan.ready();
    let plan = &plan;
    let none = plan.reduction() == Reduction::None;
    let mut total = 0.0;
    for unit in 0..plan.units() {
        let x = &logits[plan.unit_logits(unit)];
        let losses = none.then(|| &mut loss[plan.unit_positions(unit)]);
        total += plan.forward_unit(unit, x, losses);
    }
    if !none {
        loss[0] = plan.reduce(total, denominator);
    }
}

/// The plain fused pass (the loss when `loss` is given) over the units, in order.
fn fused(
    plan: &Plan<'_>,
    logits: &[f32],
    grad_output: &[f32],
    mut loss: Option<&mut [f32]>,
    grad: &mut [f32],
) {
    let (plan, denominator) = plan.ready();
    let plan = &plan;
    let scale = plan.grad_scale(grad_output, denominator);
    let none = plan.reduction() == Reduction::None;
    let mut total = 0.0;
    for unit in 0..plan.units() {
        let span = plan.unit_logits(unit);
        let losses = match loss.as_deref_mut() {
            Some(l) if none => Some(&mut l[plan.unit_positions(unit)]),
            _ => None,
        };
        total += plan.fused_unit(unit, &logits[span.clone()], scale, losses, &mut grad[span]);
    }
    if let Some(l) = loss
        && !none
    {
        l[0] = plan.reduce(total, denominator);
    }
}
