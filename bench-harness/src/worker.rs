//! `loss-bench worker`: one side of an `ab` run, driven over its standard input and output.
//!
//! The protocol is one JSON object per line each way, request then reply:
//!
//! | request | reply |
//! | --- | --- |
//! | `{"cmd":"hello"}` | `{"hello":{"protocol":1,"version":"…","backends":[…]}}` |
//! | `{"cmd":"prepare","config":CONFIG}` | `{"ready":{"agrees":…,"max_rel_error":…,"one_call_ns":…,"caveat":…}}` |
//! | `{"cmd":"sample","calls":K}` | `{"sample":{"ns_per_call":…}}` |
//! | `{"cmd":"round"}` | `{"round":{"samples":[…],"calibration":[…],"calls":…}}` |
//! | `{"cmd":"quit"}` | (the worker exits) |
//!
//! and `{"error":"…"}` for any request that fails. `prepare` builds the configuration (the cell's
//! inputs from its spec, the same bits in every build; the backend instance, kept for later
//! configurations), makes its first call, checks it against the reference *computed by this
//! worker's own build* (or, with `"reference": false`, only fingerprints the outputs), and times
//! one call; `sample` times `K` consecutive calls; `round` times one round of `run` (samples
//! interleaved with the calibration kernel). A worker
//! refuses a configuration with a field it does not know (`deny_unknown_fields`), so an older
//! build never silently runs a different problem than the one asked for.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::backends::{self, BackendConfig};
use crate::cells::{Cell, CellSpec};
use crate::error::Error;
use crate::instances::{Instance, Variant};
use crate::schema::Op;
use crate::subject;
use crate::timing::{self, TimingBudget};

/// The protocol version. Version 2 added [`Config::fresh`]; a driver talks to a version-1 worker
/// without sending it, and refuses any other version.
pub const PROTOCOL: u32 = 2;

/// One configuration to time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The inputs.
    pub cell: CellSpec,
    /// The backend's registry name.
    pub backend: String,
    /// Its thread count (1 for sequential backends).
    pub threads: usize,
    /// `""` end to end, `"resident"` on the device.
    pub variant: String,
    /// The operation.
    pub op: Op,
    /// `--quick` budgets.
    pub quick: bool,
    /// Check the outputs against the reference (otherwise only fingerprint them).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub reference: bool,
    /// Rebuild the cell's buffers at a new random placement (protocol 2): where buffers land
    /// relative to each other (their offsets within a page) moves a small kernel's speed by
    /// several percent, and two builds allocate differently, so an A/B that kept one placement
    /// per process would measure the placements. The worker allocates a random pad before the
    /// cell and before the output buffers.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fresh: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A request to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Who are you?
    Hello,
    /// Make a configuration ready.
    Prepare {
        /// The configuration.
        config: Config,
    },
    /// Time consecutive calls of the prepared configuration.
    Sample {
        /// How many.
        calls: usize,
    },
    /// Time one round of the prepared configuration.
    Round,
    /// Exit.
    Quit,
}

/// The worker's introduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The harness version of that build.
    pub version: String,
    /// The backends that build knows.
    pub backends: Vec<String>,
}

/// A prepared configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyReply {
    /// Its first call agrees with the reference.
    pub agrees: bool,
    /// The worst element's error (see [`crate::schema::CellResult::max_rel_error`]).
    pub max_rel_error: f64,
    /// One timed call after the first, ns.
    pub one_call_ns: f64,
    /// Why timings of this backend mean little here (a software GPU), if they do.
    pub caveat: Option<String>,
    /// The fingerprint of the first call's outputs.
    #[serde(default)]
    pub digest: u64,
}

/// A timed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundReply {
    /// The subject's samples, ns per call.
    pub samples: Vec<f64>,
    /// The calibration's samples (empty for device backends), ns per call.
    pub calibration: Vec<f64>,
    /// The device's own time of each sample's last call, ns (device backends with timestamps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device: Vec<f64>,
    /// Calls timed.
    pub calls: usize,
    /// CPU and wall time of the samples (absent from older workers).
    #[serde(default)]
    pub cpu_wall: crate::timing::CpuWall,
}

/// A timed sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleReply {
    /// Nanoseconds per call.
    pub ns_per_call: f64,
}

/// A reply from a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// To `hello`.
    Hello(Hello),
    /// To `prepare`.
    Ready(ReadyReply),
    /// To `sample`.
    Sample(SampleReply),
    /// To `round`.
    Round(RoundReply),
    /// Any request that failed.
    Error(String),
}

