//! The forward pass over half logits (`bf16`, `f16`) of contiguous rows with index targets,
//! widened in L1: each [`CHUNK`] of a row is widened into a stack buffer (AVX2/F16C, from L1:
//! the chunk was prefetched while the previous one computed), then the plain kernels' chunk
//! loops run on it — the max, `Σ exp(x − max)` while prefetching the next chunk *of the half
//! input*, and with smoothing `Σ w·(x − max)` — so memory streams half the bytes of an `f32`
//! row while the `exp`s compute, as it does for `f32`. The row's loss is loss-core's formula in
//! `f64`.

use loss_core::Elems;
use loss_core::formula;
use pulp::{Simd, WithSimd};

use super::simd::{chunk_max, chunk_sum_exp, weighted_sum};
use super::{CHUNK, LseState, Plan, Tgt, convert, origin};

pub(super) struct HalfForwardOp<'p, 'a, 'l, 'o> {
    pub(super) plan: &'p Plan<'a>,
    pub(super) unit: usize,
    pub(super) logits: Elems<'l>,
    pub(super) losses: Option<&'o mut [f32]>,
}

impl WithSimd for HalfForwardOp<'_, '_, '_, '_> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f64 {
        let HalfForwardOp {
            plan,
            unit,
            logits,
            mut losses,
        } = self;
        let classes = plan.layout.classes;
        let positions = plan.unit_positions(unit);
        let Tgt::Indices(targets) = plan.target else {
            unreachable!("the half forward pass takes index targets")
        };
        let bytes = logits.bytes();
        let size = logits.dtype().size();
        let mut buf = [0.0f32; CHUNK];
        let mut total = 0.0f64;
        for (k, p) in positions.enumerate() {
            let Some(y) = formula::valid_class(targets[p], plan.ignore_index) else {
                if let Some(l) = losses.as_deref_mut() {
                    l[k] = 0.0;
                }
                continue;
            };
            let row = logits.slice(k * classes..(k + 1) * classes);
            let mut state = LseState::EMPTY;
            // Σ w·(x − o) and Σ w, relative to the running max's origin (smoothing only).
            let (mut wx, mut ws) = (0.0f64, 0.0f64);
            let mut start = 0;
            while start < classes {
                let end = (start + CHUNK).min(classes);
                let x = &mut buf[..end - start];
                convert::widen(row.slice(start..end), x);
                // The next chunk of the half input (or the next row's first), in bytes.
                let next = (k * classes + end).min(logits.len().saturating_sub(1));
                let ahead = bytes.as_ptr().wrapping_add(next * size).cast::<f32>();
                if let Some(shift) = state.raise_max(chunk_max(simd, x)) {
                    wx -= shift * ws;
                }
                let o = origin(state.max);
                if plan.smoothed() {
                    let (d, w) = weighted_sum(simd, x, plan.weight.map(|w| &w[start..end]), o);
                    wx += d;
                    ws += w;
                }
                // Half the bytes per logit: the prefetch covers the next two chunks.
                state.sum += f64::from(chunk_sum_exp(simd, x, o, ahead));
                start = end;
            }
            let r = state.stats();
            let loss = plan.index_loss(r, row.get(y), y, wx) + plan.z_term(&r);
            if let Some(l) = losses.as_deref_mut() {
                l[k] = loss as f32;
            }
            total += loss;
        }
        total
    }
}
