//! Timing: budgets, samples, their statistics, and the calibration kernel timed beside every
//! measurement.
//!
//! A *sample* is a number of consecutive calls timed together (enough to last ≥ 20 µs, so that
//! the clock's resolution does not count for tiny problems); its figure is nanoseconds per call.
//! A *round* is a run of samples of one configuration. `run` times every configuration in several
//! rounds spread over the run, and interleaves each sample of the subject with one sample of a
//! [`Calibration`] kernel over the same data: the ratio of the two moves little when the machine
//! as a whole speeds up or slows down, which is what `compare` judges.

use std::time::{Duration, Instant};

use loss_core::LossError;

use crate::bandwidth::{CopyKernel, sum_chunk};
use crate::error::Error;
use crate::schema::Op;

/// How long to time.
#[derive(Debug, Clone, Copy)]
pub struct TimingBudget {
    /// At least this many samples per round.
    pub min_samples: usize,
    /// At most this many samples per round.
    pub max_samples: usize,
    /// The time for one configuration, over all its rounds: a round stops once its share has
    /// been spent (after `min_samples`).
    pub target: Duration,
    /// A configuration whose single call takes longer than this is skipped, not timed.
    pub max_call: Duration,
    /// Rounds per configuration, spread over the run.
    pub rounds: usize,
}

impl TimingBudget {
    /// The budget of a normal or a `--quick` run. The time per configuration is split evenly
    /// over the rounds.
    pub fn for_run(quick: bool) -> Self {
        if quick {
            TimingBudget {
                min_samples: 3,
                max_samples: 30,
                target: Duration::from_millis(60),
                max_call: Duration::from_secs(1),
                rounds: 3,
            }
        } else {
            TimingBudget {
                min_samples: 5,
                max_samples: 70,
                target: Duration::from_millis(300),
                max_call: Duration::from_secs(5),
                rounds: 3,
            }
        }
    }

    /// Calls per sample for a call that took `one_call`: enough for ≥ 20 µs, at least 1.
    pub fn calls_per_sample(one_call: Duration) -> usize {
        ((20e-6 / one_call.as_secs_f64().max(1e-9)).ceil() as usize).clamp(1, 100_000)
    }

    /// [`Error::OverBudget`] when one call took longer than the budget allows (on a software
    /// GPU one call over a 1 GiB cell takes tens of seconds).
    pub fn check_call(&self, one_call: Duration) -> Result<(), Error> {
        if one_call > self.max_call {
            Err(Error::OverBudget {
                seconds: one_call.as_secs_f64(),
                budget: self.max_call.as_secs_f64(),
            })
        } else {
            Ok(())
        }
    }
}

/// Something that can be called repeatedly and timed: a backend on a cell, or a calibration
/// kernel. `rep` is the repetition number, for rotating over copies of the input.
pub trait Timed {
    /// One call.
    fn call(&mut self, rep: usize) -> Result<(), LossError>;
    /// The device time of the last call, where the device measures it (GPU timestamps).
    fn device_ns(&self) -> Option<f64> {
        None
    }
}

/// Times `calls` consecutive calls, continuing the rotation at `*rep`; nanoseconds per call.
pub fn sample(timed: &mut dyn Timed, calls: usize, rep: &mut usize) -> Result<f64, LossError> {
    let t = Instant::now();
    for _ in 0..calls {
        timed.call(*rep)?;
        *rep += 1;
    }
    Ok(t.elapsed().as_secs_f64() * 1e9 / calls.max(1) as f64)
}

/// Times one call; the duration it took.
pub fn one_call(timed: &mut dyn Timed, rep: &mut usize) -> Result<Duration, LossError> {
    let t = Instant::now();
    timed.call(*rep)?;
    *rep += 1;
    Ok(t.elapsed())
}

/// The value at quantile `q` of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The median of unsorted values (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Median, fastest and relative spread of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median, ns per call.
    pub median_ns: f64,
    /// Fastest sample, ns per call.
    pub min_ns: f64,
    /// (p90 − p10) / median.
    pub spread: f64,
}

