//! Adapter selection from the environment. Its own test binary with a single test, because it
//! changes the process environment.

use loss_core::ErrorKind;
use loss_wgpu::WgpuBackend;

fn set_adapter_name(name: Option<&str>) {
    // SAFETY: this binary holds only this test, so no other thread reads the environment.
    unsafe {
        match name {
            Some(name) => std::env::set_var("WGPU_ADAPTER_NAME", name),
            None => std::env::remove_var("WGPU_ADAPTER_NAME"),
        }
    }
}

#[test]
fn adapter_name_from_the_environment() {
    // A name that matches nothing is a typed error, not wgpu's panic.
    set_adapter_name(Some("no-such-adapter-7f3e9c"));
    let err = WgpuBackend::new().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    set_adapter_name(None);
    let Ok(default) = WgpuBackend::new() else {
        assert!(
            std::env::var("LOSS_WGPU_REQUIRE_ADAPTER").as_deref() != Ok("1"),
            "LOSS_WGPU_REQUIRE_ADAPTER=1 but no wgpu adapter"
        );
        eprintln!("SKIPPED: no wgpu adapter");
        return;
    };
    // A case-insensitive part of the name selects that adapter.
    let name = default.adapter_info().name.clone();
    let part: String = name.chars().take(4).collect::<String>().to_uppercase();
    set_adapter_name(Some(&part));
    let chosen = WgpuBackend::new().expect("the adapter named by WGPU_ADAPTER_NAME");
    assert!(
        chosen.adapter_info().name.to_uppercase().contains(&part),
        "{} does not match {part}",
        chosen.describe()
    );
    set_adapter_name(None);
}
