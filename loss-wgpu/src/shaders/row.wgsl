// Per-position cross-entropy.
//
// The formulas are loss-core's (crate docs, "The loss" and "The gradient"); this file only
// decides how to evaluate them on a device. Two entry points share the per-class loops:
//
// - `row_main`: one workgroup per position, for wide rows. Each invocation walks the classes
//   `lid, lid + WG, …`; its partial results are merged by fixed-shape workgroup trees.
// - `row_serial`: one invocation per position, for narrow rows (few classes), where a
//   workgroup per position would leave most invocations idle.
//
// Per position: an online (max, Σ exp) pass gives `m` and `ls = ln Σ exp(x − m)`, so
// `LSE = m + ls`; when the options need it, a second pass sums the weighted loss terms and the
// target mass `Σ w·t'`; then the loss and the gradient are written. `LSE − x` is evaluated as
// `(m − x) + ls` and `p = exp((x − m) − ls)`, so large logits lose no digits to a rounded LSE.
// Fixed strides and fixed trees give bit-identical results on every run. Infinities and NaN are
// built with `bitcast` (WGSL has no such literals) and recognised by their bits, because
// comparisons with NaN and `max` of NaN are not portable.

// Logits are read through `logit(i)` and the gradient written through `put_grad(i, g)`: the
// host appends `row_access.wgsl` (the storage buffers themselves, through `load_logit`) or, for
// the narrow-row tile kernel, `narrow.wgsl` (a workgroup tile loaded through `load_logit` and
// stored coalesced). So `logit(i)` is the widened, soft-capped logit.
//
// The parameters and bindings (`bindings.wgsl`), the helpers, the mergeable row state and the
// per-element formulas (`common.wgsl`), the element accessors and the extensions' epilogue
// (`extensions.wgsl`: position weights, z part, LSE, soft-cap chain factor) and the workgroup
// merges (`reduce_shared.wgsl`) are appended by the host too. The flags of `Params.flags` are
// run-time values here; the extensions and the element type are compile-time constants (`EXT`,
// one pipeline per variant).
//
// `WG`, the `FLAG_*` bits of `Params.flags` and `IGNORED` (the bits of an ignored index
// target, which the host maps `ignore_index` to on upload) are not written here: the host
// prepends them from its own constants (`context.rs`, `prelude`), the one source for both.

fn has_flag(bit: u32) -> bool {
    return (params.flags & bit) != 0u;
}

fn smoothed(t: f32) -> f32 {
    return smoothed_target(t, has_flag(FLAG_SMOOTHING));
}

// Index of the first logit of a position (its classes follow at stride `inner`).
fn row_base(position: u32) -> u32 {
    let n = position / params.inner;
    return n * params.classes * params.inner + (position - n * params.inner);
}

// Online max and rescaled Σ exp over classes start, start + stride, …
fn row_stats(base: u32, start: u32, stride: u32) -> Stats {
    // −inf adds exp(−inf) = 0 and is skipped (a row of only −inf is caught by the caller).
    var st = Stats(neg_inf_f32(), 0.0, 0u);
    for (var c = start; c < params.classes; c += stride) {
        let x = logit(base + c * params.inner);
        if (poisons(x)) {
            st.bad = 1u;
        } else if (!is_neg_inf(x)) {
            if (is_neg_inf(st.m)) {
                st.m = x;
                st.s = 1.0;
            } else if (x > st.m) {
                st.s = st.s * exp(st.m - x) + 1.0;
                st.m = x;
            } else {
                st.s = st.s + exp(x - st.m);
            }
        }
    }
    return st;
}

// Whether the second pass is needed: (acc, mass) below.
fn needs_sums() -> bool {
    return has_flag(FLAG_PROBS) || (has_flag(FLAG_SMOOTHING) && has_flag(FLAG_LOSS));
}

// acc = Σ w·(LSE − x) (index targets: the smoothing term) or Σ w·t'·(LSE − x) (probability
// targets); mass = Σ w·t'. Over classes start, start + stride, …
fn weighted_sums(base: u32, m: f32, ls: f32, start: u32, stride: u32) -> vec2<f32> {
    let probs = has_flag(FLAG_PROBS);
    var acc = 0.0;
    var mass = 0.0;
    for (var c = start; c < params.classes; c += stride) {
        let i = base + c * params.inner;
        let gap = (m - logit(i)) + ls;
        let w = weights[c];
        if (probs) {
            let t = smoothed(target_prob(i));
            acc = acc + w * t * gap;
            mass = mass + w * t;
        } else {
            acc = acc + w * gap;
        }
    }
    return vec2<f32>(acc, mass);
}

