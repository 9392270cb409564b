//! Throughput of the rayon backend (all cores) on a few shapes, beside loss-cpu's figures.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use loss_core::LossBackend;
use loss_rayon::RayonBackend;

fn bench(c: &mut Criterion) {
    let backend = RayonBackend::new(0).expect("thread pool");
    for (op, fused) in [("forward", false), ("forward_backward", true)] {
        let mut group = c.benchmark_group(format!("rayon/{op}"));
        group.sample_size(10);
        for (n, k) in [(1024usize, 1000usize), (4096, 4096), (8, 128_256)] {
            let data = loss_core::testkit::weighted_batch(n, k, 7);
            let problem = data.problem().expect("valid");
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
