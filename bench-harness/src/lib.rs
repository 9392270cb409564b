//! The benchmark harness behind `loss-bench`: conformance verification of every backend and (in
//! later modules) cross-checked throughput measurement.

pub mod backends;
pub mod verify;
