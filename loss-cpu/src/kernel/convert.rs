//! Widening `bf16`/`f16` to `f32` and narrowing back (round to nearest even), eight lanes at a
//! time: AVX2 (`bf16`: zero-extend and shift, the top half of an `f32`; rounding by the
//! `+0x7fff + lsb` trick) and F16C (`vcvtph2ps` / `vcvtps2ph`) when the CPU has them, the
//! [`half`](loss_core::bf16) crate's conversions otherwise. Both give the same bits but for NaN
//! payloads: widening is exact, and narrowing rounds once to nearest even; a NaN stays a NaN.

use loss_core::{Elems, ElemsMut, bf16, f16};

/// Widens `src` into `dst` (same length).
///
/// # Panics
/// When the lengths differ.
pub fn widen(src: Elems<'_>, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: lengths differ");
    match src {
        Elems::F32(x) => dst.copy_from_slice(x),
        Elems::Bf16(x) => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked above).
                unsafe { x86::widen_bf16(x, dst) };
                return;
            }
            for (o, v) in dst.iter_mut().zip(x) {
                *o = v.to_f32();
            }
        }
        Elems::F16(x) => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx")
            {
                // SAFETY: F16C and AVX are present (checked above).
                unsafe { x86::widen_f16(x, dst) };
                return;
            }
            for (o, v) in dst.iter_mut().zip(x) {
                *o = v.to_f32();
            }
        }
    }
}

/// Narrows `src` into `dst` (same length), rounding each value once to nearest even.
///
/// # Panics
/// When the lengths differ.
pub fn narrow(src: &[f32], dst: ElemsMut<'_>) {
    assert_eq!(src.len(), dst.len(), "narrow: lengths differ");
    match dst {
        ElemsMut::F32(d) => d.copy_from_slice(src),
        ElemsMut::Bf16(d) => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present (checked above).
                unsafe { x86::narrow_bf16(src, d) };
                return;
            }
            for (o, &v) in d.iter_mut().zip(src) {
                *o = bf16::from_f32(v);
            }
        }
        ElemsMut::F16(d) => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("avx")
            {
                // SAFETY: F16C and AVX are present (checked above).
                unsafe { x86::narrow_f16(src, d) };
                return;
            }
            for (o, &v) in d.iter_mut().zip(src) {
                *o = f16::from_f32(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{
        __m128i, __m256i, _mm_loadu_si128, _mm_storeu_si128, _mm256_add_epi32, _mm256_and_si256,
        _mm256_blendv_epi8, _mm256_castps_si256, _mm256_castsi256_ps, _mm256_castsi256_si128,
        _mm256_cmp_ps, _mm256_cvtepu16_epi32, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_loadu_ps,
        _mm256_or_si256, _mm256_packus_epi32, _mm256_permute4x64_epi64, _mm256_set1_epi32,
        _mm256_slli_epi32, _mm256_srli_epi32, _mm256_storeu_ps,
    };

    use loss_core::{bf16, f16};

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 ≤ n ≤ len` for both slices; unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
            }
        }
        for i in n..src.len() {
            dst[i] = src[i].to_f32();
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
        let n = src.len() / 8 * 8;
        let round = _mm256_set1_epi32(0x7fff);
        let one = _mm256_set1_epi32(1);
        let quiet = _mm256_set1_epi32(0x0040_0000);
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 ≤ n ≤ len` for both slices; unaligned loads and stores.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let bits = _mm256_castps_si256(v);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), one);
                let rounded = _mm256_add_epi32(bits, _mm256_add_epi32(round, lsb));
                // NaN: no rounding (it could carry into the exponent), made quiet.
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<3>(v, v));
                let kept = _mm256_or_si256(bits, quiet);
                let r = _mm256_srli_epi32::<16>(_mm256_blendv_epi8(rounded, kept, nan));
                // 8 × u32 (< 2^16) → 8 × u16: pack within 128-bit halves, then order the halves.
                let packed = _mm256_packus_epi32(r, r);
                let ordered: __m256i = _mm256_permute4x64_epi64::<0b1000>(packed);
                _mm_storeu_si128(
                    dst.as_mut_ptr().add(i).cast::<__m128i>(),
                    _mm256_castsi256_si128(ordered),
                );
            }
        }
        for i in n..src.len() {
            dst[i] = bf16::from_f32(src[i]);
        }
    }

    /// # Safety
    /// The CPU must have F16C and AVX.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 ≤ n ≤ len` for both slices; unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in n..src.len() {
            dst[i] = src[i].to_f32();
        }
    }

    /// # Safety
    /// The CPU must have F16C and AVX.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: `i + 8 ≤ n ≤ len` for both slices; unaligned loads and stores.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                // Round to nearest even (imm 0), exceptions not raised.
                let h = _mm256_cvtps_ph::<0>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
            }
        }
        for i in n..src.len() {
            dst[i] = f16::from_f32(src[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_scalar_conversions_agree_bit_for_bit() {
        // Every bf16 bit pattern, and ties, NaNs, infinities and subnormals for narrowing.
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let mut wide = vec![0.0f32; all.len()];
        widen(Elems::Bf16(&all), &mut wide);
        for (w, h) in wide.iter().zip(&all) {
            // (A NaN stays NaN; `half` also sets its quiet bit, the shift keeps the payload.)
            if h.is_nan() {
                assert!(w.is_nan());
            } else {
                assert_eq!(w.to_bits(), h.to_f32().to_bits());
            }
        }
        let mut probe: Vec<f32> = (0..200_000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
            .collect();
        probe.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::MIN_POSITIVE / 3.0,
            65520.0,
            -0.0,
        ]);
        let mut b = vec![bf16::ZERO; probe.len()];
        narrow(&probe, ElemsMut::Bf16(&mut b));
        for (v, h) in probe.iter().zip(&b) {
            let want = bf16::from_f32(*v);
            if v.is_nan() {
                assert!(h.is_nan());
            } else {
                assert_eq!(h.to_bits(), want.to_bits(), "{v:e}");
            }
        }
        let mut f = vec![f16::ZERO; probe.len()];
        narrow(&probe, ElemsMut::F16(&mut f));
        for (v, h) in probe.iter().zip(&f) {
            let want = f16::from_f32(*v);
            if v.is_nan() {
                assert!(h.is_nan());
            } else {
                assert_eq!(h.to_bits(), want.to_bits(), "{v:e}");
            }
        }
        let all16: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut wide = vec![0.0f32; all16.len()];
        widen(Elems::F16(&all16), &mut wide);
        for (w, h) in wide.iter().zip(&all16) {
            if h.is_nan() {
                assert!(w.is_nan());
            } else {
                assert_eq!(w.to_bits(), h.to_f32().to_bits());
            }
        }
    }
}
