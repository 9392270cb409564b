//! The PyTorch conformance vectors, run on the wgpu backend: the default kernel choice, and
//! every kernel variant (single pass with and without subgroups, split rows with and without).

mod common;

use common::Variant;

#[test]
fn pytorch_vectors() {
    let backend = backend_or_skip!();
    loss_core::conformance::assert_conformance(backend);
}

fn on(v: Variant) {
    if let Some(backend) = common::variant(v) {
        loss_core::conformance::assert_conformance(backend);
    }
}

#[test]
fn pytorch_vectors_on_the_workgroup_kernels() {
    on(Variant::Workgroup);
}

#[test]
fn pytorch_vectors_without_subgroups() {
    on(Variant::Shared);
}

#[test]
fn pytorch_vectors_on_split_rows() {
    on(Variant::Split);
}

#[test]
fn pytorch_vectors_on_split_rows_without_subgroups() {
    on(Variant::SplitShared);
}
