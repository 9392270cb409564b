//! The kernels' loops over one unit: contiguous rows (short rows as lanes, longer ones row by
//! row) and K-dimensional tiles (positions as lanes).

use loss_core::Layout;
use loss_core::formula::{self, RowStats};
use pulp::{Simd, WithSimd};

use super::simd::*;
use super::{CHUNK, FOLD, GradScale, LseState, MAX_LANES, Plan, Smoothing, Strided, Tgt, origin};
use crate::exp::{exp_shifted, ln_sum};

/// Rows of at most this many classes (index targets) take the rows-as-lanes path; the forward
/// pass up to [`SMALL_C_FORWARD`]. Beyond, the medium-rows path is faster (NOTES.md #32: at
/// C = 20 lanes won the forward pass by 13 % and lost the gradient by 6 %; at C = 32 the medium
/// path won both by 29–48 %).
const SMALL_C: usize = 16;
/// See [`SMALL_C`].
const SMALL_C_FORWARD: usize = 24;

/// Rows of more than [`SMALL_C`] ([`SMALL_C_FORWARD`]) and at most this many classes (index targets) take the
/// medium-rows path: vector passes per row, the epilogue in lanes.
const MEDIUM_C: usize = 4096;

/// Rows per rows-as-lanes group at most: two vectors of the widest lanes.
const TILE: usize = 2 * MAX_LANES;

/// Rows per group in the contiguous path (see `UnitOp::rows`).
const GROUP: usize = 16;

/// What the first pass over a row leaves for the second.
#[derive(Clone, Copy)]
struct RowInfo {
    /// The loss, when the row is already finished (ignored, or handled by the two-`exp` path).
    done: Option<f64>,
    state: LseState,
    /// `Σ w·x` (smoothed index targets) or `Σ w·t'` (probabilities).
    e1: f64,
    /// `Σ w·t'·x` (probabilities).
    e2: f64,
    x_y: f32,
    y: usize,
    s: f32,
    /// The gradient's `exp` values are stored and await the second pass.
    fast: bool,
}

impl RowInfo {
    const EMPTY: RowInfo = RowInfo {
        done: None,
        state: LseState::EMPTY,
        e1: 0.0,
        e2: 0.0,
        x_y: 0.0,
        y: 0,
        s: 0.0,
        fast: false,
    };
}

/// What a unit's pass does with its logits. The modes are types, so that each is compiled on its
/// own and the loops test a constant, not an `Option`.
pub(super) trait Mode {
    /// Whether a gradient is written.
    const GRAD: bool;
    /// The logits to read (in place: the buffer that will hold the gradient).
    fn logits(&self) -> &[f32];
    /// The logits and the gradient buffer at once: `(Some(x), g)` out of place, `(None, g)` in
    /// place (each logit is read from `g` before it is overwritten), `(Some(x), [])` forward.
    fn parts(&mut self) -> (Option<&[f32]>, &mut [f32]);
}

/// The loss only.
pub(super) struct Forward<'b>(pub(super) &'b [f32]);

/// Loss and gradient into a separate buffer.
pub(super) struct Fused<'b> {
    pub(super) logits: &'b [f32],
    pub(super) grad: &'b mut [f32],
}

/// Loss and gradient, the gradient written over the logits.
pub(super) struct InPlace<'b>(pub(super) &'b mut [f32]);

impl Mode for Forward<'_> {
    const GRAD: bool = false;
    #[inline(always)]
    fn logits(&self) -> &[f32] {
        self.0
    }
    #[inline(always)]
    fn parts(&mut self) -> (Option<&[f32]>, &mut [f32]) {
        (Some(self.0), &mut [])
    }
}

impl Mode for Fused<'_> {
    const GRAD: bool = true;
    #[inline(always)]
    fn logits(&self) -> &[f32] {
        self.logits
    }
    #[inline(always)]
    fn parts(&mut self) -> (Option<&[f32]>, &mut [f32]) {
        (Some(self.logits), self.grad)
    }
}

impl Mode for InPlace<'_> {
    const GRAD: bool = true;
    #[inline(always)]
    fn logits(&self) -> &[f32] {
        self.0
    }
    #[inline(always)]
    fn parts(&mut self) -> (Option<&[f32]>, &mut [f32]) {
        (None, self.0)
    }
}

/// One unit's work in one mode.
pub(super) struct UnitOp<'p, 'a, 'b, M> {
    pub(super) plan: &'p Plan<'a>,
    pub(super) unit: usize,
    pub(super) mode: M,
    pub(super) scale: GradScale<'b>,
    pub(super) losses: Option<&'b mut [f32]>,
}

impl<M: Mode> WithSimd for UnitOp<'_, '_, '_, M> {
    type Output = f64;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f64 {
        if self.plan.layout.inner == 1 {
            self.rows(simd)
        } else {
            self.tiles(simd)
        }
    }
}

