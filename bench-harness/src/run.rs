//! `loss-bench run`: the cross-checked throughput grid.
//!
//! Every configuration (cell × backend instance × variant × op) is timed in
//! [`TimingBudget::rounds`] rounds, one pass over the whole grid per round, each round in a fresh
//! [`worker`] process ([`RunOptions::worker`]), so that the rounds of one configuration are
//! minutes apart in a long run and see the machine's drift, and see whatever holds for a whole
//! process (where its buffers land, how its threads are placed) vary as it varies between runs.
//! Round 0
//! computes each cell's reference answer and checks every configuration's outputs against it;
//! later rounds regenerate the same inputs and require the same output bits (a configuration
//! that does not reproduce them is reported as disagreeing). Each subject sample is interleaved
//! with a sample of the [`Calibration`](crate::timing::Calibration) kernel over the same data.

use std::collections::BTreeMap;

use crate::bandwidth;
use crate::cells::{Cell, CellSpec, Check};
use crate::instances::{self, Instance, Variant};
use crate::machine::{divisor, machine};
use crate::options::RunOptions;
use crate::progress::progress;
use crate::schema::{self, CellResult, Device, Op, RoundResult, RunReport, Skipped};
use crate::subject::measure_round;
use crate::timing::{self, Round, Summary, TimingBudget};
use crate::worker;

/// The rounds of one configuration so far.
struct Accumulated {
    instance: usize,
    variant: Variant,
    op: Op,
    spec: CellSpec,
    in_cache: bool,
    check: Check,
    reproduced: bool,
    rounds: Vec<Round>,
}

/// Turns a configuration's rounds into its result. `bandwidth_gbps` is the ceiling it is
/// divided by.
fn result(a: &Accumulated, instance: &Instance, bandwidth_gbps: f64) -> CellResult {
    let samples: Vec<f64> = a
        .rounds
        .iter()
        .flat_map(|r| r.samples.iter().copied())
        .collect();
    let s = Summary::of(&samples);
    let elements = a.spec.batch * a.spec.classes;
    let eps = elements as f64 / (s.median_ns * 1e-9);
    let bps = eps * a.op.bytes_per_element(a.spec.dtype);
    let fraction = bps / (bandwidth_gbps * 1e9);
    let rounds: Vec<RoundResult> = a
        .rounds
        .iter()
        .map(|r| RoundResult {
            median_ns: timing::median(&r.samples),
            min_ns: r.samples.iter().copied().fold(f64::INFINITY, f64::min),
            spread: Summary::of(&r.samples).spread,
            calibration_ns: (!r.calibration.is_empty()).then(|| timing::median(&r.calibration)),
            calls: r.calls,
            cpu_per_wall: r.cpu_wall.ratio(),
        })
        .collect();
    let cpu_per_wall = rounds
        .iter()
        .map(|r| r.cpu_per_wall)
        .collect::<Option<Vec<f64>>>()
        .map(|v| timing::median(&v));
    let calibrated = rounds
        .iter()
        .map(|r| r.calibration_ns.map(|c| c / r.median_ns))
        .collect::<Option<Vec<f64>>>()
        .map(|v| timing::median(&v));
    let device: Vec<f64> = a
        .rounds
        .iter()
        .flat_map(|r| r.device.iter().copied())
        .collect();
    let gpu_median_ns = (!device.is_empty()).then(|| timing::median(&device));
    let note = match (&instance.built.device, a.variant) {
        (Some(d), Variant::Resident) => Some(format!("resident on {}", d.describe_device())),
        (Some(d), Variant::EndToEnd) => Some(format!("end to end on {}", d.describe_device())),
        (None, _) => None,
    };
    let note = if a.reproduced {
        note
    } else {
        Some(
            "DID NOT REPRODUCE: a later round's outputs differed in their bits from round 0's"
                .to_string(),
        )
    };
    CellResult {
        backend: instance.built.backend.name().to_string(),
        variant: a.variant.as_str().to_string(),
        op: a.op,
        batch: a.spec.batch,
        classes: a.spec.classes,
        dtype: crate::schema::dtype_label(&a.spec),
        threads: instance.threads,
        elements,
        median_ns: s.median_ns,
        min_ns: s.min_ns,
        spread: s.spread,
        reps: a.rounds.iter().map(|r| r.calls).sum(),
        elements_per_second: eps,
        bytes_per_second: bps,
        bandwidth_gbps,
        bandwidth_fraction: fraction,
        gpu_median_ns,
        gpu_bandwidth_fraction: gpu_median_ns.map(|g| {
            elements as f64 * a.op.bytes_per_element(a.spec.dtype)
                / (g * 1e-9)
                / (bandwidth_gbps * 1e9)
        }),
        in_cache: a.in_cache,
        over_ceiling: !a.in_cache && fraction > 1.0,
        max_rel_error: a.check.max_rel_error,
        agrees: a.check.agrees && a.reproduced,
        rounds,
        calibrated,
        counts: None,
        cpu_per_wall,
        honest: cpu_per_wall.map(|c| timing::honest(c, instance.threads)),
        note,
    }
}

