//! The JSON schema of `loss-bench run` results (`schema: "loss-bench/1"`), documented field by
//! field in `bench-harness/SCHEMA.md`. Fields are only ever added within a schema version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bandwidth::Bandwidth;

/// The schema tag written into every result file.
pub const SCHEMA: &str = "loss-bench/1";

pub use loss_profile::{Op, dtype_of, f32_name};

/// Parses a comma-separated list of operation names ([`Op::as_str`]), or `all`.
pub fn parse_ops(s: &str) -> crate::error::Result<Vec<Op>> {
    if s.trim() == "all" {
        return Ok(Op::ALL.to_vec());
    }
    let mut ops = Vec::new();
    for name in s.split(',').map(str::trim) {
        let op = Op::parse(name).ok_or_else(|| {
            crate::error::Error::Usage(format!(
                "unknown op {name:?}: expected forward, backward, forward_backward or all"
            ))
        })?;
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    Ok(ops)
}

/// The machine the run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical cores available to the process.
    pub cores: usize,
    /// Single-thread read bandwidth ceiling (the better of the start and end probes), GB/s.
    pub read_bandwidth_gbps: f64,
    /// Single-thread copy bandwidth ceiling (read + write bytes), GB/s.
    pub copy_bandwidth_gbps: f64,
    /// The ceilings for every thread count the run used: the better of the two probes.
    pub bandwidth: Vec<Bandwidth>,
    /// The probe at the start of the run.
    #[serde(default)]
    pub bandwidth_start: Vec<Bandwidth>,
    /// The probe at the end of the run (empty when the run did not probe again).
    #[serde(default)]
    pub bandwidth_end: Vec<Bandwidth>,
    /// Last-level cache size in bytes.
    pub llc_bytes: usize,
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// `std::env::consts::OS`.
    pub os: String,
    /// Versions of the workspace crates that produced the numbers.
    pub crate_versions: BTreeMap<String, String>,
    /// Devices of device backends (wgpu) and the copy bandwidth measured on each in this run.
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// A device backend's adapter and its measured bandwidth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The backend (`wgpu`).
    pub backend: String,
    /// The adapter, as the backend describes it.
    pub adapter: String,
    /// Device-to-device copy bandwidth (read + write bytes per second), GB/s: the divisor of
    /// this backend's rows.
    pub copy_bandwidth_gbps: f64,
}

/// How the run was configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Batch sizes of the grid.
    pub batch: Vec<usize>,
    /// Class counts of the grid.
    pub classes: Vec<usize>,
    /// Explicit cells that replaced the grid, if any.
    #[serde(default)]
    pub cells: Vec<(usize, usize)>,
    /// Operations timed.
    pub ops: Vec<Op>,
    /// Thread counts given to parallel backends.
    pub threads: Vec<usize>,
    /// Whether class weights were used.
    pub weighted: bool,
    /// The reduction (`none`, `sum`, `mean`).
    pub reduction: String,
    /// Cells whose logits exceed this many bytes are skipped.
    pub max_bytes: usize,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Rounds each configuration was timed in (spread over the run).
    #[serde(default)]
    pub rounds: usize,
    /// Set for a `--counts` run: how its counts were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<CountsConfig>,
}

/// How a `--counts` run counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsConfig {
    /// The tool and its version (`valgrind-3.19.0 callgrind`).
    pub tool: String,
    /// Counted calls per configuration (after one uncounted warm-up call).
    pub calls: usize,
    /// The simulated cache geometry (`--I1`, `--D1`, `--LL`).
    pub cache: String,
}

/// One round of one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    /// Median time of one call in this round, ns.
    pub median_ns: f64,
    /// The fastest sample of this round, ns per call.
    #[serde(default)]
    pub min_ns: f64,
    /// (p90 − p10) / median of this round's samples.
    #[serde(default)]
    pub spread: f64,
    /// Median time of one call of the calibration kernel, interleaved with this round's
    /// samples, ns (absent for device backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_ns: Option<f64>,
    /// Calls timed in this round.
    pub calls: usize,
    /// The process's CPU time over the wall time of this round's samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_per_wall: Option<f64>,
}

