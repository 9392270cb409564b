//! The SIMD building blocks of the kernels: loads and tails, the chunk passes of the online
//! log-sum-exp, the gradient loops, and the memory helpers (prefetch).

use pulp::Simd;

use super::{CHUNK, LseState, MAX_LANES, Smoothing, origin};
use crate::exp::exp_shifted;

/// Loads one full vector at `x[i..]`.
#[inline(always)]
pub(super) fn load<S: Simd>(x: &[f32], i: usize) -> S::f32s {
    S::as_simd_f32s(&x[i..i + S::F32_LANES]).0[0]
}

/// Loads `n ≤ lanes` values at `x[i..]` (zeros above), with a full load when `n` is the width.
#[inline(always)]
pub(super) fn load_n<S: Simd>(simd: S, x: &[f32], i: usize, n: usize) -> S::f32s {
    if n == S::F32_LANES {
        load::<S>(x, i)
    } else {
        simd.partial_load_f32s(&x[i..i + n])
    }
}

#[inline(always)]
pub(super) fn store_n<S: Simd>(simd: S, x: &mut [f32], i: usize, n: usize, v: S::f32s) {
    if n == S::F32_LANES {
        S::as_mut_simd_f32s(&mut x[i..i + n]).0[0] = v;
    } else {
        simd.partial_store_f32s(&mut x[i..i + n], v);
    }
}

#[inline(always)]
pub(super) fn lanes_of<S: Simd>(_: S, v: S::f32s) -> [f32; MAX_LANES] {
    let mut out = [0.0; MAX_LANES];
    S::as_mut_simd_f32s(&mut out[..S::F32_LANES]).0[0] = v;
    out
}

#[inline(always)]
pub(super) fn from_lanes<S: Simd>(_: S, v: &[f32; MAX_LANES]) -> S::f32s {
    load::<S>(v, 0)
}

pub(super) const IOTA: [f32; MAX_LANES] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
];

/// The last `n` lanes. A slice of `len ≥ lanes` ends with an *overlapping* full vector at
/// `len − lanes` whose last `n = len % lanes` lanes are new: this beats a partial load (a call,
/// and a store-forwarding stall) on short rows.
#[inline(always)]
pub(super) fn last_lanes<S: Simd>(simd: S, n: usize) -> S::m32s {
    let iota = load::<S>(&IOTA, 0);
    simd.greater_than_or_equal_f32s(iota, simd.splat_f32s((S::F32_LANES - n) as f32))
}

/// The largest value of a chunk (NaN handling is left to the sum: a NaN logit makes it NaN).
#[inline(always)]
pub(super) fn chunk_max<S: Simd>(simd: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let (quads, rest) = pulp::as_arrays::<4, _>(head);
    let ninf = simd.splat_f32s(f32::NEG_INFINITY);
    let mut m = [ninf; 4];
    for q in quads {
        for k in 0..4 {
            m[k] = simd.max_f32s(m[k], q[k]);
        }
    }
    for &v in rest {
        m[0] = simd.max_f32s(m[0], v);
    }
    if !tail.is_empty() && !head.is_empty() {
        // The overlapping last vector: lanes seen twice do not change a max.
        m[1] = simd.max_f32s(m[1], load::<S>(x, x.len() - S::F32_LANES));
    }
    let m = simd.max_f32s(simd.max_f32s(m[0], m[1]), simd.max_f32s(m[2], m[3]));
    let m = simd.reduce_max_f32s(m);
    if head.is_empty() {
        tail.iter().fold(m, |acc, &v| acc.max(v))
    } else {
        m
    }
}

/// Asks for the cache line at `p` (a hint: never faults, whatever the address).
#[inline(always)]
pub(super) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only needs SSE (baseline on x86-64) and is a hint that never faults
    // or reads memory architecturally, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `Σ exp(x − origin)` over a chunk, in `f32` lanes (2 accumulators, see `NOTES.md`). While the
