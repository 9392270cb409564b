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
//! with a sample of the [`Calibration`] kernel over the same data.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use loss_core::Reduction;

use crate::bandwidth::{self, Bandwidth};
use crate::cells::{Cell, CellSpec, Check};
use crate::instances::{self, Instance, Variant};
use crate::schema::{
    self, CellResult, Device, Machine, Op, RoundResult, RunConfig, RunReport, Skipped,
};
use crate::subject;
use crate::timing::{self, Calibration, Round, Summary, TimingBudget};
use crate::worker;

/// Everything `run` needs to know.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Batch sizes.
    pub batch: Vec<usize>,
    /// Class counts.
    pub classes: Vec<usize>,
    /// Explicit `(batch, classes)` cells; when non-empty they replace the batch × classes grid.
    pub cells: Vec<(usize, usize)>,
    /// Backends to time (empty: every backend timed by default).
    pub backends: Vec<String>,
    /// Operations to time.
    pub ops: Vec<Op>,
    /// Thread counts for parallel backends.
    pub threads: Vec<usize>,
    /// Use class weights.
    pub weighted: bool,
    /// The reduction.
    pub reduction: Reduction,
    /// Skip cells whose logits exceed this many bytes.
    pub max_bytes: usize,
    /// Short timings (the whole run under a minute).
    pub quick: bool,
    /// Input seed.
    pub seed: u64,
    /// Run the Python peers (PyTorch, JAX) when they are installed.
    pub python_peers: bool,
    /// Peers are run on cells up to this many logits.
    pub peer_max_elements: usize,
    /// The `loss-bench` binary whose `worker` runs each round in a fresh process (`loss-bench
    /// run` uses itself), so that what holds for a whole process (where its buffers and threads
    /// land) varies between rounds as it does between runs; `None`: every round in this process.
    pub worker: Option<std::path::PathBuf>,
}

/// The default grid: batch {1, 32, 256, 2048, 16384} × classes {10, 100, 1000, 32000, 128256},
/// every op, weighted mean, cells up to 1 GiB of logits.
impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch: vec![1, 32, 256, 2048, 16384],
            classes: vec![10, 100, 1000, 32000, 128256],
            cells: Vec::new(),
            backends: Vec::new(),
            ops: Op::ALL.to_vec(),
            threads: vec![available_cores()],
            weighted: true,
            reduction: Reduction::Mean,
            max_bytes: 1 << 30,
            quick: false,
            seed: 0x5eed,
            python_peers: true,
            peer_max_elements: 64 << 20,
            worker: None,
        }
    }
}

impl RunOptions {
    /// The cell spec of `(batch, classes)` under these options.
    pub fn spec(&self, batch: usize, classes: usize) -> CellSpec {
        CellSpec {
            batch,
            classes,
            weighted: self.weighted,
            reduction: self.reduction,
            seed: self.seed,
        }
    }

    /// The cells of the run (the explicit cells, or the grid), without the ones over the size
    /// cap or empty, which are listed in `skipped`.
    pub fn grid(&self, skipped: &mut Vec<Skipped>) -> Vec<CellSpec> {
        let grid: Vec<(usize, usize)> = if self.cells.is_empty() {
            self.batch
                .iter()
                .flat_map(|&b| self.classes.iter().map(move |&c| (b, c)))
                .collect()
        } else {
            self.cells.clone()
        };
        let mut out = Vec::new();
        for (batch, classes) in grid {
            let bytes = batch.saturating_mul(classes).saturating_mul(4);
            if bytes > self.max_bytes {
                skipped.push(Skipped::cell(
                    batch,
                    classes,
                    format!(
                        "{bytes} bytes of logits exceed the cap of {} (--max-mib)",
                        self.max_bytes
                    ),
                ));
            } else if batch == 0 || classes == 0 {
                skipped.push(Skipped::cell(batch, classes, "empty cell".into()));
            } else {
                out.push(self.spec(batch, classes));
            }
        }
        out
    }

    /// The configuration block of a report.
    pub fn config(&self) -> RunConfig {
        RunConfig {
            batch: self.batch.clone(),
            classes: self.classes.clone(),
            cells: self.cells.clone(),
            ops: self.ops.clone(),
            threads: self.threads.clone(),
            weighted: self.weighted,
            reduction: self.reduction.as_str().to_string(),
            max_bytes: self.max_bytes,
            quick: self.quick,
            seed: self.seed,
            rounds: TimingBudget::for_run(self.quick).rounds,
            counts: None,
        }
    }
}

