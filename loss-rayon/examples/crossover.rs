//! Measures where the parallel path starts to pay: loss-cpu against this backend with the
//! sequential threshold disabled, fused forward+backward, weighted mean, growing problems.
//! `cargo run --release -p loss-rayon --example crossover`

use std::time::Instant;

use loss_core::LossBackend;
use loss_cpu::CpuBackend;
use loss_rayon::RayonBackend;

fn median_ns(mut f: impl FnMut()) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..41)
        .map(|_| {
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parallel = RayonBackend::new(threads)
        .expect("pool")
        .with_sequential_below(0);
    let cpu = CpuBackend::new();
    println!("logits    N x C        cpu µs   rayon({threads}T) µs   speed-up");
    for (n, c) in [
        (16, 256),
        (64, 256),
        (128, 256),
        (256, 256),
        (512, 256),
        (1024, 256),
        (64, 1000),
        (256, 1000),
        (1024, 1000),
    ] {
        let data = loss_core::testkit::weighted_batch(n, c, 7);
        let p = data.problem().expect("valid");
        let mut loss = [0.0f32];
        let mut grad = vec![0.0f32; n * c];
        let a = median_ns(|| {
            cpu.forward_backward_into(&p, &[1.0], &mut loss, &mut grad)
                .unwrap()
        });
        let b = median_ns(|| {
            parallel
                .forward_backward_into(&p, &[1.0], &mut loss, &mut grad)
                .unwrap()
        });
        println!(
            "{:>8}  {n:>5} x {c:<5}  {:>8.1}  {:>14.1}   {:>6.2}",
            n * c,
            a / 1e3,
            b / 1e3,
            a / b
        );
    }
}