/// chunk computes from L1, it prefetches the same length at `ahead` (the next chunk or row):
/// without it the chunk's max pass stalls on DRAM while the exp pass leaves memory idle.
#[inline(always)]
pub(super) fn chunk_sum_exp<S: Simd>(simd: S, x: &[f32], origin: f32, ahead: *const f32) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let (quads, rest) = pulp::as_arrays::<4, _>(head);
    let o = simd.splat_f32s(origin);
    let zero = simd.splat_f32s(0.0);
    // Two accumulators: enough to hide the add latency behind an exp, few enough to leave the
    // exp's constants in registers (four spilled to the stack).
    let mut acc = [zero; 2];
    let step = 4 * S::F32_LANES;
    for (i, q) in quads.iter().enumerate() {
        // One prefetch per 64-byte line of this quad.
        let mut line = 0;
        while line < step {
            prefetch(ahead.wrapping_add(i * step + line));
            line += 16;
        }
        for k in 0..4 {
            acc[k & 1] = simd.add_f32s(acc[k & 1], exp_shifted(simd, simd.sub_f32s(q[k], o)));
        }
    }
    for &v in rest {
        acc[0] = simd.add_f32s(acc[0], exp_shifted(simd, simd.sub_f32s(v, o)));
    }
    if !tail.is_empty() {
        let e = if head.is_empty() {
            // Shorter than a vector: pad with −∞ (exp → 0; zeros would give exp(0 − origin)).
            let mut padded = [f32::NEG_INFINITY; MAX_LANES];
            padded[..tail.len()].copy_from_slice(tail);
            exp_shifted(simd, simd.sub_f32s(from_lanes(simd, &padded), o))
        } else {
            let v = load::<S>(x, x.len() - S::F32_LANES);
            let e = exp_shifted(simd, simd.sub_f32s(v, o));
            simd.select_f32s_m32s(last_lanes(simd, tail.len()), e, zero)
        };
        acc[1] = simd.add_f32s(acc[1], e);
    }
    let acc = simd.add_f32s(acc[0], acc[1]);
    simd.reduce_sum_f32s(acc)
}

/// Online log-sum-exp of a contiguous row: one read from memory, chunk by chunk.
#[inline(always)]
pub(super) fn row_lse<S: Simd>(simd: S, x: &[f32]) -> LseState {
    let mut state = LseState::EMPTY;
    for (k, chunk) in x.chunks(CHUNK).enumerate() {
        let ahead = x.as_ptr().wrapping_add((k + 1) * CHUNK.min(x.len()));
        state.raise_max(chunk_max(simd, chunk));
        state.sum += f64::from(chunk_sum_exp(simd, chunk, origin(state.max), ahead));
    }
    state
}

/// Rows of at most this many chunks take the single-`exp` fused path (C ≤ 256K); longer ones
/// evaluate `exp` again in the gradient pass.
pub(super) const MAX_CHUNKS: usize = 128;

