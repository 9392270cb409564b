//! `loss-bench run --counts`: deterministic instruction and simulated cache-miss counts.
//!
//! The harness runs itself under Valgrind's callgrind with instrumentation off
//! (`--instr-atstart=no`), so making inputs, computing the reference and checking the outputs
//! run at Valgrind's uninstrumented speed and count nothing. For each configuration the child
//! turns instrumentation on through a client request, makes one warm-up call (so the simulated
//! caches hold what a steady state holds), zeroes the counters, makes a fixed number of calls
//! (rotating over the same input copies as `run`), and dumps the counters under the
//! configuration's label. The parent reads the dumps back.
//!
//! The figures are the same on every run of the same build: instruction counts do not depend on
//! the machine's load, and the simulated caches have a fixed geometry ([`CACHE`], not the host's),
//! so they do not depend on the host either. Parallel backends run on one thread: with more,
//! the count of a thread pool's spinning depends on how Valgrind schedules the threads.
//!
//! iai-callgrind's estimate of cycles is kept as its own formula, [`estimated_cycles`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cells::{Cell, CellSpec};
use crate::error::Error;
use crate::instances::{self, Instance, Variant};
use crate::options::RunOptions;
use crate::schema::{self, CellResult, Counts, CountsConfig, Op, RunReport, Skipped};
use crate::subject;
use crate::timing::TimingBudget;

/// The simulated cache geometry: `size,associativity,line size` for the first-level
/// instruction and data caches and the last level (a Zen 3 core's 32 KiB L1s and a 32 MiB L3).
pub const CACHE: [(&str, &str); 3] = [
    ("--I1", "32768,8,64"),
    ("--D1", "32768,8,64"),
    ("--LL", "33554432,16,64"),
];

/// Counted calls per configuration by default.
pub const DEFAULT_CALLS: usize = 3;

/// Valgrind client requests (the `valgrind.h` / `callgrind.h` protocol, x86-64 only).
mod client {
    const fn tool_base(a: u8, b: u8) -> usize {
        ((a as usize) << 24) | ((b as usize) << 16)
    }
    pub const RUNNING_ON_VALGRIND: usize = 0x1001;
    const CALLGRIND: usize = tool_base(b'C', b'T');
    pub const DUMP_STATS_AT: usize = CALLGRIND + 3;
    pub const ZERO_STATS: usize = CALLGRIND + 1;
    pub const START_INSTRUMENTATION: usize = CALLGRIND + 4;
    pub const STOP_INSTRUMENTATION: usize = CALLGRIND + 5;

    /// Issues a client request; natively (not under Valgrind) the magic sequence is a no-op and
    /// `default` comes back.
    #[cfg(target_arch = "x86_64")]
    pub fn request(default: usize, request: usize, arg1: usize) -> usize {
        let args: [usize; 6] = [request, arg1, 0, 0, 0, 0];
        let result;
        // SAFETY: the preamble rotates rdi by 3+13+61+51 = 128 bits (a no-op) and `xchg rbx, rbx`
        // changes nothing; Valgrind recognises the sequence and reads `args` through rax,
        // writing its answer to rdx. Natively nothing is read or written but rdx = default.
        unsafe {
            std::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                inout("rdx") default => result,
                in("rax") args.as_ptr(),
                inout("rdi") 0usize => _,
                options(nostack),
            );
        }
        result
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn request(default: usize, _request: usize, _arg1: usize) -> usize {
        default
    }
}

/// Whether this process runs under Valgrind.
pub fn under_valgrind() -> bool {
    client::request(0, client::RUNNING_ON_VALGRIND, 0) > 0
}

/// iai-callgrind's estimate of cycles from callgrind's events: an L1 hit costs 1, a last-level
/// hit 5, a memory access 35.
pub fn estimated_cycles(events: &BTreeMap<String, f64>) -> f64 {
    let e = |k: &str| events.get(k).copied().unwrap_or(0.0);
    let ram = e("ILmr") + e("DLmr") + e("DLmw");
    let l1_miss = e("I1mr") + e("D1mr") + e("D1mw");
    let accesses = e("Ir") + e("Dr") + e("Dw");
    let ll_hits = l1_miss - ram;
    let l1_hits = accesses - ll_hits - ram;
    l1_hits + 5.0 * ll_hits + 35.0 * ram
}

