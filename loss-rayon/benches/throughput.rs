//! Throughput of the rayon backend (all cores) on a few shapes, beside loss-cpu's figures.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::{LossBackend, LossOptions, Problem, Target};
use loss_rayon::RayonBackend;

fn bench(c: &mut Criterion) {
    let backend = RayonBackend::new(0).expect("thread pool");
    for (op, fused) in [("forward", false), ("forward_backward", true)] {
        let mut group = c.benchmark_group(format!("rayon/{op}"));
        group.sample_size(10);
        for (n, k) in [(1024usize, 1000usize), (4096, 4096), (8, 128_256)] {
            let logits: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
                .collect();
            let targets: Vec<i64> = (0..n).map(|i| ((i * 31) % k) as i64).collect();
            let weight: Vec<f32> = (0..k).map(|i| 0.5 + (i % 3) as f32 * 0.5).collect();
            let shape = [n, k];
            let tshape = [n];
            let problem = Problem::new(
                &logits,
                &shape,
                Target::Indices {
                    data: &targets,
                    shape: &tshape,
                },
                LossOptions::new().weight(&weight),
            )
            .expect("valid");
            let mut loss = [0.0f32];
            let mut grad = vec![0.0f32; n * k];
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_with_input(
                BenchmarkId::from_parameter(format!("{n}x{k}")),
                &problem,
                |b, p| {
                    b.iter(|| {
                        if fused {
                            backend.forward_backward_into(p, &[1.0], &mut loss, &mut grad)
                        } else {
                            backend.forward_into(p, &mut loss)
                        }
                    })
                },
            );
        }
        group.finish();
    }
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
