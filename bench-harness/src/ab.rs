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
//! build is faster). Each block is summarised by the median of its pairs' log-ratios, and the
//! configuration by the mean of its blocks' medians with a 95 % Student-t interval over the
//! blocks: the blocks are the independent units (placements), so the interval is as wide as
//! placements differ, and with few blocks the t quantile widens it honestly (a bootstrap over
//! two to four blocks gave intervals far too narrow: degenerate with two). Every configuration
//! gets [`AbBudget::blocks`] blocks, whatever its size.
//!
//! **One verdict per run, not per configuration.** A run judges ~50 configurations; at 95 % each,
//! one of them would look different on an identical build in most runs. So a configuration whose
//! first interval (the *screen*) lies wholly beyond `min_effect` is measured again in as many
//! fresh blocks (the *confirmation*, new processes, new placements), and its verdict is
//! `faster` / `slower` only when the confirmation's own interval agrees in direction and also lies
//! beyond `min_effect`. Both intervals are independent, so a false verdict needs two misses in a
//! row (about 0.025² per configuration and direction); a real difference passes both. The
//! reported ratio and interval are those of all its blocks together. `--fail-above X` fails a
//! configuration only when it is confirmed `slower` and both intervals say it is more than `X`
//! slower. (Measured false-alarm rate and power: bench-harness/NOTES.md, "ab round 2".)
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
pub const AB_SCHEMA: &str = "loss-bench-ab/2";

/// How an `ab` run samples.
#[derive(Debug, Clone, Copy)]
pub struct AbBudget {
    /// Pairs per block at least.
    pub min_pairs: usize,
    /// Pairs per block at most.
    pub max_pairs: usize,
    /// A block stops once both sides together have been timed this long (after `min_pairs`).
    pub block_time: Duration,
    /// Each sample lasts at least this long.
    pub sample: Duration,
    /// Blocks per stage (the screen, and the confirmation when there is one): each a new pair of
    /// worker processes with its buffers and stack at a new random placement. At least
    /// [`MIN_BLOCKS`].
    pub blocks: usize,
}

/// The fewest blocks a verdict is made from: the Student-t interval over fewer is too wide to
/// say anything (`t₀.₉₇₅` is 12.7 with two blocks, 3.2 with four, 2.6 with six).
pub const MIN_BLOCKS: usize = 6;