impl Summary {
    /// Summarises non-empty samples.
    pub fn of(samples: &[f64]) -> Summary {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let median = percentile(&s, 0.5);
        Summary {
            median_ns: median,
            min_ns: s[0],
            spread: (percentile(&s, 0.9) - percentile(&s, 0.1)) / median,
        }
    }
}

/// One round of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The subject's samples, ns per call.
    pub samples: Vec<f64>,
    /// The calibration's samples, interleaved with them, ns per call.
    pub calibration: Vec<f64>,
    /// The device's own time of the last call of each sample, ns (device backends with
    /// timestamps; empty otherwise).
    pub device: Vec<f64>,
    /// Calls timed.
    pub calls: usize,
    /// The process's CPU time (every thread) and the wall time spent in the subject's samples,
    /// ns: their ratio says how many CPUs the subject kept busy.
    pub cpu_wall: CpuWall,
}

/// CPU time over wall time of the samples of a round.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CpuWall {
    /// The process's CPU time over the samples, every thread, ns.
    pub cpu_ns: f64,
    /// Their wall time, ns.
    pub wall_ns: f64,
}

impl CpuWall {
    /// CPU time over wall time (`None` before anything was measured, or where the process's CPU
    /// clock is not available).
    pub fn ratio(&self) -> Option<f64> {
        (self.wall_ns > 0.0 && self.cpu_ns.is_finite()).then(|| self.cpu_ns / self.wall_ns)
    }

    /// Runs `f`, adding its CPU and wall time.
    pub fn measure<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (cpu, wall) = (process_cpu_ns(), Instant::now());
        let out = f();
        self.wall_ns += wall.elapsed().as_secs_f64() * 1e9;
        self.cpu_ns += process_cpu_ns() - cpu;
        out
    }
}

/// Whether a run on `threads` threads that kept `cpu_per_wall` CPUs busy used no more than it
/// claims: at most 10 % over its thread count (a peer that ignores its thread setting, such as
/// JAX's CPU client at "1 thread", is not).
pub fn honest(cpu_per_wall: f64, threads: usize) -> bool {
    cpu_per_wall <= threads as f64 * 1.1
}

/// The CPU time of this process, every thread, ns (NaN where the clock is not available).
pub fn process_cpu_ns() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec owned by this frame; the call only writes it.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64;
        }
    }
    f64::NAN
}

/// Times one round: `calib` and `subject` samples alternate (calibration first) until the
/// budget's time for one round is spent.
pub fn time_round(
    budget: TimingBudget,
    subject: &mut dyn Timed,
    calib: &mut dyn Timed,
    calls_per_sample: usize,
    rep: &mut usize,
) -> Result<Round, LossError> {
    let target = budget.target / budget.rounds.max(1) as u32;
    let mut round = Round {
        samples: Vec::new(),
        calibration: Vec::new(),
        device: Vec::new(),
        calls: 0,
        cpu_wall: CpuWall::default(),
    };
    let mut calib_rep = 0;
    let start = Instant::now();
    while round.samples.len() < budget.min_samples
        || (round.samples.len() < budget.max_samples && start.elapsed() < target)
    {
        round
            .calibration
            .push(sample(calib, calls_per_sample, &mut calib_rep)?);
        let s = round
            .cpu_wall
            .measure(|| sample(subject, calls_per_sample, rep))?;
        round.samples.push(s);
        round.device.extend(subject.device_ns());
        round.calls += calls_per_sample;
    }
    Ok(round)
}

/// The calibration kernel of a configuration: the ideal streaming kernel over the same data, on
/// the same number of threads. For `forward`, a vectorised read of the same (rotated) logits;
/// otherwise a copy of them into a buffer of the gradient's size with plain stores (the traffic
/// of reading logits and writing a gradient). With `threads > 1` each call spawns that many
/// scoped threads, each taking one contiguous part: spawned threads end with the call, where a
/// pool's idle workers would spin on the cores for a while afterwards and slow the next sample
/// of the backend being measured.
pub struct Calibration<'a> {
    sources: Vec<&'a [f32]>,
    dst: Vec<f32>,
    op: Op,
    threads: usize,
}

