//! The PyTorch vectors and the property tests, on 1 and 3 threads with the parallel path forced.

use loss_rayon::RayonBackend;

#[test]
fn conformance_two_threads() {
    loss_core::conformance::assert_conformance(
        &RayonBackend::new(2).unwrap().with_sequential_below(0),
    );
}

#[test]
fn conformance_one_thread() {
    loss_core::conformance::assert_conformance(&RayonBackend::new(1).unwrap());
}

loss_core::backend_property_tests!(
    loss_rayon::RayonBackend::new(3)
        .unwrap()
        .with_sequential_below(0)
);
