//! `loss-bench ab --against OTHER`: two builds timed in one run, interleaved sample by sample.
//!
//! Both builds run as [`worker`] processes — this binary and `OTHER` — driven
//! identically, so neither has an advantage of being the driver. For each configuration both
//! workers prepare it (each checks its own answer against its own reference; they prepare at the
//! same time, one per core), then the driver asks them for samples in turn, `A B B A A B …`:
//! consecutive samples are milliseconds apart, so the drift of the machine (bandwidth that moves
//! by tens of percent over minutes) hits both alike, and alternating who goes first cancels
//! any advantage of going first. While one worker is timed the other waits on its input.
//!
//! What is fixed for a process — where its code, stack and buffers land — moves a small kernel's
//! speed by several percent (measured: two processes of one build differed by up to 12 % on
//! 130 ns calls, with tight intervals, run after run), so one pair of processes would compare
//! two placements, not two builds. So each configuration is timed in several blocks, each in a
//! new pair of worker processes whose buffers and stack are also moved by random pads, and the
//! pairs are split between the blocks.
//!
//! The statistic is the ratio of paired samples, `against / current` time (above 1: the current
//! build is faster), summarised by its median over pairs with a 95 % interval from a two-level
//! bootstrap (blocks, then pairs within them; 2000 resamples, a fixed seed per configuration, so
//! the same samples give the same interval). The
//! verdict is `faster` / `slower` only when the whole interval lies beyond `min_effect` (3 % by
//! default: above what two processes of one build differ by, bench-harness/NOTES.md), `same`
//! otherwise.
//! `--fail-above X` fails only a configuration whose whole interval says it is more than `X`
//! slower.
//!
//! `--against-backend NAME [--against-threads N]` compares two backends instead of two builds
//! (`--against` defaults to this binary then): every configuration's other side runs `NAME` at
//! `N` threads (1 by default) on the same cell and op, so `--backend rayon --threads 2
//! --against-backend cpu` gives rayon's speed-up over loss-cpu with the machine's drift (and the
//! other core's load) hitting both alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backends;
use crate::error::Error;
use crate::instances::Variant;
use crate::options::RunOptions;
use crate::schema::{Op, Skipped};
use crate::timing;
use crate::worker::{self, Client, Config};

/// The schema tag of `ab` result files.
pub const AB_SCHEMA: &str = "loss-bench-ab/1";

/// How an `ab` run samples.
#[derive(Debug, Clone, Copy)]
pub struct AbBudget {
    /// At least this many pairs per configuration.
    pub min_pairs: usize,
    /// At most this many.
    pub max_pairs: usize,
    /// Stop once both sides together have been timed this long (after `min_pairs`).
    pub target: Duration,
    /// Each sample lasts at least this long.
    pub sample: Duration,
    /// The configuration is prepared this many times, each at a new random placement of its
    /// buffers and stack, and the pairs are split evenly between them (cells of at most
    /// [`SMALL_CELL_BYTES`], whose speed depends on placement the most).
    pub blocks: usize,
    /// Placements of a larger cell (its buffers are whole pages apart anyway; rebuilding a large
    /// cell costs time).
    pub large_blocks: usize,
}

/// Cells of at most this many bytes of logits get [`AbBudget::blocks`] placements.
pub const SMALL_CELL_BYTES: usize = 16 << 20;

impl AbBudget {
    /// The budget of a normal or a `--quick` run.
    pub fn for_run(quick: bool) -> Self {
        if quick {
            AbBudget {
                min_pairs: 10,
                max_pairs: 100,
                target: Duration::from_millis(300),
                sample: Duration::from_millis(1),
                blocks: 4,
                large_blocks: 2,
            }
        } else {
            AbBudget {
                min_pairs: 20,
                max_pairs: 300,
                target: Duration::from_millis(1500),
                sample: Duration::from_millis(2),
                blocks: 8,
                large_blocks: 2,
            }
        }
    }
}

/// Everything `ab` needs.
#[derive(Debug, Clone)]
pub struct AbOptions {
    /// The grid, backends, ops and threads, as for `run`.
    pub run: RunOptions,
    /// The other build's `loss-bench`.
    pub against: PathBuf,
    /// The other side's backend and thread count, when it is not the configuration's own.
    pub against_backend: Option<(String, usize)>,
    /// This build's `loss-bench` (the running executable by default).
    pub current: PathBuf,
    /// Differences smaller than this are `same`.
    pub min_effect: f64,
    /// Fail when a configuration is slower than this with confidence.
    pub fail_above: Option<f64>,
}

