//! `loss-bench recommend`: the [`Profile`] of a run, which a deployment loads with the
//! `loss-profile` crate (re-exported here) to pick its backend in code.
//!
//! ```no_run
//! use loss_profile::{Op, Profile};
//! let profile = Profile::load("profile.json".as_ref()).unwrap();
//! let backend = profile.backend_for(Op::ForwardBackward, 512, 50_000).unwrap();
//! ```

pub use loss_profile::{PROFILE_SCHEMA, Profile, ProfileEntry};

use crate::backends;
use crate::schema::{Op, RunReport};

/// The fastest agreeing workspace backend per cell of a run (rows that used more CPUs than
/// their thread count left out).
pub fn profile_of(report: &RunReport) -> Profile {
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
                    && r.honest != Some(false)
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
