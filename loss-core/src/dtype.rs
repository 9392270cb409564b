//! Element types of the logits (and of probability targets and gradients): `f32`, `bf16`, `f16`.
//!
//! The half types are the [`half`] crate's. Every computation widens them to at least `f32`
//! (widening is exact); a gradient written in a half type is rounded once, to nearest even, from
//! the backend's `f32` (or the reference's `f64`) value.

use std::ops::Range;

pub use half::{bf16, f16};

/// The element type of a tensor of logits, probability targets or gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum DType {
    /// IEEE single precision.
    #[default]
    F32,
    /// bfloat16: the top half of an `f32` (8 exponent bits, 7 mantissa bits).
    Bf16,
    /// IEEE half precision (5 exponent bits, 10 mantissa bits).
    F16,
}

impl DType {
    /// Every element type, in a fixed order.
    pub const ALL: [DType; 3] = [DType::F32, DType::Bf16, DType::F16];

    /// The short name: `f32`, `bf16`, `f16` (flags, reports).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// PyTorch's name: `float32`, `bfloat16`, `float16` (vector files).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::Bf16 => "bfloat16",
            DType::F16 => "float16",
        }
    }

    /// Parses either name.
    pub fn parse(name: &str) -> Option<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.as_str() == name || d.torch_name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }

    /// Whether this is a half type.
    pub fn is_half(self) -> bool {
        self != DType::F32
    }

    /// `v` rounded to this type (to nearest even), read back as `f32`.
    pub fn round(self, v: f32) -> f32 {
        match self {
            DType::F32 => v,
            DType::Bf16 => bf16::from_f32(v).to_f32(),
            DType::F16 => f16::from_f32(v).to_f32(),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An element type the library takes: `f32`, [`bf16`] or [`f16`](struct@f16). Sealed.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// Its [`DType`].
    const DTYPE: DType;
    /// Widens (exactly).
    fn to_f32(self) -> f32;
    /// Rounds to nearest even.
    fn from_f32(v: f32) -> Self;
    /// Rounds to nearest even, once.
    fn from_f64(v: f64) -> Self;
    /// A slice of these as [`Elems`].
    fn elems(s: &[Self]) -> Elems<'_>;
    /// A mutable slice of these as [`ElemsMut`].
    fn elems_mut(s: &mut [Self]) -> ElemsMut<'_>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::bf16 {}
    impl Sealed for super::f16 {}
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn elems(s: &[Self]) -> Elems<'_> {
        Elems::F32(s)
    }
    fn elems_mut(s: &mut [Self]) -> ElemsMut<'_> {
        ElemsMut::F32(s)
    }
}

macro_rules! half_element {
    ($t:ident, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline(always)]
            fn to_f32(self) -> f32 {
                $t::to_f32(self)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $t::from_f32(v)
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                $t::from_f64(v)
            }
            fn elems(s: &[Self]) -> Elems<'_> {
                Elems::$d(s)
            }
            fn elems_mut(s: &mut [Self]) -> ElemsMut<'_> {
                ElemsMut::$d(s)
            }
        }
    };
}
half_element!(bf16, Bf16);
half_element!(f16, F16);