impl<M: Mode> UnitOp<'_, '_, '_, M> {
    /// Contiguous rows (`inner = 1`): one row per position.
    #[inline(always)]
    fn rows<S: Simd>(self, simd: S) -> f64 {
        let plan = self.plan;
        let small = if M::GRAD { SMALL_C } else { SMALL_C_FORWARD };
        if plan.layout.classes <= small && matches!(plan.target, Tgt::Indices(_)) {
            // The tiles are sized to the classes (zeroing 8 KiB per unit cost more than a
            // unit of 3-class rows).
            return match plan.layout.classes {
                0..=4 => self.rows_as_lanes::<S, 4>(simd),
                5..=8 => self.rows_as_lanes::<S, 8>(simd),
                9..=16 => self.rows_as_lanes::<S, 16>(simd),
                _ => self.rows_as_lanes::<S, SMALL_C_FORWARD>(simd),
            };
        }
        if plan.layout.classes <= MEDIUM_C && matches!(plan.target, Tgt::Indices(_)) {
            return self.medium_rows(simd);
        }
        self.rows_with(simd)
    }

    /// Medium rows (from [`SMALL_C`] or [`SMALL_C_FORWARD`] to `C ≤ MEDIUM_C`, index targets): each row's max and sum of
    /// exponentials by vector passes over the row (the exponentials stored into the gradient
    /// buffer when one is asked for), then the per-row epilogue — `ln`, loss and gradient
    /// coefficients from loss-core's formulas — for `2·lanes` rows at once in lanes, as in
    /// [`Self::rows_as_lanes`]; the gradient pass is one multiply (and, smoothed, one FMA) per
    /// logit of the stored exponentials. Rows with a non-finite gradient scale are found before
    /// anything is written and take the `f64` element path.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `h` and `j` walk several per-lane arrays in lockstep
    fn medium_rows<S: Simd>(mut self, simd: S) -> f64 {
        const G: usize = TILE / MAX_LANES;
        let plan = self.plan;
        let lanes = S::F32_LANES;
        let classes = plan.layout.classes;
        let positions = plan.unit_positions(self.unit);
        let first = positions.start;
        let rows = positions.len();
        let Tgt::Indices(all_targets) = plan.target else {
            unreachable!("medium_rows takes index targets only")
        };
        let targets = &all_targets[positions];
        let smoothed = plan.smoothed();
        let zero = simd.splat_f32s(0.0);
        let mut acc = [zero; G];
        let mut r0 = 0;
        while r0 < rows {
            let width = (G * lanes).min(rows - r0);
            let mut yf = [-1.0f32; TILE];
            target_lanes(&targets[r0..r0 + width], plan.ignore_index, &mut yf);
            let (sv, slow) = if M::GRAD {
                self.lane_scales(first + r0, width, &yf)
            } else {
                ([0.0; TILE], None)
            };
            // Per row: max, Σ exp(x − max), the target's logit and weight, Σ w·(x − max).
            let (mut mf, mut sf, mut xyf, mut wyf, mut wxf) = (
                [0.0f32; TILE],
                [1.0f32; TILE],
                [0.0f32; TILE],
                [0.0f32; TILE],
                [0.0f32; TILE],
            );
            {
                let (src_all, dst_all) = self.mode.parts();
                for j in 0..width {
                    let r = r0 + j;
                    let span = r * classes..(r + 1) * classes;
                    // The next row, prefetched while this one computes.
                    let next = (r + 1).min(rows - 1) * classes;
                    let ahead = match src_all {
                        Some(x) => x.as_ptr(),
                        None => dst_all.as_ptr(),
                    }
                    .wrapping_add(next);
                    let ahead_dst = dst_all.as_ptr().wrapping_add(next);
                    let valid = yf[j] >= 0.0;
                    let y = if valid { targets[r] as usize } else { 0 };
                    let x = match src_all {
                        Some(x) => &x[span.clone()],
                        None => &dst_all[span.clone()],
                    };
                    let m = chunk_max(simd, x);
                    let o = origin(m);
                    mf[j] = m;
                    xyf[j] = x[y];
                    wyf[j] = if valid { plan.class_weight(y) } else { 0.0 };
                    if smoothed {
                        wxf[j] = weighted_sum(simd, x, plan.weight, o).0 as f32;
                    }
                    let stored = M::GRAD && !slow.as_ref().is_some_and(|s| s[j]);
                    sf[j] = if stored {
                        chunk_exp_store(
                            simd,
                            src_all.map(|x| &x[span.clone()]),
                            &mut dst_all[span],
                            o,
                            ahead,
                            ahead_dst,
                        )
                    } else {
                        chunk_sum_exp(simd, x, o, ahead)
                    };
                }
            }
            let mut losses = [0.0f32; TILE];
            let (mut af, mut bf, mut fixf) = ([0.0f32; TILE], [0.0f32; TILE], [0.0f32; TILE]);
            for h in 0..G {
                let at = h * lanes;
                let rows = LaneRows {
                    max: load::<S>(&mf, at),
                    sum: load::<S>(&sf, at),
                    x_target: load::<S>(&xyf, at),
                    w_target: load::<S>(&wyf, at),
                    weighted: load::<S>(&wxf, at),
                    target: load::<S>(&yf, at),
                };
                // (An `if`, not `bool::then`: a closure would lose the dispatch's target features.)
                let scale = if M::GRAD {
                    Some(load::<S>(&sv, at))
                } else {
                    None
                };
                let out = lane_epilogue(simd, plan, &rows, scale);
                acc[h] = simd.add_f32s(acc[h], out.loss);
                S::as_mut_simd_f32s(&mut losses[at..at + lanes]).0[0] = out.loss;
                S::as_mut_simd_f32s(&mut af[at..at + lanes]).0[0] = out.a;
                S::as_mut_simd_f32s(&mut bf[at..at + lanes]).0[0] = out.b;
                S::as_mut_simd_f32s(&mut fixf[at..at + lanes]).0[0] = out.fix;
            }
            if M::GRAD {
                let (src_all, dst_all) = self.mode.parts();
                for j in 0..width {
                    let r = r0 + j;
                    let span = r * classes..(r + 1) * classes;
                    if yf[j] < 0.0 {
                        dst_all[span].fill(0.0);
                    } else if slow.as_ref().is_some_and(|s| s[j]) {
                        let scale = self.scale.at(first + r);
                        slow_index_row(plan, src_all, dst_all, r, mf[j], sf[j], scale, yf[j]);
                    } else {
                        let g = &mut dst_all[span];
                        if smoothed {
                            let term = SmoothTerm {
                                b: bf[j],
                                w: plan.weight,
                            };
                            scale_row(simd, g, af[j], &term);
                        } else {
                            scale_row(simd, g, af[j], &NoTerm);
                        }
                        g[yf[j] as usize] -= fixf[j];
                    }
                }
            }
            if let Some(out) = self.losses.as_deref_mut() {
                out[r0..r0 + width].copy_from_slice(&losses[..width]);
            }
            r0 += width;
        }
        lanes_total(simd, &acc)
    }

    /// Short rows (`C ≤ SMALL_C`, index targets): `2·lanes` rows at a time, one row per lane of
    /// two vectors. The rows are transposed into class-major stack tiles (unrolled per `C` up to
    /// 16), so that the max, the sum, the target's logit and weight (selected by comparing each
    /// class with the lanes' targets) and the gradient are lane-wise vector ops with no
    /// horizontal reduction, no tail and no per-row setup; the `ln` and the loss are evaluated for
    /// all lanes at once. Two vectors per class, not one: a group's work is one long chain of
    /// dependent operations (max, `exp`, sum, `ln`, loss) longer than the out-of-order window, so
    /// two independent chains side by side keep the core busy.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `h` walks several per-vector arrays in lockstep
    fn rows_as_lanes<S: Simd, const K: usize>(mut self, simd: S) -> f64 {
        const G: usize = TILE / MAX_LANES;
        let plan = self.plan;
        let lanes = S::F32_LANES;
        let classes = plan.layout.classes;
        let positions = plan.unit_positions(self.unit);
        let first = positions.start;
        let rows = positions.len();
        let Tgt::Indices(all_targets) = plan.target else {
            unreachable!("rows_as_lanes takes index targets only")
        };
        let targets = &all_targets[positions];
        let smoothed = plan.smoothed();
        let ninf = simd.splat_f32s(f32::NEG_INFINITY);
        let zero = simd.splat_f32s(0.0);
        // Class-major tiles: row j's class c at [c][j]. Lanes past `width` keep stale values,
        // which only ever reach lanes nobody reads.
        let mut xt = [[0.0f32; TILE]; K];
        let mut et = [[0.0f32; TILE]; K];
        // The losses are added in f32 lanes (each lane takes a unit's 256 / (2·lanes) rows at
        // most), then the lanes in f64 in lane order: no serial f64 chain per row.
        let mut acc = [zero; G];
        let mut r0 = 0;
        while r0 < rows {
            let width = (G * lanes).min(rows - r0);
            let full = width == G * lanes;
            if full && is_avx2::<S>() && (2..=8).contains(&classes) {
                shuffle_in(self.mode.logits(), r0, classes, width, &mut xt);
            } else {
                transpose_in(self.mode.logits(), r0, classes, width, &mut xt);
            }
            // The lanes' targets as floats (−1 where ignored), compared with each class below.
            let mut yf = [-1.0f32; TILE];
            target_lanes(&targets[r0..r0 + width], plan.ignore_index, &mut yf);
            let mut yv = [zero; G];
            for h in 0..G {
                yv[h] = load::<S>(&yf, h * lanes);
            }
            let mut m = [ninf; G];
            for row in &xt[..classes] {
                for h in 0..G {
                    m[h] = simd.max_f32s(m[h], load::<S>(row, h * lanes));
                }
            }
            let mut o = [zero; G];
            for h in 0..G {
                o[h] = simd.select_f32s_m32s(simd.equal_f32s(m[h], ninf), zero, m[h]);
            }
            let (mut sum, mut wx, mut xy, mut wy) = ([zero; G], [zero; G], [zero; G], [zero; G]);
            for c in 0..classes {
                let cv = simd.splat_f32s(c as f32);
                let wc = simd.splat_f32s(plan.class_weight(c));
                for h in 0..G {
                    let v = load::<S>(&xt[c], h * lanes);
                    let d = simd.sub_f32s(v, o[h]);
                    let e = exp_shifted(simd, d);
                    S::as_mut_simd_f32s(&mut et[c][h * lanes..(h + 1) * lanes]).0[0] = e;
                    sum[h] = simd.add_f32s(sum[h], e);
                    let is_y = simd.equal_f32s(yv[h], cv);
                    xy[h] = simd.select_f32s_m32s(is_y, v, xy[h]);
                    wy[h] = simd.select_f32s_m32s(is_y, wc, wy[h]);
                    if smoothed {
                        // Relative to the max: see `weighted_sum`.
                        wx[h] = simd.mul_add_e_f32s(wc, d, wx[h]);
                    }
                }
            }
            // One `ln` for all the lanes, the loss and the coefficients (`lane_epilogue`).
            let mut losses = [0.0f32; TILE];
            let (sv, slow) = if M::GRAD {
                self.lane_scales(first + r0, width, &yf)
            } else {
                ([0.0; TILE], None)
            };
            let mut coef = [(zero, zero, zero); G];
            for h in 0..G {
                let rows = LaneRows {
                    max: m[h],
                    sum: sum[h],
                    x_target: xy[h],
                    w_target: wy[h],
                    weighted: wx[h],
                    target: yv[h],
                };
                let scale = if M::GRAD {
                    Some(load::<S>(&sv, h * lanes))
                } else {
                    None
                };
                let out = lane_epilogue(simd, plan, &rows, scale);
                acc[h] = simd.add_f32s(acc[h], out.loss);
                S::as_mut_simd_f32s(&mut losses[h * lanes..(h + 1) * lanes]).0[0] = out.loss;
                coef[h] = (out.a, simd.neg_f32s(out.b), out.fix);
            }
            if M::GRAD {
                for h in 0..G {
                    // g = a·e − b·w[c], minus `fix` at the target, with e = exp(x − max);
                    // exactly 0 where ignored, whatever the logits.
                    let (a, nb, fix) = coef[h];
                    let valid = simd.greater_than_or_equal_f32s(yv[h], zero);
                    for (c, et_c) in et[..classes].iter_mut().enumerate() {
                        let slot = &mut et_c[h * lanes..(h + 1) * lanes];
                        let e = load::<S>(slot, 0);
                        let mut g = simd.mul_f32s(a, e);
                        if smoothed {
                            g = simd.mul_add_e_f32s(nb, simd.splat_f32s(plan.class_weight(c)), g);
                        }
                        let is_y = simd.equal_f32s(yv[h], simd.splat_f32s(c as f32));
                        g = simd.select_f32s_m32s(is_y, simd.sub_f32s(g, fix), g);
                        S::as_mut_simd_f32s(slot).0[0] = simd.select_f32s_m32s(valid, g, zero);
                    }
                }
                let (src_all, dst) = self.mode.parts();
                if let Some(slow) = &slow {
                    // Rows with a non-finite scale, in f64, read before anything is written.
                    for j in (0..width).filter(|&j| slow[j]) {
                        let h = j / lanes;
                        let (m_l, sum_l) = (lanes_of(simd, m[h]), lanes_of(simd, sum[h]));
                        let scale = self.scale.at(first + r0 + j);
                        let (max, sum) = (m_l[j % lanes], sum_l[j % lanes]);
                        slow_index_row(plan, src_all, dst, r0 + j, max, sum, scale, yf[j]);
                    }
                }
                if full && slow.is_none() && is_avx2::<S>() && (2..=8).contains(&classes) {
                    shuffle_out(&et, r0, classes, width, dst);
                } else {
                    transpose_out(&et, r0, classes, width, dst, slow.as_ref());
                }
            }
            if let Some(out) = self.losses.as_deref_mut() {
                out[r0..r0 + width].copy_from_slice(&losses[..width]);
            }
            r0 += width;
        }
        lanes_total(simd, &acc)
    }

    /// The upstream-gradient scale of `width` rows starting at `position` (0 in ignored rows),
    /// and which valid rows have a non-finite one (`None` when none does).
    #[inline(always)]
    fn lane_scales(
        &self,
        position: usize,
        width: usize,
        yf: &[f32; TILE],
    ) -> ([f32; TILE], Option<[bool; TILE]>) {
        let mut sv = [0.0f32; TILE];
        if let GradScale::Uniform(s) = self.scale
            && s.is_finite()
        {
            // One finite scale: no row is slow, and the lanes past `width` (target −1) get 0.
            for (v, &y) in sv.iter_mut().zip(yf) {
                *v = if y >= 0.0 { s } else { 0.0 };
            }
            return (sv, None);
        }
        let mut slow = [false; TILE];
        let mut any = false;
        for j in 0..width {
            let s = self.scale.at(position + j);
            let valid = yf[j] >= 0.0;
            slow[j] = valid && !s.is_finite();
            any |= slow[j];
            sv[j] = if valid && !slow[j] { s } else { 0.0 };
        }
        (sv, any.then_some(slow))
    }

    /// The contiguous rows. The fused pass stores `exp(x − max)` into the gradient buffer as it
    /// sums, and turns it into the gradient in place once the row's LSE is known.
    #[inline(always)]
    fn rows_with<S: Simd>(mut self, simd: S) -> f64 {
        let plan = self.plan;
        let classes = plan.layout.classes;
        let first = plan.unit_positions(self.unit).start;
        let logits_start = plan.unit_logits(self.unit).start;
        let smooth = plan.smoothing();
        let rows = plan.unit_positions(self.unit).len();
        // Rows go in groups: every row's first pass, then every row's `ln` and second pass, so
        // that independent rows' latency chains may overlap (measured neutral, see NOTES.md #7).
        // The group's rows stay within 32 KiB, so the second pass reads them from L1/L2.
        let group = (8192 / classes).clamp(1, GROUP);
        let slots = classes.div_ceil(CHUNK);
        let mut maxes = [0.0f32; MAX_CHUNKS];
        let mut info = [RowInfo::EMPTY; GROUP];
        let mut total = 0.0f64;
        let (src_all, dst_all) = self.mode.parts();
        let mut g0 = 0;
        while g0 < rows {
            let g1 = (g0 + group).min(rows);
            for k in g0..g1 {
                let position = first + k;
                let span = k * classes..(k + 1) * classes;
                let src = src_all.map(|x| &x[span.clone()]);
                let slot = (k - g0) * slots;
                let row = &mut info[k - g0];
                *row = RowInfo::EMPTY;
                row.s = self.scale.at(position);
                row.fast = M::GRAD && row.s.is_finite() && classes <= MAX_CHUNKS * CHUNK;
                let extras = match plan.target {
                    Tgt::Indices(targets) => {
                        let t = targets[position];
                        if t == plan.ignore_index {
                            if M::GRAD {
                                dst_all[span].fill(0.0);
                            }
                            row.done = Some(0.0);
                            continue;
                        }
                        row.y = t as usize;
                        if plan.smoothed() {
                            Extras::WeightedSum(plan.weight)
                        } else {
                            Extras::Nothing
                        }
                    }
                    Tgt::Probs(targets) => Extras::Probs {
                        t: &targets[logits_start + span.start..logits_start + span.end],
                        w: plan.weight,
                        smooth,
                    },
                };
                if row.fast {
                    let g = &mut dst_all[span];
                    row.x_y = src.map_or(g[row.y], |x| x[row.y]);
                    (row.state, row.e1, row.e2) =
                        fused_row_first(simd, src, g, &mut maxes[slot..], extras);
                } else if !M::GRAD {
                    let x = src.unwrap_or(&[]);
                    row.x_y = x[row.y];
                    row.state = row_lse(simd, x);
                    // The extra sums after the max is known (a second look at the row, from
                    // cache unless the row is huge): relative to it, see `weighted_sum`.
                    let o = origin(row.state.max);
                    match extras {
                        Extras::Nothing => {}
                        Extras::WeightedSum(w) => (row.e1, row.e2) = weighted_sum(simd, x, w, o),
                        Extras::Probs { t, w, smooth } => {
                            (row.e1, row.e2) = prob_sums(simd, x, t, w, smooth, o);
                        }
                    }
                } else {
                    let (y, s) = (row.y, row.s);
                    let g = &mut dst_all[span];
                    row.done = Some(match extras {
                        Extras::Probs { t, .. } => Self::prob_row(plan, simd, src, g, t, s, smooth),
                        _ => Self::index_row(plan, simd, src, g, y, s),
                    });
                }
            }
            for k in g0..g1 {
                let row = info[k - g0];
                let loss = match row.done {
                    Some(loss) => loss,
                    None => {
                        let r = row.state.stats();
                        let slot = (k - g0) * slots;
                        let span = k * classes..(k + 1) * classes;
                        match plan.target {
                            Tgt::Indices(_) => {
                                if row.fast {
                                    let g = &mut dst_all[span];
                                    let (a, b, fix) =
                                        plan.index_coefficients(row.s, row.y, r.lse());
                                    if plan.smoothed() {
                                        let term = SmoothTerm { b, w: plan.weight };
                                        fused_row_second(
                                            simd,
                                            g,
                                            &maxes[slot..],
                                            row.state,
                                            r.lse(),
                                            a,
                                            &term,
                                        );
                                    } else {
                                        fused_row_second(
                                            simd,
                                            g,
                                            &maxes[slot..],
                                            row.state,
                                            r.lse(),
                                            a,
                                            &NoTerm,
                                        );
                                    }
                                    g[row.y] -= fix;
                                }
                                plan.index_loss(r, row.x_y, row.y, row.e1) + plan.z_term(&r)
                            }
                            Tgt::Probs(targets) => {
                                if row.fast {
                                    let t = &targets
                                        [logits_start + span.start..logits_start + span.end];
                                    let g = &mut dst_all[span];
                                    let a = plan.prob_coefficient(row.s, row.e1, r.lse()) as f32;
                                    let term = ProbTerm {
                                        s: row.s,
                                        t,
                                        w: plan.weight,
                                        smooth,
                                    };
                                    fused_row_second(
                                        simd,
                                        g,
                                        &maxes[slot..],
                                        row.state,
                                        r.lse(),
                                        a,
                                        &term,
                                    );
                                }
                                Plan::prob_loss(r, row.e1, row.e2) + plan.z_term(&r)
                            }
                        }
                    }
                };
                if let Some(losses) = self.losses.as_deref_mut() {
                    losses[k] = loss as f32;
                }
                total += loss;
            }
            g0 = g1;
        }
        total
    }

    /// A valid index-target row without the single-`exp` fused path (a non-finite scale, or a
    /// row longer than `MAX_CHUNKS` chunks): `g` is the row's gradient, `src` its logits (`None`:
    /// read from `g`, in place).
    #[inline(always)]
    fn index_row<S: Simd>(
        plan: &Plan<'_>,
        simd: S,
        src: Option<&[f32]>,
        g: &mut [f32],
        y: usize,
        s: f32,
    ) -> f64 {
        let (state, x_y, wx) = {
            let x = src.unwrap_or(&*g);
            let state = row_lse(simd, x);
            let wx = if plan.smoothed() {
                weighted_sum(simd, x, plan.weight, origin(state.max)).0
            } else {
                0.0
            };
            (state, x[y], wx)
        };
        let r = state.stats();
        let lse = r.lse();
        {
            if s.is_finite() {
                let (a, b, fix) = plan.index_coefficients(s, y, lse);
                if plan.smoothed() {
                    let term = SmoothTerm { b, w: plan.weight };
                    grad_row(simd, src, g, lse as f32, a, &term);
                } else {
                    grad_row(simd, src, g, lse as f32, a, &NoTerm);
                }
                g[y] -= fix;
            } else {
                plan.slow_position(
                    src,
                    g,
                    None,
                    Strided::row(plan.layout.classes),
                    lse,
                    s,
                    Some(y),
                    0.0,
                    plan.z_coef(s, lse),
                );
            }
        }
        plan.index_loss(r, x_y, y, wx) + plan.z_term(&r)
    }

    /// A probability-target row without the single-`exp` fused path (see `index_row`).
    #[inline(always)]
    fn prob_row<S: Simd>(
        plan: &Plan<'_>,
        simd: S,
        src: Option<&[f32]>,
        g: &mut [f32],
        t: &[f32],
        s: f32,
        smooth: Smoothing,
    ) -> f64 {
        let (state, mass, dot) = {
            let x = src.unwrap_or(&*g);
            let state = row_lse(simd, x);
            let (mass, dot) = prob_sums(simd, x, t, plan.weight, smooth, origin(state.max));
            (state, mass, dot)
        };
        let r = state.stats();
        let lse = r.lse();
        {
            if s.is_finite() {
                let a = plan.prob_coefficient(s, mass, lse) as f32;
                let term = ProbTerm {
                    s,
                    t,
                    w: plan.weight,
                    smooth,
                };
                grad_row(simd, src, g, lse as f32, a, &term);
            } else {
                plan.slow_position(
                    src,
                    g,
                    Some(t),
                    Strided::row(t.len()),
                    lse,
                    s,
                    None,
                    mass,
                    plan.z_coef(s, lse),
                );
            }
        }
        Plan::prob_loss(r, mass, dot) + plan.z_term(&r)
    }

    /// K-dimensional input (`inner > 1`): a vector holds one class of `lanes` consecutive
    /// positions of a batch row.
    #[inline(always)]
    fn tiles<S: Simd>(mut self, simd: S) -> f64 {
        let plan = self.plan;
        let lanes = S::F32_LANES;
        let Layout { classes, inner, .. } = plan.layout;
        let row_len = classes * inner;
        let first = plan.unit_positions(self.unit).start;
        let logits_start = plan.unit_logits(self.unit).start;
        let rows = plan.unit_positions(self.unit).len() / inner;
        let smooth = plan.smoothing();
        let span_len = plan.unit_logits(self.unit).len();
        let scale = self.scale;
        let (src, dst) = self.mode.parts();
        let mut total = 0.0f64;
        for n in 0..rows {
            let mut d0 = 0;
            while d0 < inner {
                let width = lanes.min(inner - d0);
                let base = n * row_len + d0;
                let tile_first = first + n * inner + d0;
                let at = TileAt {
                    base,
                    logits_start,
                    span_len,
                    first: tile_first,
                    width,
                };
                let losses = Self::tile(plan, simd, src, dst, scale, at, smooth);
                for (j, &l) in losses[..width].iter().enumerate() {
                    if let Some(out) = self.losses.as_deref_mut() {
                        out[n * inner + d0 + j] = l as f32;
                    }
                    total += l;
                }
                d0 += width;
            }
        }
        total
    }

    /// One tile of `width ≤ lanes` positions starting at flat offset `base` of the unit's span
    /// (`src`, `dst` as for `index_row`). Returns the positions' losses.
    #[inline(always)]
    fn tile<S: Simd>(
        plan: &Plan<'_>,
        simd: S,
        src: Option<&[f32]>,
        dst: &mut [f32],
        scale: GradScale<'_>,
        at: TileAt,
        smooth: Smoothing,
    ) -> [f64; MAX_LANES] {
        let TileAt {
            base,
            logits_start,
            span_len,
            first: tile_first,
            width,
        } = at;
        let Layout { classes, inner, .. } = plan.layout;
        let probs = match plan.target {
            Tgt::Probs(t) => Some(&t[logits_start..logits_start + span_len]),
            Tgt::Indices(_) => None,
        };
        let mut losses = [0.0f64; MAX_LANES];
        // Which lanes are valid (index targets) and their classes.
        let mut valid = [true; MAX_LANES];
        let mut ys = [0usize; MAX_LANES];
        if let Tgt::Indices(targets) = plan.target {
            for j in 0..width {
                let t = targets[tile_first + j];
                valid[j] = t != plan.ignore_index;
                ys[j] = if valid[j] { t as usize } else { 0 };
            }
            if !valid[..width].iter().any(|&v| v) {
                if M::GRAD {
                    for c in 0..classes {
                        dst[base + c * inner..base + c * inner + width].fill(0.0);
                    }
                }
                return losses;
            }
        }
        // Statistics: max, Σ exp(x − max), and the smoothing / probability sums.
        let (states, mass, dot, x_y) = {
            let x = src.unwrap_or(&*dst);
            let mut m = simd.splat_f32s(f32::NEG_INFINITY);
            for c in 0..classes {
                m = simd.max_f32s(m, load_n(simd, x, base + c * inner, width));
            }
            let m = lanes_of(simd, m);
            let mut o = [0.0f32; MAX_LANES];
            for j in 0..MAX_LANES {
                o[j] = origin(m[j]);
            }
            let ov = from_lanes(simd, &o);
            let mut sum = [0.0f64; MAX_LANES];
            let mut mass = [0.0f64; MAX_LANES];
            let mut dot = [0.0f64; MAX_LANES];
            let w = plan.weight;
            let mut c0 = 0;
            while c0 < classes {
                let end = (c0 + FOLD).min(classes);
                let mut acc = simd.splat_f32s(0.0);
                let mut am = simd.splat_f32s(0.0);
                let mut ad = simd.splat_f32s(0.0);
                for c in c0..end {
                    let v = load_n(simd, x, base + c * inner, width);
                    acc = simd.add_f32s(acc, exp_shifted(simd, simd.sub_f32s(v, ov)));
                    let wc = w.map_or(1.0, |w| w[c]);
                    if let Some(t) = probs {
                        let tv = load_n(simd, t, base + c * inner, width);
                        let tp = simd.mul_add_e_f32s(
                            tv,
                            simd.splat_f32s(smooth.keep),
                            simd.splat_f32s(smooth.spread),
                        );
                        let wt = simd.mul_f32s(simd.splat_f32s(wc), tp);
                        am = simd.add_f32s(am, wt);
                        // Relative to the max: see `weighted_sum`.
                        ad = simd.mul_add_e_f32s(wt, simd.sub_f32s(v, ov), ad);
                    } else if plan.smoothed() {
                        let d = simd.sub_f32s(v, ov);
                        ad = simd.mul_add_e_f32s(simd.splat_f32s(wc), d, ad);
                    }
                }
                let (acc, am, ad) = (lanes_of(simd, acc), lanes_of(simd, am), lanes_of(simd, ad));
                for j in 0..MAX_LANES {
                    sum[j] += f64::from(acc[j]);
                    mass[j] += f64::from(am[j]);
                    dot[j] += f64::from(ad[j]);
                }
                c0 = end;
            }
            let mut states = [LseState::EMPTY; MAX_LANES];
            let mut x_y = [0.0f32; MAX_LANES];
            for j in 0..width {
                states[j] = LseState {
                    max: m[j],
                    sum: sum[j],
                };
                if probs.is_none() {
                    x_y[j] = x[base + ys[j] * inner + j];
                }
            }
            (states, mass, dot, x_y)
        };
        let mut lse = [0.0f64; MAX_LANES];
        for j in 0..width {
            let r = states[j].stats();
            lse[j] = r.lse();
            losses[j] = match probs {
                Some(_) => Plan::prob_loss(r, mass[j], dot[j]) + plan.z_term(&r),
                None if valid[j] => plan.index_loss(r, x_y[j], ys[j], dot[j]) + plan.z_term(&r),
                None => 0.0,
            };
        }
        if !M::GRAD {
            return losses;
        }
        // Gradient: per-lane coefficients, one vector per class.
        let mut a = [0.0f32; MAX_LANES];
        let mut b = [0.0f32; MAX_LANES];
        let mut lse32 = [0.0f32; MAX_LANES];
        let mut s = [0.0f32; MAX_LANES];
        let mut fix = [0.0f32; MAX_LANES];
        let mut slow = [false; MAX_LANES];
        for j in 0..width {
            s[j] = scale.at(tile_first + j);
            slow[j] = !s[j].is_finite() || !valid[j];
            if slow[j] {
                continue;
            }
            lse32[j] = lse[j] as f32;
            if probs.is_some() {
                a[j] = plan.prob_coefficient(s[j], mass[j], lse[j]) as f32;
            } else {
                (a[j], b[j], fix[j]) = plan.index_coefficients(s[j], ys[j], lse[j]);
            }
        }
        let (av, bv, lv, sv) = (
            from_lanes(simd, &a),
            simd.neg_f32s(from_lanes(simd, &b)),
            from_lanes(simd, &lse32),
            simd.neg_f32s(from_lanes(simd, &s)),
        );
        // The slow lanes first, from the logits, before the vector pass overwrites them in place;
        // that pass then keeps those lanes as they are.
        let mut keep = [0.0f32; MAX_LANES];
        for j in (0..width).filter(|&j| slow[j]) {
            keep[j] = 1.0;
            if probs.is_none() && !valid[j] {
                for c in 0..classes {
                    dst[base + j + c * inner] = 0.0;
                }
            } else {
                let y = if probs.is_none() { Some(ys[j]) } else { None };
                let at = Strided::column(base + j, inner, classes);
                let z = plan.z_coef(s[j], lse[j]);
                plan.slow_position(src, dst, probs, at, lse[j], s[j], y, mass[j], z);
            }
        }
        let any_slow = slow[..width].contains(&true);
        let keep = simd.greater_than_f32s(from_lanes(simd, &keep), simd.splat_f32s(0.0));
        for c in 0..classes {
            let off = base + c * inner;
            let v = match src {
                Some(x) => load_n(simd, x, off, width),
                None => load_n(simd, dst, off, width),
            };
            let ap = simd.mul_f32s(av, exp_shifted(simd, simd.sub_f32s(v, lv)));
            let wc = simd.splat_f32s(plan.class_weight(c));
            let g = if let Some(t) = probs {
                let tv = load_n(simd, t, off, width);
                let tp = simd.mul_add_e_f32s(
                    tv,
                    simd.splat_f32s(smooth.keep),
                    simd.splat_f32s(smooth.spread),
                );
                simd.mul_add_e_f32s(simd.mul_f32s(sv, wc), tp, ap)
            } else if plan.smoothed() {
                simd.mul_add_e_f32s(bv, wc, ap)
            } else {
                ap
            };
            let g = if any_slow {
                let done = match src {
                    Some(_) => load_n(simd, dst, off, width),
                    None => v,
                };
                simd.select_f32s_m32s(keep, done, g)
            } else {
                g
            };
            store_n(simd, dst, off, width, g);
        }
        for j in 0..width {
            if !slow[j] && probs.is_none() {
                dst[base + j + ys[j] * inner] -= fix[j];
            }
        }
        losses
    }
}

