//! Measures where the parallel path starts to pay: loss-cpu against this backend with the
//! sequential threshold disabled, fused forward+backward, weighted mean, growing problems.
//! `cargo run --release -p loss-rayon --example crossover`

use std::time::Instant;

use loss_core::{LossBackend, LossOptions, Problem, Target};
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
        let logits: Vec<f32> = (0..n * c)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        let targets: Vec<i64> = (0..n).map(|i| ((i * 31) % c) as i64).collect();
        let weight: Vec<f32> = (0..c).map(|i| 0.5 + (i % 3) as f32 * 0.5).collect();
        let shape = [n, c];
        let tshape = [n];
        let p = Problem::new(
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
