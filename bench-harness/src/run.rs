//! `loss-bench run`: the cross-checked throughput grid.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use loss_core::conformance::Tolerance;
use std::sync::Arc;

use loss_core::{LossBackend, LossError, Problem, Reduction};
use loss_wgpu::WgpuBackend;

use crate::backends::{self, BackendConfig};
use crate::bandwidth::{self, Bandwidth};
use crate::schema::{self, CellResult, Device, Machine, Op, RunConfig, RunReport, Skipped};
use crate::workload::{self, ReferenceAnswer, Workload};

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
}

/// The default grid of the issue: batch {1, 32, 256, 2048, 16384} × classes {10, 100, 1000,
/// 32000, 128256}, every op, weighted mean, cells up to 1 GiB of logits.
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
        }
    }
}

/// Logical cores available to this process.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Median, spread and count of timed calls.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Median time of one call, ns.
    pub median_ns: f64,
    /// Fastest sample, ns per call.
    pub min_ns: f64,
    /// (p90 − p10) / median.
    pub spread: f64,
    /// Calls timed.
    pub reps: usize,
}

/// How long to time.
#[derive(Debug, Clone, Copy)]
pub struct TimingBudget {
    /// At least this many samples.
    pub min_samples: usize,
    /// At most this many samples.
    pub max_samples: usize,
    /// Stop once this much time has been spent (after `min_samples`).
    pub target: Duration,
    /// A configuration whose single call takes longer than this is skipped, not timed.
    pub max_call: Duration,
}

