//! Throughput of the wgpu backend, end to end (host slices in, host slices out). Skips, and
//! does not fail, without an adapter.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::LossBackend;
use loss_wgpu::WgpuBackend;

/// A few small shapes (N, C): CI runs each once (`cargo test --benches`).
const SHAPES: [(usize, usize); 3] = [(256, 10), (64, 1000), (8, 32_768)];

fn throughput(criterion: &mut Criterion) {
    let backend = match WgpuBackend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: no wgpu adapter ({e})");
            return;
        }
    };
    for (op, fused) in [("wgpu/forward", false), ("wgpu/forward_backward", true)] {
        let mut group = criterion.benchmark_group(op);
        // Short runs: on a software rasteriser (CI's lavapipe) the defaults take minutes.
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for (n, c) in SHAPES {
            let data = loss_core::testkit::weighted_batch(n, c, 7);
            let problem = data.problem().expect("valid problem");
            group.throughput(Throughput::Elements((n * c) as u64));
            group.bench_function(BenchmarkId::from_parameter(format!("{n}x{c}")), |b| {
                // Each call reads its results back, so the device is synchronised when the
                // clock stops.
                if fused {
                    let mut loss = [0.0f32];
                    let mut grad = vec![0.0f32; n * c];
                    b.iter(|| {
                        backend
                            .forward_backward_into(&problem, &[1.0], &mut loss, &mut grad)
                            .expect("forward_backward")
                    });
                } else {
                    let mut loss = [0.0f32];
                    b.iter(|| backend.forward_into(&problem, &mut loss).expect("forward"));
                }
            });
        }
        group.finish();
    }
}

mod group {
    #![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`
    criterion::criterion_group!(benches, super::throughput);
}

criterion_main!(group::benches);