/// [`chunk_sum_exp`] that also stores each `exp(x − origin)` into `dst` (`src = None`: the
/// logits are read from `dst`, in place). The same additions in the same order, so the sum has
/// the same bits as [`chunk_sum_exp`]'s.
#[inline(always)]
pub(super) fn chunk_exp_store<S: Simd>(
    simd: S,
    src: Option<&[f32]>,
    dst: &mut [f32],
    origin: f32,
    ahead: *const f32,
    ahead_dst: *const f32,
) -> f32 {
    let lanes = S::F32_LANES;
    let o = simd.splat_f32s(origin);
    let zero = simd.splat_f32s(0.0);
    // Two accumulators: enough to hide the add latency behind an exp, few enough to leave the
    // exp's constants in registers (four spilled to the stack).
    let mut acc = [zero; 2];
    let len = dst.len();
    let full = len / lanes;
    let n = len - full * lanes;
    // The overlapping last vector, computed before the loop overwrites (in place) its lanes.
    // (An `if`, not `bool::then`: a closure would lose the dispatch's target features.)
    let last = if n > 0 && full > 0 {
        let v = match src {
            Some(x) => load::<S>(x, len - lanes),
            None => load::<S>(dst, len - lanes),
        };
        Some(exp_shifted(simd, simd.sub_f32s(v, o)))
    } else {
        None
    };
    let (gh, gt) = S::as_mut_simd_f32s(dst);
    // Quads as arrays (no bounds check per vector; the checks had cost the loop its constant
    // registers, NOTES.md #31).
    let (gq, grest) = pulp::as_arrays_mut::<4, _>(gh);
    match src {
        Some(x) => {
            let (xq, xrest) = pulp::as_arrays::<4, _>(S::as_simd_f32s(x).0);
            for (q, (g, &v)) in gq.iter_mut().zip(xq).enumerate() {
                *g = exp_quad(simd, o, v, &mut acc, q, ahead, ahead_dst);
            }
            for (g, &v) in grest.iter_mut().zip(xrest) {
                *g = exp_shifted(simd, simd.sub_f32s(v, o));
                acc[0] = simd.add_f32s(acc[0], *g);
            }
        }
        None => {
            for (q, g) in gq.iter_mut().enumerate() {
                *g = exp_quad(simd, o, *g, &mut acc, q, ahead, ahead_dst);
            }
            for g in grest.iter_mut() {
                *g = exp_shifted(simd, simd.sub_f32s(*g, o));
                acc[0] = simd.add_f32s(acc[0], *g);
            }
        }
    }
    if let Some(e) = last {
        acc[1] = simd.add_f32s(acc[1], simd.select_f32s_m32s(last_lanes(simd, n), e, zero));
        S::as_mut_simd_f32s(&mut dst[len - lanes..]).0[0] = e;
    } else if !gt.is_empty() {
        let mut padded = [f32::NEG_INFINITY; MAX_LANES];
        match src {
            Some(x) => padded[..n].copy_from_slice(&x[full * lanes..]),
            None => padded[..n].copy_from_slice(gt),
        }
        let e = exp_shifted(simd, simd.sub_f32s(from_lanes(simd, &padded), o));
        acc[1] = simd.add_f32s(acc[1], e);
        gt.copy_from_slice(&lanes_of(simd, e)[..n]);
    }
    let acc = simd.add_f32s(acc[0], acc[1]);
    simd.reduce_sum_f32s(acc)
}

/// One quad of [`chunk_exp_store`]: the four `exp(v − o)`, added to the two accumulators, and
/// the prefetches of quad `q`'s lines at `ahead` and `ahead_dst`.
#[inline(always)]
fn exp_quad<S: Simd>(
    simd: S,
    o: S::f32s,
    v: [S::f32s; 4],
    acc: &mut [S::f32s; 2],
    q: usize,
    ahead: *const f32,
    ahead_dst: *const f32,
) -> [S::f32s; 4] {
    let step = 4 * S::F32_LANES;
    let mut line = 0;
    while line < step {
        prefetch(ahead.wrapping_add(q * step + line));
        // The gradient's lines too: the store would otherwise wait for their fill.
        prefetch(ahead_dst.wrapping_add(q * step + line));
        line += 16;
    }
    let mut e = v;
    for k in 0..4 {
        e[k] = exp_shifted(simd, simd.sub_f32s(v[k], o));
        acc[k & 1] = simd.add_f32s(acc[k & 1], e[k]);
    }
    e
}

/// The sums a row pass takes besides the log-sum-exp.
#[derive(Clone, Copy)]
pub(super) enum Extras<'a> {
    /// None (index targets without smoothing).
    Nothing,
    /// `Σ w·x` (smoothed index targets).
    WeightedSum(Option<&'a [f32]>),
    /// `(Σ w·t', Σ w·t'·x)` (probability targets).
    Probs {
        t: &'a [f32],
        w: Option<&'a [f32]>,
        smooth: Smoothing,
    },
}