impl AbBudget {
    /// The budget of a normal or a `--quick` run.
    pub fn for_run(quick: bool) -> Self {
        if quick {
            AbBudget {
                min_pairs: 3,
                max_pairs: 16,
                block_time: Duration::from_millis(50),
                sample: Duration::from_millis(1),
                blocks: MIN_BLOCKS,
            }
        } else {
            AbBudget {
                min_pairs: 4,
                max_pairs: 40,
                block_time: Duration::from_millis(190),
                sample: Duration::from_millis(2),
                blocks: 8,
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
    /// `exp` of the mean over blocks of each block's median log-ratio `ln(against / current)`.
    pub ratio: f64,
    /// Lower end of the 95 % Student-t interval over the blocks (NaN with fewer than two).
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// Pairs.
    pub pairs: usize,
    /// Blocks.
    #[serde(default)]
    pub blocks: usize,
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (the two-sided 95 % interval).
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        // The normal quantile plus the first term of the Cornish–Fisher expansion.
        _ => 1.960 + (1.960f64.powi(3) + 1.960) / (4.0 * df as f64),
    }
}

impl Paired {
    /// Compares blocks of paired samples (ns per call; in each block both sides have the same,
    /// non-zero, number of samples): each block's median log-ratio, their mean, and a Student-t
    /// interval over the blocks, so that a difference between placements widens the interval
    /// instead of passing for a difference between builds.
    pub fn of_blocks(blocks: &[Block]) -> Paired {
        let medians: Vec<f64> = blocks
            .iter()
            .map(|(c, a)| {
                let logs: Vec<f64> = c.iter().zip(a).map(|(c, a)| (a / c).ln()).collect();
                timing::median(&logs)
            })
            .collect();
        let n = medians.len();
        let mean = medians.iter().sum::<f64>() / n as f64;
        let half = if n < 2 {
            f64::NAN
        } else {
            let var = medians.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t975(n - 1) * (var / n as f64).sqrt()
        };
        Paired {
            ratio: mean.exp(),
            low: (mean - half).exp(),
            high: (mean + half).exp(),
            pairs: blocks.iter().map(|(c, _)| c.len()).sum(),
            blocks: n,
        }
    }

    /// `faster`, `slower` or `same`, beyond `min_effect` (a fraction); `same` without an
    /// interval.
    pub fn verdict(&self, min_effect: f64) -> Verdict {
        if self.low > 1.0 + min_effect {
            Verdict::Faster
        } else if self.high < 1.0 / (1.0 + min_effect) {
            Verdict::Slower
        } else {
            Verdict::Same
        }
    }

    /// The slowdown (current time / against time − 1) the whole interval exceeds; ≤ 0 (or NaN)
    /// when it is not slower with confidence.
    pub fn confident_slowdown(&self) -> f64 {
        1.0 / self.high - 1.0
    }
}

/// The verdict of a screen and, when it saw a difference, its confirmation in fresh blocks:
/// `faster` / `slower` only when both agree; and whether it fails `--fail-above` (both
/// intervals beyond it).
pub fn judge(
    screen: &Paired,
    confirm: Option<&Paired>,
    min_effect: f64,
    fail_above: Option<f64>,
) -> (Verdict, bool) {
    let first = screen.verdict(min_effect);
    let verdict = match confirm {
        Some(c) if first != Verdict::Same && c.verdict(min_effect) == first => first,
        _ => Verdict::Same,
    };
    let fails = verdict == Verdict::Slower
        && fail_above.is_some_and(|x| {
            screen.confident_slowdown() > x && confirm.is_some_and(|c| c.confident_slowdown() > x)
        });
    (verdict, fails)
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
    /// The paired comparison over every block (absent when a side disagrees).
    pub paired: Option<Paired>,
    /// The screen's blocks alone.
    #[serde(default)]
    pub screen: Option<Paired>,
    /// The confirmation's blocks alone (run only when the screen saw a difference).
    #[serde(default)]
    pub confirm: Option<Paired>,
    /// The verdict: `faster` / `slower` only when the screen and its confirmation agree.
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

/// What one stage of blocks needs: the two binaries, how to build the other side's
/// configuration, the budget, and the first block's digests that every later block must keep.
struct Stage<'a> {
    opts: &'a AbOptions,
    other_side: &'a dyn Fn(&Config) -> Config,
    budget: AbBudget,
    placements: bool,
    calls: usize,
    digests: [u64; 2],
}

impl Stage<'_> {
    /// Times `blocks` blocks of `config`; the first runs on `workers` as they were prepared
    /// when `prepared` holds, every other block in a new pair of worker processes at a new
    /// placement (what is fixed for a process — where its code, stack and heap land — moves a
    /// small kernel by several percent), whose outputs must keep the first block's bits.
    fn blocks(
        &self,
        workers: &mut [Client; 2],
        config: &Config,
        blocks: usize,
        mut prepared: bool,
    ) -> Result<Vec<Block>, Error> {
        let mut sampled = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            if !prepared {
                *workers = [
                    Client::spawn(&self.opts.current)?.0,
                    Client::spawn(&self.opts.against)?.0,
                ];
                let again = Config {
                    reference: false,
                    fresh: self.placements,
                    ..config.clone()
                };
                let [a, b] = prepare_both(workers, [&again, &(self.other_side)(&again)])?;
                if [a.digest, b.digest] != self.digests {
                    return Err(Error::Worker(
                        "a new placement changed the output bits".into(),
                    ));
                }
            }
            prepared = false;
            // Warm-up: one sample each, not kept.
            workers[0].sample(self.calls)?;
            workers[1].sample(self.calls)?;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let start = Instant::now();
            let budget = self.budget;
            while a.len() < budget.min_pairs
                || (a.len() < budget.max_pairs && start.elapsed() < budget.block_time)
            {
                if a.len() % 2 == 0 {
                    a.push(workers[0].sample(self.calls)?);
                    b.push(workers[1].sample(self.calls)?);
                } else {
                    b.push(workers[1].sample(self.calls)?);
                    a.push(workers[0].sample(self.calls)?);
                }
            }
            sampled.push((a, b));
        }
        Ok(sampled)
    }
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
            screen: None,
            confirm: None,
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
        let stage = Stage {
            opts,
            other_side: &other_side,
            budget,
            placements,
            calls,
            digests: [ra.digest, rb.digest],
        };
        // The screen (its first block on the workers just prepared), then, when it sees a
        // difference, the confirmation in fresh blocks.
        let sampled = stage
            .blocks(&mut workers, config, budget.blocks, true)
            .and_then(|screen| {
                let first = Paired::of_blocks(&screen).verdict(opts.min_effect);
                let confirm = if first == Verdict::Same {
                    Vec::new()
                } else {
                    stage.blocks(&mut workers, config, budget.blocks, false)?
                };
                Ok((screen, confirm))
            });
        let (screen, confirm) = match sampled {
            Ok(x) => x,
            Err(e) => {
                skipped.push(skip(e.to_string()));
                continue;
            }
        };
        let all: Vec<Block> = screen.iter().chain(&confirm).cloned().collect();
        let a: Vec<f64> = all.iter().flat_map(|(a, _)| a.iter().copied()).collect();
        let b: Vec<f64> = all.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let paired = Paired::of_blocks(&all);
        let screen = Paired::of_blocks(&screen);
        let confirm = (!confirm.is_empty()).then(|| Paired::of_blocks(&confirm));
        (result.verdict, result.fails) =
            judge(&screen, confirm.as_ref(), opts.min_effect, opts.fail_above);
        result.current_ns = timing::median(&a);
        result.against_ns = timing::median(&b);
        result.screen = Some(screen);
        result.confirm = confirm;
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
    "blocks/pairs",
    "verdict",
    "fails",
    "max rel err (cur/against)",
];

