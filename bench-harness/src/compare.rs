//! `loss-bench compare`: regressions between two result files.
//!
//! Cells are matched by backend, variant, op, batch, classes and threads. The compared figure is
//! the bandwidth fraction — throughput divided by the bandwidth each run measured on its own
//! machine — so a CI machine with slower memory is not a regression. A cell regresses when its
//! figure drops by more than the threshold *and* by more than the noise both runs measured
//! (the sum of their relative spreads), or when it agreed with the reference before and no longer
//! does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::schema::{CellResult, RunReport};

/// One matched cell.
#[derive(Debug, Clone)]
pub struct Change {
    /// `backend[/variant] op NxC threads`.
    pub cell: String,
    /// Baseline bandwidth fraction.
    pub baseline: f64,
    /// Current bandwidth fraction.
    pub current: f64,
    /// `current / baseline`.
    pub ratio: f64,
    /// The relative noise both runs measured.
    pub noise: f64,
    /// Whether this is a regression.
    pub regressed: bool,
    /// Why, when it is.
    pub reason: Option<String>,
}

/// The result of comparing two files.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Matched cells, in a stable order.
    pub changes: Vec<Change>,
    /// Cells of the baseline absent from the current run.
    pub missing: Vec<String>,
    /// Cells new in the current run.
    pub added: Vec<String>,
}

impl Comparison {
    /// The regressed cells.
    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.regressed)
    }
}

fn describe(r: &CellResult) -> String {
    format!(
        "{} {} {}x{} {}T",
        r.label(),
        r.op,
        r.batch,
        r.classes,
        r.threads
    )
}

/// Compares `current` against `baseline` with a threshold such as 0.10 for 10%.
pub fn compare(baseline: &RunReport, current: &RunReport, max_regression: f64) -> Comparison {
    let base: BTreeMap<_, _> = baseline.results.iter().map(|r| (r.key(), r)).collect();
    let cur: BTreeMap<_, _> = current.results.iter().map(|r| (r.key(), r)).collect();
    let mut out = Comparison::default();
    for (key, b) in &base {
        let Some(c) = cur.get(key) else {
            out.missing.push(describe(b));
            continue;
        };
        let ratio = c.bandwidth_fraction / b.bandwidth_fraction;
        let noise = b.spread + c.spread;
        let drop = 1.0 - ratio;
        let reason = if b.agrees && !c.agrees {
            Some("no longer agrees with the reference".to_string())
        } else if drop > max_regression && drop > noise {
            Some(format!(
                "{:.1}% slower (threshold {:.0}%, measured noise {:.1}%)",
                drop * 100.0,
                max_regression * 100.0,
                noise * 100.0
            ))
        } else {
            None
        };
        out.changes.push(Change {
            cell: describe(c),
            baseline: b.bandwidth_fraction,
            current: c.bandwidth_fraction,
            ratio,
            noise,
            regressed: reason.is_some(),
            reason,
        });
    }
    out.added = cur
        .iter()
        .filter(|(k, _)| !base.contains_key(k))
        .map(|(_, r)| describe(r))
        .collect();
    out
}

/// Parses `10%`, `10` or `0.1` into a fraction.
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    let (num, percent) = match s.strip_suffix('%') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v: f64 = num.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let frac = if percent || v >= 1.0 { v / 100.0 } else { v };
    if (0.0..1.0).contains(&frac) {
        Ok(frac)
    } else {
        Err(format!("{s:?} is not a threshold between 0% and 100%"))
    }
}

/// The table of changes.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let width = c
        .changes
        .iter()
        .map(|x| x.cell.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:width$}  {:>9}  {:>9}  {:>7}  {:>6}  verdict",
        "cell", "base bw%", "cur bw%", "ratio", "noise"
    );
    for x in &c.changes {
        let _ = writeln!(
            out,
            "{:width$}  {:>8.1}%  {:>8.1}%  {:>7.3}  {:>5.1}%  {}",
            x.cell,
            x.baseline * 100.0,
            x.current * 100.0,
            x.ratio,
            x.noise * 100.0,
            x.reason
                .as_deref()
                .map_or("ok".to_string(), |r| format!("REGRESSED: {r}"))
        );
    }
    for m in &c.missing {
        let _ = writeln!(out, "missing in current run: {m}");
    }
    for a in &c.added {
        let _ = writeln!(out, "new in current run: {a}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse() {
        assert_eq!(parse_threshold("10%").unwrap(), 0.1);
        assert_eq!(parse_threshold("0.25").unwrap(), 0.25);
        assert_eq!(parse_threshold("5").unwrap(), 0.05);
        assert!(parse_threshold("150%").is_err());
        assert!(parse_threshold("fast").is_err());
    }
}
