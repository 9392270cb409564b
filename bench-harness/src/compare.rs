//! `loss-bench compare`: regressions between two result files.
//!
//! Cells are matched by backend, variant, op, batch, classes and threads. Two kinds of file:
//!
//! - **Counts** (`run --counts`): instructions and iai-callgrind's estimated cycles per call,
//!   deterministic for a build, so a cell regresses when either grows by more than the threshold
//!   (2 % by default). No noise allowance is needed, and none is made.
//! - **Timings**: each configuration was timed in several rounds spread over its run. A cell
//!   regresses only when *every* round of the current run is slower than *every* round of the
//!   baseline (each round judged by its fastest sample) by more than the threshold (10 % by default), after allowing for how much slower
//!   the machine itself was: the calibration kernel (a streaming read or copy of the same data
//!   on the same threads, timed interleaved with the samples) gives the ratio of the two runs'
//!   memory speeds, and when the current run's is lower the bar is lowered by it (never raised:
//!   the gate errs towards silence). And the drop must exceed [`NOISE_FACTOR`] times the noise
//!   within the rounds (the samples' spread, or how far the fastest sample is from the median):
//!   a configuration whose samples scatter widely (a parallel backend on a machine whose second
//!   core comes and goes) cannot be judged from two runs, and is not. Results timed in one round (peers, older files) are listed but not
//!   judged.
//!
//!   Why not divide by the calibration outright: on the reference VM the kernels of small and
//!   medium cells are bound by arithmetic, not memory, and their times moved less between runs
//!   than the calibration's did, so dividing added noise.
//!
//! In both kinds a cell that agreed with the reference and no longer does is a regression.
//! Timings compared across runs are for a dedicated, quiet machine; on a shared CI machine, gate
//! on counts, and judge a change with `ab` (both builds in one run).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::error::Error;
use crate::schema::{CellResult, RunReport};

/// The default threshold for timings.
pub const DEFAULT_TIMING_THRESHOLD: f64 = 0.10;
/// The default threshold for counts.
pub const DEFAULT_COUNTS_THRESHOLD: f64 = 0.02;

/// One matched cell.
#[derive(Debug, Clone)]
pub struct Change {
    /// `backend[/variant] op NxC threads`.
    pub cell: String,
    /// What was compared (`calibrated speed`, `throughput`, `instructions`, …).
    pub measure: &'static str,
    /// Baseline figure (median of its rounds, or the count).
    pub baseline: f64,
    /// Current figure.
    pub current: f64,
    /// `current / baseline` for speeds, `baseline / current` for counts: below 1 is worse.
    pub ratio: f64,
    /// The larger within-round noise of the two runs (see `round_spread`; 0 for counts).
    pub noise: f64,
    /// Whether the cell was judged at all.
    pub gated: bool,
    /// Why it regressed, when it did.
    pub reason: Option<String>,
}

impl Change {
    /// Whether this is a regression.
    pub fn regressed(&self) -> bool {
        self.reason.is_some()
    }
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
    /// The threshold used.
    pub threshold: f64,
}

impl Comparison {
    /// The regressed cells.
    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.regressed())
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

/// Each round's speed (calls per second, from its fastest sample: interference only ever slows a
/// call, so the fastest sample is the least disturbed), and how much slower the machine's memory was in the
/// current run than in the baseline: the ratio of the medians of the calibration kernel's speed,
/// capped at 1 (1 when either result has no calibration).
fn round_speeds(b: &CellResult, c: &CellResult) -> (Vec<f64>, Vec<f64>, f64) {
    let speeds = |r: &CellResult| -> Vec<f64> {
        r.rounds
            .iter()
            .map(|x| {
                1e9 / if x.min_ns > 0.0 {
                    x.min_ns
                } else {
                    x.median_ns
                }
            })
            .collect()
    };
    let calibration = |r: &CellResult| -> Option<f64> {
        let v: Option<Vec<f64>> = r
            .rounds
            .iter()
            .map(|x| x.calibration_ns.map(|c| 1e9 / c))
            .collect();
        v.map(|v| crate::timing::median(&v))
    };
    let allowance = match (calibration(b), calibration(c)) {
        (Some(x), Some(y)) => (y / x).min(1.0),
        _ => 1.0,
    };
    (speeds(b), speeds(c), allowance)
}

/// How far a drop must exceed the noise within rounds, in units of it.
pub const NOISE_FACTOR: f64 = 2.0;

/// A result's noise: the median over rounds of the larger of the samples' spread
/// ((p90 − p10) / median) and the distance of the fastest sample from the median
/// ((median − fastest) / median). The second catches a configuration whose samples are mostly
/// in a slow mode with a rare fast one (measured: rayon on two threads of the reference VM,
/// whose second worker often wakes too late to help with a sub-millisecond call), which the
/// spread alone misses.
fn round_spread(r: &CellResult) -> f64 {
    let v: Vec<f64> = r
        .rounds
        .iter()
        .map(|x| {
            let fast = if x.min_ns > 0.0 {
                (x.median_ns - x.min_ns) / x.median_ns
            } else {
                0.0
            };
            x.spread.max(fast)
        })
        .collect();
    crate::timing::median(&v)
}