// The index target of a position, or IGNORED (also for probability targets).
fn target_class(position: u32) -> u32 {
    if (has_flag(FLAG_PROBS)) {
        return IGNORED;
    }
    return targets[position];
}

fn position_loss(base: u32, y: u32, m: f32, ls: f32, acc: f32) -> f32 {
    if (has_flag(FLAG_PROBS)) {
        return acc;
    }
    if (y == IGNORED) {
        return 0.0;
    }
    let gap_y = (m - logit(base + y * params.inner)) + ls;
    return index_loss_of(weights[y], gap_y, acc, has_flag(FLAG_SMOOTHING));
}

// Writes a position's loss slot (with the loss flag), z part and LSE (`store_position`).
fn finish_position(position: u32, base: u32, y: u32, m: f32, ls: f32, acc: f32) {
    let loss = has_flag(FLAG_LOSS);
    var ce = 0.0;
    if (loss) {
        ce = position_loss(base, y, m, ls, acc);
    }
    store_position(position, ce, m + ls, has_flag(FLAG_PROBS) || y != IGNORED, loss);
}

// Writes the gradient of classes start, start + stride, …
fn write_grad(
    position: u32,
    base: u32,
    y: u32,
    m: f32,
    ls: f32,
    mass: f32,
    start: u32,
    stride: u32,
) {
    let probs = has_flag(FLAG_PROBS);
    let smoothing = has_flag(FLAG_SMOOTHING);
    let per_position = has_flag(FLAG_PER_POSITION);
    var g_up = params.scale;
    if (per_position) {
        g_up = grad_output[position];
    }
    let factors = grad_factors(position, g_up, per_position, m + ls);
    let scale = factors.x;
    var w_y = 0.0;
    if (y != IGNORED) {
        w_y = weights[y];
    }
    for (var c = start; c < params.classes; c += stride) {
        let i = base + c * params.inner;
        // An ignored position keeps an exact 0, whatever the scale (even inf or NaN).
        var g = 0.0;
        if (probs) {
            let x = logit(i);
            let p = exp((x - m) - ls);
            g = prob_grad_of(scale, p, mass, weights[c], smoothed(target_prob(i)));
            g = finish_grad(g, p, factors.y, x);
        } else if (y != IGNORED) {
            let x = logit(i);
            let p = exp((x - m) - ls);
            g = index_grad_of(scale, p, w_y, weights[c], c == y, smoothing);
            g = finish_grad(g, p, factors.y, x);
        }
        put_grad(i, g);
    }
}

@compute @workgroup_size(WG)
fn row_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // A 2-D grid lifts the 65,535-workgroups-per-dimension limit; the spare tail returns as a
    // whole workgroup, so the barriers below stay in uniform control flow.
    let position = wid.y * nwg.x + wid.x;
    if (position >= params.positions) {
        return;
    }
    let base = row_base(position);

    let st = reduce_stats(row_stats(base, lid, WG), lid, 1u);
    let m = st.m;
    let ls = log_sum(st);

    var sums = vec2<f32>(0.0, 0.0);
    if (needs_sums()) {
        sums = reduce_sums(weighted_sums(base, m, ls, lid, WG), lid, 1u);
    }

    let y = target_class(position);
    if ((has_flag(FLAG_LOSS) || X_LSE) && lid == 0u) {
        finish_position(position, base, y, m, ls, sums.x);
    }
    if (has_flag(FLAG_GRAD)) {
        write_grad(position, base, y, m, ls, sums.y, lid, WG);
    }
}

@compute @workgroup_size(WG)
fn row_serial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let position = (wid.y * nwg.x + wid.x) * WG + lid;
    if (position >= params.positions) {
        return;
    }
    one_position(position);
}

// A whole position in one invocation: `row_serial`, and `narrow_main` (from its tile).
fn one_position(position: u32) {
    let base = row_base(position);
    let st = row_stats(base, 0u, 1u);
    let m = st.m;
    let ls = log_sum(st);
    var sums = vec2<f32>(0.0, 0.0);
    if (needs_sums()) {
        sums = weighted_sums(base, m, ls, 0u, 1u);
    }
    let y = target_class(position);
    if (has_flag(FLAG_LOSS) || X_LSE) {
        finish_position(position, base, y, m, ls, sums.x);
    }
    if (has_flag(FLAG_GRAD)) {
        write_grad(position, base, y, m, ls, sums.y, 0u, 1u);
    }
}