fn send(out: &mut impl Write, reply: &Reply) -> Result<(), Error> {
    let line = serde_json::to_string(reply).map_err(|e| Error::Worker(e.to_string()))?;
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::Worker(format!("worker: writing a reply: {e}")))
}

fn instance_index(
    instances: &mut Vec<Instance>,
    name: &str,
    threads: usize,
) -> Result<usize, String> {
    if let Some(i) = instances
        .iter()
        .position(|x| x.name == name && x.threads == threads)
    {
        return Ok(i);
    }
    let spec = backends::spec(name).map_err(|e| e.to_string())?;
    let built = (spec.build)(
        spec.name,
        BackendConfig {
            threads: Some(threads),
        },
    )
    .map_err(|e| e.to_string())?;
    instances.push(Instance {
        name: name.to_string(),
        threads,
        built,
    });
    Ok(instances.len() - 1)
}

/// How serving a prepared configuration ended.
enum Served {
    /// Another request came.
    Next(Request),
    /// The input ended.
    End,
}

/// Runs `f` `depth` frames deeper on the stack (each frame holds a 64-byte pad), so that stack
/// buffers land at another offset within their page.
#[inline(never)]
fn on_offset_stack<R>(depth: usize, f: &mut dyn FnMut() -> R) -> R {
    let pad = [depth as u8; 64];
    std::hint::black_box(&pad);
    let r = if depth == 0 {
        f()
    } else {
        on_offset_stack(depth - 1, f)
    };
    std::hint::black_box(&pad);
    r
}

/// Random pads that move the next allocations to a new offset within their page.
struct Placement(crate::workload::Rng);

impl Placement {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Placement(crate::workload::Rng::new(
            u64::from(nanos) ^ (u64::from(std::process::id()) << 32),
        ))
    }

    /// A pad of 0 to 4 KiB in steps of 16 bytes (the allocator's granularity), touched so that
    /// it is real.
    fn pad(&mut self) -> Vec<u8> {
        let pad = vec![1u8; 16 * self.0.below(257)];
        std::hint::black_box(pad)
    }

    /// A stack depth for [`on_offset_stack`]: up to 64 frames, a few KiB.
    fn depth(&mut self) -> usize {
        self.0.below(65)
    }
}