impl TimingBudget {
    /// The budget of a normal or a `--quick` run.
    pub fn for_run(quick: bool) -> Self {
        if quick {
            TimingBudget {
                min_samples: 3,
                max_samples: 30,
                target: Duration::from_millis(25),
                max_call: Duration::from_secs(1),
            }
        } else {
            TimingBudget {
                min_samples: 7,
                max_samples: 200,
                target: Duration::from_millis(300),
                max_call: Duration::from_secs(5),
            }
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// A configuration whose first call already took longer than the budget allows is skipped
/// before any warm-up (on a software GPU one call over a 1 GiB cell takes tens of seconds).
fn over_budget(first: Duration, budget: TimingBudget) -> Result<(), String> {
    if first > budget.max_call {
        Err(format!(
            "one call took {:.2} s, over the per-call budget of {:.0} s",
            first.as_secs_f64(),
            budget.max_call.as_secs_f64()
        ))
    } else {
        Ok(())
    }
}

/// Times `call` (whose argument is the repetition number, for rotating inputs): two warm-up
/// calls, then samples of enough calls each to last ≥ 20 µs, so that the clock's resolution and
/// overhead do not count for tiny problems.
pub fn time_calls(
    budget: TimingBudget,
    mut call: impl FnMut(usize) -> Result<(), LossError>,
) -> Result<Timing, String> {
    call(0).map_err(|e| e.to_string())?;
    let t = Instant::now();
    call(1).map_err(|e| e.to_string())?;
    let one = t.elapsed().as_secs_f64().max(1e-9);
    if one > budget.max_call.as_secs_f64() {
        return Err(format!(
            "one call took {one:.2} s, over the per-call budget of {:.0} s",
            budget.max_call.as_secs_f64()
        ));
    }
    let per_sample = ((20e-6 / one).ceil() as usize).clamp(1, 100_000);
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut rep = 2;
    while samples.len() < budget.min_samples
        || (samples.len() < budget.max_samples && start.elapsed() < budget.target)
    {
        let t = Instant::now();
        for _ in 0..per_sample {
            call(rep).map_err(|e| e.to_string())?;
            rep += 1;
        }
        samples.push(t.elapsed().as_secs_f64() * 1e9 / per_sample as f64);
    }
    samples.sort_by(f64::total_cmp);
    let median = percentile(&samples, 0.5);
    Ok(Timing {
        median_ns: median,
        min_ns: samples[0],
        spread: (percentile(&samples, 0.9) - percentile(&samples, 0.1)) / median,
        reps: samples.len() * per_sample,
    })
}

/// A built backend instance with the thread count it runs on.
pub struct Instance {
    /// The backend.
    pub backend: Box<dyn LossBackend>,
    /// Its thread count.
    pub threads: usize,
    /// The same backend as a device that can keep problems resident (wgpu), timed a second
    /// time as the `resident` variant.
    pub device: Option<Arc<WgpuBackend>>,
}

/// An `Arc`'d wgpu backend as a [`LossBackend`], so that the end-to-end and the resident timings
/// share one device.
struct SharedWgpu(Arc<WgpuBackend>);

impl LossBackend for SharedWgpu {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn forward_into(&self, problem: &Problem<'_>, loss: &mut [f32]) -> Result<(), LossError> {
        self.0.forward_into(problem, loss)
    }
    fn backward_into(
        &self,
        problem: &Problem<'_>,
        g: &[f32],
        grad: &mut [f32],
    ) -> Result<(), LossError> {
        self.0.backward_into(problem, g, grad)
    }
    fn forward_backward_into(
        &self,
        problem: &Problem<'_>,
        g: &[f32],
        loss: &mut [f32],
        grad: &mut [f32],
    ) -> Result<(), LossError> {
        self.0.forward_backward_into(problem, g, loss, grad)
    }
    fn tolerance(&self, file: Tolerance) -> Tolerance {
        self.0.tolerance(file)
    }
}

/// Builds the backend instances for a run; failures become skip entries.
pub fn instances(opts: &RunOptions, skipped: &mut Vec<Skipped>) -> Vec<Instance> {
    let names: Vec<String> = if opts.backends.is_empty() {
        backends::registry()
            .iter()
            .filter(|s| s.timed_by_default)
            .map(|s| s.name.to_string())
            .collect()
    } else {
        opts.backends.clone()
    };
    let mut out = Vec::new();
    for name in names {
        let spec = match backends::spec(&name) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(skip(&name, 0, 0, e.to_string()));
                continue;
            }
        };
        if spec.name == loss_wgpu::NAME {
            match WgpuBackend::new() {
                Ok(b) if b.is_software() && opts.backends.is_empty() => skipped.push(skip(
                    &name,
                    0,
                    0,
                    format!(
                        "not timed by default on a software adapter ({}): its speed says nothing \
                         about a GPU; `--backend wgpu` times it anyway",
                        b.describe()
                    ),
                )),
                Ok(b) => {
                    let device = Arc::new(b);
                    out.push(Instance {
                        backend: Box::new(SharedWgpu(Arc::clone(&device))),
                        threads: 1,
                        device: Some(device),
                    });
                }
                Err(e) => skipped.push(skip(&name, 0, 0, e.to_string())),
            }
            continue;
        }
        let counts = if spec.parallel {
            opts.threads.clone()
        } else {
            vec![1]
        };
        for threads in counts {
            match (spec.build)(BackendConfig {
                threads: Some(threads),
            }) {
                Ok(backend) => out.push(Instance {
                    backend,
                    threads,
                    device: None,
                }),
                Err(e) => skipped.push(skip(&name, 0, 0, e.to_string())),
            }
        }
    }
    out
}

fn skip(backend: &str, batch: usize, classes: usize, reason: String) -> Skipped {
    Skipped {
        backend: backend.to_string(),
        batch,
        classes,
        reason,
    }
}

/// What the run measured about the machine.
pub fn machine(bandwidth: &[Bandwidth]) -> Machine {
    let single = bandwidth
        .iter()
        .find(|b| b.threads == 1)
        .copied()
        .unwrap_or(bandwidth[0]);
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
        read_bandwidth_gbps: single.read_gbps,
        copy_bandwidth_gbps: single.copy_gbps,
        bandwidth: bandwidth.to_vec(),
        llc_bytes: bandwidth::last_level_cache_bytes(),
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        crate_versions,
        devices: Vec::new(),
    }
}

