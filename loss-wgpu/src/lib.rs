//! loss-wgpu: the WGSL compute-shader backend through wgpu (work in progress; see the workspace
//! README).
