//! loss-core's property tests on the wgpu backend, once with the default kernel choice (small
//! rows run one position per invocation) and once with every row on the workgroup kernel. See
//! `common::Shared` for the behaviour without an adapter.

mod common;

use common::Shared;

loss_core::backend_property_tests!(Shared(common::backend), 48);

mod workgroup_kernel {
    use super::*;

    loss_core::backend_property_tests!(Shared(common::workgroup_backend), 24);
}
