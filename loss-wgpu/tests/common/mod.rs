//! Shared test helpers: one backend per test binary, skipped cleanly without an adapter.

#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::sync::{Once, OnceLock};

use loss_core::conformance::Tolerance;
use loss_core::{LossBackend, ProblemData, reference};
use loss_wgpu::{WgpuBackend, WgpuOptions};

/// The backend of this test binary, opened once; `None` (after one `SKIPPED` line on stderr)
/// when there is no adapter, unless `LOSS_WGPU_REQUIRE_ADAPTER=1`, which makes that a failure.
pub fn backend() -> Option<&'static WgpuBackend> {
    static BACKEND: OnceLock<std::result::Result<WgpuBackend, String>> = OnceLock::new();
    static REPORT: Once = Once::new();
    let opened = BACKEND.get_or_init(|| WgpuBackend::new().map_err(|e| e.to_string()));
    match opened {
        Ok(b) => {
            REPORT.call_once(|| eprintln!("loss-wgpu tests on {}", b.describe()));
            Some(b)
        }
        Err(reason) => {
            assert!(
                std::env::var("LOSS_WGPU_REQUIRE_ADAPTER").as_deref() != Ok("1"),
                "LOSS_WGPU_REQUIRE_ADAPTER=1 but no wgpu adapter: {reason}"
            );
            REPORT.call_once(|| eprintln!("SKIPPED: no wgpu adapter ({reason})"));
            None
        }
    }
}

/// Returns from the test when there is no adapter (see [`backend`]).
#[macro_export]
macro_rules! backend_or_skip {
    () => {
        match common::backend() {
            Some(b) => b,
            None => return,
        }
    };
}

/// A second backend that sends every row to a workgroup kernel (`serial_max_classes = 0`):
/// contiguous rows to the single-pass kernel, strided ones to `row_main`, so those kernels are
/// covered on small shapes too.
pub fn workgroup_backend() -> Option<&'static WgpuBackend> {
    variant(Variant::Workgroup)
}

/// The kernel variants the tests cover, each on a backend of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Every row on a workgroup kernel (see [`workgroup_backend`]).
    Workgroup,
    /// The same without subgroup operations: shared-memory trees.
    Shared,
    /// Every contiguous row split into segments of 256 classes (the split-row kernels).
    Split,
    /// The split-row kernels without subgroup operations.
    SplitShared,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Workgroup,
        Variant::Shared,
        Variant::Split,
        Variant::SplitShared,
    ];

    pub fn options(self) -> WgpuOptions {
        let split = matches!(self, Variant::Split | Variant::SplitShared);
        WgpuOptions {
            serial_max_classes: 0,
            fused_max_classes: split.then_some(0),
            split_segment_classes: 256,
            subgroups: Some(matches!(self, Variant::Workgroup | Variant::Split)),
            ..WgpuOptions::default()
        }
    }
}

/// The backend of one [`Variant`], opened once per test binary; `None` without an adapter.
pub fn variant(v: Variant) -> Option<&'static WgpuBackend> {
    static BACKENDS: [OnceLock<WgpuBackend>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    backend()?;
    let i = Variant::ALL
        .iter()
        .position(|&x| x == v)
        .expect("a listed variant");
    Some(BACKENDS[i].get_or_init(|| {
        WgpuBackend::with_options(&v.options()).expect("another device on the adapter")
    }))
}

/// The default backend and every [`Variant`]'s; empty without an adapter.
pub fn all() -> Vec<&'static WgpuBackend> {
    backend()
        .into_iter()
        .chain(Variant::ALL.iter().filter_map(|&v| variant(v)))
        .collect()
}

/// Checks loss and gradient of `backend` against the f64 reference, with upstream gradient
/// `g` (or a fixed one when `None`).
pub fn check_against_reference(backend: &dyn LossBackend, data: &ProblemData, tol: Tolerance) {
    let problem = data.problem().expect("valid problem");
    let g: Vec<f32> = (0..problem.loss_len())
        .map(|i| 0.5 + (i % 7) as f32 * 0.25)
        .collect();
    let logits = problem.logits().to_f64_vec();
    let g64: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
    let want_loss = reference::forward_f64(&problem, &logits);
    let want_grad = reference::backward_f64(&problem, &logits, &g64);
    let (loss, grad) = backend
        .forward_backward(&problem, &g)
        .expect("forward_backward");
    assert_close("loss", &loss, &want_loss, tol);
    assert_close("grad", &grad, &want_grad, tol);
    let loss_only = backend.forward(&problem).expect("forward");
    assert_close("forward loss", &loss_only, &want_loss, tol);
    let grad_only = backend.backward(&problem, &g).expect("backward");
    assert_close("backward grad", &grad_only, &want_grad, tol);
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use loss_core::testkit::{Rng, bits, expect_close as assert_close};
