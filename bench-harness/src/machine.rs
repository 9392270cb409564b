//! What a run says about the machine: its CPU, caches, the bandwidth ceilings, and the divisor
//! of each result.

use std::collections::BTreeMap;

use crate::bandwidth::{self, Bandwidth};
use crate::options::available_cores;
use crate::schema::{Device, Machine, Op};

/// What the run measured about the machine, with the ceilings of both probes.
pub fn machine(start: &[Bandwidth], end: &[Bandwidth], devices: Vec<Device>) -> Machine {
    let ceilings = if end.is_empty() {
        start.to_vec()
    } else {
        bandwidth::best_of_probes(start, end)
    };
    let single = ceilings
        .iter()
        .find(|b| b.threads == 1)
        .or(ceilings.first())
        .cloned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mut crate_versions = BTreeMap::new();
    crate_versions.insert(
        "bench-harness".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    for (name, version) in crate::CRATE_VERSIONS {
        crate_versions.insert(name.to_string(), version.to_string());
    }
    Machine {
        cpu,
        cores: available_cores(),
        read_bandwidth_gbps: single.as_ref().map_or(0.0, |b| b.read_gbps),
        copy_bandwidth_gbps: single.as_ref().map_or(0.0, |b| b.copy_gbps),
        bandwidth: ceilings,
        bandwidth_start: start.to_vec(),
        bandwidth_end: end.to_vec(),
        llc_bytes: bandwidth::last_level_cache_bytes(),
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        crate_versions,
        devices,
    }
}

/// The bandwidth divisor of an operation at a thread count (the nearest measured count).
pub fn divisor(bandwidth: &[Bandwidth], op: Op, threads: usize) -> f64 {
    let b = bandwidth
        .iter()
        .min_by_key(|b| b.threads.abs_diff(threads))
        .expect("at least one bandwidth figure");
    match op {
        Op::Forward => b.read_gbps,
        Op::Backward | Op::ForwardBackward => b.copy_gbps,
    }
}