/// First pass of the fused row: the online log-sum-exp, with each chunk's `exp(x − max)` stored
/// into `dst` and the running max after each chunk recorded in `maxes` (the gradient pass
/// rescales each chunk by `exp(max_k − LSE)` instead of evaluating `exp` again). Returns the
/// state and the extra sums relative to the final max `m`: `(Σ w·(x − m), Σ w)` or
/// `(Σ w·t', Σ w·t'·(x − m))`.
#[inline(always)]
pub(super) fn fused_row_first<S: Simd>(
    simd: S,
    src: Option<&[f32]>,
    dst: &mut [f32],
    maxes: &mut [f32],
    extras: Extras<'_>,
) -> (LseState, f64, f64) {
    let len = dst.len();
    let mut state = LseState::EMPTY;
    // The extra sums, relative to `origin(state.max)`: (Σ w·(x − o), Σ w) for smoothing,
    // (Σ w·t', Σ w·t'·(x − o)) for probabilities; re-based when the max grows.
    let (mut e1, mut e2) = (0.0f64, 0.0f64);
    let mut k = 0;
    let mut start = 0;
    while start < len {
        let end = (start + CHUNK).min(len);
        let ahead = match src {
            Some(x) => x.as_ptr(),
            None => dst.as_ptr(),
        }
        .wrapping_add(start + CHUNK.min(len));
        let ahead_dst = dst.as_ptr().wrapping_add(start + CHUNK.min(len));
        let x: &[f32] = match src {
            Some(x) => &x[start..end],
            None => &dst[start..end],
        };
        // Σ w·(x − o_old) = Σ w·(x − o_new) + (o_new − o_old)·Σ w.
        if let Some(shift) = state.raise_max(chunk_max(simd, x)) {
            match extras {
                Extras::Nothing => {}
                Extras::WeightedSum(_) => e1 -= shift * e2,
                Extras::Probs { .. } => e2 -= shift * e1,
            }
        }
        let o = origin(state.max);
        match extras {
            Extras::Nothing => {}
            Extras::WeightedSum(w) => {
                let (d, ws) = weighted_sum(simd, x, w.map(|w| &w[start..end]), o);
                e1 += d;
                e2 += ws;
            }
            Extras::Probs { t, w, smooth } => {
                let (mass, d) = prob_sums(
                    simd,
                    x,
                    &t[start..end],
                    w.map(|w| &w[start..end]),
                    smooth,
                    o,
                );
                e1 += mass;
                e2 += d;
            }
        }
        maxes[k] = state.max;
        let sum = chunk_exp_store(
            simd,
            src.map(|x| &x[start..end]),
            &mut dst[start..end],
            o,
            ahead,
            ahead_dst,
        );
        state.sum += f64::from(sum);
        k += 1;
        start = end;
    }
    (state, e1, e2)
}

/// Second pass of the fused row: `g = a·exp(max_k − LSE)·e − term` over the stored `e`.
#[inline(always)]
pub(super) fn fused_row_second<S: Simd, T: Term>(
    simd: S,
    g: &mut [f32],
    maxes: &[f32],
    state: LseState,
    lse: f64,
    a: f32,
    term: &T,
) {
    let lanes = S::F32_LANES;
    for (k, chunk) in g.chunks_mut(CHUNK).enumerate() {
        // A chunk seen while the max was −∞ stored exp(x − 0) ∈ {0, NaN}: its factor is 0.
        // (A NaN LSE still makes every gradient NaN, as the reference's `exp(x − NaN)`.)
        let factor = if lse.is_nan() {
            f64::NAN
        } else if maxes[k] == f32::NEG_INFINITY {
            0.0
        } else if maxes[k] == state.max {
            // exp(max − LSE) = 1/sum: saves an `exp` per row, most of all on short rows.
            state.sum.recip()
        } else {
            (f64::from(maxes[k]) - lse).exp()
        };
        let a = simd.splat_f32s((f64::from(a) * factor) as f32);
        let offset = k * CHUNK;
        let len = chunk.len();
        let full = len / lanes * lanes;
        // The overlapping last vector (see `last_lanes`), from the stored values before the
        // loop rewrites the shared lanes.
        let last = if len > full && full > 0 {
            let v = load::<S>(chunk, len - lanes);
            Some(term.full(simd, simd.mul_f32s(a, v), offset + len - lanes))
        } else {
            None
        };
        let (gh, gt) = S::as_mut_simd_f32s(chunk);
        for (i, v) in gh.iter_mut().enumerate() {
            *v = term.full(simd, simd.mul_f32s(a, *v), offset + i * lanes);
        }
        if let Some(r) = last {
            S::as_mut_simd_f32s(&mut chunk[len - lanes..]).0[0] = r;
        } else if !gt.is_empty() {
            let v = simd.partial_load_f32s(gt);
            let r = term.part(simd, simd.mul_f32s(a, v), offset + full, gt.len());
            simd.partial_store_f32s(gt, r);
        }
    }
}

