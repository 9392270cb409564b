//! The PyTorch conformance vectors, run on the wgpu backend.

mod common;

#[test]
fn pytorch_vectors() {
    let backend = backend_or_skip!();
    loss_core::conformance::assert_conformance(backend);
}

#[test]
fn pytorch_vectors_on_the_workgroup_kernel() {
    if let Some(backend) = common::workgroup_backend() {
        loss_core::conformance::assert_conformance(backend);
    }
}
