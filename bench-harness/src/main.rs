//! loss-bench (being built).
fn main() {}
