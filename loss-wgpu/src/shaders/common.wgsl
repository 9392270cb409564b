// What `row.wgsl` and `fused.wgsl` share: IEEE corners built from bits (WGSL has no literals for
// them, and comparisons with NaN and `max` of NaN are not portable), and the per-element formulas
// of loss-core ("The loss", "The gradient"), once. The host appends this fragment to both; the
// shaders declare `params` (`classes`, `eps`, `total_weight` are the fields used here).

fn nan_f32() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

fn neg_inf_f32() -> f32 {
    return bitcast<f32>(0xff800000u);
}

fn is_neg_inf(x: f32) -> bool {
    return bitcast<u32>(x) == 0xff800000u;
}

// NaN or +inf: either makes `x − max` NaN, so the position's LSE is NaN.
fn poisons(x: f32) -> bool {
    let b = bitcast<u32>(x);
    return (b & 0x7fffffffu) >= 0x7f800000u && b != 0xff800000u;
}

// The smoothed probability target t' = (1 − ε)·t + ε/C (t itself without smoothing).
fn smoothed_target(t: f32, smoothing: bool) -> f32 {
    if (smoothing) {
        return (1.0 - params.eps) * t + params.eps / f32(params.classes);
    }
    return t;
}

// The loss of a valid index position: (1 − ε)·w_y·(LSE − x_y) + (ε/C)·Σ w·(LSE − x), from
// `gap_y = LSE − x_y` and `acc = Σ w·(LSE − x)`.
fn index_loss_of(w_y: f32, gap_y: f32, acc: f32, smoothing: bool) -> f32 {
    var loss = (1.0 - params.eps) * w_y * gap_y;
    if (smoothing) {
        loss = loss + params.eps / f32(params.classes) * acc;
    }
    return loss;
}

// One gradient element of a valid index position:
// s·[(1 − ε)·w_y·(p − [c = y]) + (ε/C)·(W·p − w_c)].
fn index_grad_of(scale: f32, p: f32, w_y: f32, w_c: f32, is_target: bool, smoothing: bool) -> f32 {
    let onehot = select(0.0, 1.0, is_target);
    var d = (1.0 - params.eps) * w_y * (p - onehot);
    if (smoothing) {
        d = d + params.eps / f32(params.classes) * (params.total_weight * p - w_c);
    }
    return scale * d;
}

// One gradient element of a probability-target position: s·(p·mass − w_c·t'_c).
fn prob_grad_of(scale: f32, p: f32, mass: f32, w_c: f32, t_smoothed: f32) -> f32 {
    return scale * (p * mass - w_c * t_smoothed);
}

// (max, Σ exp(x − max), poisoned): the mergeable state of a set of classes.
struct Stats {
    m: f32,
    s: f32,
    bad: u32,
}

// The union of two disjoint sets. Symmetric bit for bit (IEEE addition commutes), so both
// lanes of a butterfly get the same result.
fn merge(a: Stats, b: Stats) -> Stats {
    let bad = a.bad | b.bad;
    if (is_neg_inf(a.m)) {
        return Stats(b.m, b.s, bad);
    }
    if (is_neg_inf(b.m)) {
        return Stats(a.m, a.s, bad);
    }
    let m = max(a.m, b.m);
    return Stats(m, a.s * exp(a.m - m) + b.s * exp(b.m - m), bad);
}

fn log_sum(st: Stats) -> f32 {
    if (st.bad != 0u || is_neg_inf(st.m)) {
        return nan_f32();
    }
    return log(st.s);
}
