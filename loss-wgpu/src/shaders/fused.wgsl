// Contiguous rows (`inner = 1`) in one read of the logits.
//
// - `fused_main`: one workgroup per row that fits on chip (at most `WG · VPT` classes). Each
//   invocation loads its classes `k·WG + lid` (k < VPT: neighbouring invocations read
//   neighbouring addresses) into registers once; the row's max and Σ exp, the weighted sums when
//   the options need them, the loss and the gradient are all computed from those registers, so
//   the logits are read once and the gradient written once: 8 bytes a logit.
// - `split_stats` / `split_sums` / `split_finish`: rows longer than that, cut into segments of
//   `WG · VPT` classes, one workgroup per (row, segment), which also fills a device when there
//   are few rows. `split_stats` writes each segment's (max, Σ exp, poisoned) partial;
//   `split_sums` (only when the options need the weighted sums) each segment's sums;
//   `split_finish` the gradient of its segment and, in segment 0, the loss. Every workgroup of a
//   row merges the row's partials in segment order itself, so all of them see the same bits.
//
// The host prepends `WG`, `VPT`, `FLAGS` (the `FLAG_*` bits of this variant: one pipeline per
// variant, no run-time branch on them), `EXT` (the extension bits among them, read by
// `extensions.wgsl`) and `IGNORED` (`context.rs`), and appends the workgroup
// merges `reduce_stats` / `reduce_sums`: `reduce_subgroup.wgsl` (`subgroupShuffleXor`
// butterflies, a fixed pattern for the device's fixed subgroup size: deterministic) when the
// adapter has subgroups, else `reduce_shared.wgsl` (shared-memory trees). Without subgroups the
// host also removes the `subgroup_size` builtin from the entry points and declares
// `sg_size = 1`.
// Semantics are those of `row.wgsl` (which states them): NaN and +inf poison a row, −inf adds
// nothing, `LSE − x = (m − x) + ls`, an ignored position's gradient is an exact 0. Logits are
// read through `load_logit` (widened and soft-capped, `extensions.wgsl`), so `vals` holds the
// capped values; a position's extensions (position weight, z part, LSE) are written by
// `store_position` and folded into the gradient by `grad_factors` / `finish_grad`.

const PROBS: bool = (FLAGS & FLAG_PROBS) != 0u;
const LOSS: bool = (FLAGS & FLAG_LOSS) != 0u;
const GRAD: bool = (FLAGS & FLAG_GRAD) != 0u;
const PER_POSITION: bool = (FLAGS & FLAG_PER_POSITION) != 0u;
const SMOOTHING: bool = (FLAGS & FLAG_SMOOTHING) != 0u;
// The weighted sums: Σ w·(LSE − x) for a smoothed index loss, or Σ w·t'·(LSE − x) and
// Σ w·t' for probability targets.
const SUMS: bool = PROBS || (SMOOTHING && LOSS);

fn smoothed(t: f32) -> f32 {
    return smoothed_target(t, SMOOTHING);
}

// This invocation's classes of the current block (a private array: registers once the loops
// over `VPT` are unrolled; never passed by value).
var<private> vals: array<f32, VPT>;

// Loads this invocation's classes of the block of `WG · VPT` classes starting at `first` into
// `vals` (classes past the row, and poisoned ones, as −inf) and returns the block's own
// (max, Σ exp, poisoned).
fn load_block(base: u32, first: u32, lid: u32) -> Stats {
    var m = neg_inf_f32();
    var bad = 0u;
    for (var k = 0u; k < VPT; k = k + 1u) {
        let c = first + k * WG + lid;
        var x = neg_inf_f32();
        if (c < params.classes) {
            x = load_logit(base + c);
        }
        if (poisons(x)) {
            bad = 1u;
            x = neg_inf_f32();
        }
        vals[k] = x;
        m = max(m, x);
    }
    var s = 0.0;
    if (!is_neg_inf(m)) {
        for (var k = 0u; k < VPT; k = k + 1u) {
            if (!is_neg_inf(vals[k])) {
                s = s + exp(vals[k] - m);
            }
        }
    }
    return Stats(m, s, bad);
}

// This invocation's weighted sums over its classes of a block (see `SUMS`). Poisoned classes
// were replaced by −inf in the block, which only matters when the LSE is already NaN.
fn block_sums(base: u32, first: u32, lid: u32, m: f32, ls: f32) -> vec2<f32> {
    var acc = 0.0;
    var mass = 0.0;
    for (var k = 0u; k < VPT; k = k + 1u) {
        let c = first + k * WG + lid;
        if (c < params.classes) {
            let gap = (m - vals[k]) + ls;
            let w = weights[c];
            if (PROBS) {
                let t = smoothed(target_prob(base + c));
                acc = acc + w * t * gap;
                mass = mass + w * t;
            } else {
                acc = acc + w * gap;
            }
        }
    }
    return vec2<f32>(acc, mass);
}

fn target_class(position: u32) -> u32 {
    if (PROBS) {
        return IGNORED;
    }
    return targets[position];
}

fn position_loss(base: u32, y: u32, m: f32, ls: f32, acc: f32) -> f32 {
    if (PROBS) {
        return acc;
    }
    if (y == IGNORED) {
        return 0.0;
    }
    let gap_y = (m - load_logit(base + y)) + ls;
    return index_loss_of(weights[y], gap_y, acc, SMOOTHING);
}

