// The row kernels' parameters and bindings (`row.wgsl`, `narrow.wgsl`, `fused.wgsl`), in one
// place: the host appends this fragment to each module (`RowParams` and the bind-group layout in
// `context.rs` mirror it).

struct Params {
    classes: u32,
    inner: u32,
    positions: u32,
    flags: u32,
    eps: f32,
    total_weight: f32,
    scale: f32,
    // Segments per row of the split-row kernels (`fused.wgsl`); unused elsewhere.
    segments: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
// Index targets (one u32 per position) or probabilities (f32 bits, laid out like the logits).
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read> grad_output: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
// Split rows: per (row, segment) 4 values: max, Σ exp, poisoned (as 0/1), unused; then, after
// `positions · segments · 4` values, per (row, segment) the two weighted sums.
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
