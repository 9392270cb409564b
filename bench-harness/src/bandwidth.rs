//! The memory-bandwidth probe: the ceilings the harness divides throughput by.
//!
//! Buffers are far larger than the last-level cache (at least 8× it, 256 MiB by default), touched
//! once before timing so that page faults are not measured, and each figure is the best of
//! several passes (the best pass is the one least disturbed by the rest of the machine). Every
//! probe thread is pinned to its own core, so two probe threads never share one.
//!
//! - *read*: a sum over the buffer with 32 independent accumulators, which the compiler
//!   vectorises (AVX2 when the CPU has it); bytes read per second.
//! - *copy*: the best of three copies, because which one is fastest depends on the machine (on
//!   the reference VM, the C library's `memcpy` uses non-temporal stores for large buffers and
//!   loses to a plain loop): `memcpy` (`copy_from_slice`), a loop of plain vector stores, and a
//!   loop of non-temporal (streaming) stores. Bytes read plus bytes written per second, the
//!   traffic of a kernel that reads logits and writes a gradient.
//!
//! A ceiling is a ceiling: `t` threads could always run the `t − 1`-thread kernel, so the figure
//! reported for `t` threads is the best over every count up to `t` (the raw figure is kept
//! beside it). The run probes at its start and at its end and divides by the better of the two,
//! so a cell above 100 % of its ceiling out of cache is a defect of the probe, and is reported as
//! one.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Bandwidth figures for one thread count, in GB/s (10⁹ bytes per second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Threads the probe ran on.
    pub threads: usize,
    /// Bytes read per second: the best over every thread count up to `threads`.
    pub read_gbps: f64,
    /// Bytes read plus bytes written per second, best copy kernel, best over every thread count
    /// up to `threads`.
    pub copy_gbps: f64,
    /// The read figure measured at exactly `threads` threads.
    #[serde(default)]
    pub measured_read_gbps: f64,
    /// The copy figure measured at exactly `threads` threads.
    #[serde(default)]
    pub measured_copy_gbps: f64,
    /// Which copy kernel gave `measured_copy_gbps` (`memcpy`, `plain`, `streaming`).
    #[serde(default)]
    pub copy_kernel: String,
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
/// 256-bit version (faster than the SSE2 baseline build: NOTES.md).
pub fn sum_chunk(data: &[f32]) -> f32 {
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

/// The copy kernels the probe tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKernel {
    /// The C library's `memcpy`, through `copy_from_slice`.
    Memcpy,
    /// A loop of ordinary vector loads and stores (the stores go through the cache).
    Plain,
    /// A loop of vector loads and non-temporal stores (x86-64 with AVX only).
    Streaming,
}

impl CopyKernel {
    /// Every kernel, in probe order.
    pub const ALL: [CopyKernel; 3] = [CopyKernel::Memcpy, CopyKernel::Plain, CopyKernel::Streaming];

    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKernel::Memcpy => "memcpy",
            CopyKernel::Plain => "plain",
            CopyKernel::Streaming => "streaming",
        }
    }

    /// Whether this machine can run it.
    pub fn available(self) -> bool {
        match self {
            CopyKernel::Memcpy | CopyKernel::Plain => true,
            #[cfg(target_arch = "x86_64")]
            CopyKernel::Streaming => std::arch::is_x86_feature_detected!("avx"),
            #[cfg(not(target_arch = "x86_64"))]
            CopyKernel::Streaming => false,
        }
    }

    /// Copies `src` into `dst` (equal lengths).
    pub fn copy(self, src: &[f32], dst: &mut [f32]) {
        match self {
            CopyKernel::Memcpy => dst.copy_from_slice(src),
            CopyKernel::Plain => plain_copy(src, dst),
            CopyKernel::Streaming => {
                #[cfg(target_arch = "x86_64")]
                if self.available() {
                    // SAFETY: AVX support was just checked.
                    unsafe { streaming_copy_avx(src, dst) };
                    return;
                }
                dst.copy_from_slice(src)
            }
        }
    }
}