/// Logical cores available to this process.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the run measured about the machine, with the ceilings of both probes.
pub fn machine(start: &[Bandwidth], end: &[Bandwidth], devices: Vec<Device>) -> Machine {
    let ceilings = if end.is_empty() {
        start.to_vec()
    } else {
        bandwidth::best_of_probes(start, end)
    };
    let single = ceilings
        .iter()
        .find(|b| b.threads == 1)
        .or(ceilings.first())
        .cloned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut crate_versions = BTreeMap::new();
    crate_versions.insert(
        "bench-harness".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    for (name, version) in crate::CRATE_VERSIONS {
        crate_versions.insert(name.to_string(), version.to_string());
    }
    Machine {
        cpu,
        cores: available_cores(),
        read_bandwidth_gbps: single.as_ref().map_or(0.0, |b| b.read_gbps),
        copy_bandwidth_gbps: single.as_ref().map_or(0.0, |b| b.copy_gbps),
        bandwidth: ceilings,
        bandwidth_start: start.to_vec(),
        bandwidth_end: end.to_vec(),
        llc_bytes: bandwidth::last_level_cache_bytes(),
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        crate_versions,
        devices,
    }
}

/// The bandwidth divisor of an operation at a thread count (the nearest measured count).
pub fn divisor(bandwidth: &[Bandwidth], op: Op, threads: usize) -> f64 {
    let b = bandwidth
        .iter()
        .min_by_key(|b| b.threads.abs_diff(threads))
        .expect("at least one bandwidth figure");
    match op {
        Op::Forward => b.read_gbps,
        Op::Backward | Op::ForwardBackward => b.copy_gbps,
    }
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
) -> Result<(Check, Round), String> {
    let mut ready = subject::ready(cell, instance, variant, op, budget)?;
    let one =
        timing::one_call(ready.subject.as_mut(), &mut ready.rep).map_err(|e| e.to_string())?;
    let round = round_of(&mut ready, cell, instance, op, budget, one)?;
    Ok((ready.check, round))
}

/// Times one round of a ready configuration whose single call took `one`: samples interleaved
/// with the calibration kernel (host backends; device backends have none).
pub fn round_of(
    ready: &mut subject::Ready<'_>,
    cell: &Cell,
    instance: &Instance,
    op: Op,
    budget: TimingBudget,
    one: std::time::Duration,
) -> Result<Round, String> {
    budget.check_call(one)?;
    let calls = TimingBudget::calls_per_sample(one);
    if instance.built.device.is_some() {
        let mut round = Round {
            samples: Vec::new(),
            calibration: Vec::new(),
            calls: 0,
        };
        let target = budget.target / budget.rounds.max(1) as u32;
        let start = std::time::Instant::now();
        while round.samples.len() < budget.min_samples
            || (round.samples.len() < budget.max_samples && start.elapsed() < target)
        {
            round
                .samples
                .push(ready.sample(calls).map_err(|e| e.to_string())?);
            round.calls += calls;
        }
        Ok(round)
    } else {
        let mut calib = Calibration::new(cell.rotations(), op, instance.threads);
        timing::time_round(
            budget,
            ready.subject.as_mut(),
            &mut calib,
            calls,
            &mut ready.rep,
        )
        .map_err(|e| e.to_string())
    }
}

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
    let bps = eps * a.op.bytes_per_element();
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
        })
        .collect();
    let calibrated = rounds
        .iter()
        .map(|r| r.calibration_ns.map(|c| c / r.median_ns))
        .collect::<Option<Vec<f64>>>()
        .map(|v| timing::median(&v));
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
        in_cache: a.in_cache,
        over_ceiling: !a.in_cache && fraction > 1.0,
        max_rel_error: a.check.max_rel_error,
        agrees: a.check.agrees && a.reproduced,
        rounds,
        calibrated,
        counts: None,
        note,
    }
}

/// A progress bar on standard error, hidden when it is not a terminal.
pub fn progress(total: u64) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
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
                skipped.push(Skipped::backend("pytorch/jax", reason));
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
                                    samples: r.samples,
                                    calibration: r.calibration,
                                    calls: r.calls,
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
                                    in_cache: spec.in_cache(),
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
                        reason: e,
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
