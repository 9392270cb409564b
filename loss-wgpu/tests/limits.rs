//! Sizes past the device's per-dispatch and per-binding limits: more than 65,535 positions
//! (2-D grids), C = 256K (the class loop inside a workgroup), and inputs larger than one
//! storage binding (split into several dispatches), each checked against the reference.

mod common;

use common::{Rng, check_against_reference};
use loss_core::conformance::DEFAULT_TOLERANCE;
use loss_core::{ErrorKind, LossBackend, OwnedTarget, ProblemData, Reduction};
use loss_wgpu::{WgpuBackend, WgpuOptions};

fn index_problem(
    shape: &[usize],
    reduction: Reduction,
    weight: bool,
    eps: f32,
    seed: u64,
) -> ProblemData {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    let classes = shape[1];
    let positions = len / classes;
    let target: Vec<i64> = (0..positions)
        .map(|i| {
            if i % 11 == 3 {
                -100
            } else {
                rng.below(classes) as i64
            }
        })
        .collect();
    let mut target_shape = shape.to_vec();
    target_shape.remove(1);
    ProblemData {
        logits: rng.logits(len, 8.0).into(),
        shape: shape.to_vec(),
        target: OwnedTarget::Indices(target),
        target_shape,
        weight: weight.then(|| (0..classes).map(|_| rng.uniform(0.1, 2.0)).collect()),
        ignore_index: -100,
        reduction,
        label_smoothing: eps,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    }
}

fn probs_problem(shape: &[usize], reduction: Reduction, eps: f32, seed: u64) -> ProblemData {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    let classes = shape[1];
    ProblemData {
        logits: rng.logits(len, 8.0).into(),
        shape: shape.to_vec(),
        target: OwnedTarget::Probs(
            (0..len)
                .map(|_| rng.uniform(0.0, 1.0))
                .collect::<Vec<f32>>()
                .into(),
        ),
        target_shape: shape.to_vec(),
        weight: Some((0..classes).map(|_| rng.uniform(0.1, 2.0)).collect()),
        ignore_index: -100,
        reduction,
        label_smoothing: eps,
        z_loss: 0.0,
        softcap: None,
        position_weight: None,
    }
}

#[test]
fn more_rows_than_one_grid_dimension() {
    let backend = backend_or_skip!();
    // Past 65,535 positions, with the serial kernel (one invocation per position).
    for (reduction, eps) in [(Reduction::None, 0.0), (Reduction::Mean, 0.1)] {
        let data = index_problem(&[70_001, 5], reduction, true, eps, 1);
        check_against_reference(backend, &data, DEFAULT_TOLERANCE);
    }
    // K-dim: 2 × 40,000 positions.
    let data = index_problem(&[2, 3, 200, 200], Reduction::Sum, false, 0.0, 2);
    check_against_reference(backend, &data, DEFAULT_TOLERANCE);
}

#[test]
fn more_workgroups_than_one_grid_dimension() {
    // The workgroup kernel runs one workgroup per position: 65,600 of them need a real 2-D
    // grid. Forward only, as each workgroup is slow on a software rasteriser.
    let Some(backend) = common::workgroup_backend() else {
        return;
    };
    let data = index_problem(&[65_600, 2], Reduction::None, false, 0.0, 13);
    let problem = data.problem().unwrap();
    let start = std::time::Instant::now();
    let loss = backend.forward(&problem).unwrap();
    eprintln!("65,600 workgroups: {:?}", start.elapsed());
    let logits = problem.logits().to_f64_vec();
    let expected = loss_core::reference::forward_f64(&problem, &logits);
    common::assert_close("loss", &loss, &expected, DEFAULT_TOLERANCE);
}

#[test]
fn quarter_million_classes() {
    let backend = backend_or_skip!();
    let c = 256 * 1024;
    let data = index_problem(&[3, c], Reduction::None, true, 0.0, 3);
    check_against_reference(backend, &data, DEFAULT_TOLERANCE);
    let data = index_problem(&[2, c], Reduction::Mean, true, 0.2, 4);
    check_against_reference(backend, &data, DEFAULT_TOLERANCE);
    let data = probs_problem(&[2, c], Reduction::Sum, 0.05, 5);
    check_against_reference(backend, &data, DEFAULT_TOLERANCE);
}

