//! loss-cpu: the single-threaded fused SIMD cross-entropy backend (work in progress; see the
//! workspace README). Its row kernels are what `loss-rayon` distributes.
