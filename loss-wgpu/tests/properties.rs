//! loss-core's property tests on the wgpu backend, once with the default kernel choice (small
//! rows run one position per invocation) and once with every row on the workgroup kernel.
//! Without an adapter each test reports itself skipped (and fails with
//! `LOSS_WGPU_REQUIRE_ADAPTER=1`); nothing else stands in for the device.

mod common;

loss_core::backend_property_tests!(available: common::backend(), 48);

mod workgroup_kernel {
    use super::*;

    loss_core::backend_property_tests!(available: common::workgroup_backend(), 24);
}
