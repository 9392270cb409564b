//! `loss-bench verify`: every backend on every case of every vector file.

use std::fmt::Write as _;
use std::path::PathBuf;

use loss_core::LossError;
use loss_core::conformance::{self, Report, VectorFile};

use crate::backends::Resolved;

/// The outcome of one backend on one file.
pub enum BackendOutcome {
    /// The backend ran; here is its report.
    Ran(Report),
    /// The backend could not be built.
    Missing(LossError),
}

/// All outcomes for one file.
pub struct FileOutcome {
    /// The file.
    pub path: PathBuf,
    /// The cases' names, in file order.
    pub cases: Vec<String>,
    /// One entry per backend, in the order asked.
    pub backends: Vec<(String, BackendOutcome)>,
}

impl FileOutcome {
    /// Whether every backend that ran passed every case. A backend that could not be built fails
    /// the file when it was asked for by name (`required`); otherwise only an *unavailable* one
    /// (no GPU adapter on this machine) is excused — it is still listed as not run.
    pub fn passed(&self, required: bool) -> bool {
        self.backends.iter().all(|(_, o)| match o {
            BackendOutcome::Ran(r) => r.passed(),
            BackendOutcome::Missing(e) => {
                !required && e.kind() == loss_core::ErrorKind::Unavailable
            }
        })
    }
}

/// Runs the given backends on one file.
pub fn verify_file(file: &VectorFile, backends: &[Resolved]) -> FileOutcome {
    FileOutcome {
        path: file.path.clone(),
        cases: file.cases.iter().map(|c| c.name.clone()).collect(),
        backends: backends
            .iter()
            .map(|(name, b)| {
                let outcome = match b {
                    Ok(b) => BackendOutcome::Ran(conformance::run_file(b.as_ref(), file)),
                    Err(e) => BackendOutcome::Missing(e.clone()),
                };
                (name.clone(), outcome)
            })
            .collect(),
    }
}

/// A case × backend table: `pass` with the worst error in units of the tolerance, `error` for a
/// correctly returned error, `FAIL` with the worst element otherwise.
pub fn render(outcome: &FileOutcome) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "vectors: {}", outcome.path.display());
    let width = outcome
        .cases
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(4)
        .max(4);
    let col = 22;
    let _ = write!(out, "{:width$}", "case");
    for (name, _) in &outcome.backends {
        let _ = write!(out, "  {name:col$}");
    }
    out.push('\n');
    for (i, case) in outcome.cases.iter().enumerate() {
        let _ = write!(out, "{case:width$}");
        for (_, o) in &outcome.backends {
            let cell = match o {
                BackendOutcome::Missing(_) => "-".to_string(),
                BackendOutcome::Ran(r) => {
                    let c = &r.cases[i];
                    match (&c.worst, c.passed) {
                        (Some(w), true) => format!("pass {:.2e}", w.excess),
                        (None, true) => "pass (error)".to_string(),
                        (Some(w), false) => format!("FAIL {:.2e}", w.excess),
                        (None, false) => "FAIL".to_string(),
                    }
                }
            };
            let _ = write!(out, "  {cell:col$}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "(numbers: worst element's error in units of the tolerance; ≤ 1 passes)"
    );
    for (name, o) in &outcome.backends {
        match o {
            BackendOutcome::Missing(e) => {
                let _ = writeln!(out, "{name}: not run: {e}");
            }
            BackendOutcome::Ran(r) => {
                let _ = write!(out, "{r}");
            }
        }
    }
    out
}
