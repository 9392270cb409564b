//! `loss-bench recommend` and the profile a deployment loads to pick its backend in code.
//!
//! A profile lists, for every measured (op, batch, classes), the fastest backend that agreed with
//! the reference (peers such as PyTorch are left out: they are not backends of this workspace).
//! A problem of any shape is served by the measured cell nearest to it in log-batch ×
//! log-classes space, so each measured cell owns the region of shapes around it.
//!
//! ```no_run
//! use bench_harness::profile::Profile;
//! use bench_harness::schema::Op;
//! let profile = Profile::load("profile.json".as_ref()).unwrap();
//! let backend = profile.backend_for(Op::ForwardBackward, 512, 50_000).unwrap();
//! ```

use std::fmt::Write as _;
use std::path::Path;

use loss_core::{LossBackend, LossError, Problem};
use serde::{Deserialize, Serialize};

use crate::backends::{self, BackendConfig};
use crate::error::Error;
use crate::schema::{Op, RunReport};

/// The profile schema tag.
pub const PROFILE_SCHEMA: &str = "loss-bench-profile/1";

/// The winner of one measured cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// Operation.
    pub op: Op,
    /// Positions (`N`, or `N·d1·…·dk`).
    pub batch: usize,
    /// Classes.
    pub classes: usize,
    /// The results' `dtype` label (element type and extensions; absent in older profiles:
    /// `f32`).
    #[serde(default = "crate::schema::f32_name")]
    pub dtype: String,
    /// The backend to use.
    pub backend: String,
    /// With this many threads.
    pub threads: usize,
    /// Its measured throughput.
    pub elements_per_second: f64,
    /// How much faster it was than the next backend (1.0 when alone).
    pub margin: f64,
}

/// A machine's measured choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`PROFILE_SCHEMA`].
    pub schema: String,
    /// The machine the numbers come from.
    pub machine: String,
    /// When the run behind it started (Unix seconds).
    pub measured_unix: u64,
    /// One entry per measured (op, batch, classes).
    pub entries: Vec<ProfileEntry>,
}

impl Profile {
    /// The fastest agreeing workspace backend per cell of a run.
    pub fn from_report(report: &RunReport) -> Self {
        let mut entries: Vec<ProfileEntry> = Vec::new();
        let ours = |name: &str| backends::spec(name).is_ok_and(|s| !s.peer);
        let mut cells: Vec<(Op, usize, usize, String)> = report
            .results
            .iter()
            .map(|r| (r.op, r.batch, r.classes, r.dtype.clone()))
            .collect();
        cells.sort();
        cells.dedup();
        for (op, batch, classes, dtype) in cells {
            let mut candidates: Vec<_> = report
                .results
                .iter()
                .filter(|r| {
                    r.op == op
                        && r.batch == batch
                        && r.classes == classes
                        && r.dtype == dtype
                        && r.agrees
                        && r.variant.is_empty()
                        && ours(&r.backend)
                })
                .collect();
            candidates.sort_by(|a, b| b.elements_per_second.total_cmp(&a.elements_per_second));
            if let Some(best) = candidates.first() {
                let margin = candidates
                    .iter()
                    .find(|r| r.backend != best.backend)
                    .map_or(1.0, |next| {
                        best.elements_per_second / next.elements_per_second
                    });
                entries.push(ProfileEntry {
                    op,
                    batch,
                    classes,
                    dtype,
                    backend: best.backend.clone(),
                    threads: best.threads,
                    elements_per_second: best.elements_per_second,
                    margin,
                });
            }
        }
        Profile {
            schema: PROFILE_SCHEMA.into(),
            machine: report.machine.cpu.clone(),
            measured_unix: report.created_unix,
            entries,
        }
    }