/// Deterministic counts of one configuration's calls under Valgrind (`run --counts`), per call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Instructions executed per call.
    pub instructions: f64,
    /// `instructions / elements`.
    pub instructions_per_element: f64,
    /// Data reads plus writes per call.
    pub data_accesses: f64,
    /// First-level misses (instruction + data read + data write) per call.
    pub l1_misses: f64,
    /// Last-level misses (instruction + data read + data write) per call.
    pub ll_misses: f64,
    /// iai-callgrind's estimate: L1 hits + 5 × last-level hits + 35 × memory accesses.
    pub estimated_cycles: f64,
    /// Calls counted.
    pub calls: usize,
}

/// One timed configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Backend name (`cpu`, `rayon`, `wgpu`, `pytorch`, …).
    pub backend: String,
    /// A variant of the backend (`resident` for device-resident GPU timing), or empty.
    #[serde(default)]
    pub variant: String,
    /// What was timed.
    pub op: Op,
    /// `N`.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// The logits' element type, and the extensions on (`bf16`, `f32+z0.0001+cap30`; absent in
    /// older files: `f32`).
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// Threads the backend ran on.
    pub threads: usize,
    /// `N·C`, the logits processed per call.
    pub elements: usize,
    /// Median wall time of one call, ns.
    pub median_ns: f64,
    /// Median device time of one call, ns, where the device measures it (GPU timestamps
    /// around the passes of a resident call; no submission or read-back latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_median_ns: Option<f64>,
    /// The bandwidth fraction by device time (`bandwidth_fraction` uses wall time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_bandwidth_fraction: Option<f64>,
    /// Fastest call, ns.
    pub min_ns: f64,
    /// (90th − 10th percentile) / median of the call times.
    pub spread: f64,
    /// Timed calls.
    pub reps: usize,
    /// `elements / median`.
    pub elements_per_second: f64,
    /// Memory traffic per second (4 bytes a logit forward, 8 otherwise).
    pub bytes_per_second: f64,
    /// The bandwidth divided by, GB/s: read for forward, copy otherwise, at this thread count.
    pub bandwidth_gbps: f64,
    /// `bytes_per_second / bandwidth`. Can exceed 1 when `in_cache`.
    pub bandwidth_fraction: f64,
    /// Whether the data the timed calls touch fits in the last-level cache.
    pub in_cache: bool,
    /// Out of cache and above 100 % of its ceiling: a defect of the bandwidth probe (the ceiling
    /// is not one), reported rather than hidden.
    #[serde(default)]
    pub over_ceiling: bool,
    /// Largest `|got − ref| / (|ref| + atol/rtol)` over every output element against the
    /// reference on this exact input (NaN/inf mismatches count as infinite).
    pub max_rel_error: f64,
    /// Whether every element is within the backend's tolerance of the reference.
    pub agrees: bool,
    /// The rounds, in run order (empty for peers, which are timed once by their script).
    #[serde(default)]
    pub rounds: Vec<RoundResult>,
    /// The median over rounds of calibration time / call time: the fraction of the speed of the
    /// ideal streaming kernel over the same data, timed interleaved with this one. It moves far
    /// less between runs than the throughput itself; `compare` judges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<f64>,
    /// Counts under Valgrind (`run --counts` only; its timing fields are then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    /// CPU time (every thread of the process) over wall time while the calls ran: how many CPUs
    /// the backend kept busy. Absent where it was not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_per_wall: Option<f64>,
    /// `false` when `cpu_per_wall` exceeds `threads` by more than 10 %: the row used more CPUs
    /// than it claims (tables mark it, and it never counts as fastest). Absent where
    /// `cpu_per_wall` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honest: Option<bool>,
    /// Anything a reader should know (e.g. how a peer was run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A result's `dtype` field for a cell: the element type, then the extensions on.
