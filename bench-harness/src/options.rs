//! The options of a run: the grid, the backends, the operations, and how long to time.

use loss_core::{DType, LossOptions, Problem, Reduction, Target};

use crate::cells::{CellSpec, Coef};
use crate::error::Error;
use crate::schema::{Op, RunConfig, Skipped};
use crate::timing::TimingBudget;

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
    /// Element types of the logits (a grid axis).
    pub dtypes: Vec<DType>,
    /// z-loss coefficient.
    pub z_loss: Option<f32>,
    /// Soft-cap.
    pub softcap: Option<f32>,
    /// Position weights.
    pub position_weights: bool,
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
            dtypes: vec![DType::F32],
            z_loss: None,
            softcap: None,
            position_weights: false,
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
    /// The cell spec of `(batch, classes)` in `dtype` under these options.
    pub fn spec(&self, batch: usize, classes: usize, dtype: DType) -> CellSpec {
        CellSpec {
            dtype,
            z_loss: self.z_loss.filter(|&z| z != 0.0).map(Coef),
            softcap: self.softcap.map(Coef),
            position_weights: self.position_weights,
            ..CellSpec::plain(batch, classes, self.weighted, self.reduction, self.seed)
        }
    }

    /// Checks the extensions' values through the library's own validation, so that a bad
    /// `--z-loss` or `--softcap` is a usage error and never a panic inside a cell.
    pub fn validate_extensions(&self) -> Result<(), Error> {
        let options = LossOptions::new()
            .z_loss(self.z_loss.unwrap_or(0.0))
            .softcap(self.softcap);
        let target = Target::Indices {
            data: &[0],
            shape: &[1],
        };
        Problem::new(&[0.0f32], &[1, 1], target, options)
            .map(|_| ())
            .map_err(|e| Error::Usage(e.to_string()))
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
        let cells = grid
            .into_iter()
            .flat_map(|(b, c)| self.dtypes.iter().map(move |&d| (b, c, d)));
        for (batch, classes, dtype) in cells {
            let bytes = batch.saturating_mul(classes).saturating_mul(dtype.size());
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
                out.push(self.spec(batch, classes, dtype));
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