// Writes a position's loss slot (when `LOSS`), z part and LSE (`store_position`).
fn finish_position(position: u32, base: u32, y: u32, m: f32, ls: f32, acc: f32) {
    var ce = 0.0;
    if (LOSS) {
        ce = position_loss(base, y, m, ls, acc);
    }
    store_position(position, ce, m + ls, PROBS || y != IGNORED, LOSS);
}

// Writes the gradient of this invocation's classes of a block.
fn block_grad(
    position: u32,
    base: u32,
    first: u32,
    lid: u32,
    y: u32,
    m: f32,
    ls: f32,
    mass: f32,
) {
    var g_up = params.scale;
    if (PER_POSITION) {
        g_up = grad_output[position];
    }
    let factors = grad_factors(position, g_up, PER_POSITION, m + ls);
    let scale = factors.x;
    var w_y = 0.0;
    if (y != IGNORED) {
        w_y = weights[y];
    }
    for (var k = 0u; k < VPT; k = k + 1u) {
        let c = first + k * WG + lid;
        if (c < params.classes) {
            // A poisoned class holds −inf here; its row's `ls` is NaN, so every p is NaN anyway.
            let x = vals[k];
            var g = 0.0;
            if (PROBS) {
                let p = exp((x - m) - ls);
                g = prob_grad_of(scale, p, mass, weights[c], smoothed(target_prob(base + c)));
                g = finish_grad(g, p, factors.y, x);
            } else if (y != IGNORED) {
                let p = exp((x - m) - ls);
                g = index_grad_of(scale, p, w_y, weights[c], c == y, SMOOTHING);
                g = finish_grad(g, p, factors.y, x);
            }
            grad[base + c] = g;
        }
    }
}

@compute @workgroup_size(WG)
fn fused_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let position = wid.y * nwg.x + wid.x;
    if (position >= params.positions) {
        return;
    }
    let base = position * params.classes;
    let st = reduce_stats(load_block(base, 0u, lid), lid, sg_size);
    let m = st.m;
    let ls = log_sum(st);
    var sums = vec2<f32>(0.0, 0.0);
    if (SUMS) {
        sums = reduce_sums(block_sums(base, 0u, lid, m, ls), lid, sg_size);
    }
    let y = target_class(position);
    if ((LOSS || X_LSE) && lid == 0u) {
        finish_position(position, base, y, m, ls, sums.x);
    }
    if (GRAD) {
        block_grad(position, base, 0u, lid, y, m, ls, sums.y);
    }
}

// (row, segment) of a split-row workgroup; false for the grid's spare tail.
fn split_at(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let flat = wid.y * nwg.x + wid.x;
    return vec2<u32>(flat / params.segments, flat % params.segments);
}

// The row's state: its segments' partials merged in segment order.
fn row_state(position: u32) -> Stats {
    let at = position * params.segments * 4u;
    var st = Stats(partials[at], partials[at + 1u], u32(partials[at + 2u]));
    for (var k = 1u; k < params.segments; k = k + 1u) {
        let p = at + k * 4u;
        st = merge(st, Stats(partials[p], partials[p + 1u], u32(partials[p + 2u])));
    }
    return st;
}

fn sums_at(position: u32, segment: u32) -> u32 {
    return params.positions * params.segments * 4u + (position * params.segments + segment) * 2u;
}

@compute @workgroup_size(WG)
fn split_stats(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let at = split_at(wid, nwg);
    if (at.x >= params.positions) {
        return;
    }
    let base = at.x * params.classes;
    let st = reduce_stats(load_block(base, at.y * WG * VPT, lid), lid, sg_size);
    if (lid == 0u) {
        let p = (at.x * params.segments + at.y) * 4u;
        partials[p] = st.m;
        partials[p + 1u] = st.s;
        partials[p + 2u] = f32(st.bad);
        partials[p + 3u] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn split_sums(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let at = split_at(wid, nwg);
    if (at.x >= params.positions) {
        return;
    }
    let base = at.x * params.classes;
    let first = at.y * WG * VPT;
    let st = row_state(at.x);
    load_block(base, first, lid);
    let sums = reduce_sums(block_sums(base, first, lid, st.m, log_sum(st)), lid, sg_size);
    if (lid == 0u) {
        let p = sums_at(at.x, at.y);
        partials[p] = sums.x;
        partials[p + 1u] = sums.y;
    }
}

@compute @workgroup_size(WG)
fn split_finish(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let at = split_at(wid, nwg);
    if (at.x >= params.positions) {
        return;
    }
    let base = at.x * params.classes;
    let first = at.y * WG * VPT;
    let st = row_state(at.x);
    let m = st.m;
    let ls = log_sum(st);
    var sums = vec2<f32>(0.0, 0.0);
    if (SUMS) {
        for (var k = 0u; k < params.segments; k = k + 1u) {
            let p = sums_at(at.x, k);
            sums = sums + vec2<f32>(partials[p], partials[p + 1u]);
        }
    }
    let y = target_class(at.x);
    if ((LOSS || X_LSE) && at.y == 0u && lid == 0u) {
        finish_position(at.x, base, y, m, ls, sums.x);
    }
    if (GRAD) {
        load_block(base, first, lid);
        block_grad(at.x, base, first, lid, y, m, ls, sums.y);
    }
}