/// Measures the bandwidth for 1 thread and every thread count of the run.
pub fn probe_bandwidth(threads: &[usize], quick: bool) -> Vec<Bandwidth> {
    let mut counts: Vec<usize> = std::iter::once(1).chain(threads.iter().copied()).collect();
    counts.sort_unstable();
    counts.dedup();
    let passes = if quick { 3 } else { 5 };
    counts
        .into_iter()
        .map(|t| bandwidth::measure(bandwidth::default_probe_bytes(), t, passes))
        .collect()
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

/// One cell's shared state: inputs, rotated copies and the reference answer.
pub struct Cell {
    /// The inputs.
    pub workload: Workload,
    /// Extra copies of the logits, so consecutive calls read different memory.
    pub copies: Vec<Vec<f32>>,
    /// The reference's answer.
    pub answer: ReferenceAnswer,
    /// The upstream gradient.
    pub upstream: Vec<f32>,
    /// Whether the rotated data fits in the last-level cache.
    pub in_cache: bool,
}

impl Cell {
    /// Generates a cell and its reference answer.
    pub fn new(opts: &RunOptions, batch: usize, classes: usize) -> Self {
        let workload = Workload::generate(batch, classes, opts.weighted, opts.reduction, opts.seed);
        let upstream = workload.upstream();
        let with_grad = opts.ops.iter().any(|&o| o != Op::Forward);
        let answer = workload::reference_answer(&workload, &upstream, with_grad);
        let llc = bandwidth::last_level_cache_bytes();
        let bytes = workload.bytes().max(1);
        let rotations = (4 * llc).div_ceil(bytes).clamp(1, 8);
        let copies = (1..rotations).map(|_| workload.logits.clone()).collect();
        // Forward touches the rotated logits; the others also write one gradient buffer.
        let in_cache = rotations * bytes + bytes <= llc;
        Cell {
            workload,
            copies,
            answer,
            upstream,
            in_cache,
        }
    }

    fn logits(&self, rep: usize) -> &[f32] {
        let k = rep % (self.copies.len() + 1);
        if k == 0 {
            &self.workload.logits
        } else {
            &self.copies[k - 1]
        }
    }
}

/// Compares a backend's outputs for `op` with the cell's reference answer.
fn agreement(cell: &Cell, op: Op, loss: &[f32], grad: &[f32], tol: Tolerance) -> (f64, bool) {
    let loss_pairs = loss
        .iter()
        .map(|&l| f64::from(l))
        .zip(cell.answer.loss.iter().copied());
    let grad_pairs = grad
        .iter()
        .map(|&g| f64::from(g))
        .zip(cell.answer.grad.iter().map(|&g| f64::from(g)));
    match op {
        Op::Forward => workload::agreement(loss_pairs, tol),
        Op::Backward => workload::agreement(grad_pairs, tol),
        Op::ForwardBackward => workload::agreement(loss_pairs.chain(grad_pairs), tol),
    }
}

/// What one timed configuration was, besides its timing and agreement.
struct Subject<'a> {
    backend: &'a str,
    variant: &'a str,
    threads: usize,
    op: Op,
    bandwidth_gbps: f64,
    in_cache: bool,
    note: Option<String>,
}

fn result(
    cell: &Cell,
    s: Subject<'_>,
    timing: Timing,
    (max_rel_error, agrees): (f64, bool),
) -> CellResult {
    let w = &cell.workload;
    let elements = w.logits.len();
    let eps = elements as f64 / (timing.median_ns * 1e-9);
    let bps = eps * s.op.bytes_per_element();
    CellResult {
        backend: s.backend.to_string(),
        variant: s.variant.to_string(),
        op: s.op,
        batch: w.shape[0],
        classes: w.shape[1],
        threads: s.threads,
        elements,
        median_ns: timing.median_ns,
        min_ns: timing.min_ns,
        spread: timing.spread,
        reps: timing.reps,
        elements_per_second: eps,
        bytes_per_second: bps,
        bandwidth_gbps: s.bandwidth_gbps,
        bandwidth_fraction: bps / (s.bandwidth_gbps * 1e9),
        in_cache: s.in_cache,
        max_rel_error,
        agrees,
        note: s.note,
    }
}

