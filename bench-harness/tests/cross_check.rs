//! A backend that disagrees with the reference is flagged and never counted as fastest.

use bench_harness::run::{Cell, Instance, RunOptions, TimingBudget, measure};
use bench_harness::schema::{Op, fastest};
use loss_core::{LossBackend, Problem, ReferenceBackend, Result};

/// The reference, but its loss is 1% too large: fast and wrong.
struct Skewed;

impl LossBackend for Skewed {
    fn name(&self) -> &str {
        "skewed"
    }
    fn forward_into(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<()> {
        ReferenceBackend.forward_into(problem, loss)?;
        loss.iter_mut().for_each(|l| *l *= 1.01);
        Ok(())
    }
    fn backward_into(&self, problem: &Problem<'_>, g: &[f32], grad: &mut [f32]) -> Result<()> {
        ReferenceBackend.backward_into(problem, g, grad)
    }
}

#[test]
fn disagreeing_backend_is_flagged_and_never_fastest() {
    let opts = RunOptions {
        quick: true,
        ..RunOptions::default()
    };
    let cell = Cell::new(&opts, 8, 50);
    let budget = TimingBudget::for_run(true);
    let skewed = Instance {
        backend: Box::new(Skewed),
        threads: 1,
        device: None,
    };
    let reference = Instance {
        backend: Box::new(ReferenceBackend),
        threads: 1,
        device: None,
    };
    let mut bad = measure(&cell, &skewed, Op::Forward, 10.0, budget).unwrap();
    let good = measure(&cell, &reference, Op::Forward, 10.0, budget).unwrap();
    assert!(!bad.agrees && bad.max_rel_error > 1e-3);
    assert!(good.agrees);
    // Even when it is far faster, the wrong backend does not win.
    bad.elements_per_second = good.elements_per_second * 100.0;
    let best = fastest(&[bad, good]);
    assert_eq!(best.len(), 1);
    assert_eq!(best[0].backend, "reference");
}
