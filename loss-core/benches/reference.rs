//! Throughput of the reference backend (the oracle; slow by design — this bench exists so that
//! the cost of cross-checking is known).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::{LossBackend, LossOptions, Problem, ReferenceBackend, Target};

fn inputs(n: usize, c: usize) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
    let logits = (0..n * c)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
        .collect();
    let targets = (0..n).map(|i| ((i * 31) % c) as i64).collect();
    let weight = (0..c).map(|i| 0.5 + (i % 3) as f32 * 0.5).collect();
    (logits, targets, weight)
}

fn bench(c: &mut Criterion) {
    for (op, fused) in [("forward", false), ("forward_backward", true)] {
        let mut group = c.benchmark_group(format!("reference/{op}"));
        group.sample_size(10);
        for (n, k) in [(64usize, 10usize), (64, 1000), (4, 32000)] {
            let (logits, targets, weight) = inputs(n, k);
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
            let mut loss = vec![0.0f32; 1];
            let mut grad = vec![0.0f32; n * k];
            group.throughput(Throughput::Elements((n * k) as u64));
            group.bench_with_input(
                BenchmarkId::from_parameter(format!("{n}x{k}")),
                &problem,
                |b, p| {
                    b.iter(|| {
                        if fused {
                            ReferenceBackend.forward_backward_into(p, &[1.0], &mut loss, &mut grad)
                        } else {
                            ReferenceBackend.forward_into(p, &mut loss)
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