/// `(Σ w[c]·(x[c] − origin), Σ w[c])` (`w = 1` when absent), `f32` lanes folded into `f64` per
/// chunk. Relative to `origin` (the row's max) so that a large common offset of the logits does
/// not cancel catastrophically in the smoothing term `W·LSE − Σ w·x`.
#[inline(always)]
pub(super) fn weighted_sum<S: Simd>(
    simd: S,
    x: &[f32],
    w: Option<&[f32]>,
    origin: f32,
) -> (f64, f64) {
    let lanes = S::F32_LANES;
    let o = simd.splat_f32s(origin);
    let (mut total, mut weights) = (0.0f64, 0.0f64);
    for (k, chunk) in x.chunks(CHUNK).enumerate() {
        let base = k * CHUNK;
        let mut acc = simd.splat_f32s(0.0);
        let mut wacc = simd.splat_f32s(0.0);
        let full = chunk.len() / lanes * lanes;
        let mut i = 0;
        while i < full {
            let v = simd.sub_f32s(load::<S>(chunk, i), o);
            match w {
                Some(w) => {
                    let wv = load::<S>(w, base + i);
                    acc = simd.mul_add_e_f32s(wv, v, acc);
                    wacc = simd.add_f32s(wacc, wv);
                }
                None => acc = simd.add_f32s(acc, v),
            }
            i += lanes;
        }
        let mut sum = f64::from(simd.reduce_sum_f32s(acc));
        let mut wsum = match w {
            Some(_) => f64::from(simd.reduce_sum_f32s(wacc)),
            None => full as f64,
        };
        for (j, &v) in chunk[full..].iter().enumerate() {
            let wc = w.map_or(1.0, |w| w[base + full + j]);
            sum += f64::from(wc * (v - origin));
            wsum += f64::from(wc);
        }
        total += sum;
        weights += wsum;
    }
    (total, weights)
}

/// For probability targets: `(Σ w·t', Σ w·t'·(x − origin))` with `t' = (1−ε)·t + ε/C`
/// (relative to `origin` for the reason given at [`weighted_sum`]).
#[inline(always)]
pub(super) fn prob_sums<S: Simd>(
    simd: S,
    x: &[f32],
    t: &[f32],
    w: Option<&[f32]>,
    smooth: Smoothing,
    origin: f32,
) -> (f64, f64) {
    let lanes = S::F32_LANES;
    let keep = simd.splat_f32s(smooth.keep);
    let spread = simd.splat_f32s(smooth.spread);
    let o = simd.splat_f32s(origin);
    let (mut mass, mut dot) = (0.0f64, 0.0f64);
    let mut c0 = 0;
    while c0 < x.len() {
        let end = (c0 + CHUNK).min(x.len());
        let full = c0 + (end - c0) / lanes * lanes;
        let mut am = simd.splat_f32s(0.0);
        let mut ad = simd.splat_f32s(0.0);
        let mut i = c0;
        while i < full {
            let tp = simd.mul_add_e_f32s(load::<S>(t, i), keep, spread);
            let wt = match w {
                Some(w) => simd.mul_f32s(load::<S>(w, i), tp),
                None => tp,
            };
            am = simd.add_f32s(am, wt);
            ad = simd.mul_add_e_f32s(wt, simd.sub_f32s(load::<S>(x, i), o), ad);
            i += lanes;
        }
        let (mut m, mut d) = (
            f64::from(simd.reduce_sum_f32s(am)),
            f64::from(simd.reduce_sum_f32s(ad)),
        );
        for c in full..end {
            let wt = w.map_or(1.0, |w| w[c]) * t[c].mul_add(smooth.keep, smooth.spread);
            m += f64::from(wt);
            d += f64::from(wt * (x[c] - origin));
        }
        mass += m;
        dot += d;
        c0 = end;
    }
    (mass, dot)
}

