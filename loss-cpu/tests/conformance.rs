//! The PyTorch vectors and the shared property tests, against the reference.

use loss_cpu::CpuBackend;

#[test]
fn pytorch_vectors() {
    loss_core::conformance::assert_conformance(&CpuBackend::new());
}

loss_core::backend_property_tests!(loss_cpu::CpuBackend::new());