/// The verdict on one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval says the current build is faster by more than `min_effect`.
    Faster,
    /// The whole interval says it is slower by more than `min_effect`.
    Slower,
    /// Neither.
    Same,
    /// One side's outputs disagree with its reference: not timed.
    Disagrees,
}

impl Verdict {
    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
            Verdict::Same => "same",
            Verdict::Disagrees => "DISAGREES",
        }
    }
}

/// One block of an A/B: the current build's and the other build's samples, in pairs.
pub type Block = (Vec<f64>, Vec<f64>);

/// A paired comparison: speed ratio current / against with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// Median over pairs of `against_ns / current_ns`.
    pub ratio: f64,
    /// 2.5 % bootstrap quantile of that median.
    pub low: f64,
    /// 97.5 % bootstrap quantile.
    pub high: f64,
    /// Pairs.
    pub pairs: usize,
}

impl Paired {
    /// Compares paired samples (ns per call, same length, non-empty); `seed` fixes the
    /// bootstrap.
    pub fn of(current: &[f64], against: &[f64], seed: u64) -> Paired {
        let logs: Vec<f64> = current
            .iter()
            .zip(against)
            .map(|(c, a)| (a / c).ln())
            .collect();
        let n = logs.len();
        let mut rng = crate::workload::Rng::new(seed);
        let mut medians: Vec<f64> = (0..2000)
            .map(|_| {
                let resample: Vec<f64> = (0..n)
                    .map(|_| logs[(rng.next_u64() % n as u64) as usize])
                    .collect();
                timing::median(&resample)
            })
            .collect();
        medians.sort_by(f64::total_cmp);
        Paired {
            ratio: timing::median(&logs).exp(),
            low: timing::percentile(&medians, 0.025).exp(),
            high: timing::percentile(&medians, 0.975).exp(),
            pairs: n,
        }
    }

    /// Compares blocks of paired samples (each block one placement of the buffers): the median
    /// over every pair, with an interval from a two-level bootstrap (blocks drawn with
    /// replacement, then pairs within each drawn block), so that a difference between
    /// placements widens the interval instead of passing for a difference between builds.
    pub fn of_blocks(blocks: &[Block], seed: u64) -> Paired {
        if blocks.len() == 1 {
            return Paired::of(&blocks[0].0, &blocks[0].1, seed);
        }
        let logs: Vec<Vec<f64>> = blocks
            .iter()
            .map(|(c, a)| c.iter().zip(a).map(|(c, a)| (a / c).ln()).collect())
            .collect();
        let all: Vec<f64> = logs.iter().flatten().copied().collect();
        let mut rng = crate::workload::Rng::new(seed);
        let mut medians: Vec<f64> = (0..2000)
            .map(|_| {
                let mut resample = Vec::with_capacity(all.len());
                for _ in 0..logs.len() {
                    let block = &logs[rng.below(logs.len())];
                    for _ in 0..block.len() {
                        resample.push(block[rng.below(block.len())]);
                    }
                }
                timing::median(&resample)
            })
            .collect();
        medians.sort_by(f64::total_cmp);
        Paired {
            ratio: timing::median(&all).exp(),
            low: timing::percentile(&medians, 0.025).exp(),
            high: timing::percentile(&medians, 0.975).exp(),
            pairs: all.len(),
        }
    }

    /// `faster`, `slower` or `same`, beyond `min_effect` (a fraction).
    pub fn verdict(&self, min_effect: f64) -> Verdict {
        if self.low > 1.0 + min_effect {
            Verdict::Faster
        } else if self.high < 1.0 / (1.0 + min_effect) {
            Verdict::Slower
        } else {
            Verdict::Same
        }
    }

    /// The slowdown (current time / against time − 1) the whole interval exceeds; ≤ 0 when it
    /// is not slower with confidence.
    pub fn confident_slowdown(&self) -> f64 {
        1.0 / self.high - 1.0
    }
}

