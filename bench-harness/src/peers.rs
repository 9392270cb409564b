//! Peers timed in the same run, on the same inputs, in the same table: PyTorch and JAX on the CPU
//! through `scripts/peers.py` (when they are installed; reported as skipped when not).
//!
//! Each peer result is cross-checked like ours: its loss against the reference loss, and its
//! gradient through the gradient's sum of squares against the reference's (moving the whole
//! gradient back from Python for every cell would cost more than the benchmark).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use loss_core::conformance::DEFAULT_TOLERANCE;
use serde::Deserialize;

use crate::bandwidth::Bandwidth;
use crate::cells::Cell;
use crate::error::Error;
use crate::machine::divisor;
use crate::options::RunOptions;
use crate::schema::{CellResult, Op, Skipped};
use crate::timing::TimingBudget;

/// The script, located next to this crate's sources.
pub fn script_path() -> PathBuf {
    std::env::var_os("LOSS_PEERS_SCRIPT").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/peers.py"),
        PathBuf::from,
    )
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

struct PeerCellRef {
    batch: usize,
    classes: usize,
    dtype: String,
    loss: Vec<f64>,
    grad_sq: f64,
    in_cache: bool,
}

/// The Python peers found on this machine, and the cells written for them.
pub struct PythonPeers {
    available: Vec<(String, String)>,
    dir: PathBuf,
    cells: Vec<PeerCellRef>,
    manifest: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct PeerLine {
    peer: String,
    batch: usize,
    classes: usize,
    #[serde(default = "crate::schema::f32_name")]
    dtype: String,
    op: Op,
    threads: usize,
    loss: Vec<f64>,
    grad_sq: Option<f64>,
    note: String,
    median_ns: f64,
    min_ns: f64,
    spread: f64,
    reps: usize,
    /// The peer process's CPU time over wall time while its calls ran.
    #[serde(default)]
    cpu_per_wall: Option<f64>,
}

impl PythonPeers {
    /// Asks the script which peers import; `Err` says why none can run.
    pub fn detect() -> Result<Self, Error> {
        Self::probe().map_err(Error::Peers)
    }