fn timing_change(b: &CellResult, c: &CellResult, threshold: f64) -> Change {
    let mut change = Change {
        cell: describe(c),
        measure: "not judged (timed in one round)",
        baseline: b.elements_per_second,
        current: c.elements_per_second,
        ratio: c.elements_per_second / b.elements_per_second,
        noise: 0.0,
        gated: false,
        reason: None,
    };
    if b.agrees && !c.agrees {
        change.reason = Some("no longer agrees with the reference".into());
        return change;
    }
    if b.rounds.len() < 2 || c.rounds.len() < 2 {
        return change;
    }
    let (bf, cf, allowance) = round_speeds(b, c);
    let (bmed, cmed) = (crate::timing::median(&bf), crate::timing::median(&cf));
    let blo = bf.iter().copied().fold(f64::INFINITY, f64::min);
    let chi = cf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    change.measure = "calls/s";
    change.baseline = bmed;
    change.current = cmed;
    change.ratio = cmed / bmed;
    change.noise = round_spread(b).max(round_spread(c));
    change.gated = true;
    let drop = 1.0 - change.ratio;
    let separated = chi < (1.0 - threshold) * blo * allowance;
    if separated && drop > NOISE_FACTOR * change.noise {
        change.reason = Some(format!(
            "every round {:.1}%+ slower (best current round {:.4e} calls/s < worst baseline round \
             {:.4e} − {:.0}%{}), beyond {NOISE_FACTOR}× the rounds' own noise ({:.1}%)",
            (1.0 - chi / blo) * 100.0,
            chi,
            blo,
            threshold * 100.0,
            if allowance < 1.0 {
                format!(", × {allowance:.3} for the slower memory of the current run")
            } else {
                String::new()
            },
            change.noise * 100.0
        ));
    }
    change
}

fn counts_changes(b: &CellResult, c: &CellResult, threshold: f64) -> Vec<Change> {
    let (Some(bc), Some(cc)) = (&b.counts, &c.counts) else {
        return Vec::new();
    };
    let agree_reason =
        (b.agrees && !c.agrees).then(|| "no longer agrees with the reference".to_string());
    [
        ("instructions", bc.instructions, cc.instructions),
        ("estimated cycles", bc.estimated_cycles, cc.estimated_cycles),
    ]
    .into_iter()
    .map(|(measure, base, cur)| {
        let grew = cur / base - 1.0;
        let reason = agree_reason.clone().or_else(|| {
            (grew > threshold).then(|| {
                format!(
                    "{measure} +{:.2}% ({base:.0} → {cur:.0} per call; threshold {:.1}%)",
                    grew * 100.0,
                    threshold * 100.0
                )
            })
        });
        Change {
            cell: describe(c),
            measure,
            baseline: base,
            current: cur,
            ratio: base / cur,
            noise: 0.0,
            gated: true,
            reason,
        }
    })
    .collect()
}

/// Compares `current` against `baseline`. `max_regression` (a fraction) defaults to 10 % for
/// timings and 2 % for counts; a timings file cannot be compared with a counts file.
pub fn compare(
    baseline: &RunReport,
    current: &RunReport,
    max_regression: Option<f64>,
) -> Result<Comparison, Error> {
    let counts = match (baseline.is_counts(), current.is_counts()) {
        (true, true) => true,
        (false, false) => false,
        _ => {
            return Err(Error::Mismatch(
                "one file has counts (run --counts) and the other timings".into(),
            ));
        }
    };
    let threshold = max_regression.unwrap_or(if counts {
        DEFAULT_COUNTS_THRESHOLD
    } else {
        DEFAULT_TIMING_THRESHOLD
    });
    let base: BTreeMap<_, _> = baseline.results.iter().map(|r| (r.key(), r)).collect();
    let cur: BTreeMap<_, _> = current.results.iter().map(|r| (r.key(), r)).collect();
    let mut out = Comparison {
        threshold,
        ..Comparison::default()
    };
    for (key, b) in &base {
        let Some(c) = cur.get(key) else {
            out.missing.push(describe(b));
            continue;
        };
        if counts {
            out.changes.extend(counts_changes(b, c, threshold));
        } else {
            out.changes.push(timing_change(b, c, threshold));
        }
    }
    out.added = cur
        .iter()
        .filter(|(k, _)| !base.contains_key(k))
        .map(|(_, r)| describe(r))
        .collect();
    Ok(out)
}

/// Parses `10%`, `10` or `0.1` into a fraction.
pub fn parse_threshold(s: &str) -> Result<f64, Error> {
    let (num, percent) = match s.strip_suffix('%') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|e| Error::Usage(format!("{s:?}: {e}")))?;
    let frac = if percent || v >= 1.0 { v / 100.0 } else { v };
    if (0.0..1.0).contains(&frac) {
        Ok(frac)
    } else {
        Err(Error::Usage(format!(
            "{s:?} is not a threshold between 0% and 100%"
        )))
    }
}

