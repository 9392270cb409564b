//! # loss-profile: the measured fastest backend for a shape
//!
//! `loss-bench run` measures every backend of the workspace per shape, and `loss-bench recommend`
//! turns a run into a [`Profile`]: for every measured (operation, batch, classes, element type)
//! the fastest backend that agreed with the reference. A deployment loads the profile with this
//! crate alone — the backends and serde, none of the harness's command line, plotting or probes —
//! and asks it for the backend of any shape: the measured cell nearest to it in log-batch ×
//! log-classes space, so each measured cell owns the region of shapes around it.
//!
//! ```no_run
//! use loss_profile::{Op, Profile};
//! let profile = Profile::load("profile.json".as_ref())?;
//! let backend = profile.backend_for(Op::ForwardBackward, 512, 50_000)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`WorkspaceBackend`] is the one place that turns a backend's name into the backend
//! (`cpu`, `rayon` with a thread count, `wgpu`, `reference`); the harness and the Python package
//! build theirs through it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use loss_core::{DType, LossBackend, LossError, Problem};
use serde::{Deserialize, Serialize};

/// The profile schema tag.
pub const PROFILE_SCHEMA: &str = "loss-bench-profile/1";

/// What is computed: the operation a profile entry (and a benchmark result) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The loss alone (reads the logits once).
    Forward,
    /// The gradient alone, for a given upstream gradient (reads logits, writes the gradient).
    Backward,
    /// Loss and gradient in one call.
    ForwardBackward,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 3] = [Op::Forward, Op::Backward, Op::ForwardBackward];

    /// The snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Forward => "forward",
            Op::Backward => "backward",
            Op::ForwardBackward => "forward_backward",
        }
    }

    /// Parses a name: exactly the names of [`Op::as_str`], the one spelling used by the command
    /// line, the JSON and the tables.
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Bytes of memory traffic per logit of `dtype`: one element read for forward; one read
    /// and one (gradient, in the same type) written otherwise.
    pub fn bytes_per_element(self, dtype: DType) -> f64 {
        let size = dtype.size() as f64;
        match self {
            Op::Forward => size,
            Op::Backward | Op::ForwardBackward => 2.0 * size,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The element type of a result's `dtype` label (`bf16+z0.0001+cap30` → bf16; `f32` when it
/// names none).
pub fn dtype_of(label: &str) -> DType {
    DType::parse(label.split('+').next().unwrap_or("f32")).unwrap_or_default()
}

/// `"f32"`: the `dtype` label of results written before there was a choice.
pub fn f32_name() -> String {
    "f32".to_string()
}

/// A backend of this workspace, built by name.
pub enum WorkspaceBackend {
    /// `cpu`: loss-cpu's single-threaded kernels.
    Cpu(loss_cpu::CpuBackend),
    /// `rayon`: loss-cpu's kernels on a pool of its own.
    Rayon(loss_rayon::RayonBackend),
    /// `wgpu`: WGSL compute shaders (boxed: a device's state is large, and built once).
    Wgpu(Box<loss_wgpu::WgpuBackend>),
    /// `reference`: loss-core's `f64` oracle (slow on purpose; a profile names it only when
    /// nothing else was measured).
    Reference(loss_core::ReferenceBackend),
}

impl WorkspaceBackend {
    /// The names [`WorkspaceBackend::build`] takes, in report order.
    pub const NAMES: [&'static str; 4] = ["cpu", "rayon", "wgpu", "reference"];

    /// The `cpu` backend (it has no state to build).
    pub fn cpu() -> loss_cpu::CpuBackend {
        loss_cpu::CpuBackend::new()
    }

    /// Builds the backend called `name`; `threads` is rayon's pool size (`None` or 0: one per
    /// available core) and is ignored by the others. An unknown name is
    /// [`LossError::Unsupported`]; a backend that cannot run here (wgpu without an adapter) is
    /// [`LossError::Unavailable`].
    pub fn build(name: &str, threads: Option<usize>) -> Result<Self, LossError> {
        match name {
            "cpu" => Ok(WorkspaceBackend::Cpu(loss_cpu::CpuBackend::new())),
            "rayon" => Ok(WorkspaceBackend::Rayon(loss_rayon::RayonBackend::new(
                threads.unwrap_or(0),
            )?)),
            "wgpu" => Ok(WorkspaceBackend::Wgpu(Box::new(
                loss_wgpu::WgpuBackend::new()?,
            ))),
            "reference" => Ok(WorkspaceBackend::Reference(
                loss_core::ReferenceBackend::new(),
            )),
            other => Err(LossError::Unsupported {
                backend: other.to_string(),
                feature: format!(
                    "this build (workspace backends: {})",
                    Self::NAMES.join(", ")
                ),
            }),
        }
    }

    /// The backend as a trait object.
    pub fn boxed(self) -> Box<dyn LossBackend> {
        match self {
            WorkspaceBackend::Cpu(b) => Box::new(b),
            WorkspaceBackend::Rayon(b) => Box::new(b),
            WorkspaceBackend::Wgpu(b) => b,
            WorkspaceBackend::Reference(b) => Box::new(b),
        }
    }
}

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
    #[serde(default = "f32_name")]
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

/// Why a profile could not be read or written.
#[derive(Debug)]
pub enum ProfileError {
    /// The file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not JSON of the profile's shape.
    Json {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: serde_json::Error,
    },
    /// The file is another schema's (a run's results, say).
    Schema {
        /// The file.
        path: PathBuf,
        /// Its schema tag.
        found: String,
    },
}

impl std::fmt::Display for ProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProfileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ProfileError::Json { path, source } => {
                write!(f, "{}: not a profile: {source}", path.display())
            }
            ProfileError::Schema { path, found } => write!(
                f,
                "{}: schema {found:?}, expected {PROFILE_SCHEMA:?} (make one with `loss-bench recommend`)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ProfileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProfileError::Io { source, .. } => Some(source),
            ProfileError::Json { source, .. } => Some(source),
            ProfileError::Schema { .. } => None,
        }
    }
}

impl Profile {
    /// Reads a profile.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let p: Profile = serde_json::from_str(&text).map_err(|source| ProfileError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if p.schema != PROFILE_SCHEMA {
            return Err(ProfileError::Schema {
                path: path.to_path_buf(),
                found: p.schema,
            });
        }
        Ok(p)
    }

    /// Writes a profile.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let text = serde_json::to_string_pretty(self).map_err(|source| ProfileError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The measured entry nearest to `(batch, classes)` in log-log space for `op` (forward falls
    /// back to forward_backward entries and the reverse when the profile lacks that op).
    pub fn choose(&self, op: Op, batch: usize, classes: usize) -> Option<&ProfileEntry> {
        self.choose_for(op, batch, classes, DType::F32)
    }

    /// [`Profile::choose`] among the entries measured in `dtype` (all entries when there are
    /// none of that type).
    pub fn choose_for(
        &self,
        op: Op,
        batch: usize,
        classes: usize,
        dtype: DType,
    ) -> Option<&ProfileEntry> {
        let lb = (batch.max(1) as f64).ln();
        let lc = (classes.max(1) as f64).ln();
        let typed = self.entries.iter().any(|e| dtype_of(&e.dtype) == dtype);
        let nearest = |op: Op| {
            self.entries
                .iter()
                .filter(|e| e.op == op && (!typed || dtype_of(&e.dtype) == dtype))
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
        self.backend_for_dtype(op, batch, classes, DType::F32)
    }

    /// [`Profile::backend_for`] for logits of `dtype`.
    pub fn backend_for_dtype(
        &self,
        op: Op,
        batch: usize,
        classes: usize,
        dtype: DType,
    ) -> Result<Box<dyn LossBackend>, LossError> {
        let entry =
            self.choose_for(op, batch, classes, dtype)
                .ok_or_else(|| LossError::Unsupported {
                    backend: "profile".into(),
                    feature: "an empty profile (no agreeing backend was measured)".into(),
                })?;
        Ok(WorkspaceBackend::build(&entry.backend, Some(entry.threads))?.boxed())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Op, batch: usize, classes: usize, dtype: &str, backend: &str) -> ProfileEntry {
        ProfileEntry {
            op,
            batch,
            classes,
            dtype: dtype.into(),
            backend: backend.into(),
            threads: 2,
            elements_per_second: 1e9,
            margin: 1.2,
        }
    }

    fn profile() -> Profile {
        Profile {
            schema: PROFILE_SCHEMA.into(),
            machine: "test".into(),
            measured_unix: 0,
            entries: vec![
                entry(Op::Forward, 1, 100, "f32", "cpu"),
                entry(Op::Forward, 4096, 100_000, "f32", "rayon"),
                entry(Op::ForwardBackward, 4096, 100_000, "bf16", "wgpu"),
            ],
        }
    }

    #[test]
    fn the_nearest_cell_in_log_space_wins() {
        let p = profile();
        assert_eq!(p.choose(Op::Forward, 2, 300).unwrap().backend, "cpu");
        assert_eq!(
            p.choose(Op::Forward, 1000, 60_000).unwrap().backend,
            "rayon"
        );
        // An op without entries of its own falls back to another's.
        assert_eq!(p.choose(Op::Backward, 1, 100).unwrap().backend, "cpu");
        // The element type narrows the choice when the profile has it.
        let bf = p
            .choose_for(Op::ForwardBackward, 1, 100, DType::Bf16)
            .unwrap();
        assert_eq!(bf.backend, "wgpu");
    }

    #[test]
    fn profiles_round_trip_and_other_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("loss-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        profile().save(&path).unwrap();
        assert_eq!(Profile::load(&path).unwrap(), profile());
        std::fs::write(
            &path,
            r#"{"schema": "loss-bench/1", "machine": "", "measured_unix": 0, "entries": []}"#,
        )
        .unwrap();
        assert!(matches!(
            Profile::load(&path),
            Err(ProfileError::Schema { .. })
        ));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            Profile::load(&path),
            Err(ProfileError::Json { .. })
        ));
        assert!(matches!(
            Profile::load(&dir.join("missing.json")),
            Err(ProfileError::Io { .. })
        ));
    }

    #[test]
    fn backends_are_built_by_name() {
        assert!(matches!(
            WorkspaceBackend::build("cpu", None),
            Ok(WorkspaceBackend::Cpu(_))
        ));
        let rayon = WorkspaceBackend::build("rayon", Some(2)).unwrap().boxed();
        assert_eq!(rayon.name(), "rayon");
        let e = WorkspaceBackend::build("nope", None).err().unwrap();
        assert_eq!(e.kind(), loss_core::ErrorKind::Unsupported);
    }
}