/// One compared configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbResult {
    /// Backend.
    pub backend: String,
    /// Variant (`resident`, or empty).
    pub variant: String,
    /// Operation.
    pub op: Op,
    /// `N`.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// Threads.
    pub threads: usize,
    /// Median ns per call of the current build over the pairs.
    pub current_ns: f64,
    /// Median ns per call of the other build.
    pub against_ns: f64,
    /// The paired comparison (absent when a side disagrees).
    pub paired: Option<Paired>,
    /// The verdict.
    pub verdict: Verdict,
    /// Whether it fails `--fail-above`.
    pub fails: bool,
    /// The current build's check.
    pub current_agrees: bool,
    /// The other build's check.
    pub against_agrees: bool,
    /// Worst error of the current build against its reference.
    pub current_max_rel_error: f64,
    /// Worst error of the other build against its reference.
    pub against_max_rel_error: f64,
}

impl AbResult {
    /// `backend[/variant] op NxC T`.
    pub fn describe(&self) -> String {
        let label = if self.variant.is_empty() {
            self.backend.clone()
        } else {
            format!("{}/{}", self.backend, self.variant)
        };
        format!(
            "{label} {} {}x{} {}T",
            self.op, self.batch, self.classes, self.threads
        )
    }
}

/// One side of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// The binary.
    pub path: String,
    /// Its harness version.
    pub version: String,
    /// The backend and thread count this side ran, when not the configuration's
    /// (`--against-backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// A whole `ab` result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbReport {
    /// Always [`AB_SCHEMA`].
    pub schema: String,
    /// Start of the run, Unix seconds.
    pub created_unix: u64,
    /// This build.
    pub current: Side,
    /// The other build.
    pub against: Side,
    /// The `same` band.
    pub min_effect: f64,
    /// The `--fail-above` threshold, if given.
    pub fail_above: Option<f64>,
    /// Every compared configuration.
    pub results: Vec<AbResult>,
    /// What was not compared, and why.
    pub skipped: Vec<Skipped>,
}

impl AbReport {
    /// Whether the run should exit 1: a disagreement, or a failure of `--fail-above`.
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.fails || r.verdict == Verdict::Disagrees)
    }
}

/// The configurations of an `ab` run, from the run options and this build's registry.
pub fn configs(opts: &RunOptions, skipped: &mut Vec<Skipped>) -> Vec<Config> {
    let names: Vec<String> = if opts.backends.is_empty() {
        backends::registry()
            .iter()
            .filter(|s| s.timed_by_default)
            .map(|s| s.name.to_string())
            .collect()
    } else {
        opts.backends.clone()
    };
    let mut known = Vec::new();
    for name in names {
        match backends::spec(&name) {
            Ok(b) => known.push((name, b.parallel, b.device)),
            Err(e) => skipped.push(Skipped::backend(&name, e.to_string())),
        }
    }
    let mut out = Vec::new();
    for spec in opts.grid(skipped) {
        for (name, parallel, device) in &known {
            let threads = if *parallel {
                opts.threads.clone()
            } else {
                vec![1]
            };
            let variants = if *device {
                vec![Variant::EndToEnd, Variant::Resident]
            } else {
                vec![Variant::EndToEnd]
            };
            for &t in &threads {
                for &v in &variants {
                    for &op in &opts.ops {
                        out.push(Config {
                            cell: spec,
                            backend: name.clone(),
                            threads: t,
                            variant: v.as_str().to_string(),
                            op,
                            quick: opts.quick,
                            reference: true,
                            fresh: false,
                        });
                    }
                }
            }
        }
    }
    out
}

