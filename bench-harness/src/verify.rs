//! `loss-bench verify`: every backend on every case of every vector file.

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

/// The case × backend table (loss-core's [`conformance::render_table`]).
pub fn render(outcome: &FileOutcome) -> String {
    let columns: Vec<(String, conformance::Column<'_>)> = outcome
        .backends
        .iter()
        .map(|(name, o)| {
            let column = match o {
                BackendOutcome::Ran(r) => conformance::Column::Ran(r),
                BackendOutcome::Missing(e) => conformance::Column::Missing(e.to_string()),
            };
            (name.clone(), column)
        })
        .collect();
    conformance::render_table(&outcome.path, &outcome.cases, &columns)
}