/// Serves requests from `input` until `quit` or the end of the input.
///
/// A one-thread configuration is timed with the worker's thread pinned to the first CPU it may
/// use (two workers of an `ab` run alternate, so they share it): two processes of one build left
/// to the scheduler differ as the machine's CPUs do (bench-harness/NOTES.md). Parallel
/// configurations run unpinned (their pools are built before any pinning, so their threads may
/// use every CPU).
pub fn serve(input: impl BufRead, mut output: impl Write) -> Result<(), Error> {
    crate::bandwidth::unpin_current_thread(); // remembers the starting mask
    let mut lines = input.lines();
    let mut next = move || -> Result<Option<Request>, String> {
        match lines.next() {
            None => Ok(None),
            Some(line) => {
                let line = line.map_err(|e| format!("worker: reading a request: {e}"))?;
                serde_json::from_str(&line)
                    .map(Some)
                    .map_err(|e| format!("unreadable request {line:?}: {e}"))
            }
        }
    };
    let mut instances: Vec<Instance> = Vec::new();
    let mut cell: Option<Cell> = None;
    let mut placement = Placement::new();
    let mut pads: Vec<Vec<u8>> = Vec::new();
    let mut pending: Option<Request> = None;
    loop {
        let request = match pending.take() {
            Some(r) => r,
            None => match next() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => {
                    send(&mut output, &Reply::Error(e))?;
                    continue;
                }
            },
        };
        match request {
            Request::Quit => return Ok(()),
            Request::Hello => send(
                &mut output,
                &Reply::Hello(Hello {
                    protocol: PROTOCOL,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    backends: backends::backend_names()
                        .into_iter()
                        .map(String::from)
                        .collect(),
                }),
            )?,
            Request::Sample { .. } | Request::Round => send(
                &mut output,
                &Reply::Error("sample before any configuration was prepared".into()),
            )?,
            Request::Prepare { config } => {
                let Some(variant) = Variant::parse(&config.variant) else {
                    send(
                        &mut output,
                        &Reply::Error(format!("unknown variant {:?}", config.variant)),
                    )?;
                    continue;
                };
                crate::bandwidth::unpin_current_thread();
                let i = match instance_index(&mut instances, &config.backend, config.threads) {
                    Ok(i) => i,
                    Err(e) => {
                        send(&mut output, &Reply::Error(e))?;
                        continue;
                    }
                };
                if cell.as_ref().is_some_and(|c| {
                    config.fresh
                        || c.spec != config.cell
                        || (config.reference && c.answer.is_none())
                }) {
                    cell = None; // free the previous cell before making the next
                }
                if config.fresh {
                    pads.clear();
                    pads.push(placement.pad());
                }
                let current =
                    &*cell.get_or_insert_with(|| Cell::new(config.cell, config.reference, true));
                if config.fresh {
                    pads.push(placement.pad());
                }
                let instance = &instances[i];
                if config.threads == 1 {
                    crate::bandwidth::pin_current_thread(0);
                }
                let budget = TimingBudget::for_run(config.quick);
                let mut ready = match subject::ready(current, instance, variant, config.op, budget)
                {
                    Ok(r) => r,
                    Err(e) => {
                        send(&mut output, &Reply::Error(e.to_string()))?;
                        continue;
                    }
                };
                let one = match timing::one_call(ready.subject.as_mut(), &mut ready.rep) {
                    Ok(d) => d,
                    Err(e) => {
                        send(&mut output, &Reply::Error(e.to_string()))?;
                        continue;
                    }
                };
                send(
                    &mut output,
                    &Reply::Ready(ReadyReply {
                        agrees: ready.check.agrees,
                        max_rel_error: ready.check.max_rel_error,
                        one_call_ns: one.as_secs_f64() * 1e9,
                        caveat: instance
                            .built
                            .device
                            .as_ref()
                            .and_then(|d| d.timing_caveat()),
                        digest: ready.check.digest,
                    }),
                )?;
                // Serve samples of this configuration until another request comes, from a
                // stack moved by a random depth when a new placement was asked for (the stack's
                // offset within its page moves small kernels as the heap's does: their tiles
                // live there).
                let depth = if config.fresh { placement.depth() } else { 0 };
                let served = on_offset_stack(depth, &mut || -> Result<Served, Error> {
                    loop {
                        match next() {
                            Ok(Some(Request::Sample { calls })) => {
                                let reply = match ready.sample(calls) {
                                    Ok(ns) => Reply::Sample(SampleReply { ns_per_call: ns }),
                                    Err(e) => Reply::Error(e.to_string()),
                                };
                                send(&mut output, &reply)?;
                            }
                            Ok(Some(Request::Round)) => {
                                let reply = match crate::subject::round_of(
                                    &mut ready, current, instance, config.op, budget, one,
                                ) {
                                    Ok(r) => Reply::Round(RoundReply {
                                        samples: r.samples,
                                        calibration: r.calibration,
                                        device: r.device,
                                        calls: r.calls,
                                        cpu_wall: r.cpu_wall,
                                    }),
                                    Err(e) => Reply::Error(e.to_string()),
                                };
                                send(&mut output, &reply)?;
                            }
                            Ok(Some(other)) => return Ok(Served::Next(other)),
                            Ok(None) => return Ok(Served::End),
                            Err(e) => send(&mut output, &Reply::Error(e))?,
                        }
                    }
                })?;
                match served {
                    Served::Next(other) => pending = Some(other),
                    Served::End => return Ok(()),
                }
            }
        }
    }
}

/// The driver's side: a worker process and its pipes. Dropping it asks the worker to quit and
/// waits for it.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    path: PathBuf,
}

fn worker_error(message: String) -> Error {
    Error::Worker(message)
}

impl Client {
    /// Starts `path worker` and checks that it speaks this protocol.
    pub fn spawn(path: &Path) -> Result<(Client, Hello), Error> {
        let mut child = Command::new(path)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| worker_error(format!("cannot start {}: {e}", path.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(worker_error(format!(
                "{}: no pipes to the worker",
                path.display()
            )));
        };
        let mut w = Client {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            path: path.to_path_buf(),
        };
        w.send(&Request::Hello)?;
        match w.receive()? {
            Reply::Hello(h) if h.protocol == PROTOCOL || h.protocol == 1 => Ok((w, h)),
            Reply::Hello(h) => Err(worker_error(format!(
                "{} speaks worker protocol {}, this build {PROTOCOL}",
                path.display(),
                h.protocol
            ))),
            other => Err(worker_error(format!(
                "{} answered hello with {other:?}",
                path.display()
            ))),
        }
    }

    fn send(&mut self, request: &Request) -> Result<(), Error> {
        let line = serde_json::to_string(request).map_err(|e| Error::Worker(e.to_string()))?;
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| {
                worker_error(format!(
                    "{} is not a loss-bench worker, or it exited ({e})",
                    self.path.display()
                ))
            })
    }