fn is_finite_f32(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// The soft-cap's chain factor `1 − (x̃/a)²` at the capped logit `x` (1 without a cap).
fn cap_slope(x: f32) -> f32 {
    if (X_SOFTCAP) {
        let t = x * params.inv_softcap;
        return (1.0 - t) * (1.0 + t);
    }
    return 1.0;
}

// The smallest class of the position whose weighted probability target `w·t'` is at least half of
// the row's `Σ w·t'` (loss-cpu's `refine::dominant_class`), as the workgroup finds it.
var<workgroup> wg_dominant: atomic<u32>;

// The class of a probability target whose `w·t'` is at least half of the position's `Σ w·t'`,
// or IGNORED; every invocation of the workgroup calls it (uniform control flow), and the answer
// is for invocation 0 to use.
fn dominant_class(base: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        atomicStore(&wg_dominant, IGNORED);
    }
    var own = 0.0;
    for (var c = lid; c < params.classes; c += WG) {
        own = own + weights[c] * smoothed(target_prob(base + c * params.inner));
    }
    let total = reduce_sums(vec2<f32>(own, 0.0), lid, 1u).x;
    for (var c = lid; c < params.classes; c += WG) {
        let v = weights[c] * smoothed(target_prob(base + c * params.inner));
        if (v > 0.0 && 2.0 * v >= total) {
            atomicMin(&wg_dominant, c);
        }
    }
    workgroupBarrier();
    return atomicLoad(&wg_dominant);
}

// Gradient element `i` before the soft-cap's chain factor (the element itself without a cap;
// ±∞ or NaN where a saturated cap's factor is 0, which hides that class's part).
fn uncapped_grad(i: u32) -> f32 {
    if (X_SOFTCAP) {
        return grad[i] / cap_slope(logit(i));
    }
    return grad[i];
}

// `restore_main`: one workgroup per position, after a gradient kernel and before the packing to
// a half type. A valid position's gradient sums to its z part's coefficient `zc` over its classes
// (loss-core's `formula::gradient_sum`), so the one element whose terms cancel — a confident
// row's target, `a·p_y − fix` with `p_y → 1`, a few f32 ulps of the scale off when computed
// directly, which is several of f16's subnormal steps — is set to `zc − Σ_{c≠k} g[c]` (the cap's
// chain factor divided out of the others and put back on it). `Σ_{c≠k}` is the sum of the whole
// row minus element `k` itself, which cancels exactly; each invocation adds `C/WG` elements and
// a fixed tree adds the invocations', an error of about `C/WG + log2(WG)` ulps of the element
// restored. Rows whose gradient is not finite (and capped rows with a saturated class) are left
// as the kernel wrote them.
@compute @workgroup_size(WG)
fn restore_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // The spare tail of a 2-D grid returns as a whole workgroup (uniform control flow below).
    let position = wid.y * nwg.x + wid.x;
    if (position >= params.positions) {
        return;
    }
    let base = row_base(position);
    var k = target_class(position);
    if (has_flag(FLAG_PROBS)) {
        k = dominant_class(base, lid);
    }
    var zc = 0.0;
    if (X_ZLOSS) {
        let st = reduce_stats(row_stats(base, lid, WG), lid, 1u);
        let per_position = has_flag(FLAG_PER_POSITION);
        var g_up = params.scale;
        if (per_position) {
            g_up = grad_output[position];
        }
        zc = grad_factors(position, g_up, per_position, st.m + log_sum(st)).y;
    }
    var own = 0.0;
    for (var c = lid; c < params.classes; c += WG) {
        own = own + uncapped_grad(base + c * params.inner);
    }
    let total = reduce_sums(vec2<f32>(own, 0.0), lid, 1u).x;
    if (lid != 0u || k == IGNORED) {
        return;
    }
    let i = base + k * params.inner;
    let v = (zc - (total - uncapped_grad(i))) * cap_slope(logit(i));
    if (is_finite_f32(v) && is_finite_f32(grad[i])) {
        grad[i] = v;
    }
}