/// The table of changes.
pub fn render(c: &Comparison) -> String {
    let rows: Vec<[String; 7]> = c
        .changes
        .iter()
        .map(|x| {
            [
                x.cell.clone(),
                x.measure.to_string(),
                format!("{:.4e}", x.baseline),
                format!("{:.4e}", x.current),
                format!("{:.3}", x.ratio),
                format!("{:.1}%", x.noise * 100.0),
                match (&x.reason, x.gated) {
                    (Some(r), _) => format!("REGRESSED: {r}"),
                    (None, true) => "ok".into(),
                    (None, false) => "-".into(),
                },
            ]
        })
        .collect();
    let mut out = crate::format::aligned(
        &[
            "cell",
            "measure",
            "baseline",
            "current",
            "ratio",
            "rounds range",
            "verdict",
        ],
        &rows,
        2,
    );
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
    use crate::schema::{Op, RoundResult};

    /// A result whose rounds took `times` ns (fastest sample = median), with calibration
    /// `calibration` ns and within-round spread `spread`.
    fn result(times: &[f64], calibration: f64, spread: f64) -> CellResult {
        CellResult {
            backend: "cpu".into(),
            variant: String::new(),
            op: Op::Forward,
            batch: 64,
            classes: 1000,
            dtype: "f32".into(),
            threads: 1,
            elements: 64_000,
            median_ns: times[0],
            min_ns: times[0],
            spread,
            reps: 10,
            elements_per_second: 64_000.0 / times[0] * 1e9,
            bytes_per_second: 0.0,
            bandwidth_gbps: 1.0,
            bandwidth_fraction: 0.5,
            gpu_median_ns: None,
            gpu_bandwidth_fraction: None,
            in_cache: false,
            over_ceiling: false,
            max_rel_error: 0.0,
            agrees: true,
            rounds: times
                .iter()
                .map(|&t| RoundResult {
                    median_ns: t,
                    min_ns: t,
                    spread,
                    calibration_ns: Some(calibration),
                    calls: 10,
                    cpu_per_wall: None,
                })
                .collect(),
            calibrated: None,
            counts: None,
            cpu_per_wall: None,
            honest: None,
            note: None,
        }
    }

    fn judged(b: CellResult, c: CellResult) -> Change {
        timing_change(&b, &c, DEFAULT_TIMING_THRESHOLD)
    }

    #[test]
    fn a_consistent_slowdown_beyond_the_threshold_regresses() {
        let c = judged(
            result(&[100.0, 102.0, 101.0], 50.0, 0.02),
            result(&[121.0, 120.0, 123.0], 50.0, 0.02),
        );
        assert!(c.gated && c.regressed(), "{c:?}");
        assert!((c.ratio - 101.0 / 121.0).abs() < 1e-9);
    }

    #[test]
    fn overlapping_rounds_noisy_samples_or_slower_memory_do_not() {
        // One current round as fast as the slowest baseline round.
        let c = judged(
            result(&[100.0, 112.0, 101.0], 50.0, 0.02),
            result(&[121.0, 120.0, 101.0], 50.0, 0.02),
        );
        assert!(!c.regressed(), "{c:?}");
        // Samples within rounds scatter by 30%: a 20% drop cannot be judged.
        let c = judged(
            result(&[100.0, 102.0, 101.0], 50.0, 0.3),
            result(&[121.0, 120.0, 123.0], 50.0, 0.3),
        );
        assert!(c.gated && !c.regressed(), "{c:?}");
        // The whole machine's memory was 25% slower in the current run.
        let c = judged(
            result(&[100.0, 102.0, 101.0], 50.0, 0.02),
            result(&[121.0, 120.0, 123.0], 66.0, 0.02),
        );
        assert!(!c.regressed(), "{c:?}");
        // But faster memory does not make the bar stricter.
        let c = judged(
            result(&[100.0, 102.0, 101.0], 50.0, 0.02),
            result(&[108.0, 109.0, 108.0], 30.0, 0.02),
        );
        assert!(!c.regressed(), "{c:?}");
    }

    #[test]
    fn single_round_results_are_not_judged_but_disagreement_is() {
        let mut b = result(&[100.0], 50.0, 0.0);
        let mut c = result(&[500.0], 50.0, 0.0);
        assert!(!judged(b.clone(), c.clone()).gated);
        c.agrees = false;
        assert!(judged(b.clone(), c.clone()).regressed());
        b.agrees = false;
        assert!(!judged(b, c).regressed());
    }

    #[test]
    fn thresholds_parse() {
        assert_eq!(parse_threshold("10%").unwrap(), 0.1);
        assert_eq!(parse_threshold("0.25").unwrap(), 0.25);
        assert_eq!(parse_threshold("5").unwrap(), 0.05);
        assert!(parse_threshold("150%").is_err());
        assert!(parse_threshold("fast").is_err());
    }
}
