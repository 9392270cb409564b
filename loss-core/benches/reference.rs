//! Throughput of the reference backend (the oracle; slow by design — this bench exists so that
//! the cost of cross-checking is known).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::{LossBackend, ReferenceBackend};

fn bench(c: &mut Criterion) {
    for (op, fused) in [("forward", false), ("forward_backward", true)] {
        let mut group = c.benchmark_group(format!("reference/{op}"));
        group.sample_size(10);
        for (n, k) in [(64usize, 10usize), (64, 1000), (4, 32000)] {
            let data = loss_core::testkit::weighted_batch(n, k, 7);
            let problem = data.problem().expect("valid");
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
