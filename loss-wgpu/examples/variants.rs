//! Times the kernel variants on one shape, resident fused calls (for comparing variants on one
//! adapter; `loss-bench ab` is the tool for comparing builds):
//! `cargo run --release -p loss-wgpu --example variants -- 1024 1000`.

use loss_core::{LossOptions, Problem, Target};
use loss_wgpu::{WgpuBackend, WgpuOptions};

fn main() -> loss_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N and C"))
        .collect();
    let (n, c) = (
        args.first().copied().unwrap_or(1024),
        args.get(1).copied().unwrap_or(1000),
    );
    let logits: Vec<f32> = (0..n * c)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.01)
        .collect();
    let target: Vec<i64> = (0..n).map(|i| (i % c) as i64).collect();
    let (shape, tshape) = ([n, c], [n]);
    let problem = Problem::new(
        &logits,
        &shape,
        Target::Indices {
            data: &target,
            shape: &tshape,
        },
        LossOptions::new(),
    )?;
    let variants = [
        ("default", WgpuOptions::default()),
        (
            "subgroups",
            WgpuOptions {
                subgroups: Some(true),
                ..WgpuOptions::default()
            },
        ),
        (
            "fused to 32K",
            WgpuOptions {
                fused_max_classes: Some(32 * 1024),
                subgroups: Some(false),
                ..WgpuOptions::default()
            },
        ),
        (
            "split 8K",
            WgpuOptions {
                fused_max_classes: Some(0),
                split_segment_classes: 8192,
                subgroups: Some(false),
                ..WgpuOptions::default()
            },
        ),
        (
            "split",
            WgpuOptions {
                fused_max_classes: Some(0),
                ..WgpuOptions::default()
            },
        ),
    ];
    for (name, options) in variants {
        let backend = WgpuBackend::with_options(&options)?;
        let mut resident = backend.upload(&problem)?;
        resident.forward_backward(&[1.0])?;
        let calls = 5;
        let start = std::time::Instant::now();
        for _ in 0..calls {
            resident.forward_backward(&[1.0])?;
        }
        let wall = start.elapsed().as_secs_f64() / calls as f64;
        println!(
            "{name:>14}: {:.2} ms per fused call, GPU {:?} ms",
            wall * 1e3,
            resident.last_gpu_ns().map(|t| t / 1e6)
        );
    }
    Ok(())
}