    fn receive(&mut self) -> Result<Reply, Error> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| worker_error(format!("{}: {e}", self.path.display())))?;
        if n == 0 {
            return Err(worker_error(format!(
                "{} is not a loss-bench worker, or it exited",
                self.path.display()
            )));
        }
        serde_json::from_str(&line).map_err(|e| {
            worker_error(format!(
                "{}: unreadable reply {line:?}: {e}",
                self.path.display()
            ))
        })
    }

    /// Sends `prepare` without waiting (so two workers can prepare at once).
    pub fn send_prepare(&mut self, config: &Config) -> Result<(), Error> {
        self.send(&Request::Prepare {
            config: config.clone(),
        })
    }

    /// Reads the answer to `prepare`.
    pub fn receive_ready(&mut self) -> Result<ReadyReply, Error> {
        match self.receive()? {
            Reply::Ready(r) => Ok(r),
            Reply::Error(e) => Err(Error::Worker(e)),
            other => Err(worker_error(format!("unexpected reply {other:?}"))),
        }
    }

    /// Prepares a configuration.
    pub fn prepare(&mut self, config: &Config) -> Result<ReadyReply, Error> {
        self.send_prepare(config)?;
        self.receive_ready()
    }

    /// Times `calls` calls of the prepared configuration; ns per call.
    pub fn sample(&mut self, calls: usize) -> Result<f64, Error> {
        self.send(&Request::Sample { calls })?;
        match self.receive()? {
            Reply::Sample(s) => Ok(s.ns_per_call),
            Reply::Error(e) => Err(Error::Worker(e)),
            other => Err(worker_error(format!("unexpected reply {other:?}"))),
        }
    }

    /// Times one round of the prepared configuration.
    pub fn round(&mut self) -> Result<RoundReply, Error> {
        self.send(&Request::Round)?;
        match self.receive()? {
            Reply::Round(r) => Ok(r),
            Reply::Error(e) => Err(Error::Worker(e)),
            other => Err(worker_error(format!("unexpected reply {other:?}"))),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.send(&Request::Quit);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loss_core::Reduction;

    fn config(backend: &str, op: Op) -> Config {
        Config {
            cell: CellSpec::plain(4, 50, true, Reduction::Mean, 1),
            backend: backend.into(),
            threads: 1,
            variant: String::new(),
            op,
            quick: true,
            reference: true,
            fresh: false,
        }
    }

    fn talk(requests: &[Request]) -> Vec<Reply> {
        let input: String = requests
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        let mut out = Vec::new();
        serve(input.as_bytes(), &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_session_prepares_samples_and_switches_configurations() {
        let replies = talk(&[
            Request::Hello,
            Request::Sample { calls: 1 },
            Request::Prepare {
                config: config("reference", Op::ForwardBackward),
            },
            Request::Sample { calls: 3 },
            Request::Round,
            Request::Prepare {
                config: config("no-such-backend", Op::Forward),
            },
            Request::Prepare {
                config: config("cpu", Op::Forward),
            },
            Request::Sample { calls: 2 },
            Request::Quit,
            Request::Hello,
        ]);
        assert_eq!(replies.len(), 8, "{replies:?}");
        assert!(matches!(&replies[0], Reply::Hello(h) if h.protocol == PROTOCOL));
        assert!(matches!(&replies[1], Reply::Error(_)));
        assert!(matches!(&replies[2], Reply::Ready(r) if r.agrees && r.one_call_ns > 0.0));
        assert!(matches!(&replies[3], Reply::Sample(s) if s.ns_per_call > 0.0));
        assert!(matches!(&replies[4], Reply::Round(r)
            if r.samples.len() >= 3 && r.samples.len() == r.calibration.len()));
        assert!(matches!(&replies[5], Reply::Error(e) if e.contains("no-such-backend")));
        assert!(matches!(&replies[6], Reply::Ready(r) if r.agrees));
        assert!(matches!(&replies[7], Reply::Sample(_)));
    }

    #[test]
    fn an_unknown_field_is_refused_not_ignored() {
        let line = r#"{"cmd":"prepare","config":{"cell":{"batch":1,"classes":3,"weighted":false,"reduction":"mean","seed":0,"precision":"fp8"},"backend":"cpu","threads":1,"variant":"","op":"forward","quick":true}}"#;
        let mut out = Vec::new();
        serve(format!("{line}\n").as_bytes(), &mut out).unwrap();
        let reply: Reply = serde_json::from_slice(&out).unwrap();
        assert!(
            matches!(&reply, Reply::Error(e) if e.contains("precision")),
            "{reply:?}"
        );
    }
}
