//! AVX2 shuffles that pulp's portable layer lacks: moving 8 rows of `C ≤ 8` classes between row
//! order (as they lie in memory) and class order (one vector per class, one row per lane) in
//! registers. The tile the portable code uses instead is written with scalar stores and read back
//! as vectors, which waits on store-to-load forwarding (it cannot merge 8 stores into one load).
//!
//! The permutations are tables computed at compile time per `C`: class `c` of 8 rows gathers,
//! from each of the `C` row-order vectors `k`, the lanes `j` whose element `j·C + c` falls in
//! vector `k`, by one `vpermps` and one `vblendvps` per contributing `(c, k)`.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::{
    __m256, _mm256_blendv_ps, _mm256_castsi256_ps, _mm256_loadu_ps, _mm256_loadu_si256,
    _mm256_permutevar8x32_ps, _mm256_setzero_ps, _mm256_storeu_ps,
};

/// Permutation indices and blend masks of one direction of the transposition for `C` classes:
/// `idx[a][b]` and `mask[a][b]` (lane masks: −1 where the lane comes from `b`).
struct Tables<const C: usize> {
    idx: [[[i32; 8]; C]; C],
    mask: [[[i32; 8]; C]; C],
    used: [[bool; C]; C],
}

/// Rows to classes: output class `c`, lane `j` is element `j·C + c` of the 8 rows; from input
/// vector `k` it is lane `j·C + c − 8k`.
const fn to_classes<const C: usize>() -> Tables<C> {
    let mut t = Tables {
        idx: [[[0; 8]; C]; C],
        mask: [[[0; 8]; C]; C],
        used: [[false; C]; C],
    };
    let mut c = 0;
    while c < C {
        let mut j = 0;
        while j < 8 {
            let e = j * C + c;
            let k = e / 8;
            t.idx[c][k][j] = (e % 8) as i32;
            t.mask[c][k][j] = -1;
            t.used[c][k] = true;
            j += 1;
        }
        c += 1;
    }
    t
}

/// Classes to rows: output row vector `k`, lane `l` is element `8k + l`, which is class
/// `(8k + l) % C` of row `(8k + l) / C`: lane `(8k + l) / C` of class vector `(8k + l) % C`.
const fn to_rows<const C: usize>() -> Tables<C> {
    let mut t = Tables {
        idx: [[[0; 8]; C]; C],
        mask: [[[0; 8]; C]; C],
        used: [[false; C]; C],
    };
    let mut k = 0;
    while k < C {
        let mut l = 0;
        while l < 8 {
            let e = 8 * k + l;
            let c = e % C;
            t.idx[k][c][l] = (e / C) as i32;
            t.mask[k][c][l] = -1;
            t.used[k][c] = true;
            l += 1;
        }
        k += 1;
    }
    t
}

struct Table<const C: usize>;

impl<const C: usize> Table<C> {
    const CLASSES: Tables<C> = to_classes::<C>();
    const ROWS: Tables<C> = to_rows::<C>();
}

/// Applies one direction's tables: `out[a] = blend over b of permute(input[b])`.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `a` and `b` index the three tables in lockstep
unsafe fn apply<const C: usize>(t: &Tables<C>, input: &[__m256; C], out: &mut [__m256; C]) {
    for a in 0..C {
        // SAFETY: AVX2 is available (the caller's contract); the tables are 8 i32 each.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for b in 0..C {
                if t.used[a][b] {
                    let idx = _mm256_loadu_si256(t.idx[a][b].as_ptr().cast());
                    let mask =
                        _mm256_castsi256_ps(_mm256_loadu_si256(t.mask[a][b].as_ptr().cast()));
                    acc = _mm256_blendv_ps(acc, _mm256_permutevar8x32_ps(input[b], idx), mask);
                }
            }
            out[a] = acc;
        }
    }
}

/// Loads 8 rows of `C` classes from `rows` (`8·C` values in row order) and writes class `c` of
/// them into `tile[c][at..at + 8]`.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn rows_to_classes<const C: usize, const N: usize, const K: usize>(
    rows: &[f32],
    tile: &mut [[f32; N]; K],
    at: usize,
) {
    assert!(rows.len() >= 8 * C && C <= K && at + 8 <= N);
    // SAFETY: AVX2 is available (the caller's contract), and every load reads 8 values inside
    // `rows` (asserted), every store writes the first 8 values of a tile row of at least 8.
    unsafe {
        let mut input = [_mm256_setzero_ps(); C];
        for (k, v) in input.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(rows.as_ptr().add(8 * k));
        }
        let mut out = [_mm256_setzero_ps(); C];
        apply(&Table::<C>::CLASSES, &input, &mut out);
        for (c, v) in out.iter().enumerate() {
            _mm256_storeu_ps(tile[c].as_mut_ptr().add(at), *v);
        }
    }
}

/// The inverse: reads class `c` of 8 rows from `tile[c][at..at + 8]` and writes the 8 rows of
/// `C` values into `rows` in row order.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn classes_to_rows<const C: usize, const N: usize, const K: usize>(
    tile: &[[f32; N]; K],
    at: usize,
    rows: &mut [f32],
) {
    assert!(rows.len() >= 8 * C && C <= K && at + 8 <= N);
    // SAFETY: as in `rows_to_classes`.
    unsafe {
        let mut input = [_mm256_setzero_ps(); C];
        for (c, v) in input.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(tile[c].as_ptr().add(at));
        }
        let mut out = [_mm256_setzero_ps(); C];
        apply(&Table::<C>::ROWS, &input, &mut out);
        for (k, v) in out.iter().enumerate() {
            _mm256_storeu_ps(rows.as_mut_ptr().add(8 * k), *v);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn round_trip<const C: usize>() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let rows: Vec<f32> = (0..8 * C).map(|i| i as f32).collect();
        let mut tile = [[0.0f32; 16]; 8];
        // SAFETY: AVX2 was just detected.
        unsafe { rows_to_classes::<C, 16, 8>(&rows, &mut tile, 8) };
        for (c, class) in tile.iter().enumerate().take(C) {
            for j in 0..8 {
                assert_eq!(
                    class[8 + j],
                    (j * C + c) as f32,
                    "C = {C}, class {c}, row {j}"
                );
            }
        }
        let mut back = vec![0.0f32; 8 * C];
        // SAFETY: as above.
        unsafe { classes_to_rows::<C, 16, 8>(&tile, 8, &mut back) };
        assert_eq!(back, rows, "C = {C}");
    }

    #[test]
    fn every_width_round_trips() {
        round_trip::<1>();
        round_trip::<2>();
        round_trip::<3>();
        round_trip::<4>();
        round_trip::<5>();
        round_trip::<6>();
        round_trip::<7>();
        round_trip::<8>();
    }
}