/// Vector loads and ordinary stores; volatile-free but opaque enough that LLVM does not turn it
/// back into a `memcpy` call (the loop body is explicit AVX on x86-64).
fn plain_copy(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX support was just detected at run time.
        unsafe { plain_copy_avx(src, dst) };
        return;
    }
    for (d, s) in dst.chunks_mut(8).zip(src.chunks(8)) {
        d.copy_from_slice(black_box(s));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn plain_copy_avx(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    let n = src.len().min(dst.len());
    let body = n - n % 32;
    let mut i = 0;
    while i < body {
        // SAFETY: i + 32 ≤ n ≤ both lengths; unaligned loads and stores.
        unsafe {
            let s = src.as_ptr().add(i);
            let d = dst.as_mut_ptr().add(i);
            let (a, b, c, e) = (
                _mm256_loadu_ps(s),
                _mm256_loadu_ps(s.add(8)),
                _mm256_loadu_ps(s.add(16)),
                _mm256_loadu_ps(s.add(24)),
            );
            _mm256_storeu_ps(d, a);
            _mm256_storeu_ps(d.add(8), b);
            _mm256_storeu_ps(d.add(16), c);
            _mm256_storeu_ps(d.add(24), e);
        }
        i += 32;
    }
    dst[body..n].copy_from_slice(&src[body..n]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn streaming_copy_avx(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm_sfence, _mm256_loadu_ps, _mm256_stream_ps};
    let n = src.len().min(dst.len());
    // Non-temporal stores need 32-byte aligned destinations: copy a head up to the boundary.
    let head = dst.as_ptr().align_offset(32).min(n);
    dst[..head].copy_from_slice(&src[..head]);
    let body = head + (n - head) / 8 * 8;
    let mut i = head;
    while i < body {
        // SAFETY: i + 8 ≤ body ≤ n; `dst + i` is 32-byte aligned (head aligned it, i advances
        // by 8 floats = 32 bytes).
        unsafe {
            _mm256_stream_ps(
                dst.as_mut_ptr().add(i),
                _mm256_loadu_ps(src.as_ptr().add(i)),
            )
        };
        i += 8;
    }
    dst[body..n].copy_from_slice(&src[body..n]);
    // Streaming stores are weakly ordered: fence so that later reads see them.
    _mm_sfence();
}

/// The logical CPUs the calling thread may run on, in order (empty where that cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `allowed` is a plain bitmask owned by this frame; the libc calls only read and
        // write it, and pid 0 means the calling thread.
        unsafe {
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0
            {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &allowed))
                .collect()
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// Pins the calling thread to logical CPU `cpu` (modulo the CPUs this process may use). Returns
/// whether it worked; the probe runs unpinned where it does not (non-Linux systems).
pub fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        let cpus = allowed_cpus();
        if cpus.is_empty() {
            return false;
        }
        // SAFETY: `set` is a plain bitmask owned by this frame; the libc call only reads it, and
        // pid 0 means the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpus[cpu % cpus.len()], &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

/// Lets the calling thread run on every CPU this process was allowed at its start again.
pub fn unpin_current_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::sync::OnceLock;
        // The mask the process started with, read before anything pinned a thread.
        static START: OnceLock<Option<libc::cpu_set_t>> = OnceLock::new();
        let start = START.get_or_init(|| {
            // SAFETY: as in `pin_current_thread`: a bitmask owned by this frame.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
                    .then_some(set)
            }
        });
        match start {
            // SAFETY: `set` is a valid mask read from the kernel; pid 0 is this thread.
            Some(set) => unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0
            },
            None => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
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

/// Runs `work(part_index, part)` on `threads` pinned threads, one contiguous part each.
fn on_pinned_threads<'a, T: Send + Sync + 'a>(
    parts: impl Iterator<Item = T>,
    work: impl Fn(T) + Sync,
) {
    std::thread::scope(|s| {
        for (i, part) in parts.enumerate() {
            let work = &work;
            s.spawn(move || {
                pin_current_thread(i);
                work(part);
            });
        }
    });
}

/// Measures read and copy bandwidth with exactly `threads` pinned threads over buffers of
/// `bytes` bytes. The returned figures are the raw ones (see [`monotone`]).
pub fn measure(bytes: usize, threads: usize, passes: usize) -> Bandwidth {
    let n = (bytes / 4).max(1 << 20);
    let src: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut dst = vec![0.0f32; n];
    let threads = threads.max(1);
    let part = n.div_ceil(threads);
    let read_s = best_of(passes, || {
        on_pinned_threads(src.chunks(part), |chunk| {
            black_box(sum_chunk(black_box(chunk)));
        });
    });
    let mut best_copy = (f64::INFINITY, CopyKernel::Memcpy);
    for kernel in CopyKernel::ALL.into_iter().filter(|k| k.available()) {
        let s = best_of(passes, || {
            on_pinned_threads(dst.chunks_mut(part).zip(src.chunks(part)), |(d, c)| {
                kernel.copy(black_box(c), d)
            });
            black_box(&mut dst);
        });
        if s < best_copy.0 {
            best_copy = (s, kernel);
        }
    }
    let bytes = (n * 4) as f64;
    let read_gbps = bytes / read_s / 1e9;
    let copy_gbps = 2.0 * bytes / best_copy.0 / 1e9;
    Bandwidth {
        threads,
        read_gbps,
        copy_gbps,
        measured_read_gbps: read_gbps,
        measured_copy_gbps: copy_gbps,
        copy_kernel: best_copy.1.as_str().to_string(),
    }
}

/// Makes the ceilings monotone in the thread count: the figure for `t` threads becomes the best
/// measured at any count up to `t` (more threads can always leave some idle).
pub fn monotone(mut figures: Vec<Bandwidth>) -> Vec<Bandwidth> {
    figures.sort_by_key(|b| b.threads);
    let (mut read, mut copy) = (0.0f64, 0.0f64);
    for b in &mut figures {
        read = read.max(b.measured_read_gbps);
        copy = copy.max(b.measured_copy_gbps);
        b.read_gbps = read;
        b.copy_gbps = copy;
    }
    figures
}

/// Probes 1 thread and every thread count in `threads`, and makes the result monotone.
pub fn probe(threads: &[usize], passes: usize) -> Vec<Bandwidth> {
    let mut counts: Vec<usize> = std::iter::once(1).chain(threads.iter().copied()).collect();
    counts.sort_unstable();
    counts.dedup();
    monotone(
        counts
            .into_iter()
            .map(|t| measure(default_probe_bytes(), t, passes))
            .collect(),
    )
}

/// The better of two probes of the same thread counts (the start and the end of a run): the
/// ceiling is the best the machine showed.
pub fn best_of_probes(a: &[Bandwidth], b: &[Bandwidth]) -> Vec<Bandwidth> {
    a.iter()
        .map(|x| {
            let y = b.iter().find(|y| y.threads == x.threads);
            let mut best = x.clone();
            if let Some(y) = y {
                best.read_gbps = x.read_gbps.max(y.read_gbps);
                best.copy_gbps = x.copy_gbps.max(y.copy_gbps);
            }
            best
        })
        .collect()
}

/// The probe's default buffer size: 256 MiB, or 8× the last-level cache if that is larger.
pub fn default_probe_bytes() -> usize {
    (256usize << 20).max(8 * last_level_cache_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(threads: usize, read: f64, copy: f64) -> Bandwidth {
        Bandwidth {
            threads,
            read_gbps: read,
            copy_gbps: copy,
            measured_read_gbps: read,
            measured_copy_gbps: copy,
            copy_kernel: "plain".into(),
        }
    }

    #[test]
    fn more_threads_never_report_a_lower_ceiling() {
        let m = monotone(vec![
            raw(2, 20.0, 17.0),
            raw(1, 14.0, 24.0),
            raw(4, 19.0, 30.0),
        ]);
        let got: Vec<_> = m
            .iter()
            .map(|b| (b.threads, b.read_gbps, b.copy_gbps))
            .collect();
        assert_eq!(got, vec![(1, 14.0, 24.0), (2, 20.0, 24.0), (4, 20.0, 30.0)]);
        // The raw figures are kept.
        assert_eq!(m[1].measured_copy_gbps, 17.0);
    }

    #[test]
    fn every_copy_kernel_copies() {
        let src: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        for k in CopyKernel::ALL.into_iter().filter(|k| k.available()) {
            // An odd offset, so the streaming kernel's unaligned head and tail are exercised.
            let mut dst = vec![0.0f32; 1003];
            k.copy(&src[3..], &mut dst[3..1000]);
            assert_eq!(&dst[3..1000], &src[3..], "{}", k.as_str());
            assert_eq!(&dst[..3], &[0.0; 3]);
        }
    }

    #[test]
    fn best_of_two_probes_takes_each_maximum() {
        let a = vec![raw(1, 14.0, 20.0)];
        let b = vec![raw(1, 16.0, 18.0)];
        let best = best_of_probes(&a, &b);
        assert_eq!((best[0].read_gbps, best[0].copy_gbps), (16.0, 20.0));
    }
}