/// Where a tile sits: its flat offset in the unit's span, the unit's first logit and span length,
/// its first position and its width.
#[derive(Clone, Copy)]
struct TileAt {
    base: usize,
    logits_start: usize,
    span_len: usize,
    first: usize,
    width: usize,
}

/// Copies `width` rows of `classes` logits starting at row `r0` of `x` into the class-major tile
/// (`xt[c][j]` = row `j`'s class `c`), unrolled for each `C` up to 16.
#[inline(always)]
fn transpose_in<const K: usize>(
    x: &[f32],
    r0: usize,
    classes: usize,
    width: usize,
    xt: &mut [[f32; TILE]; K],
) {
    macro_rules! fixed {
        ($($c:literal)*) => {
            match classes {
                $($c if $c <= K => transpose_in_n::<$c, K>(&x[r0 * $c..(r0 + width) * $c], xt),)*
                _ => {
                    let rows = &x[r0 * classes..(r0 + width) * classes];
                    for (j, row) in rows.chunks_exact(classes).enumerate() {
                        for (c, &v) in row.iter().enumerate() {
                            xt[c][j] = v;
                        }
                    }
                }
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

#[inline(always)]
fn transpose_in_n<const C: usize, const K: usize>(rows: &[f32], xt: &mut [[f32; TILE]; K]) {
    for (j, row) in rows.chunks_exact(C).take(TILE).enumerate() {
        for c in 0..C {
            xt[c][j] = row[c];
        }
    }
}

/// Writes the class-major gradient tile back as `width` rows at row `r0` of `dst`, skipping the
/// rows marked `slow` (already written).
#[inline(always)]
fn transpose_out<const K: usize>(
    et: &[[f32; TILE]; K],
    r0: usize,
    classes: usize,
    width: usize,
    dst: &mut [f32],
    slow: Option<&[bool; TILE]>,
) {
    macro_rules! fixed {
        ($($c:literal)*) => {
            match classes {
                $($c if $c <= K => transpose_out_n::<$c, K>(et, &mut dst[r0 * $c..(r0 + width) * $c], slow),)*
                _ => {
                    let rows = &mut dst[r0 * classes..(r0 + width) * classes];
                    for (j, row) in rows.chunks_exact_mut(classes).enumerate() {
                        if slow.is_some_and(|s| s[j]) {
                            continue;
                        }
                        for (c, g) in row.iter_mut().enumerate() {
                            *g = et[c][j];
                        }
                    }
                }
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

#[inline(always)]
fn transpose_out_n<const C: usize, const K: usize>(
    et: &[[f32; TILE]; K],
    rows: &mut [f32],
    slow: Option<&[bool; TILE]>,
) {
    for (j, row) in rows.chunks_exact_mut(C).take(TILE).enumerate() {
        if slow.is_some_and(|s| s[j]) {
            continue;
        }
        for c in 0..C {
            row[c] = et[c][j];
        }
    }
}

/// The targets of a group's rows as floats in `yf` (−1 where ignored, and in the lanes past
/// `targets.len()`), without a branch per row: validated targets are class indices below
/// 2^24 (exact in `f32`) or the ignore index.
#[inline(always)]
fn target_lanes(targets: &[i64], ignore_index: i64, yf: &mut [f32; TILE]) {
    #[inline(always)]
    fn one(t: i64, ignore_index: i64) -> f32 {
        if t == ignore_index {
            -1.0
        } else {
            t as i32 as f32
        }
    }
    if let Ok(all) = <&[i64; TILE]>::try_from(targets) {
        for (y, &t) in yf.iter_mut().zip(all) {
            *y = one(t, ignore_index);
        }
    } else {
        for (y, &t) in yf.iter_mut().zip(targets) {
            *y = one(t, ignore_index);
        }
    }
}

/// Whether `S` is pulp's AVX2 + FMA instruction set (whose dispatch checked the CPU).
#[inline(always)]
fn is_avx2<S: Simd>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        core::any::TypeId::of::<S>() == core::any::TypeId::of::<pulp::x86::V3>()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`transpose_in`] of a full group (`width` a multiple of 8) of `2 ≤ classes ≤ 8` with the
/// AVX2 shuffles of [`super::x86`]. Only where [`is_avx2`] holds.
#[inline(always)]
fn shuffle_in<const K: usize>(
    x: &[f32],
    r0: usize,
    classes: usize,
    width: usize,
    xt: &mut [[f32; TILE]; K],
) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! fixed {
            ($($c:literal)*) => {
                match classes {
                    $($c if $c <= K => {
                        let rows = &x[r0 * $c..(r0 + width) * $c];
                        for (b, block) in rows.chunks_exact(8 * $c).enumerate() {
                            // SAFETY: called only where `S` is V3, whose dispatch verified AVX2
                            // at run time (`is_avx2`).
                            unsafe { super::x86::rows_to_classes::<$c, TILE, K>(block, xt, 8 * b) };
                        }
                    })*
                    _ => transpose_in(x, r0, classes, width, xt),
                }
            };
        }
        fixed!(2 3 4 5 6 7 8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    transpose_in(x, r0, classes, width, xt)
}

/// [`transpose_out`] of a full group without slow rows, as [`shuffle_in`].
#[inline(always)]
fn shuffle_out<const K: usize>(
    et: &[[f32; TILE]; K],
    r0: usize,
    classes: usize,
    width: usize,
    dst: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! fixed {
            ($($c:literal)*) => {
                match classes {
                    $($c if $c <= K => {
                        let rows = &mut dst[r0 * $c..(r0 + width) * $c];
                        for (b, block) in rows.chunks_exact_mut(8 * $c).enumerate() {
                            // SAFETY: as in `shuffle_in`.
                            unsafe { super::x86::classes_to_rows::<$c, TILE, K>(et, 8 * b, block) };
                        }
                    })*
                    _ => transpose_out(et, r0, classes, width, dst, None),
                }
            };
        }
        fixed!(2 3 4 5 6 7 8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    transpose_out(et, r0, classes, width, dst, None)
}

/// A vector of rows after their passes: max, Σ exp(x − max), the target's logit and weight,
/// Σ w·(x − max) and the targets as floats (−1 where ignored).
struct LaneRows<S: Simd> {
    max: S::f32s,
    sum: S::f32s,
    x_target: S::f32s,
    w_target: S::f32s,
    weighted: S::f32s,
    target: S::f32s,
}

/// What [`lane_epilogue`] gives: the losses (0 where ignored) and, with a scale, the gradient
/// coefficients `g = a·e − b·w[c] − fix·[c = y]` of the stored `e = exp(x − max)` (`a` includes
/// `1 / Σ exp`, NaN for a row without LSE, as the reference).
struct LaneOut<S: Simd> {
    loss: S::f32s,
    a: S::f32s,
    b: S::f32s,
    fix: S::f32s,
}

/// The epilogue of a vector of rows, lane-wise, from loss-core's formulas: one `ln`, the loss,
/// and (given the lanes' gradient scales) the gradient coefficients. A row whose classes are
/// all masked (max −∞) has no log-sum-exp.
#[inline(always)]
fn lane_epilogue<S: Simd>(
    simd: S,
    plan: &Plan<'_>,
    r: &LaneRows<S>,
    scale: Option<S::f32s>,
) -> LaneOut<S> {
    let zero = simd.splat_f32s(0.0);
    let ln = simd.select_f32s_m32s(
        simd.equal_f32s(r.max, simd.splat_f32s(f32::NEG_INFINITY)),
        simd.splat_f32s(f32::NAN),
        ln_sum(simd, r.sum),
    );
    let stats = RowStats {
        max: Lanes(simd, r.max),
        ln_sum: Lanes(simd, ln),
        x_target: Lanes(simd, r.x_target),
        weighted: Lanes(simd, r.weighted),
        mass: Lanes(simd, zero),
    };
    let wy = Lanes(simd, r.w_target);
    let valid = simd.greater_than_or_equal_f32s(r.target, zero);
    let ce = formula::index_loss(plan.scalars(), wy, &stats).1;
    // The z part `z′·LSE²` (Plan::with_denominators), when on.
    let z = plan.z_plain as f32;
    let lse = stats.lse().1;
    let ce = if plan.z_on() {
        simd.mul_add_e_f32s(simd.mul_f32s(simd.splat_f32s(z), lse), lse, ce)
    } else {
        ce
    };
    let loss = simd.select_f32s_m32s(valid, ce, zero);
    let Some(scale) = scale else {
        return LaneOut {
            loss,
            a: zero,
            b: zero,
            fix: zero,
        };
    };
    let k = formula::index_coefficients(plan.scalars(), Lanes(simd, scale), wy);
    // + s·2·z′·LSE (Plan::z_coef, in lanes).
    let ka = if plan.z_on() {
        simd.mul_add_e_f32s(simd.mul_f32s(scale, simd.splat_f32s(2.0 * z)), lse, k.a.1)
    } else {
        k.a.1
    };
    let factor = simd.select_f32s_m32s(
        simd.equal_f32s(lse, lse),
        simd.div_f32s(simd.splat_f32s(1.0), r.sum),
        simd.splat_f32s(f32::NAN),
    );
    LaneOut {
        loss,
        a: simd.mul_f32s(ka, factor),
        b: k.b.1,
        fix: k.fix.1,
    }
}

/// The losses summed in `f32` lanes, added in `f64` in vector then lane order (the unit's
/// partial of the lanes paths).
#[inline(always)]
fn lanes_total<S: Simd>(simd: S, acc: &[S::f32s]) -> f64 {
    let mut total = 0.0f64;
    for &a in acc {
        for l in &lanes_of(simd, a)[..S::F32_LANES] {
            total += f64::from(*l);
        }
    }
    total
}

/// The gradient of unit row `r` (index target `y`, as a lane float) with a non-finite scale, in
/// `f64` through [`Plan::slow_position`], from the row's max and `Σ exp(x − max)`; `src = None`
/// reads the logits from `dst` (in place: called before the row is written).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn slow_index_row(
    plan: &Plan<'_>,
    src: Option<&[f32]>,
    dst: &mut [f32],
    r: usize,
    max: f32,
    sum: f32,
    scale: f32,
    y: f32,
) {
    let classes = plan.layout.classes;
    let span = r * classes..(r + 1) * classes;
    let lse = LseState {
        max,
        sum: f64::from(sum),
    }
    .log_sum_exp();
    plan.slow_position(
        src.map(|x| &x[span.clone()]),
        &mut dst[span],
        None,
        Strided::row(classes),
        lse,
        scale,
        Some(y as usize),
        0.0,
        plan.z_coef(scale, lse),
    );
}