/// One configuration of a counts run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// The inputs.
    pub cell: CellSpec,
    /// Backend registry name.
    pub backend: String,
    /// Threads.
    pub threads: usize,
    /// Variant (`""` or `resident`).
    pub variant: String,
    /// Operation.
    pub op: Op,
}

/// What the child is asked to count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Configurations, in order; the dump of configuration `i` is labelled `config-i`.
    pub configs: Vec<Planned>,
    /// Counted calls per configuration.
    pub calls: usize,
}

/// What the child reports per configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildResult {
    /// Index into the plan.
    pub index: usize,
    /// Its check against the reference, or why it could not run.
    pub outcome: Result<(f64, bool), String>,
}

fn label(i: usize) -> String {
    format!("config-{i}")
}

/// The child: runs the plan under Valgrind, one dump per configuration.
fn child(plan: &Plan) -> Result<Vec<ChildResult>, String> {
    if !under_valgrind() {
        return Err("counts-child must run under valgrind --tool=callgrind".into());
    }
    let budget = TimingBudget {
        max_call: std::time::Duration::from_secs(600),
        ..TimingBudget::for_run(true)
    };
    let mut built: Vec<Instance> = Vec::new();
    let mut cell: Option<Cell> = None;
    let mut out = Vec::new();
    for (index, p) in plan.configs.iter().enumerate() {
        let outcome = (|| -> Result<(f64, bool), String> {
            let variant = Variant::parse(&p.variant).ok_or("unknown variant")?;
            let i = match built
                .iter()
                .position(|x| x.name == p.backend && x.threads == p.threads)
            {
                Some(i) => i,
                None => {
                    let mut skipped = Vec::new();
                    let mut found = instances::instances(
                        std::slice::from_ref(&p.backend),
                        &[p.threads],
                        &mut skipped,
                    );
                    if found.is_empty() {
                        return Err(skipped
                            .into_iter()
                            .map(|s| s.reason)
                            .collect::<Vec<_>>()
                            .join("; "));
                    }
                    built.push(found.remove(0));
                    built.len() - 1
                }
            };
            if cell.as_ref().is_some_and(|c| c.spec != p.cell) {
                cell = None;
            }
            let current = &*cell.get_or_insert_with(|| Cell::new(p.cell, true, true));
            let mut ready = subject::ready(current, &built[i], variant, p.op, budget)
                .map_err(|e| e.to_string())?;
            let name = std::ffi::CString::new(label(index)).map_err(|e| e.to_string())?;
            client::request(0, client::START_INSTRUMENTATION, 0);
            let counted = (|| {
                ready.subject.call(ready.rep)?;
                ready.rep += 1;
                client::request(0, client::ZERO_STATS, 0);
                for _ in 0..plan.calls {
                    ready.subject.call(ready.rep)?;
                    ready.rep += 1;
                }
                Ok::<(), loss_core::LossError>(())
            })();
            client::request(0, client::DUMP_STATS_AT, name.as_ptr() as usize);
            client::request(0, client::STOP_INSTRUMENTATION, 0);
            counted.map_err(|e| e.to_string())?;
            Ok((ready.check.max_rel_error, ready.check.agrees))
        })();
        out.push(ChildResult { index, outcome });
    }
    Ok(out)
}

/// The events of every dump in `dir`, keyed by the dump's label.
fn read_dumps(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, f64>>, String> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("callgrind.out") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let (label, events) = parse_dump_text(&text)?;
        if let Some(label) = label {
            out.insert(label, events);
        }
    }
    Ok(out)
}

/// A dump's label (from its `desc: Trigger: Client Request: LABEL` line) and its totals by
/// event name.
#[allow(clippy::type_complexity)] // the label and the events: a pair is the clearest type
pub fn parse_dump(text: &str) -> Result<(Option<String>, BTreeMap<String, f64>), Error> {
    parse_dump_text(text).map_err(Error::Counts)
}