    fn probe() -> Result<Self, String> {
        let out = Command::new(python())
            .arg(script_path())
            .arg("--probe")
            .output()
            .map_err(|e| format!("not run: cannot start {}: {e}", python()))?;
        if !out.status.success() {
            return Err(format!(
                "not run: peers.py --probe failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let found: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("not run: peers.py --probe printed no JSON: {e}"))?;
        let available: Vec<(String, String)> = ["pytorch", "jax"]
            .iter()
            .filter_map(|&p| found[p].as_str().map(|v| (p.to_string(), v.to_string())))
            .collect();
        if available.is_empty() {
            return Err("not run: neither torch nor jax is installed for python3".into());
        }
        let dir = std::env::temp_dir().join(format!("loss-bench-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("not run: {}: {e}", dir.display()))?;
        Ok(PythonPeers {
            available,
            dir,
            cells: Vec::new(),
            manifest: Vec::new(),
        })
    }

    /// Writes a cell's inputs for the script.
    pub fn add_cell(&mut self, cell: &Cell) -> Result<(), Error> {
        self.write_cell(cell).map_err(Error::Peers)
    }

    fn write_cell(&mut self, cell: &Cell) -> Result<(), String> {
        let w = &cell.workload;
        let [batch, classes] = w.shape;
        let dtype = w.logits.dtype();
        let dir = self.dir.join(format!("{batch}x{classes}-{dtype}"));
        let write = |name: &str, bytes: &[u8]| -> Result<(), String> {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::File::create(dir.join(name)))
                .and_then(|mut f| f.write_all(bytes))
                .map_err(|e| format!("writing inputs for peers: {e}"))
        };
        // The logits' exact values as f32; the script converts them to the cell's type (exact).
        write("logits.bin", bytemuck_f32(&w.logits.to_f32_vec()))?;
        if let Some(s) = &w.position_weight {
            write("position_weight.bin", bytemuck_f32(s))?;
        }
        let targets: Vec<u8> = w.targets.iter().flat_map(|t| t.to_le_bytes()).collect();
        write("targets.bin", &targets)?;
        if let Some(weight) = &w.weight {
            write("weight.bin", bytemuck_f32(weight))?;
        }
        self.manifest.push(serde_json::json!({
            "dir": dir,
            "batch": batch,
            "classes": classes,
            "weighted": w.weight.is_some(),
            "reduction": w.reduction.as_str(),
            "dtype": crate::schema::dtype_label(&cell.spec),
            "z_loss": w.z_loss,
            "softcap": w.softcap,
            "position_weights": w.position_weight.is_some(),
            "ops": [],
        }));
        let answer = cell
            .answer
            .as_ref()
            .ok_or("the cell has no reference answer to check the peers with")?;
        self.cells.push(PeerCellRef {
            batch,
            classes,
            dtype: crate::schema::dtype_label(&cell.spec),
            loss: answer.loss.clone(),
            grad_sq: answer.grad.iter().map(|&g| f64::from(g).powi(2)).sum(),
            in_cache: cell.in_cache,
        });
        Ok(())
    }

    /// Runs every available peer at every thread count of the run, cross-checks and records.
    pub fn run(
        mut self,
        opts: &RunOptions,
        bandwidth: &[Bandwidth],
        results: &mut Vec<CellResult>,
        skipped: &mut Vec<Skipped>,
    ) {
        let budget = TimingBudget::for_run(opts.quick);
        let ops: Vec<&str> = opts.ops.iter().map(|o| o.as_str()).collect();
        for m in &mut self.manifest {
            m["ops"] = serde_json::json!(ops);
        }
        let manifest = serde_json::json!({
            "cells": self.manifest,
            "budget": {
                "min_samples": budget.min_samples,
                "max_samples": budget.max_samples,
                "target_s": budget.target.as_secs_f64(),
            },
        });
        let path = self.dir.join("manifest.json");
        if let Err(e) = std::fs::write(&path, manifest.to_string()) {
            skipped.push(skip("pytorch/jax", format!("writing manifest: {e}")));
            return;
        }
        let mut counts: Vec<usize> = std::iter::once(1)
            .chain(opts.threads.iter().copied())
            .collect();
        counts.sort_unstable();
        counts.dedup();
        for (peer, _version) in &self.available {
            for &threads in &counts {
                let mut cmd = Command::new(python());
                cmd.arg(script_path())
                    .args(["--manifest"])
                    .arg(&path)
                    .args(["--peer", peer, "--threads", &threads.to_string()]);
                if peer == "jax" {
                    // XLA's CPU client takes a single-thread switch but no thread count: it runs
                    // on one thread or on every core.
                    if threads == 1 {
                        cmd.env(
                            "XLA_FLAGS",
                            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                        );
                    } else if threads != crate::options::available_cores() {
                        skipped.push(skip(
                            peer,
                            format!(
                                "{threads} threads: XLA on the CPU runs on 1 thread or all cores"
                            ),
                        ));
                        continue;
                    }
                }
                cmd.env("OMP_NUM_THREADS", threads.to_string());
                // Exactly `threads` CPUs for the whole process: a peer whose library ignores its
                // thread setting (JAX's CPU client at "1 thread" used two) cannot use more than
                // the row claims. Its CPU time over wall time is reported beside the timing.
                pin_command(&mut cmd, threads);
                match cmd.output() {
                    Err(e) => skipped.push(skip(peer, format!("cannot start: {e}"))),
                    Ok(out) => {
                        let stdout = String::from_utf8_lossy(&out.stdout);
                        for line in stdout.lines().filter(|l| l.starts_with('{')) {
                            match serde_json::from_str::<PeerLine>(line) {
                                Ok(p) => results.push(self.result(p, bandwidth)),
                                Err(e) => skipped.push(skip(peer, format!("unreadable line: {e}"))),
                            }
                        }
                        if !out.status.success() {
                            let err = String::from_utf8_lossy(&out.stderr);
                            let last = err.lines().last().unwrap_or("").to_string();
                            skipped.push(skip(
                                peer,
                                format!("{threads} threads: exited with {}: {last}", out.status),
                            ));
                        }
                    }
                }
            }
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }

    fn result(&self, p: PeerLine, bandwidth: &[Bandwidth]) -> CellResult {
        let reference = self
            .cells
            .iter()
            .find(|c| c.batch == p.batch && c.classes == p.classes && c.dtype == p.dtype);
        let (max_rel_error, agrees, in_cache) = match reference {
            None => (f64::MAX, false, false),
            Some(r) => {
                // A peer returns the loss and the gradient in the logits' type (PyTorch does):
                // held to that type's rounding.
                let dtype = crate::schema::dtype_of(&p.dtype);
                let tol = crate::workload::grad_tolerance(dtype, DEFAULT_TOLERANCE);
                let mut pairs: Vec<(f64, f64)> =
                    p.loss.iter().copied().zip(r.loss.iter().copied()).collect();
                if let Some(g) = p.grad_sq {
                    pairs.push((g, r.grad_sq));
                }
                let (worst, agrees) = crate::workload::agreement(pairs, tol);
                let ok = agrees && p.loss.len() == r.loss.len();
                (worst, ok, r.in_cache)
            }
        };
        let elements = p.batch * p.classes;
        let eps = elements as f64 / (p.median_ns * 1e-9);
        let dtype = crate::schema::dtype_of(&p.dtype);
        let bps = eps * p.op.bytes_per_element(dtype);
        let bw = divisor(bandwidth, p.op, p.threads);
        CellResult {
            backend: p.peer,
            variant: String::new(),
            op: p.op,
            batch: p.batch,
            classes: p.classes,
            dtype: p.dtype.clone(),
            threads: p.threads,
            elements,
            median_ns: p.median_ns,
            min_ns: p.min_ns,
            spread: p.spread,
            reps: p.reps,
            elements_per_second: eps,
            bytes_per_second: bps,
            bandwidth_gbps: bw,
            bandwidth_fraction: bps / (bw * 1e9),
            gpu_median_ns: None,
            gpu_bandwidth_fraction: None,
            in_cache,
            over_ceiling: !in_cache && bps > bw * 1e9,
            max_rel_error,
            agrees,
            rounds: Vec::new(),
            calibrated: None,
            counts: None,
            cpu_per_wall: p.cpu_per_wall,
            honest: p.cpu_per_wall.map(|c| crate::timing::honest(c, p.threads)),
            note: Some(format!(
                "{} (gradient checked by its sum of squares)",
                p.note
            )),
        }
    }
}

/// Starts `cmd` with its CPU affinity set to the first `threads` CPUs this process may use
/// (every CPU when there are fewer; nothing where affinity cannot be set).
fn pin_command(cmd: &mut Command, threads: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        let cpus = crate::bandwidth::allowed_cpus();
        if cpus.is_empty() {
            return;
        }
        // SAFETY: a plain bitmask, built here before the fork.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus.iter().take(threads.max(1)) {
            // SAFETY: `c` < CPU_SETSIZE (it came out of a cpu_set_t).
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: between fork and exec the closure only makes one async-signal-safe system call
        // on a mask copied into it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (cmd, threads);
    }
}

fn skip(backend: &str, reason: String) -> Skipped {
    Skipped::backend(backend, reason)
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}