/// Cross-checks and times one backend on one cell and operation, end to end (host slices in,
/// host slices out, through the [`LossBackend`] methods).
pub fn measure(
    cell: &Cell,
    instance: &Instance,
    op: Op,
    bandwidth_gbps: f64,
    budget: TimingBudget,
) -> Result<CellResult, String> {
    let backend = instance.backend.as_ref();
    let w = &cell.workload;
    let p0 = w.problem();
    let mut loss = vec![0.0f32; p0.loss_len()];
    let mut grad = vec![0.0f32; w.logits.len()];
    let up = &cell.upstream;
    let tol: Tolerance = backend.tolerance(loss_core::conformance::DEFAULT_TOLERANCE);
    let first = Instant::now();
    match op {
        Op::Forward => backend.forward_into(&p0, &mut loss),
        Op::Backward => backend.backward_into(&p0, up, &mut grad),
        Op::ForwardBackward => backend.forward_backward_into(&p0, up, &mut loss, &mut grad),
    }
    .map_err(|e| e.to_string())?;
    over_budget(first.elapsed(), budget)?;
    let checked = agreement(cell, op, &loss, &grad, tol);
    let problems: Vec<_> = (0..=cell.copies.len())
        .map(|k| w.problem_on(cell.logits(k)))
        .collect();
    let timing = time_calls(budget, |rep| {
        let p = &problems[rep % problems.len()];
        match op {
            Op::Forward => backend.forward_into(p, &mut loss),
            Op::Backward => backend.backward_into(p, up, &mut grad),
            Op::ForwardBackward => backend.forward_backward_into(p, up, &mut loss, &mut grad),
        }
    })?;
    let subject = Subject {
        backend: backend.name(),
        variant: "",
        threads: instance.threads,
        op,
        bandwidth_gbps,
        in_cache: cell.in_cache,
        note: instance
            .device
            .as_ref()
            .map(|d| format!("end to end on {}", d.describe())),
    };
    Ok(result(cell, subject, timing, checked))
}

/// Cross-checks and times a device backend with the problem uploaded once: forward reads back
/// the loss only, backward leaves the gradient on the device (synchronised), forward+backward
/// reads back the loss and leaves the gradient there.
pub fn measure_resident(
    cell: &Cell,
    device: &WgpuBackend,
    op: Op,
    bandwidth_gbps: f64,
    budget: TimingBudget,
) -> Result<CellResult, String> {
    let w = &cell.workload;
    let p0 = w.problem();
    let first = Instant::now();
    let mut resident = device.upload(&p0).map_err(|e| e.to_string())?;
    let mut loss = vec![0.0f32; p0.loss_len()];
    let mut grad = vec![0.0f32; w.logits.len()];
    let up = &cell.upstream;
    match op {
        Op::Forward => resident.forward_into(&mut loss),
        Op::Backward => resident.backward(up),
        Op::ForwardBackward => resident.forward_backward_into(up, &mut loss),
    }
    .and_then(|()| {
        if op == Op::Forward {
            Ok(())
        } else {
            resident.read_grad(&mut grad)
        }
    })
    .map_err(|e| e.to_string())?;
    over_budget(first.elapsed(), budget)?;
    let checked = agreement(
        cell,
        op,
        &loss,
        &grad,
        device.tolerance(loss_core::conformance::DEFAULT_TOLERANCE),
    );
    let timing = time_calls(budget, |_| match op {
        Op::Forward => resident.forward_into(&mut loss),
        Op::Backward => resident.backward(up),
        Op::ForwardBackward => resident.forward_backward_into(up, &mut loss),
    })?;
    let subject = Subject {
        backend: device.name(),
        variant: "resident",
        threads: 1,
        op,
        bandwidth_gbps,
        // One buffer set, reused: it stays in cache when it fits.
        in_cache: 2 * w.bytes() <= bandwidth::last_level_cache_bytes(),
        note: Some(format!("resident on {}", device.describe())),
    };
    Ok(result(cell, subject, timing, checked))
}