    /// Reads a profile.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let p: Profile = crate::error::read_json(path)?;
        if p.schema != PROFILE_SCHEMA {
            return Err(Error::Schema {
                path: path.to_path_buf(),
                found: p.schema,
                expected: PROFILE_SCHEMA,
            });
        }
        Ok(p)
    }

    /// Writes a profile.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    /// The measured entry nearest to `(batch, classes)` in log-log space for `op` (forward falls
    /// back to forward_backward entries and the reverse when the profile lacks that op).
    pub fn choose(&self, op: Op, batch: usize, classes: usize) -> Option<&ProfileEntry> {
        self.choose_for(op, batch, classes, loss_core::DType::F32)
    }

    /// [`Profile::choose`] among the entries measured in `dtype` (all entries when there are
    /// none of that type).
    pub fn choose_for(
        &self,
        op: Op,
        batch: usize,
        classes: usize,
        dtype: loss_core::DType,
    ) -> Option<&ProfileEntry> {
        let lb = (batch.max(1) as f64).ln();
        let lc = (classes.max(1) as f64).ln();
        let typed = self
            .entries
            .iter()
            .any(|e| crate::schema::dtype_of(&e.dtype) == dtype);
        let nearest = |op: Op| {
            self.entries
                .iter()
                .filter(|e| e.op == op && (!typed || crate::schema::dtype_of(&e.dtype) == dtype))
                .min_by(|a, b| {
                    let d = |e: &ProfileEntry| {
                        ((e.batch as f64).ln() - lb).powi(2)
                            + ((e.classes as f64).ln() - lc).powi(2)
                    };
                    d(a).total_cmp(&d(b))
                })
        };
        nearest(op).or_else(|| Op::ALL.into_iter().find_map(nearest))
    }

    /// Builds the backend the profile picks for this shape.
    pub fn backend_for(
        &self,
        op: Op,
        batch: usize,
        classes: usize,
    ) -> Result<Box<dyn LossBackend>, LossError> {
        self.backend_for_dtype(op, batch, classes, loss_core::DType::F32)
    }

    /// [`Profile::backend_for`] for logits of `dtype`.
    pub fn backend_for_dtype(
        &self,
        op: Op,
        batch: usize,
        classes: usize,
        dtype: loss_core::DType,
    ) -> Result<Box<dyn LossBackend>, LossError> {
        let entry =
            self.choose_for(op, batch, classes, dtype)
                .ok_or_else(|| LossError::Unsupported {
                    backend: "profile".into(),
                    feature: "an empty profile (no agreeing backend was measured)".into(),
                })?;
        backends::make_backend(
            &entry.backend,
            BackendConfig {
                threads: Some(entry.threads),
            },
        )
    }

    /// Builds the backend the profile picks for a problem's shape.
    pub fn backend_for_problem(
        &self,
        op: Op,
        problem: &Problem<'_>,
    ) -> Result<Box<dyn LossBackend>, LossError> {
        self.backend_for_dtype(op, problem.positions(), problem.classes(), problem.dtype())
    }

    /// A batch × classes map of the winners, one block per op.
    pub fn render(&self) -> String {
        let mut out = format!(
            "profile for {} ({} cells)\n",
            self.machine,
            self.entries.len()
        );
        let mut labels: Vec<&str> = self.entries.iter().map(|e| e.dtype.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        for (op, label) in Op::ALL
            .into_iter()
            .flat_map(|op| labels.iter().map(move |&l| (op, l)))
        {
            let entries: Vec<_> = self
                .entries
                .iter()
                .filter(|e| e.op == op && e.dtype == label)
                .collect();
            if entries.is_empty() {
                continue;
            }
            let mut batches: Vec<usize> = entries.iter().map(|e| e.batch).collect();
            let mut classes: Vec<usize> = entries.iter().map(|e| e.classes).collect();
            batches.sort_unstable();
            batches.dedup();
            classes.sort_unstable();
            classes.dedup();
            let _ = write!(
                out,
                "\n{op} ({label}): rows batch, columns classes\n{:>8}",
                ""
            );
            for c in &classes {
                let _ = write!(out, " {c:>14}");
            }
            out.push('\n');
            for b in &batches {
                let _ = write!(out, "{b:>8}");
                for c in &classes {
                    let cell = entries
                        .iter()
                        .find(|e| e.batch == *b && e.classes == *c)
                        .map_or("-".to_string(), |e| {
                            format!("{} {}T x{:.2}", e.backend, e.threads, e.margin)
                        });
                    let _ = write!(out, " {cell:>14}");
                }
                out.push('\n');
            }
        }
        out.push_str("\n(xN.NN: how much faster than the next backend; unmeasured shapes use the nearest cell in log-log space)\n");
        out
    }
}