fn prepare_both(
    workers: &mut [Client; 2],
    configs: [&Config; 2],
) -> Result<[worker::ReadyReply; 2], Error> {
    // Both prepare at once (each computes its own reference), then both answers are read.
    for (w, config) in workers.iter_mut().zip(configs) {
        w.send_prepare(config)?;
    }
    let mut replies = Vec::new();
    let mut errors = Vec::new();
    for (w, side) in workers.iter_mut().zip(["current", "against"]) {
        match w.receive_ready() {
            Ok(r) => replies.push(r),
            Err(e) => errors.push(format!("{side} build: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Worker(errors.join("; ")));
    }
    let [a, b]: [worker::ReadyReply; 2] = replies.try_into().expect("two replies");
    Ok([a, b])
}

fn seed_of(config: &Config) -> u64 {
    let text = serde_json::to_string(config).unwrap_or_default();
    crate::cells::digest(
        Op::Forward,
        &text.bytes().map(f32::from).collect::<Vec<_>>(),
        &[],
    )
}

/// Runs the comparison.
pub fn ab(opts: &AbOptions) -> Result<AbReport, Error> {
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (current, hello_a) = Client::spawn(&opts.current)?;
    let (against, hello_b) = Client::spawn(&opts.against)?;
    let mut workers = [current, against];
    // The other side's configuration: the same, or the same cell and op on another backend.
    let other_side = |c: &Config| match &opts.against_backend {
        Some((name, threads)) => Config {
            backend: name.clone(),
            threads: *threads,
            variant: String::new(),
            ..c.clone()
        },
        None => c.clone(),
    };
    let mut skipped = Vec::new();
    let mut caveats = std::collections::BTreeSet::new();
    let configs = configs(&opts.run, &mut skipped);
    let budget = AbBudget::for_run(opts.run.quick);
    // Blocks run in new processes; moving the buffers within a process too needs both workers
    // to rebuild them on request (protocol 2).
    let placements = hello_a.protocol >= 2 && hello_b.protocol >= 2;
    if !placements {
        eprintln!(
            "ab: {} speaks worker protocol {}: its buffers are not moved within a process",
            opts.against.display(),
            hello_b.protocol
        );
    }
    let max_call = timing::TimingBudget::for_run(opts.run.quick).max_call;
    let bar = crate::progress::progress(configs.len() as u64);
    let mut results = Vec::new();
    for config in &configs {
        bar.inc(1);
        let what = format!(
            "{} {} {}x{} {}T{}",
            config.backend,
            config.op,
            config.cell.batch,
            config.cell.classes,
            config.threads,
            if config.variant.is_empty() {
                String::new()
            } else {
                format!(" {}", config.variant)
            }
        );
        bar.set_message(what.clone());
        let skip = |reason: String| Skipped {
            backend: config.backend.clone(),
            batch: config.cell.batch,
            classes: config.cell.classes,
            reason: format!(
                "{} {}T {}: {reason}",
                config.op, config.threads, config.variant
            ),
        };
        // Skip a backend whose timings mean nothing here once, not once per configuration.
        if caveats.contains(&config.backend) {
            continue;
        }
        let blocks = if config.cell.bytes() <= SMALL_CELL_BYTES {
            budget.blocks
        } else {
            budget.large_blocks
        };
        let first = Config {
            fresh: placements,
            ..config.clone()
        };
        let [ra, rb] = match prepare_both(&mut workers, [&first, &other_side(&first)]) {
            Ok(r) => r,
            Err(e) => {
                skipped.push(skip(e.to_string()));
                continue;
            }
        };
        if opts.run.backends.is_empty()
            && let Some(why) = ra.caveat.as_ref().or(rb.caveat.as_ref())
        {
            skipped.push(Skipped::backend(
                &config.backend,
                format!(
                    "not timed by default: {why}; `--backend {}` times it anyway",
                    config.backend
                ),
            ));
            caveats.insert(config.backend.clone());
            continue;
        }
        let mut result = AbResult {
            backend: config.backend.clone(),
            variant: config.variant.clone(),
            op: config.op,
            batch: config.cell.batch,
            classes: config.cell.classes,
            threads: config.threads,
            current_ns: f64::NAN,
            against_ns: f64::NAN,
            paired: None,
            verdict: Verdict::Disagrees,
            fails: false,
            current_agrees: ra.agrees,
            against_agrees: rb.agrees,
            current_max_rel_error: ra.max_rel_error,
            against_max_rel_error: rb.max_rel_error,
        };
        if !(ra.agrees && rb.agrees) {
            result.current_ns = 0.0;
            result.against_ns = 0.0;
            results.push(result);
            continue;
        }
        let slowest = Duration::from_secs_f64(ra.one_call_ns.max(rb.one_call_ns) * 1e-9);
        if slowest > max_call {
            skipped.push(skip(format!(
                "one call took {:.2} s, over the per-call budget of {:.0} s",
                slowest.as_secs_f64(),
                max_call.as_secs_f64()
            )));
            continue;
        }
        let calls = ((budget.sample.as_secs_f64() / slowest.as_secs_f64().max(1e-9)).ceil()
            as usize)
            .clamp(1, 1_000_000);
        let digests = [ra.digest, rb.digest];
        let sampled = (|| -> Result<Vec<Block>, Error> {
            let mut sampled = Vec::new();
            for block in 0..blocks {
                if block > 0 {
                    // A new placement of the same configuration, in a new pair of processes
                    // (what is fixed for a process — where its code, stack and heap land —
                    // moves a small kernel by several percent); the outputs were checked
                    // against the reference in block 0 and must keep their bits.
                    workers = [
                        Client::spawn(&opts.current)?.0,
                        Client::spawn(&opts.against)?.0,
                    ];
                    let again = Config {
                        reference: false,
                        fresh: placements,
                        ..config.clone()
                    };
                    let [a, b] = prepare_both(&mut workers, [&again, &other_side(&again)])?;
                    if [a.digest, b.digest] != digests {
                        return Err(Error::Worker(
                            "a new placement changed the output bits".into(),
                        ));
                    }
                }
                // Warm-up: one sample each, not kept.
                workers[0].sample(calls)?;
                workers[1].sample(calls)?;
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let start = Instant::now();
                let (min, max) = (
                    budget.min_pairs.div_ceil(blocks),
                    budget.max_pairs.div_ceil(blocks),
                );
                while a.len() < min
                    || (a.len() < max && start.elapsed() < budget.target / blocks as u32)
                {
                    if a.len() % 2 == 0 {
                        a.push(workers[0].sample(calls)?);
                        b.push(workers[1].sample(calls)?);
                    } else {
                        b.push(workers[1].sample(calls)?);
                        a.push(workers[0].sample(calls)?);
                    }
                }
                sampled.push((a, b));
            }
            Ok(sampled)
        })();
        let sampled = match sampled {
            Ok(x) => x,
            Err(e) => {
                skipped.push(skip(e.to_string()));
                continue;
            }
        };
        let a: Vec<f64> = sampled
            .iter()
            .flat_map(|(a, _)| a.iter().copied())
            .collect();
        let b: Vec<f64> = sampled
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        let paired = Paired::of_blocks(&sampled, seed_of(config));
        result.current_ns = timing::median(&a);
        result.against_ns = timing::median(&b);
        result.verdict = paired.verdict(opts.min_effect);
        result.fails = opts
            .fail_above
            .is_some_and(|x| paired.confident_slowdown() > x);
        result.paired = Some(paired);
        results.push(result);
    }
    bar.finish_and_clear();
    Ok(AbReport {
        schema: AB_SCHEMA.into(),
        created_unix,
        current: Side {
            path: opts.current.display().to_string(),
            version: hello_a.version,
            backend: None,
        },
        against: Side {
            path: opts.against.display().to_string(),
            version: hello_b.version,
            backend: opts
                .against_backend
                .as_ref()
                .map(|(name, threads)| format!("{name} {threads}T")),
        },
        min_effect: opts.min_effect,
        fail_above: opts.fail_above,
        results,
        skipped,
    })
}

const HEADERS: [&str; 9] = [
    "configuration",
    "current",
    "against",
    "ratio",
    "95% interval",
    "pairs",
    "verdict",
    "fails",
    "max rel err (cur/against)",
];

fn row(r: &AbResult) -> [String; 9] {
    let (ratio, interval, pairs) = match &r.paired {
        Some(p) => (
            format!("{:.3}", p.ratio),
            format!("[{:.3}, {:.3}]", p.low, p.high),
            p.pairs.to_string(),
        ),
        None => ("-".into(), "-".into(), "0".into()),
    };
    [
        r.describe(),
        crate::format::human_time(r.current_ns),
        crate::format::human_time(r.against_ns),
        ratio,
        interval,
        pairs,
        r.verdict.as_str().into(),
        if r.fails { "FAIL".into() } else { "".into() },
        format!(
            "{:.1e} / {:.1e}",
            r.current_max_rel_error, r.against_max_rel_error
        ),
    ]
}

fn header(report: &AbReport) -> String {
    format!(
        "current: {} ({})\nagainst: {} ({}){}\nratio = against time / current time over paired samples (> 1: current is faster); \
         verdict beyond ±{:.1}%{}",
        report.current.path,
        report.current.version,
        report.against.path,
        report.against.version,
        report
            .against
            .backend
            .as_ref()
            .map_or(String::new(), |b| format!(", every configuration on {b}")),
        report.min_effect * 100.0,
        report.fail_above.map_or(String::new(), |x| format!(
            "; FAIL: slower by more than {:.1}% over the whole interval",
            x * 100.0
        ))
    )
}

/// Renders a report: `table`, `markdown`, `csv` or `json`.
pub fn render(report: &AbReport, format: crate::format::Format) -> String {
    use crate::format::Format;
    let rows: Vec<[String; 9]> = report.results.iter().map(row).collect();
    let mut out = String::new();
    match format {
        Format::Json => {
            return serde_json::to_string_pretty(report)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        }
        Format::Table => {
            out = crate::format::aligned(&HEADERS, &rows, 1);
            out = format!("{}\n\n{out}", header(report));
        }
        Format::Markdown => {
            out.push_str(&header(report).replace('\n', "  \n"));
            out.push_str("\n\n");
            out.push_str(&crate::format::markdown_table(&HEADERS, &rows));
        }
        Format::Csv => {
            out.push_str("backend,variant,op,batch,classes,threads,current_ns,against_ns,ratio,low,high,pairs,verdict,fails,current_agrees,against_agrees\n");
            for r in &report.results {
                let p = r.paired;
                out.push_str(&format!(
                    "{},{},{},{},{},{},{:.1},{:.1},{},{},{},{},{},{},{},{}\n",
                    r.backend,
                    r.variant,
                    r.op,
                    r.batch,
                    r.classes,
                    r.threads,
                    r.current_ns,
                    r.against_ns,
                    p.map_or(String::new(), |p| format!("{:.5}", p.ratio)),
                    p.map_or(String::new(), |p| format!("{:.5}", p.low)),
                    p.map_or(String::new(), |p| format!("{:.5}", p.high)),
                    p.map_or(0, |p| p.pairs),
                    r.verdict.as_str(),
                    r.fails,
                    r.current_agrees,
                    r.against_agrees
                ));
            }
            return out;
        }
    }
    if !report.skipped.is_empty() {
        out.push_str("\nskipped:\n");
        for s in &report.skipped {
            out.push_str(&format!(
                "  {} {}x{}: {}\n",
                s.backend, s.batch, s.classes, s.reason
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(base: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::workload::Rng::new(seed);
        (0..n)
            .map(|_| base * (1.0 + 0.2 * (f64::from(rng.unit()) - 0.5)))
            .collect()
    }

    #[test]
    fn identical_builds_are_the_same() {
        // Both sides drift together (the machine) plus independent noise of ±10 %.
        let drift: Vec<f64> = (0..40)
            .map(|i| 1.0 + 0.3 * (i as f64 / 7.0).sin())
            .collect();
        let a: Vec<f64> = noisy(100.0, 40, 1)
            .iter()
            .zip(&drift)
            .map(|(x, d)| x * d)
            .collect();
        let b: Vec<f64> = noisy(100.0, 40, 2)
            .iter()
            .zip(&drift)
            .map(|(x, d)| x * d)
            .collect();
        let p = Paired::of(&a, &b, 9);
        assert!(p.low < 1.0 && p.high > 1.0, "{p:?}");
        assert_eq!(p.verdict(0.01), Verdict::Same);
        assert!(p.confident_slowdown() < 0.05);
        // Deterministic for a fixed seed.
        assert_eq!(p, Paired::of(&a, &b, 9));
    }

    #[test]
    fn a_fifteen_percent_slowdown_is_slower_and_fails_five_percent() {
        let drift: Vec<f64> = (0..40)
            .map(|i| 1.0 + 0.3 * (i as f64 / 5.0).cos())
            .collect();
        let against: Vec<f64> = noisy(100.0, 40, 3)
            .iter()
            .zip(&drift)
            .map(|(x, d)| x * d)
            .collect();
        let current: Vec<f64> = noisy(115.0, 40, 4)
            .iter()
            .zip(&drift)
            .map(|(x, d)| x * d)
            .collect();
        let p = Paired::of(&current, &against, 1);
        assert!((p.ratio - 1.0 / 1.15).abs() < 0.05, "{p:?}");
        assert_eq!(p.verdict(0.01), Verdict::Slower);
        assert!(p.confident_slowdown() > 0.05);
        // And the other way round it is faster.
        assert_eq!(
            Paired::of(&against, &current, 1).verdict(0.01),
            Verdict::Faster
        );
    }
}