#[allow(clippy::type_complexity)]
fn parse_dump_text(text: &str) -> Result<(Option<String>, BTreeMap<String, f64>), String> {
    let mut names: Vec<String> = Vec::new();
    let mut totals: Option<Vec<f64>> = None;
    let mut label = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("events:") {
            names = rest.split_whitespace().map(String::from).collect();
        } else if let Some(rest) = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
        {
            totals = Some(
                rest.split_whitespace()
                    .map(|v| v.parse::<f64>().map_err(|e| format!("totals: {e}")))
                    .collect::<Result<_, _>>()?,
            );
        } else if let Some(rest) = line.strip_prefix("desc: Trigger: Client Request: ") {
            label = Some(rest.trim().to_string());
        }
    }
    let totals = totals.ok_or("a callgrind dump without totals")?;
    // Missing trailing events are zero (callgrind drops trailing zero columns).
    let events = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, totals.get(i).copied().unwrap_or(0.0)))
        .collect();
    Ok((label, events))
}

fn valgrind_version() -> Result<String, String> {
    let out = Command::new("valgrind")
        .arg("--version")
        .output()
        .map_err(|e| format!("--counts needs valgrind (Debian: apt-get install valgrind): {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The plan of a counts run: the run's grid, backends and ops, parallel backends on one thread.
pub fn plan(opts: &RunOptions, calls: usize, skipped: &mut Vec<Skipped>) -> Plan {
    let mut configs = Vec::new();
    let names: Vec<String> = if opts.backends.is_empty() {
        crate::backends::registry()
            .iter()
            .filter(|s| s.timed_by_default && !s.device)
            .map(|s| s.name.to_string())
            .collect()
    } else {
        opts.backends.clone()
    };
    for spec in opts.grid(skipped) {
        for name in &names {
            match crate::backends::spec(name) {
                Err(e) => {
                    if configs.is_empty() {
                        skipped.push(Skipped::backend(name, e.to_string()));
                    }
                }
                Ok(b) if b.device => skipped.push(Skipped {
                    backend: name.clone(),
                    batch: spec.batch,
                    classes: spec.classes,
                    reason: "a device backend's work is not instructions of this process".into(),
                }),
                Ok(_) => {
                    for &op in &opts.ops {
                        configs.push(Planned {
                            cell: spec,
                            backend: name.clone(),
                            threads: 1,
                            variant: String::new(),
                            op,
                        });
                    }
                }
            }
        }
    }
    Plan { configs, calls }
}

/// The parent: runs the plan under Valgrind and assembles the report.
pub fn run(opts: &RunOptions, calls: usize) -> Result<RunReport, Error> {
    run_counted(opts, calls).map_err(Error::Counts)
}

fn run_counted(opts: &RunOptions, calls: usize) -> Result<RunReport, String> {
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let version = valgrind_version()?;
    let mut skipped = Vec::new();
    let plan = plan(opts, calls.max(1), &mut skipped);
    let dir = std::env::temp_dir().join(format!("loss-bench-counts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plan_path = dir.join("plan.json");
    let results_path = dir.join("child.json");
    std::fs::write(
        &plan_path,
        serde_json::to_string(&plan).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", plan_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg("--cache-sim=yes")
        .arg("--dump-instr=no")
        .arg("--dump-line=no")
        .arg("--compress-strings=no")
        .arg("--compress-pos=no")
        .arg(format!(
            "--callgrind-out-file={}",
            dir.join("callgrind.out").display()
        ));
    for (flag, value) in CACHE {
        cmd.arg(format!("{flag}={value}"));
    }
    cmd.arg("-q")
        .arg(&exe)
        .arg("counts-child")
        .arg(&plan_path)
        .arg(&results_path);
    // Valgrind's own chatter (warnings about the host's caches, which the fixed geometry
    // overrides) is shown only when the child fails.
    let output = cmd
        .stdout(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start valgrind: {e}"))?;
    let cleanup = |dir: &PathBuf| {
        std::fs::remove_dir_all(dir).ok();
    };
    if !output.status.success() {
        cleanup(&dir);
        return Err(format!(
            "valgrind exited with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let child: Vec<ChildResult> = std::fs::read_to_string(&results_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .inspect_err(|_| cleanup(&dir))?;
    let dumps = read_dumps(&dir).inspect_err(|_| cleanup(&dir))?;
    cleanup(&dir);
    let mut results = Vec::new();
    for c in child {
        let p = &plan.configs[c.index];
        match (c.outcome, dumps.get(&label(c.index))) {
            (Err(e), _) => skipped.push(Skipped {
                backend: p.backend.clone(),
                batch: p.cell.batch,
                classes: p.cell.classes,
                reason: format!("{}: {e}", p.op),
            }),
            (Ok(_), None) => skipped.push(Skipped {
                backend: p.backend.clone(),
                batch: p.cell.batch,
                classes: p.cell.classes,
                reason: format!("{}: no callgrind dump was written", p.op),
            }),
            (Ok((max_rel_error, agrees)), Some(events)) => {
                results.push(counted(p, max_rel_error, agrees, events, plan.calls));
            }
        }
    }
    let mut config = opts.config();
    config.threads = vec![1];
    config.rounds = 1;
    config.counts = Some(CountsConfig {
        tool: format!("{version} callgrind"),
        calls: plan.calls,
        cache: CACHE
            .iter()
            .map(|(f, v)| format!("{f}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    });
    Ok(RunReport {
        schema: schema::SCHEMA.to_string(),
        created_unix,
        machine: crate::machine::machine(&[], &[], Vec::new()),
        config,
        results,
        skipped,
        summary: Vec::new(),
    })
}

fn counted(
    p: &Planned,
    max_rel_error: f64,
    agrees: bool,
    events: &BTreeMap<String, f64>,
    calls: usize,
) -> CellResult {
    let per = |v: f64| v / calls as f64;
    let e = |k: &str| events.get(k).copied().unwrap_or(0.0);
    let elements = p.cell.batch * p.cell.classes;
    let instructions = per(e("Ir"));
    CellResult {
        backend: p.backend.clone(),
        variant: p.variant.clone(),
        op: p.op,
        batch: p.cell.batch,
        classes: p.cell.classes,
        dtype: crate::schema::dtype_label(&p.cell),
        threads: p.threads,
        elements,
        median_ns: 0.0,
        min_ns: 0.0,
        spread: 0.0,
        reps: calls,
        elements_per_second: 0.0,
        bytes_per_second: 0.0,
        bandwidth_gbps: 0.0,
        bandwidth_fraction: 0.0,
        gpu_median_ns: None,
        gpu_bandwidth_fraction: None,
        in_cache: false,
        over_ceiling: false,
        max_rel_error,
        agrees,
        rounds: Vec::new(),
        calibrated: None,
        counts: Some(Counts {
            instructions,
            instructions_per_element: instructions / elements.max(1) as f64,
            data_accesses: per(e("Dr") + e("Dw")),
            l1_misses: per(e("I1mr") + e("D1mr") + e("D1mw")),
            ll_misses: per(e("ILmr") + e("DLmr") + e("DLmw")),
            estimated_cycles: per(estimated_cycles(events)),
            calls,
        }),
        cpu_per_wall: None,
        honest: None,
        note: None,
    }
}

/// Entry point of `loss-bench counts-child PLAN OUT`.
pub fn child_main(plan: &Path, out: &Path) -> Result<(), Error> {
    child_main_counted(plan, out).map_err(Error::Counts)
}

fn child_main_counted(plan: &Path, out: &Path) -> Result<(), String> {
    let plan: Plan = std::fs::read_to_string(plan)
        .map_err(|e| format!("{}: {e}", plan.display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))?;
    let results = child(&plan)?;
    std::fs::write(
        out,
        serde_json::to_string(&results).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natively_no_valgrind_is_detected() {
        assert!(!under_valgrind());
    }

    #[test]
    fn dumps_parse_into_labelled_events() {
        let text = "version: 1\ncreator: callgrind-3.19.0\npid: 1\ncmd: x\npart: 1\n\
                    desc: Trigger: Client Request: config-3\n\
                    events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
                    fn=(1) f\n0 5 1\nsummary: 1000 300 100 10 20 5 2 4 1\n";
        let (label, events) = parse_dump(text).unwrap();
        assert_eq!(label.as_deref(), Some("config-3"));
        assert_eq!(events["Ir"], 1000.0);
        assert_eq!(events["DLmw"], 1.0);
        // ram = 2+4+1 = 7; l1 misses = 35 → ll hits 28; accesses 1400 → l1 hits 1365.
        assert_eq!(estimated_cycles(&events), 1365.0 + 5.0 * 28.0 + 35.0 * 7.0);
        // Trailing zero events may be left out.
        let (_, short) = parse_dump("events: Ir Dr\ntotals: 7\n").unwrap();
        assert_eq!((short["Ir"], short["Dr"]), (7.0, 0.0));
        assert!(parse_dump("events: Ir\n").is_err());
    }
}
