//! A backend that disagrees with the reference is flagged and never counted as fastest.

use bench_harness::backends::Built;
use bench_harness::cells::{Cell, CellSpec};
use bench_harness::instances::{Instance, Variant};
use bench_harness::schema::{Op, fastest};
use bench_harness::subject::measure_round;
use bench_harness::timing::TimingBudget;
use loss_core::{LossBackend, Outputs, Problem, Reduction, ReferenceBackend, Result};

/// The reference, but its loss is 1% too large: fast and wrong.
struct Skewed;

impl LossBackend for Skewed {
    fn name(&self) -> &str {
        "skewed"
    }
    fn compute(&self, problem: &Problem<'_>, mut out: Outputs<'_>) -> Result<()> {
        let loss = out.loss.take();
        ReferenceBackend.compute(problem, out)?;
        if let Some(loss) = loss {
            ReferenceBackend.forward_into(problem, loss)?;
            loss.iter_mut().for_each(|l| *l *= 1.01);
        }
        Ok(())
    }
}

fn instance(name: &str, built: Built) -> Instance {
    Instance {
        name: name.into(),
        threads: 1,
        built,
    }
}

#[test]
fn disagreeing_backend_is_flagged_and_never_fastest() {
    let spec = CellSpec::plain(8, 50, true, Reduction::Mean, 3);
    let cell = Cell::new(spec, true, true);
    let budget = TimingBudget::for_run(true);
    let skewed = instance("skewed", Built::host(Skewed));
    let reference = instance("reference", Built::host(ReferenceBackend));
    let (bad, _) = measure_round(&cell, &skewed, Variant::EndToEnd, Op::Forward, budget).unwrap();
    let (good, _) =
        measure_round(&cell, &reference, Variant::EndToEnd, Op::Forward, budget).unwrap();
    assert!(!bad.agrees && bad.max_rel_error > 1e-3);
    assert!(good.agrees);
    // The gradient is right: backward agrees, and its fingerprint differs from forward's.
    let (grad, _) = measure_round(&cell, &skewed, Variant::EndToEnd, Op::Backward, budget).unwrap();
    assert!(grad.agrees && grad.digest != bad.digest);

    // Even when it is far faster, the wrong backend does not win.
    let row = |backend: &str, agrees: bool, eps: f64| bench_harness::schema::CellResult {
        backend: backend.into(),
        variant: String::new(),
        op: Op::Forward,
        batch: 8,
        classes: 50,
        dtype: "f32".into(),
        threads: 1,
        elements: 400,
        median_ns: 1.0,
        min_ns: 1.0,
        spread: 0.0,
        reps: 1,
        elements_per_second: eps,
        bytes_per_second: 0.0,
        bandwidth_gbps: 1.0,
        bandwidth_fraction: 0.0,
        gpu_median_ns: None,
        gpu_bandwidth_fraction: None,
        in_cache: true,
        over_ceiling: false,
        max_rel_error: 0.0,
        agrees,
        rounds: Vec::new(),
        calibrated: None,
        counts: None,
        cpu_per_wall: None,
        honest: None,
        note: None,
    };
    let best = fastest(&[row("skewed", false, 100.0), row("reference", true, 1.0)]);
    assert_eq!(best.len(), 1);
    assert_eq!(best[0].backend, "reference");
    // Nor does a row that used more CPUs than its thread count.
    let greedy = bench_harness::schema::CellResult {
        cpu_per_wall: Some(1.96),
        honest: Some(false),
        ..row("greedy", true, 100.0)
    };
    let best = fastest(&[greedy, row("reference", true, 1.0)]);
    assert_eq!(best[0].backend, "reference");
}

#[test]
fn a_later_round_must_reproduce_the_bits() {
    let spec = CellSpec::plain(4, 30, false, Reduction::Sum, 5);
    let budget = TimingBudget::for_run(true);
    let cpu = instance("cpu", Built::host(loss_cpu::CpuBackend::new()));
    let with_reference = Cell::new(spec, true, true);
    let without = Cell::new(spec, false, false);
    for op in Op::ALL {
        let (a, _) = measure_round(&with_reference, &cpu, Variant::EndToEnd, op, budget).unwrap();
        let (b, round) = measure_round(&without, &cpu, Variant::EndToEnd, op, budget).unwrap();
        assert!(a.agrees && b.agrees);
        assert_eq!(a.digest, b.digest, "{op}");
        assert_eq!(round.samples.len(), round.calibration.len());
    }
}