/// What the gradient subtracts from `a·p[c]` at class `c` (`i` is the class of the vector's
/// first lane).
pub(super) trait Term {
    fn full<S: Simd>(&self, simd: S, ap: S::f32s, i: usize) -> S::f32s;
    fn part<S: Simd>(&self, simd: S, ap: S::f32s, i: usize, n: usize) -> S::f32s;
}

/// Nothing: index targets without smoothing (the target class is fixed up afterwards).
pub(super) struct NoTerm;

impl Term for NoTerm {
    #[inline(always)]
    fn full<S: Simd>(&self, _: S, ap: S::f32s, _: usize) -> S::f32s {
        ap
    }
    #[inline(always)]
    fn part<S: Simd>(&self, _: S, ap: S::f32s, _: usize, _: usize) -> S::f32s {
        ap
    }
}

/// `b·w[c]` (smoothed index targets; `w = 1` when absent).
pub(super) struct SmoothTerm<'a> {
    pub(super) b: f32,
    pub(super) w: Option<&'a [f32]>,
}

impl Term for SmoothTerm<'_> {
    #[inline(always)]
    fn full<S: Simd>(&self, simd: S, ap: S::f32s, i: usize) -> S::f32s {
        let b = simd.splat_f32s(-self.b);
        match self.w {
            Some(w) => simd.mul_add_e_f32s(b, load::<S>(w, i), ap),
            None => simd.add_f32s(ap, b),
        }
    }
    #[inline(always)]
    fn part<S: Simd>(&self, simd: S, ap: S::f32s, i: usize, n: usize) -> S::f32s {
        let b = simd.splat_f32s(-self.b);
        match self.w {
            Some(w) => simd.mul_add_e_f32s(b, simd.partial_load_f32s(&w[i..i + n]), ap),
            None => simd.add_f32s(ap, b),
        }
    }
}

/// `s·w[c]·t'[c]` (probability targets).
pub(super) struct ProbTerm<'a> {
    pub(super) s: f32,
    pub(super) t: &'a [f32],
    pub(super) w: Option<&'a [f32]>,
    pub(super) smooth: Smoothing,
}

impl ProbTerm<'_> {
    #[inline(always)]
    fn apply<S: Simd>(&self, simd: S, ap: S::f32s, t: S::f32s, w: Option<S::f32s>) -> S::f32s {
        let tp = simd.mul_add_e_f32s(
            t,
            simd.splat_f32s(self.smooth.keep),
            simd.splat_f32s(self.smooth.spread),
        );
        let s = simd.splat_f32s(-self.s);
        let sw = match w {
            Some(w) => simd.mul_f32s(s, w),
            None => s,
        };
        simd.mul_add_e_f32s(sw, tp, ap)
    }
}

impl Term for ProbTerm<'_> {
    #[inline(always)]
    fn full<S: Simd>(&self, simd: S, ap: S::f32s, i: usize) -> S::f32s {
        let w = self.w.map(|w| load::<S>(w, i));
        self.apply(simd, ap, load::<S>(self.t, i), w)
    }
    #[inline(always)]
    fn part<S: Simd>(&self, simd: S, ap: S::f32s, i: usize, n: usize) -> S::f32s {
        #[allow(clippy::manual_map)] // a closure would lose the dispatch's target features
        let w = match self.w {
            Some(w) => Some(simd.partial_load_f32s(&w[i..i + n])),
            None => None,
        };
        self.apply(simd, ap, simd.partial_load_f32s(&self.t[i..i + n]), w)
    }
}