/// Borrowed elements of one of the [`DType`]s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elems<'a> {
    /// `f32` values.
    F32(&'a [f32]),
    /// `bf16` values.
    Bf16(&'a [bf16]),
    /// `f16` values.
    F16(&'a [f16]),
}

/// Runs `$body` with `$s` bound to the slice inside any variant of an [`Elems`]-like enum.
macro_rules! each_dtype {
    ($e:expr, $s:ident => $body:expr) => {
        match $e {
            Elems::F32($s) => $body,
            Elems::Bf16($s) => $body,
            Elems::F16($s) => $body,
        }
    };
}

impl<'a> Elems<'a> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Elems::F32(_) => DType::F32,
            Elems::Bf16(_) => DType::Bf16,
            Elems::F16(_) => DType::F16,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        each_dtype!(self, s => s.len())
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i`, widened.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        each_dtype!(self, s => s[i].to_f32())
    }
    /// The `f32` slice, when the type is `f32`.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match *self {
            Elems::F32(s) => Some(s),
            _ => None,
        }
    }
    /// A sub-range.
    pub fn slice(&self, range: Range<usize>) -> Elems<'a> {
        match *self {
            Elems::F32(s) => Elems::F32(&s[range]),
            Elems::Bf16(s) => Elems::Bf16(&s[range]),
            Elems::F16(s) => Elems::F16(&s[range]),
        }
    }
    /// Widens every element into `out` (same length).
    ///
    /// # Panics
    /// When the lengths differ.
    pub fn widen_into(&self, out: &mut [f32]) {
        assert_eq!(self.len(), out.len(), "widen_into: lengths differ");
        match *self {
            Elems::F32(s) => out.copy_from_slice(s),
            Elems::Bf16(s) => {
                for (o, v) in out.iter_mut().zip(s) {
                    *o = v.to_f32();
                }
            }
            Elems::F16(s) => {
                use half::slice::HalfFloatSliceExt;
                s.convert_to_f32_slice(out);
            }
        }
    }
    /// Every element widened, in a new vector.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.widen_into(&mut v);
        v
    }
    /// Every element widened to `f64`.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        each_dtype!(self, s => s.iter().map(|v| f64::from(v.to_f32())).collect())
    }
    /// An owned copy.
    pub fn to_owned_elems(&self) -> OwnedElems {
        match *self {
            Elems::F32(s) => OwnedElems::F32(s.to_vec()),
            Elems::Bf16(s) => OwnedElems::Bf16(s.to_vec()),
            Elems::F16(s) => OwnedElems::F16(s.to_vec()),
        }
    }
    /// The raw bytes (little-endian elements), e.g. for a device upload.
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            Elems::F32(s) => bytemuck::cast_slice(s),
            Elems::Bf16(s) => bytemuck::cast_slice(s),
            Elems::F16(s) => bytemuck::cast_slice(s),
        }
    }
}

impl<'a> From<&'a [f32]> for Elems<'a> {
    fn from(s: &'a [f32]) -> Self {
        Elems::F32(s)
    }
}
impl<'a> From<&'a Vec<f32>> for Elems<'a> {
    fn from(s: &'a Vec<f32>) -> Self {
        Elems::F32(s)
    }
}
impl<'a, const N: usize> From<&'a [f32; N]> for Elems<'a> {
    fn from(s: &'a [f32; N]) -> Self {
        Elems::F32(s)
    }
}
impl<'a> From<&'a Vec<bf16>> for Elems<'a> {
    fn from(s: &'a Vec<bf16>) -> Self {
        Elems::Bf16(s)
    }
}
impl<'a> From<&'a Vec<f16>> for Elems<'a> {
    fn from(s: &'a Vec<f16>) -> Self {
        Elems::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for Elems<'a> {
    fn from(s: &'a [bf16]) -> Self {
        Elems::Bf16(s)
    }
}
impl<'a> From<&'a [f16]> for Elems<'a> {
    fn from(s: &'a [f16]) -> Self {
        Elems::F16(s)
    }
}

/// A mutable buffer of one of the [`DType`]s (where a gradient is written).
#[derive(Debug, PartialEq)]
pub enum ElemsMut<'a> {
    /// `f32` values.
    F32(&'a mut [f32]),
    /// `bf16` values.
    Bf16(&'a mut [bf16]),
    /// `f16` values.
    F16(&'a mut [f16]),
}

impl<'a> ElemsMut<'a> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            ElemsMut::F32(_) => DType::F32,
            ElemsMut::Bf16(_) => DType::Bf16,
            ElemsMut::F16(_) => DType::F16,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ElemsMut::F32(s) => s.len(),
            ElemsMut::Bf16(s) => s.len(),
            ElemsMut::F16(s) => s.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A shorter-lived reborrow.
    pub fn reborrow(&mut self) -> ElemsMut<'_> {
        match self {
            ElemsMut::F32(s) => ElemsMut::F32(s),
            ElemsMut::Bf16(s) => ElemsMut::Bf16(s),
            ElemsMut::F16(s) => ElemsMut::F16(s),
        }
    }
    /// A mutable sub-range.
    pub fn slice_mut(&mut self, range: Range<usize>) -> ElemsMut<'_> {
        match self {
            ElemsMut::F32(s) => ElemsMut::F32(&mut s[range]),
            ElemsMut::Bf16(s) => ElemsMut::Bf16(&mut s[range]),
            ElemsMut::F16(s) => ElemsMut::F16(&mut s[range]),
        }
    }
    /// Splits into `[0, mid)` and `[mid, len)`.
    pub fn split_at_mut(self, mid: usize) -> (ElemsMut<'a>, ElemsMut<'a>) {
        match self {
            ElemsMut::F32(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ElemsMut::F32(a), ElemsMut::F32(b))
            }
            ElemsMut::Bf16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ElemsMut::Bf16(a), ElemsMut::Bf16(b))
            }
            ElemsMut::F16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (ElemsMut::F16(a), ElemsMut::F16(b))
            }
        }
    }
    /// The `f32` slice, when the type is `f32`.
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            ElemsMut::F32(s) => Some(s),
            _ => None,
        }
    }
    /// Writes `v` rounded (once, to nearest even) at `i`.
    #[inline]
    pub fn set_f64(&mut self, i: usize, v: f64) {
        match self {
            ElemsMut::F32(s) => s[i] = v as f32,
            ElemsMut::Bf16(s) => s[i] = bf16::from_f64(v),
            ElemsMut::F16(s) => s[i] = f16::from_f64(v),
        }
    }
    /// Writes `src` rounded to this type (same length).
    ///
    /// # Panics
    /// When the lengths differ.
    pub fn narrow_from(&mut self, src: &[f32]) {
        assert_eq!(self.len(), src.len(), "narrow_from: lengths differ");
        match self {
            ElemsMut::F32(s) => s.copy_from_slice(src),
            ElemsMut::Bf16(s) => {
                use half::slice::HalfFloatSliceExt;
                s.convert_from_f32_slice(src);
            }
            ElemsMut::F16(s) => {
                use half::slice::HalfFloatSliceExt;
                s.convert_from_f32_slice(src);
            }
        }
    }
    /// Copies `src` in: bit for bit when the types match, else each element widened and rounded
    /// once to this buffer's type.
    ///
    /// # Panics
    /// When the lengths differ.
    pub fn copy_from(&mut self, src: Elems<'_>) {
        assert_eq!(self.len(), src.len(), "copy_from: lengths differ");
        match (self, src) {
            (ElemsMut::F32(d), Elems::F32(s)) => d.copy_from_slice(s),
            (ElemsMut::Bf16(d), Elems::Bf16(s)) => d.copy_from_slice(s),
            (ElemsMut::F16(d), Elems::F16(s)) => d.copy_from_slice(s),
            (d, s) => d.narrow_from(&s.to_f32_vec()),
        }
    }
    /// Element `i`, widened.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            ElemsMut::F32(s) => s[i],
            ElemsMut::Bf16(s) => s[i].to_f32(),
            ElemsMut::F16(s) => s[i].to_f32(),
        }
    }
}

impl<'a> From<&'a mut [f32]> for ElemsMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        ElemsMut::F32(s)
    }
}
impl<'a> From<&'a mut Vec<bf16>> for ElemsMut<'a> {
    fn from(s: &'a mut Vec<bf16>) -> Self {
        ElemsMut::Bf16(s)
    }
}
impl<'a> From<&'a mut Vec<f16>> for ElemsMut<'a> {
    fn from(s: &'a mut Vec<f16>) -> Self {
        ElemsMut::F16(s)
    }
}
impl<'a> From<&'a mut Vec<f32>> for ElemsMut<'a> {
    fn from(s: &'a mut Vec<f32>) -> Self {
        ElemsMut::F32(s)
    }
}

/// Owned elements of one of the [`DType`]s.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedElems {
    /// `f32` values.
    F32(Vec<f32>),
    /// `bf16` values.
    Bf16(Vec<bf16>),
    /// `f16` values.
    F16(Vec<f16>),
}

impl OwnedElems {
    /// The elements of `dtype` whose little-endian bytes are `bytes`; `None` when the byte
    /// count is not a whole number of elements.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return None;
        }
        let words = |n: usize| bytes.chunks_exact(n);
        Some(match dtype {
            DType::F32 => OwnedElems::F32(
                words(4)
                    .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                    .collect(),
            ),
            DType::Bf16 => OwnedElems::Bf16(
                words(2)
                    .map(|w| bf16::from_bits(u16::from_le_bytes([w[0], w[1]])))
                    .collect(),
            ),
            DType::F16 => OwnedElems::F16(
                words(2)
                    .map(|w| f16::from_bits(u16::from_le_bytes([w[0], w[1]])))
                    .collect(),
            ),
        })
    }

    /// `values` rounded to `dtype` (exact when they are representable in it).
    pub fn from_f32(dtype: DType, values: &[f32]) -> Self {
        match dtype {
            DType::F32 => OwnedElems::F32(values.to_vec()),
            DType::Bf16 => OwnedElems::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::F16 => OwnedElems::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
        }
    }
    /// `n` zeros of `dtype`.
    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => OwnedElems::F32(vec![0.0; n]),
            DType::Bf16 => OwnedElems::Bf16(vec![bf16::ZERO; n]),
            DType::F16 => OwnedElems::F16(vec![f16::ZERO; n]),
        }
    }
    /// Borrowed.
    pub fn view(&self) -> Elems<'_> {
        match self {
            OwnedElems::F32(v) => Elems::F32(v),
            OwnedElems::Bf16(v) => Elems::Bf16(v),
            OwnedElems::F16(v) => Elems::F16(v),
        }
    }
    /// Mutably borrowed.
    pub fn view_mut(&mut self) -> ElemsMut<'_> {
        match self {
            OwnedElems::F32(v) => ElemsMut::F32(v),
            OwnedElems::Bf16(v) => ElemsMut::Bf16(v),
            OwnedElems::F16(v) => ElemsMut::F16(v),
        }
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.view().dtype()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.view().len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every element widened.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.view().to_f32_vec()
    }
    /// The `f32` values, when the type is `f32`.
    pub fn as_f32_mut(&mut self) -> Option<&mut Vec<f32>> {
        match self {
            OwnedElems::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl FromIterator<f32> for OwnedElems {
    fn from_iter<I: IntoIterator<Item = f32>>(iter: I) -> Self {
        OwnedElems::F32(iter.into_iter().collect())
    }
}

impl From<Vec<f32>> for OwnedElems {
    fn from(v: Vec<f32>) -> Self {
        OwnedElems::F32(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sizes_and_rounding() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.as_str()), Some(d));
            assert_eq!(DType::parse(d.torch_name()), Some(d));
        }
        assert_eq!(DType::parse("f64"), None);
        assert_eq!(DType::Bf16.size(), 2);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
        assert_eq!(DType::Bf16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(DType::F16.round(65520.0), f32::INFINITY);
        let o = OwnedElems::from_f32(DType::Bf16, &[1.5, -2.0, f32::NEG_INFINITY]);
        assert_eq!(o.to_f32_vec(), vec![1.5, -2.0, f32::NEG_INFINITY]);
        let mut g = OwnedElems::zeros(DType::F16, 2);
        g.view_mut().narrow_from(&[0.1, 3.0]);
        assert_eq!(g.view().get(1), 3.0);
        assert_eq!(g.view().get(0), f16::from_f32(0.1).to_f32());
    }
}
