//! loss-core's property tests on the wgpu backend: the default kernel choice (small rows run
//! one position per invocation), then each kernel variant of `common::Variant`. Without an
//! adapter each test reports itself skipped (and fails with `LOSS_WGPU_REQUIRE_ADAPTER=1`);
//! nothing else stands in for the device.

mod common;

use common::Variant;

loss_core::backend_property_tests!(available: common::backend(), 48);

mod workgroup_kernel {
    use super::*;

    loss_core::backend_property_tests!(available: common::variant(Variant::Workgroup), 24);
}

mod without_subgroups {
    use super::*;

    loss_core::backend_property_tests!(available: common::variant(Variant::Shared), 16);
}

mod split_rows {
    use super::*;

    loss_core::backend_property_tests!(available: common::variant(Variant::Split), 16);
}

mod split_rows_without_subgroups {
    use super::*;

    loss_core::backend_property_tests!(available: common::variant(Variant::SplitShared), 16);
}