pub fn dtype_label(spec: &crate::cells::CellSpec) -> String {
    match spec.extensions() {
        Some(ext) => format!("{}+{ext}", spec.dtype),
        None => spec.dtype.to_string(),
    }
}

impl CellResult {
    /// The key that identifies the same measurement across runs.
    pub fn key(&self) -> (String, String, Op, usize, usize, String, usize) {
        (
            self.backend.clone(),
            self.variant.clone(),
            self.op,
            self.batch,
            self.classes,
            self.dtype.clone(),
            self.threads,
        )
    }

    /// The backend and variant as one label (`wgpu/resident`).
    pub fn label(&self) -> String {
        let base = if self.variant.is_empty() {
            self.backend.clone()
        } else {
            format!("{}/{}", self.backend, self.variant)
        };
        // The element type and extensions when not plain f32 (`cpu [bf16+z0.0001]`), so that
        // every table, comparison and plot series tells the rows of one cell apart.
        if self.dtype == "f32" {
            base
        } else {
            format!("{base} [{}]", self.dtype)
        }
    }
}

/// A configuration that was not measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// The backend, or empty when the whole cell was skipped.
    pub backend: String,
    /// `N` (0 when a whole backend was skipped).
    pub batch: usize,
    /// `C` (0 when a whole backend was skipped).
    pub classes: usize,
    /// Why.
    pub reason: String,
}

impl Skipped {
    /// A whole backend was skipped.
    pub fn backend(backend: &str, reason: String) -> Self {
        Skipped {
            backend: backend.to_string(),
            batch: 0,
            classes: 0,
            reason,
        }
    }

    /// A whole cell was skipped.
    pub fn cell(batch: usize, classes: usize, reason: String) -> Self {
        Skipped {
            backend: String::new(),
            batch,
            classes,
            reason,
        }
    }
}

/// The fastest agreeing backend of one cell and operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fastest {
    /// What was timed.
    pub op: Op,
    /// `N`.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// The winner's label (backend, or backend/variant).
    pub backend: String,
    /// Its thread count.
    pub threads: usize,
    /// Its throughput.
    pub elements_per_second: f64,
}

/// A whole result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Seconds since the Unix epoch when the run started.
    pub created_unix: u64,
    /// The machine.
    pub machine: Machine,
    /// The configuration.
    pub config: RunConfig,
    /// Every timed configuration.
    pub results: Vec<CellResult>,
    /// What was not measured.
    pub skipped: Vec<Skipped>,
    /// The fastest agreeing backend per cell and operation.
    pub summary: Vec<Fastest>,
}

impl RunReport {
    /// Whether this is a `--counts` run (counts, no timings).
    pub fn is_counts(&self) -> bool {
        self.config.counts.is_some()
    }

    /// Reads a result file, checking its schema tag.
    pub fn load(path: &std::path::Path) -> crate::error::Result<Self> {
        let report: RunReport = crate::error::read_json(path)?;
        if report.schema != SCHEMA {
            return Err(crate::error::Error::Schema {
                path: path.to_path_buf(),
                found: report.schema,
                expected: SCHEMA,
            });
        }
        Ok(report)
    }
}

/// The fastest agreeing result per (op, batch, classes, dtype); disagreeing results never win,
/// nor do results that used more CPUs than their thread count (`honest: false`), nor counts,
/// which have no timings.
pub fn fastest(results: &[CellResult]) -> Vec<Fastest> {
    let mut best: BTreeMap<(Op, usize, usize, String), &CellResult> = BTreeMap::new();
    for r in results
        .iter()
        .filter(|r| r.agrees && r.counts.is_none() && r.honest != Some(false))
    {
        let slot = best
            .entry((r.op, r.batch, r.classes, r.dtype.clone()))
            .or_insert(r);
        if r.elements_per_second > slot.elements_per_second {
            *slot = r;
        }
    }
    best.into_iter()
        .map(|((op, batch, classes, _), r)| Fastest {
            op,
            batch,
            classes,
            backend: r.label(),
            threads: r.threads,
            elements_per_second: r.elements_per_second,
        })
        .collect()
}
