//! Criterion benchmarks of the CPU backend: weighted mean over index targets, forward and fused
//! forward+backward, in logits per second.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::{LossBackend, LossOptions, Problem, Target};
use loss_cpu::CpuBackend;

const SHAPES: [(usize, usize); 4] = [(1024, 10), (1024, 1000), (256, 32000), (4096, 4096)];

struct Input {
    logits: Vec<f32>,
    target: Vec<i64>,
    weight: Vec<f32>,
    shape: [usize; 2],
    target_shape: [usize; 1],
}

fn input(n: usize, c: usize) -> Input {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    Input {
        logits: (0..n * c)
            .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0)
            .collect(),
        target: (0..n).map(|_| (next() % c as u64) as i64).collect(),
        weight: (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect(),
        shape: [n, c],
        target_shape: [n],
    }
}

impl Input {
    fn problem(&self) -> Problem<'_> {
        Problem::new(
            &self.logits,
            &self.shape,
            Target::Indices {
                data: &self.target,
                shape: &self.target_shape,
            },
            LossOptions::new().weight(&self.weight),
        )
        .expect("valid problem")
    }
}

fn forward(c: &mut Criterion) {
    let backend = CpuBackend::new();
    let mut group = c.benchmark_group("cpu/forward");
    group.sample_size(10);
    for (n, classes) in SHAPES {
        let data = input(n, classes);
        let problem = data.problem();
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
        let data = input(n, classes);
        let problem = data.problem();
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
