//! loss-rayon: the deterministic rayon-parallel backend built on `loss-cpu`'s row kernels (work in
//! progress; see the workspace README).