/// Runs the whole grid.
pub fn run(opts: &RunOptions) -> RunReport {
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut skipped = Vec::new();
    let instances = instances(opts, &mut skipped);
    let bandwidth = probe_bandwidth(&opts.threads, opts.quick);
    let mut devices = Vec::new();
    for instance in &instances {
        if let Some(d) = &instance.device {
            let probe_bytes = bandwidth::default_probe_bytes() as u64;
            match d.measure_copy_bandwidth(probe_bytes, if opts.quick { 3 } else { 5 }) {
                Ok(gbps) => devices.push(Device {
                    backend: d.name().to_string(),
                    adapter: d.describe(),
                    copy_bandwidth_gbps: gbps,
                }),
                Err(e) => skipped.push(skip(d.name(), 0, 0, format!("bandwidth probe: {e}"))),
            }
        }
    }
    // A device backend is divided by its device's bandwidth; the others by the host's.
    let divisor_of = |instance: &Instance, op: Op| {
        instance
            .device
            .as_ref()
            .and_then(|d| devices.iter().find(|x| x.backend == d.name()))
            .map_or_else(
                || divisor(&bandwidth, op, instance.threads),
                |x| x.copy_bandwidth_gbps,
            )
    };
    let budget = TimingBudget::for_run(opts.quick);
    let grid: Vec<(usize, usize)> = if opts.cells.is_empty() {
        opts.batch
            .iter()
            .flat_map(|&b| opts.classes.iter().map(move |&c| (b, c)))
            .collect()
    } else {
        opts.cells.clone()
    };
    let mut cells = Vec::new();
    for (batch, classes) in grid {
        let bytes = batch.saturating_mul(classes).saturating_mul(4);
        if bytes > opts.max_bytes {
            skipped.push(skip(
                "",
                batch,
                classes,
                format!(
                    "{bytes} bytes of logits exceed the cap of {} (--max-mib)",
                    opts.max_bytes
                ),
            ));
        } else if batch == 0 || classes == 0 {
            skipped.push(skip("", batch, classes, "empty cell".into()));
        } else {
            cells.push((batch, classes));
        }
    }
    let timed = instances.len() + instances.iter().filter(|i| i.device.is_some()).count();
    let total = (cells.len() * timed * opts.ops.len()) as u64;
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    let mut python = if opts.python_peers {
        match crate::peers::PythonPeers::detect() {
            Ok(p) => Some(p),
            Err(reason) => {
                skipped.push(skip("pytorch/jax", 0, 0, reason));
                None
            }
        }
    } else {
        None
    };
    for (batch, classes) in cells {
        bar.set_message(format!("{batch}x{classes}: reference"));
        let cell = Cell::new(opts, batch, classes);
        for instance in &instances {
            for &op in &opts.ops {
                bar.set_message(format!(
                    "{batch}x{classes} {} {op}",
                    instance.backend.name()
                ));
                let bw = divisor_of(instance, op);
                match measure(&cell, instance, op, bw, budget) {
                    Ok(r) => results.push(r),
                    Err(e) => skipped.push(skip(
                        instance.backend.name(),
                        batch,
                        classes,
                        format!("{op}: {e}"),
                    )),
                }
                bar.inc(1);
                if let Some(device) = &instance.device {
                    match measure_resident(&cell, device, op, bw, budget) {
                        Ok(r) => results.push(r),
                        Err(e) => skipped.push(skip(
                            device.name(),
                            batch,
                            classes,
                            format!("resident {op}: {e}"),
                        )),
                    }
                    bar.inc(1);
                }
            }
        }
        if let Some(py) = python.as_mut() {
            if batch * classes > opts.peer_max_elements {
                skipped.push(skip(
                    "pytorch/jax",
                    batch,
                    classes,
                    format!(
                        "more than {} logits (--peer-max-elements)",
                        opts.peer_max_elements
                    ),
                ));
            } else if let Err(e) = py.add_cell(&cell) {
                skipped.push(skip("pytorch/jax", batch, classes, e));
            }
        }
    }
    if let Some(py) = python {
        bar.set_message("python peers");
        py.run(opts, &bandwidth, &mut results, &mut skipped);
    }
    bar.finish_and_clear();
    let summary = schema::fastest(&results);
    RunReport {
        schema: schema::SCHEMA.to_string(),
        created_unix,
        machine: Machine {
            devices,
            ..machine(&bandwidth)
        },
        config: RunConfig {
            batch: opts.batch.clone(),
            classes: opts.classes.clone(),
            cells: opts.cells.clone(),
            ops: opts.ops.clone(),
            threads: opts.threads.clone(),
            weighted: opts.weighted,
            reduction: opts.reduction.as_str().to_string(),
            max_bytes: opts.max_bytes,
            quick: opts.quick,
            seed: opts.seed,
        },
        results,
        skipped,
        summary,
    }
}
