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
    // The z-loss coefficient `z` (read only by `EXT_ZLOSS` variants).
    z: f32,
    // The z part's gradient coefficient of `s_i·LSE_i·p`: `2·z` times the z part's upstream
    // scale (`g/V` for mean, `g` for sum) when that scale is uniform, else `2·z` (times `g_i`).
    z_coef: f32,
    // The soft-cap `a` and `1/a` (read only by `EXT_SOFTCAP` variants).
    softcap: f32,
    inv_softcap: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
// The raw elements of the logits: `f32` bits, or for `bf16`/`f16` two elements per word (element
// `2k` in the low half of word `k`). Read only through `raw_logit` (`extensions.wgsl`).
@group(0) @binding(1) var<storage, read> logits: array<u32>;
// Index targets (one u32 per position) or probabilities (laid out like the logits, in their
// element type; read through `target_prob`).
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
// Per position: the upstream gradient (`none`) at `[0, P)`, the position weights `s_i` at
// `[P, 2P)` (`P = params.positions`).
@group(0) @binding(4) var<storage, read> grad_output: array<f32>;
// Per position: the loss slot at `[0, P)`, the z part at `[P, 2P)`, the LSE at `[2P, 3P)` (the
// last two only in variants that write them).
@group(0) @binding(5) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
// Split rows: per (row, segment) 4 values: max, Σ exp, poisoned (as 0/1), unused; then, after
// `positions · segments · 4` values, per (row, segment) the two weighted sums.
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;