/// Runs the whole grid.
pub fn run(opts: &RunOptions) -> RunReport {
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut skipped = Vec::new();
    let instances = instances::instances(&opts.backends, &opts.threads, &mut skipped);
    let passes = if opts.quick { 3 } else { 5 };
    let bw_start = bandwidth::probe(&opts.threads, passes);
    let mut devices = Vec::new();
    for instance in &instances {
        if let Some(d) = &instance.built.device {
            let probe_bytes = bandwidth::default_probe_bytes() as u64;
            match d.copy_bandwidth_gbps(probe_bytes, passes) {
                Ok(gbps) => devices.push(Device {
                    backend: instance.name.clone(),
                    adapter: d.describe_device(),
                    copy_bandwidth_gbps: gbps,
                }),
                Err(e) => skipped.push(Skipped::backend(
                    &instance.name,
                    format!("bandwidth probe: {e}"),
                )),
            }
        }
    }
    let budget = TimingBudget::for_run(opts.quick);
    let cells = opts.grid(&mut skipped);
    let with_grad = opts.ops.iter().any(|&o| o != Op::Forward);
    let configs: Vec<(usize, Variant, Op)> = instances
        .iter()
        .enumerate()
        .flat_map(|(i, inst)| {
            inst.variants()
                .into_iter()
                .flat_map(move |v| opts.ops.iter().map(move |&op| (i, v, op)))
        })
        .collect();
    let bar = progress((budget.rounds * cells.len() * configs.len()) as u64);
    let mut python = if opts.python_peers {
        match crate::peers::PythonPeers::detect() {
            Ok(p) => Some(p),
            Err(reason) => {
                skipped.push(Skipped::backend("pytorch/jax", reason.to_string()));
                None
            }
        }
    } else {
        None
    };
    // Keyed by (cell index, config index); a configuration that failed is dropped for good.
    let mut acc: BTreeMap<(usize, usize), Accumulated> = BTreeMap::new();
    let mut failed: std::collections::BTreeSet<(usize, usize)> = Default::default();
    for round in 0..budget.rounds {
        let mut client = match &opts.worker {
            None => None,
            Some(path) => match worker::Client::spawn(path) {
                Ok((c, _)) => Some(c),
                Err(e) => {
                    skipped.push(Skipped::backend(
                        "harness",
                        format!("round {}: no worker: {e}", round + 1),
                    ));
                    continue;
                }
            },
        };
        for (ci, &spec) in cells.iter().enumerate() {
            bar.set_message(format!(
                "round {}: {}x{}",
                round + 1,
                spec.batch,
                spec.classes
            ));
            // The cell in this process: for in-process rounds, and in round 0 for the peers.
            let local = (client.is_none() || (round == 0 && python.is_some()))
                .then(|| Cell::new(spec, round == 0, with_grad));
            for (k, &(i, variant, op)) in configs.iter().enumerate() {
                bar.inc(1);
                if failed.contains(&(ci, k)) {
                    continue;
                }
                let instance = &instances[i];
                bar.set_message(format!(
                    "round {}: {}x{} {} {op}",
                    round + 1,
                    spec.batch,
                    spec.classes,
                    instance.name
                ));
                let measured = match (client.as_mut(), &local) {
                    (Some(c), _) => {
                        let config = worker::Config {
                            cell: spec,
                            backend: instance.name.clone(),
                            threads: instance.threads,
                            variant: variant.as_str().to_string(),
                            op,
                            quick: opts.quick,
                            reference: round == 0,
                            fresh: true,
                        };
                        c.prepare(&config).and_then(|ready| {
                            let r = c.round()?;
                            Ok((
                                Check {
                                    max_rel_error: ready.max_rel_error,
                                    agrees: ready.agrees,
                                    digest: ready.digest,
                                },
                                Round {
                                    device: r.device,
                                    samples: r.samples,
                                    calibration: r.calibration,
                                    calls: r.calls,
                                    cpu_wall: r.cpu_wall,
                                },
                            ))
                        })
                    }
                    (None, Some(cell)) => measure_round(cell, instance, variant, op, budget),
                    (None, None) => unreachable!("in-process rounds make their cell"),
                };
                match measured {
                    Ok((check, r)) => match acc.get_mut(&(ci, k)) {
                        None => {
                            acc.insert(
                                (ci, k),
                                Accumulated {
                                    instance: i,
                                    variant,
                                    op,
                                    spec,
                                    in_cache: match (&instance.built.device, variant) {
                                        // Resident data lives in the device's memory: judged
                                        // against its cache (logits, and the gradient).
                                        (Some(d), Variant::Resident)
                                            if d.cache_bytes().is_some() =>
                                        {
                                            let bytes = spec.bytes() as u64
                                                * if op == Op::Forward { 1 } else { 2 };
                                            d.cache_bytes().is_some_and(|c| bytes <= c)
                                        }
                                        _ => spec.in_cache(),
                                    },
                                    check,
                                    reproduced: true,
                                    rounds: vec![r],
                                },
                            );
                        }
                        Some(a) => {
                            a.reproduced &= a.check.digest == check.digest;
                            a.rounds.push(r);
                        }
                    },
                    Err(e) => {
                        failed.insert((ci, k));
                        let what = match variant {
                            Variant::EndToEnd => format!("{op}: {e}"),
                            Variant::Resident => format!("resident {op}: {e}"),
                        };
                        skipped.push(Skipped {
                            backend: instance.name.clone(),
                            batch: spec.batch,
                            classes: spec.classes,
                            reason: what,
                        });
                    }
                }
            }
            if round == 0
                && let (Some(py), Some(cell)) = (python.as_mut(), &local)
            {
                if spec.batch * spec.classes > opts.peer_max_elements {
                    skipped.push(Skipped {
                        backend: "pytorch/jax".into(),
                        batch: spec.batch,
                        classes: spec.classes,
                        reason: format!(
                            "more than {} logits (--peer-max-elements)",
                            opts.peer_max_elements
                        ),
                    });
                } else if let Err(e) = py.add_cell(cell) {
                    skipped.push(Skipped {
                        backend: "pytorch/jax".into(),
                        batch: spec.batch,
                        classes: spec.classes,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    let mut results = Vec::new();
    if let Some(py) = python {
        bar.set_message("python peers");
        py.run(opts, &bw_start, &mut results, &mut skipped);
    }
    bar.set_message("bandwidth probe (end of run)");
    let bw_end = bandwidth::probe(&opts.threads, passes);
    bar.finish_and_clear();
    let machine = machine(&bw_start, &bw_end, devices);
    for a in acc.values() {
        let instance = &instances[a.instance];
        let divisor = machine
            .devices
            .iter()
            .find(|d| instance.built.device.is_some() && d.backend == instance.name)
            .map_or_else(
                || divisor(&machine.bandwidth, a.op, instance.threads),
                |d| d.copy_bandwidth_gbps,
            );
        results.push(result(a, instance, divisor));
    }
    // Peers were divided by the start-of-run probe; divide them by the ceilings too.
    for r in results.iter_mut().filter(|r| r.rounds.is_empty()) {
        r.bandwidth_gbps = divisor(&machine.bandwidth, r.op, r.threads);
        r.bandwidth_fraction = r.bytes_per_second / (r.bandwidth_gbps * 1e9);
        r.over_ceiling = !r.in_cache && r.bandwidth_fraction > 1.0;
    }
    let summary = schema::fastest(&results);
    RunReport {
        schema: schema::SCHEMA.to_string(),
        created_unix,
        machine,
        config: opts.config(),
        results,
        skipped,
        summary,
    }
}