impl<'a> Calibration<'a> {
    /// The calibration for `op` over rotated copies of the logits, on `threads` threads.
    pub fn new(sources: Vec<&'a [f32]>, op: Op, threads: usize) -> Self {
        let len = sources.first().map_or(0, |s| s.len());
        let dst = if op == Op::Forward {
            Vec::new()
        } else {
            vec![0.0; len]
        };
        Calibration {
            sources,
            dst,
            op,
            threads: threads.max(1),
        }
    }
}

fn stream(op: Op, src: &[f32], dst: &mut [f32]) {
    match op {
        Op::Forward => {
            std::hint::black_box(sum_chunk(std::hint::black_box(src)));
        }
        Op::Backward | Op::ForwardBackward => {
            CopyKernel::Plain.copy(src, dst);
            std::hint::black_box(dst);
        }
    }
}

impl Timed for Calibration<'_> {
    fn call(&mut self, rep: usize) -> Result<(), LossError> {
        let src = self.sources[rep % self.sources.len()];
        let op = self.op;
        if self.threads == 1 {
            stream(op, src, &mut self.dst);
        } else {
            let chunk = src.len().div_ceil(self.threads).max(1);
            let dst = &mut self.dst;
            std::thread::scope(|s| {
                if op == Op::Forward {
                    for part in src.chunks(chunk) {
                        s.spawn(move || stream(op, part, &mut []));
                    }
                } else {
                    for (part, out) in src.chunks(chunk).zip(dst.chunks_mut(chunk)) {
                        s.spawn(move || stream(op, part, out));
                    }
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_samples() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s.median_ns, 3.0);
        assert_eq!(s.min_ns, 1.0);
        // p90 = 5 (nearest rank of 3.6), p10 = 1 (of 0.4).
        assert!((s.spread - 4.0 / 3.0).abs() < 1e-12);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[2.0, 9.0, 1.0]), 2.0);
    }

    struct Counter(usize);
    impl Timed for Counter {
        fn call(&mut self, _rep: usize) -> Result<(), LossError> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn a_round_alternates_calibration_and_subject() {
        let budget = TimingBudget {
            min_samples: 4,
            max_samples: 4,
            target: Duration::from_secs(10),
            max_call: Duration::from_secs(1),
            rounds: 1,
        };
        let (mut a, mut b) = (Counter(0), Counter(0));
        let mut rep = 0;
        let round = time_round(budget, &mut a, &mut b, 3, &mut rep).unwrap();
        assert_eq!((round.samples.len(), round.calibration.len()), (4, 4));
        assert_eq!((a.0, b.0, round.calls, rep), (12, 12, 12, 12));
    }

    #[test]
    fn calibration_reads_or_copies_every_rotation() {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let y = vec![1.0f32; 100];
        for threads in [1, 3] {
            let mut c = Calibration::new(vec![&x, &y], Op::ForwardBackward, threads);
            c.call(1).unwrap();
            assert_eq!(c.dst, y);
            c.call(2).unwrap();
            assert_eq!(c.dst, x);
            let mut f = Calibration::new(vec![&x], Op::Forward, threads);
            f.call(0).unwrap();
            assert!(f.dst.is_empty());
        }
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn honest_allows_ten_percent_over_the_thread_count() {
        assert!(honest(1.0, 1) && honest(1.1, 1) && honest(2.15, 2));
        assert!(!honest(1.2, 1) && !honest(1.96, 1));
    }

    #[test]
    fn a_busy_loop_keeps_one_cpu_busy() {
        let mut cw = CpuWall::default();
        cw.measure(|| {
            let t = Instant::now();
            let mut x = 0u64;
            while t.elapsed() < Duration::from_millis(30) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        let r = cw.ratio().expect("a CPU clock on this system");
        assert!(r > 0.5 && r < 1.2, "{r}");
    }
}