/// `a·exp(x − lse)`. A function rather than a closure: closures do not inherit the target
/// features of pulp's dispatch, so the intrinsics inside them would not be inlined.
#[inline(always)]
pub(super) fn scaled_softmax<S: Simd>(simd: S, x: S::f32s, lse: S::f32s, a: S::f32s) -> S::f32s {
    simd.mul_f32s(a, exp_shifted(simd, simd.sub_f32s(x, lse)))
}

/// `g[c] = a·exp(x[c] − lse) − term(c)` over a contiguous row. `x = None` reads the logits from
/// `g` itself (in place: each vector is read before it is overwritten).
#[inline(always)]
pub(super) fn grad_row<S: Simd, T: Term>(
    simd: S,
    x: Option<&[f32]>,
    g: &mut [f32],
    lse: f32,
    a: f32,
    term: &T,
) {
    let lanes = S::F32_LANES;
    let lse = simd.splat_f32s(lse);
    let a = simd.splat_f32s(a);
    let full = g.len() / lanes * lanes;
    let (gh, gt) = S::as_mut_simd_f32s(g);
    match x {
        Some(x) => {
            let (xh, xt) = S::as_simd_f32s(x);
            for (k, (o, &v)) in gh.iter_mut().zip(xh).enumerate() {
                *o = term.full(simd, scaled_softmax(simd, v, lse, a), k * lanes);
            }
            if !gt.is_empty() {
                let v = simd.partial_load_f32s(xt);
                let r = term.part(simd, scaled_softmax(simd, v, lse, a), full, gt.len());
                simd.partial_store_f32s(gt, r);
            }
        }
        None => {
            for (k, o) in gh.iter_mut().enumerate() {
                *o = term.full(simd, scaled_softmax(simd, *o, lse, a), k * lanes);
            }
            if !gt.is_empty() {
                let v = simd.partial_load_f32s(gt);
                let r = term.part(simd, scaled_softmax(simd, v, lse, a), full, gt.len());
                simd.partial_store_f32s(gt, r);
            }
        }
    }
}

/// `g[c] = term(a·g[c])` over a row of stored exponentials (the medium rows' gradient pass).
#[inline(always)]
pub(super) fn scale_row<S: Simd, T: Term>(simd: S, g: &mut [f32], a: f32, term: &T) {
    let lanes = S::F32_LANES;
    let a = simd.splat_f32s(a);
    let full = g.len() / lanes * lanes;
    let (gh, gt) = S::as_mut_simd_f32s(g);
    for (k, o) in gh.iter_mut().enumerate() {
        *o = term.full(simd, simd.mul_f32s(a, *o), k * lanes);
    }
    if !gt.is_empty() {
        let v = simd.partial_load_f32s(gt);
        let r = term.part(simd, simd.mul_f32s(a, v), full, gt.len());
        simd.partial_store_f32s(gt, r);
    }
}

/// A vector of `f32` lanes with its SIMD token, so that loss-core's
/// [formulas](loss_core::formula) evaluate several positions at once (one position per lane).
#[derive(Clone, Copy)]
pub(super) struct Lanes<S: Simd>(pub(super) S, pub(super) S::f32s);

impl<S: Simd> core::ops::Add for Lanes<S> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Lanes(self.0, self.0.add_f32s(self.1, o.1))
    }
}

impl<S: Simd> core::ops::Sub for Lanes<S> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Lanes(self.0, self.0.sub_f32s(self.1, o.1))
    }
}

impl<S: Simd> core::ops::Mul for Lanes<S> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Lanes(self.0, self.0.mul_f32s(self.1, o.1))
    }
}

impl<S: Simd> loss_core::formula::Real for Lanes<S> {
    #[inline(always)]
    fn lit(self, v: f64) -> Self {
        Lanes(self.0, self.0.splat_f32s(v as f32))
    }
}