fn row(r: &AbResult) -> [String; 9] {
    let (ratio, interval, pairs) = match &r.paired {
        Some(p) => (
            format!("{:.3}", p.ratio),
            format!("[{:.3}, {:.3}]", p.low, p.high),
            format!("{}/{}", p.blocks, p.pairs),
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

    /// `blocks` blocks of `pairs` paired samples: both sides drift together (the machine), each
    /// block has its own placement offset on the current side (`placement`, relative) and every
    /// sample its own noise of ±10 %; the current side is `slowdown` slower.
    fn blocks(n: usize, pairs: usize, slowdown: f64, placement: f64, seed: u64) -> Vec<Block> {
        let mut rng = crate::workload::Rng::new(seed);
        let mut u = move || f64::from(rng.unit()) - 0.5;
        (0..n)
            .map(|k| {
                let offset = 1.0 + placement * u();
                (0..pairs)
                    .map(|i| {
                        let drift = 1.0 + 0.3 * ((k * pairs + i) as f64 / 7.0).sin();
                        let against = 100.0 * drift * (1.0 + 0.2 * u());
                        let current = 100.0 * (1.0 + slowdown) * offset * drift * (1.0 + 0.2 * u());
                        (current, against)
                    })
                    .unzip()
            })
            .collect()
    }

    #[test]
    fn the_t_quantile_matches_its_table_and_tends_to_the_normal() {
        assert_eq!(t975(5), 2.571);
        assert!(t975(0).is_infinite());
        assert!((t975(1000) - 1.962).abs() < 0.002);
        assert!(t975(31) < t975(30) && t975(31) > 1.96);
    }

    #[test]
    fn identical_builds_are_the_same_even_when_placements_differ() {
        // Placements that move the current side by up to ±4 % per block: a wide interval, not a
        // verdict.
        let b = blocks(6, 8, 0.0, 0.08, 3);
        let p = Paired::of_blocks(&b);
        assert_eq!(p.blocks, 6);
        assert_eq!(p.pairs, 48);
        assert!(p.low < 1.0 && p.high > 1.0, "{p:?}");
        assert_eq!(judge(&p, None, 0.03, Some(0.05)), (Verdict::Same, false));
        // Deterministic.
        assert_eq!(p, Paired::of_blocks(&b));
    }

    #[test]
    fn a_fifteen_percent_slowdown_is_confirmed_slower_and_fails_five_percent() {
        let screen = Paired::of_blocks(&blocks(6, 8, 0.15, 0.02, 4));
        let confirm = Paired::of_blocks(&blocks(6, 8, 0.15, 0.02, 5));
        assert!((screen.ratio - 1.0 / 1.15).abs() < 0.03, "{screen:?}");
        assert_eq!(screen.verdict(0.03), Verdict::Slower);
        assert_eq!(
            judge(&screen, Some(&confirm), 0.03, Some(0.05)),
            (Verdict::Slower, true)
        );
        // The other way round it is faster (and fails nothing).
        let (s2, c2) = (
            Paired::of_blocks(&blocks(6, 8, -0.13, 0.02, 6)),
            Paired::of_blocks(&blocks(6, 8, -0.13, 0.02, 7)),
        );
        assert_eq!(
            judge(&s2, Some(&c2), 0.03, Some(0.05)),
            (Verdict::Faster, false)
        );
    }

    #[test]
    fn a_screen_the_confirmation_does_not_repeat_is_the_same() {
        let screen = Paired::of_blocks(&blocks(6, 8, 0.15, 0.02, 8));
        let confirm = Paired::of_blocks(&blocks(6, 8, 0.0, 0.02, 9));
        assert_eq!(screen.verdict(0.03), Verdict::Slower);
        assert_eq!(
            judge(&screen, Some(&confirm), 0.03, Some(0.05)),
            (Verdict::Same, false)
        );
        // Without a confirmation there is no verdict either.
        assert_eq!(
            judge(&screen, None, 0.03, Some(0.05)),
            (Verdict::Same, false)
        );
    }

    #[test]
    fn one_block_gives_no_interval() {
        let p = Paired::of_blocks(&blocks(1, 8, 0.5, 0.0, 10));
        assert!(p.low.is_nan() && p.high.is_nan());
        assert_eq!(p.verdict(0.03), Verdict::Same);
    }
}
