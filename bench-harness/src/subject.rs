//! A configuration made ready to time: a backend instance on a cell, for one operation and
//! variant, its first call made and its outputs checked.
//!
//! `run`, the `ab` worker and `--counts` all time through [`Ready`], so the three judge exactly
//! the same calls.

use std::time::Duration;

use loss_core::conformance::DEFAULT_TOLERANCE;
use loss_core::{LossBackend, LossError, Outputs, OwnedElems, Problem, ResidentProblem};

use crate::cells::{Cell, Check, digest};
use crate::error::{Error, Result};
use crate::instances::{Instance, Variant};
use crate::schema::Op;
use crate::timing::{self, Calibration, Round, Timed, TimingBudget};

/// A timed subject whose outputs can be read back after a call.
pub trait Subject: Timed {
    /// The loss and gradient of the last call (the gradient read back from a device when it
    /// lives there).
    fn outputs(&mut self) -> Result<(&[f32], &[f32]), LossError>;
}

/// End to end: host slices through the trait's `compute`, rotating over the copies; the
/// gradient is written in the logits' element type (PyTorch's behaviour).
struct HostSubject<'a> {
    backend: &'a dyn LossBackend,
    problems: Vec<Problem<'a>>,
    upstream: &'a [f32],
    loss: Vec<f32>,
    grad: OwnedElems,
    /// The gradient widened, for the checks (filled by `outputs`, never timed).
    grad_f32: Vec<f32>,
    op: Op,
}

impl Timed for HostSubject<'_> {
    fn call(&mut self, rep: usize) -> Result<(), LossError> {
        let p = &self.problems[rep % self.problems.len()];
        let out = match self.op {
            Op::Forward => Outputs::new().loss(&mut self.loss),
            Op::Backward => Outputs::new().grad(self.upstream, self.grad.view_mut()),
            Op::ForwardBackward => Outputs::new()
                .loss(&mut self.loss)
                .grad(self.upstream, self.grad.view_mut()),
        };
        self.backend.compute(p, out)
    }
}

impl Subject for HostSubject<'_> {
    fn outputs(&mut self) -> Result<(&[f32], &[f32]), LossError> {
        self.grad_f32 = self.grad.to_f32_vec();
        Ok((&self.loss, &self.grad_f32))
    }
}

/// Resident: the problem uploaded once; forward reads back the loss, backward leaves the
/// gradient on the device (synchronised), forward+backward reads back the loss only.
struct ResidentSubject<'a> {
    resident: Box<dyn ResidentProblem>,
    upstream: &'a [f32],
    loss: Vec<f32>,
    grad: Vec<f32>,
    op: Op,
}

impl Timed for ResidentSubject<'_> {
    fn call(&mut self, _rep: usize) -> Result<(), LossError> {
        match self.op {
            Op::Forward => self.resident.forward_into(&mut self.loss),
            Op::Backward => self.resident.backward(self.upstream),
            Op::ForwardBackward => self
                .resident
                .forward_backward_into(self.upstream, &mut self.loss),
        }
    }
    fn device_ns(&self) -> Option<f64> {
        self.resident.last_gpu_ns()
    }
}

impl Subject for ResidentSubject<'_> {
    fn outputs(&mut self) -> Result<(&[f32], &[f32]), LossError> {
        if self.op != Op::Forward {
            self.resident.read_grad(&mut self.grad)?;
        }
        Ok((&self.loss, &self.grad))
    }
}

/// A configuration after its first call.
pub struct Ready<'a> {
    /// What is timed.
    pub subject: Box<dyn Subject + 'a>,
    /// The first call's outputs against the reference (when the cell has it); otherwise only
    /// the digest is meaningful (`agrees` true, error 0).
    pub check: Check,
    /// How long the first call took (with the upload, for a resident subject).
    pub first_call: Duration,
    /// The next repetition number.
    pub rep: usize,
}

impl Ready<'_> {
    /// Times `calls` calls; ns per call.
    pub fn sample(&mut self, calls: usize) -> Result<f64, LossError> {
        timing::sample(self.subject.as_mut(), calls, &mut self.rep)
    }
}