#[test]
fn two_dimensional_grids_on_small_data() {
    // The serial kernel would need 16.7M positions to outgrow one grid dimension; a cap of 3
    // workgroups per dimension exercises the same 2-D indexing on small data.
    if common::backend().is_none() {
        return;
    }
    // (serial_max_classes, positions that fit a 3 × 3 grid of its workgroups)
    for (serial_max_classes, fits) in [(0, 9), (64, 9 * 256)] {
        let backend = WgpuBackend::with_options(&WgpuOptions {
            max_workgroups_per_dimension: Some(3),
            serial_max_classes,
            ..WgpuOptions::default()
        })
        .unwrap();
        for reduction in Reduction::ALL {
            let data = index_problem(&[fits, 9], reduction, true, 0.1, 10);
            check_against_reference(&backend, &data, DEFAULT_TOLERANCE);
            let data = probs_problem(&[1, 4, fits - 2], reduction, 0.0, 11);
            check_against_reference(&backend, &data, DEFAULT_TOLERANCE);
        }
        // Past the largest grid the dispatch is a typed error, not a panic.
        let data = index_problem(&[fits + 1, 2], Reduction::Sum, false, 0.0, 12);
        let err = backend.forward(&data.problem().unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    }
}

/// A backend whose storage bindings hold at most 4 KiB (1,024 floats).
fn small_binding_backend() -> Option<WgpuBackend> {
    common::backend()?;
    let options = WgpuOptions {
        max_binding_bytes: Some(4096),
        ..WgpuOptions::default()
    };
    Some(WgpuBackend::with_options(&options).expect("a second device on the same adapter"))
}

#[test]
fn inputs_larger_than_one_binding_are_split() {
    let Some(backend) = small_binding_backend() else {
        return;
    };
    assert_eq!(backend.max_binding_bytes(), 4096);
    // 600 × 37 logits = 87 KiB: 22 chunks of 27 rows.
    for reduction in Reduction::ALL {
        let data = index_problem(&[600, 37], reduction, true, 0.1, 6);
        check_against_reference(&backend, &data, DEFAULT_TOLERANCE);
    }
    // K-dim, probability targets: items of 8 × 30 logits, 4 per chunk.
    for reduction in Reduction::ALL {
        let data = probs_problem(&[50, 8, 5, 6], reduction, 0.0, 7);
        check_against_reference(&backend, &data, DEFAULT_TOLERANCE);
    }
    // Resident path over chunks too.
    let data = index_problem(&[300, 20], Reduction::Mean, false, 0.0, 8);
    let problem = data.problem().unwrap();
    let (loss, grad) = backend.forward_backward(&problem, &[1.0]).unwrap();
    let mut resident = backend.upload(&problem).unwrap();
    assert_eq!(resident.forward_backward(&[1.0]).unwrap(), loss);
    let mut g = vec![0.0; grad.len()];
    resident.read_grad(&mut g).unwrap();
    assert_eq!(g, grad);
}

#[test]
fn an_item_larger_than_one_binding_is_unsupported() {
    let Some(backend) = small_binding_backend() else {
        return;
    };
    // One item of 2,000 logits cannot be split (its classes are strided over the item).
    let data = index_problem(&[2, 2000], Reduction::Sum, false, 0.0, 9);
    let err = backend.forward(&data.problem().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

#[test]
fn per_position_outputs_larger_than_one_binding_are_unsupported() {
    let Some(backend) = small_binding_backend() else {
        return;
    };
    // One item of a single class over 400 positions: its 1,600 bytes of logits fit a binding,
    // but its per-position outputs (loss slot, z part, LSE: 4,800 bytes) do not.
    let data = index_problem(&[2, 1, 400], Reduction::None, false, 0.0, 14);
    let err = backend.forward(&data.problem().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    // Items of 300 positions fit (3,600 bytes).
    let data = index_problem(&[3, 1, 300], Reduction::Mean, false, 0.0, 15);
    check_against_reference(&backend, &data, DEFAULT_TOLERANCE);
}
