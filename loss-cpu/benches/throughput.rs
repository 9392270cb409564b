//! Criterion benchmarks of the CPU backend: weighted mean over index targets, forward and fused
//! forward+backward, in logits per second.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::LossBackend;
use loss_cpu::CpuBackend;

const SHAPES: [(usize, usize); 4] = [(1024, 10), (1024, 1000), (256, 32000), (4096, 4096)];

fn forward(c: &mut Criterion) {
    let backend = CpuBackend::new();
    let mut group = c.benchmark_group("cpu/forward");
    group.sample_size(10);
    for (n, classes) in SHAPES {
        let data = loss_core::testkit::weighted_batch(n, classes, 7);
        let problem = data.problem().expect("valid problem");
        let mut loss = [0.0f32];
        group.throughput(Throughput::Elements((n * classes) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{n}x{classes}")), |b| {
            b.iter(|| {
                backend.forward_into(&problem, &mut loss).unwrap();
                black_box(loss[0])
            })
        });
    }
    group.finish();
}

fn forward_backward(c: &mut Criterion) {
    let backend = CpuBackend::new();
    let mut group = c.benchmark_group("cpu/forward_backward");
    group.sample_size(10);
    for (n, classes) in SHAPES {
        let data = loss_core::testkit::weighted_batch(n, classes, 7);
        let problem = data.problem().expect("valid problem");
        let mut loss = [0.0f32];
        let mut grad = vec![0.0f32; n * classes];
        group.throughput(Throughput::Elements((n * classes) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{n}x{classes}")), |b| {
            b.iter(|| {
                backend
                    .forward_backward_into(&problem, &[1.0], &mut loss, &mut grad)
                    .unwrap();
                black_box(grad[0])
            })
        });
    }
    group.finish();
}

mod group {
    #![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`
    criterion::criterion_group!(benches, super::forward, super::forward_backward);
}
criterion_main!(group::benches);