/// Builds the subject of `instance` on `cell` for `op` and `variant`, makes its first call,
/// checks the call against the budget, and checks (or, without a reference, fingerprints) its
/// outputs.
pub fn ready<'a>(
    cell: &'a Cell,
    instance: &'a Instance,
    variant: Variant,
    op: Op,
    budget: TimingBudget,
) -> Result<Ready<'a>> {
    let w = &cell.workload;
    let loss = vec![0.0f32; w.problem().loss_len()];
    let grad = vec![0.0f32; w.logits.len()];
    let typed_grad = OwnedElems::zeros(w.logits.dtype(), w.logits.len());
    let start = std::time::Instant::now();
    let mut subject: Box<dyn Subject + 'a> = match variant {
        Variant::EndToEnd => Box::new(HostSubject {
            backend: instance.built.backend.as_ref(),
            problems: cell
                .rotations()
                .into_iter()
                .map(|l| w.problem_on(l))
                .collect(),
            upstream: &cell.upstream,
            loss,
            grad: typed_grad,
            grad_f32: grad,
            op,
        }),
        Variant::Resident => {
            let device = instance.built.device.as_ref().ok_or_else(|| {
                Error::Usage(format!("{} is not a device backend", instance.name))
            })?;
            Box::new(ResidentSubject {
                resident: device.upload(&w.problem())?,
                upstream: &cell.upstream,
                loss,
                grad,
                op,
            })
        }
    };
    subject.call(0)?;
    let first_call = start.elapsed();
    budget.check_call(first_call)?;
    let tol = instance.built.backend.tolerance(DEFAULT_TOLERANCE);
    let (l, g) = subject.outputs()?;
    let check = if cell.answer.is_some() {
        cell.check(op, l, g, tol)
    } else {
        Check {
            max_rel_error: 0.0,
            agrees: true,
            digest: digest(op, l, g),
        }
    };
    Ok(Ready {
        subject,
        check,
        first_call,
        rep: 1,
    })
}

/// One round of one configuration in this process: ready it (checking its outputs against the
/// reference when the cell has it, fingerprinting them otherwise), one timed call to size the
/// samples, then [`round_of`].
pub fn measure_round(
    cell: &Cell,
    instance: &Instance,
    variant: Variant,
    op: Op,
    budget: TimingBudget,
) -> Result<(Check, Round)> {
    let mut ready = ready(cell, instance, variant, op, budget)?;
    let one = timing::one_call(ready.subject.as_mut(), &mut ready.rep)?;
    let round = round_of(&mut ready, cell, instance, op, budget, one)?;
    Ok((ready.check, round))
}

/// Times one round of a ready configuration whose single call took `one`: samples interleaved
/// with the calibration kernel (host backends; device backends have none).
pub fn round_of(
    ready: &mut Ready<'_>,
    cell: &Cell,
    instance: &Instance,
    op: Op,
    budget: TimingBudget,
    one: std::time::Duration,
) -> Result<Round> {
    budget.check_call(one)?;
    let calls = TimingBudget::calls_per_sample(one);
    if instance.built.device.is_some() {
        let mut round = Round {
            device: Vec::new(),
            samples: Vec::new(),
            calibration: Vec::new(),
            calls: 0,
            cpu_wall: Default::default(),
        };
        let target = budget.target / budget.rounds.max(1) as u32;
        let start = std::time::Instant::now();
        while round.samples.len() < budget.min_samples
            || (round.samples.len() < budget.max_samples && start.elapsed() < target)
        {
            let s = round.cpu_wall.measure(|| ready.sample(calls))?;
            round.samples.push(s);
            round.device.extend(ready.subject.device_ns());
            round.calls += calls;
        }
        Ok(round)
    } else {
        let mut calib = Calibration::new(cell.calibration_sources(), op, instance.threads);
        Ok(timing::time_round(
            budget,
            ready.subject.as_mut(),
            &mut calib,
            calls,
            &mut ready.rep,
        )?)
    }
}
