//! Quick single-threaded throughput of the CPU backend (weighted mean, index targets), in
//! G logits/s and as a fraction of this machine's measured bandwidth.
//!
//! `CARGO_TARGET_DIR=/work/target-cpu cargo run --release -p loss-cpu --example throughput`

use std::hint::black_box;
use std::time::{Duration, Instant};

use loss_core::conformance::Tolerance;
use loss_core::{LossBackend, LossOptions, Problem, ReferenceBackend, Target};
use loss_cpu::CpuBackend;

const SHAPES: [(usize, usize); 6] = [
    (1024, 10),
    (1024, 1000),
    (256, 32000),
    (64, 128_256),
    (16384, 100),
    (4096, 4096),
];

/// This thread's CPU time in seconds, so that another process sharing the cores does not count
/// against us (wall time off Linux).
#[cfg(target_os = "linux")]
fn cpu_seconds(_wall: Instant) -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout) for the call's duration.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(not(target_os = "linux"))]
fn cpu_seconds(wall: Instant) -> f64 {
    wall.elapsed().as_secs_f64()
}

/// Median CPU seconds per call, over samples of at least 2 ms, filling about `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    let origin = Instant::now();
    f();
    // Calls per sample: enough for 2 ms, so that reading the clock costs nothing.
    let probe = Instant::now();
    f();
    let calls = (2e-3 / probe.elapsed().as_secs_f64().max(1e-9)).clamp(1.0, 1e6) as u32;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 7 || (start.elapsed() < budget && samples.len() < 200) {
        let t = cpu_seconds(origin);
        for _ in 0..calls {
            f();
        }
        samples.push((cpu_seconds(origin) - t) / f64::from(calls));
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn bandwidth() -> (f64, f64) {
    let n = 1 << 26; // 256 MiB of f32
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; n];
    let read = time(Duration::from_millis(800), || {
        // Independent lanes, so the sum vectorises and is not latency-bound.
        let mut acc = [0.0f32; 16];
        for c in black_box(&src).chunks_exact(16) {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        black_box(acc);
    });
    let copy = time(Duration::from_millis(800), || {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
    (4.0 * n as f64 / read / 1e9, 8.0 * n as f64 / copy / 1e9)
}

fn main() {
    // `XENT_ONLY=NxC[xD] XENT_ITERS=k XENT_MODE=fwd|fused`: exactly k calls of one shape and
    // nothing else, for `perf stat -e cycles:u` (stable when other work shares the cores).
    // `XENT_EXP=1`: the ceiling, `exp` alone over an L1-resident buffer.
    if std::env::var("XENT_EXP").is_ok() {
        let x: Vec<f32> = (0..4096).map(|i| -(i as f32) * 0.01).collect();
        let mut y = vec![0.0f32; 4096];
        let origin = Instant::now();
        let t = cpu_seconds(origin);
        for _ in 0..100_000 {
            loss_cpu::exp::exp_slice(black_box(&x), &mut y);
            black_box(&y);
        }
        let dt = cpu_seconds(origin) - t;
        println!("exp alone: {:.2} G/s", 4096.0 * 1e5 / dt / 1e9);
        return;
    }
    if let (Ok(only), Ok(iters)) = (std::env::var("XENT_ONLY"), std::env::var("XENT_ITERS")) {
        // `NxC` or `NxCxD` (K-dimensional, D positions per batch row).
        let dims: Vec<usize> = only
            .split('x')
            .map(|d| d.parse().expect("NxC[xD]"))
            .collect();
        let (n, c, d) = (dims[0], dims[1], dims.get(2).copied().unwrap_or(1));
        let fused = std::env::var("XENT_MODE").is_ok_and(|m| m == "fused");
        let logits: Vec<f32> = (0..n * c * d)
            .map(|i| ((i * 7919) % 2000) as f32 * 0.01 - 10.0)
            .collect();
        let target: Vec<i64> = (0..n * d).map(|i| ((i * 31) % c) as i64).collect();
        let weight: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let (shape, tshape) = if dims.len() == 3 {
            (vec![n, c, d], vec![n, d])
        } else {
            (vec![n, c], vec![n])
        };
        let target = Target::Indices {
            data: &target,
            shape: &tshape,
        };
        let problem = Problem::new(&logits, &shape, target, LossOptions::new().weight(&weight))
            .expect("valid problem");
        let (mut loss, mut grad) = ([0.0f32], vec![0.0f32; n * c * d]);
        let origin = Instant::now();
        let mut per_call = Vec::new();
        for _ in 0..iters.parse::<usize>().unwrap() {
            let t = cpu_seconds(origin);
            if fused {
                CpuBackend::new()
                    .forward_backward_into(&problem, &[1.0], &mut loss, &mut grad)
                    .unwrap();
            } else {
                CpuBackend::new().forward_into(&problem, &mut loss).unwrap();
            }
            black_box((&loss, &grad));
            per_call.push(cpu_seconds(origin) - t);
        }
        per_call.sort_by(f64::total_cmp);
        let median = per_call[per_call.len() / 2];
        println!(
            "{only} {}: {:.2} G logits/s (median of {} calls, CPU time)",
            if fused { "fused" } else { "fwd" },
            (n * c * d) as f64 / median / 1e9,
            per_call.len()
        );
        return;
    }
    let (read_gbs, copy_gbs) = bandwidth();
    println!("bandwidth, 1 core: read {read_gbs:.1} GB/s, copy {copy_gbs:.1} GB/s");
    println!(
        "{:>12} | {:>9} {:>7} | {:>9} {:>7} | check",
        "N x C", "fwd G/s", "of bw", "fused G/s", "of bw"
    );
    let backend = CpuBackend::new();
    // `XENT_ONLY=1024x10` times one shape (for `perf record`).
    let only = std::env::var("XENT_ONLY").ok();
    for (n, c) in SHAPES {
        if only.as_ref().is_some_and(|o| *o != format!("{n}x{c}")) {
            continue;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let logits: Vec<f32> = (0..n * c)
            .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0)
            .collect();
        let target: Vec<i64> = (0..n).map(|_| (next() % c as u64) as i64).collect();
        let weight: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let shape = [n, c];
        let tshape = [n];
        let problem = Problem::new(
            &logits,
            &shape,
            Target::Indices {
                data: &target,
                shape: &tshape,
            },
            LossOptions::new().weight(&weight),
        )
        .expect("valid problem");
        let mut loss = [0.0f32];
        let mut grad = vec![0.0f32; n * c];
        let budget = Duration::from_millis(1500);
        let fwd = time(budget, || {
            backend.forward_into(&problem, &mut loss).unwrap();
            black_box(&loss);
        });
        let fused = time(budget, || {
            backend
                .forward_backward_into(&problem, &[1.0], &mut loss, &mut grad)
                .unwrap();
            black_box(&grad);
        });
        // A fast wrong kernel is a bug, not a result: check the loss of every timed shape.
        let reference = ReferenceBackend::new().forward(&problem).unwrap();
        let ok = Tolerance::new(1e-4, 1e-5).allows(f64::from(loss[0]), f64::from(reference[0]));
        let elems = (n * c) as f64;
        let (gf, gb) = (elems / fwd / 1e9, elems / fused / 1e9);
        println!(
            "{:>12} | {:>9.2} {:>6.0}% | {:>9.2} {:>6.0}% | {}",
            format!("{n}x{c}"),
            gf,
            100.0 * gf * 4.0 / read_gbs,
            gb,
            100.0 * gb * 8.0 / copy_gbs,
            if ok { "ok" } else { "MISMATCH" }
        );
    }
}
