//! One cell of a grid: its inputs, the rotated copies that keep consecutive calls out of the
//! cache, the reference answer, and the check of a backend's outputs against it.

use loss_core::conformance::Tolerance;
use serde::{Deserialize, Serialize};

use crate::bandwidth;
use crate::schema::Op;
use crate::workload::{self, ReferenceAnswer, Workload};
use loss_core::{DType, Elems, OwnedElems, Reduction};

/// What defines a cell's inputs: the same spec gives the same bits on every machine and in every
/// build, which is what lets two binaries (`ab`) or two runs be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// `N`.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// Class weights or none.
    pub weighted: bool,
    /// The reduction.
    #[serde(with = "reduction_name")]
    pub reduction: Reduction,
    /// Seed of the inputs.
    pub seed: u64,
    /// The logits' element type (absent: `f32`; the gradient is written in it too).
    #[serde(default, skip_serializing_if = "is_f32", with = "dtype_name")]
    pub dtype: DType,
    /// The z-loss coefficient (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z_loss: Option<Coef>,
    /// The logit soft-cap (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softcap: Option<Coef>,
    /// Position weights (absent: none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub position_weights: bool,
}

/// An option's coefficient, compared and hashed by its bits (so that a spec is `Eq`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Coef(pub f32);

impl PartialEq for Coef {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Coef {}
impl std::hash::Hash for Coef {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h);
    }
}

fn is_f32(d: &DType) -> bool {
    *d == DType::F32
}

mod dtype_name {
    use loss_core::DType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        DType::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("dtype {name:?}")))
    }
}

mod reduction_name {
    use loss_core::Reduction;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Reduction, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reduction, D::Error> {
        let name = String::deserialize(d)?;
        Reduction::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl CellSpec {
    /// A plain `f32` cell without extensions.
    pub fn plain(
        batch: usize,
        classes: usize,
        weighted: bool,
        reduction: Reduction,
        seed: u64,
    ) -> Self {
        CellSpec {
            batch,
            classes,
            weighted,
            reduction,
            seed,
            dtype: DType::F32,
            z_loss: None,
            softcap: None,
            position_weights: false,
        }
    }

    /// Bytes of logits (in their element type).
    pub fn bytes(&self) -> usize {
        self.batch * self.classes * self.dtype.size()
    }

    /// The extensions on, as a short label (`z1e-4+cap30+posw`), or `None`.
    pub fn extensions(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(z) = self.z_loss {
            parts.push(format!("z{}", z.0));
        }
        if let Some(a) = self.softcap {
            parts.push(format!("cap{}", a.0));
        }
        if self.position_weights {
            parts.push("posw".to_string());
        }
        (!parts.is_empty()).then(|| parts.join("+"))
    }

    /// How many copies of the logits calls rotate over: enough to fill 4× the last-level cache,
    /// at most 8.
    pub fn rotations(&self) -> usize {
        (4 * bandwidth::last_level_cache_bytes())
            .div_ceil(self.bytes().max(1))
            .clamp(1, 8)
    }

    /// Whether the rotated data fits in the last-level cache (forward touches the rotated
    /// logits; the other operations also write one gradient buffer).
    pub fn in_cache(&self) -> bool {
        let bytes = self.bytes().max(1);
        self.rotations() * bytes + bytes <= bandwidth::last_level_cache_bytes()
    }
}

/// One cell's shared state: inputs, rotated copies and (when computed) the reference answer.
pub struct Cell {
    /// What it is.
    pub spec: CellSpec,
    /// The inputs.
    pub workload: Workload,
    /// Extra copies of the logits, so consecutive calls read different memory.
    pub copies: Vec<OwnedElems>,
    /// The reference's answer, when asked for.
    pub answer: Option<ReferenceAnswer>,
    /// The upstream gradient.
    pub upstream: Vec<f32>,
    /// Whether the rotated data fits in the last-level cache.
    pub in_cache: bool,
    /// For half cells: `f32` buffers of the rotations' byte size, which the calibration kernel
    /// streams (it reads and writes `f32`; empty for `f32` cells, which stream the logits).
    calibration: Vec<Vec<f32>>,
}

impl Cell {
    /// Generates a cell's inputs, and its reference answer when `reference` is true (with the
    /// gradient when `with_grad`).
    pub fn new(spec: CellSpec, reference: bool, with_grad: bool) -> Self {
        let workload = Workload::generate(&spec);
        let upstream = workload.upstream();
        let answer = reference.then(|| workload::reference_answer(&workload, &upstream, with_grad));
        let copies = (1..spec.rotations())
            .map(|_| workload.logits.clone())
            .collect();
        let calibration = if spec.dtype.is_half() {
            let words = spec.bytes().div_ceil(4);
            (0..spec.rotations()).map(|_| vec![0.5f32; words]).collect()
        } else {
            Vec::new()
        };
        Cell {
            spec,
            workload,
            copies,
            answer,
            upstream,
            in_cache: spec.in_cache(),
            calibration,
        }
    }

    /// The logits of rotation `rep`.
    pub fn logits(&self, rep: usize) -> Elems<'_> {
        let k = rep % (self.copies.len() + 1);
        if k == 0 {
            self.workload.logits.view()
        } else {
            self.copies[k - 1].view()
        }
    }

    /// Every rotation of the logits, in rotation order.
    pub fn rotations(&self) -> Vec<Elems<'_>> {
        (0..=self.copies.len()).map(|k| self.logits(k)).collect()
    }

    /// What the calibration kernel streams: the rotations themselves (`f32` cells), or `f32`
    /// buffers of the same byte size (half cells).
    pub fn calibration_sources(&self) -> Vec<&[f32]> {
        if self.calibration.is_empty() {
            self.rotations()
                .into_iter()
                .map(|e| e.as_f32().unwrap_or_default())
                .collect()
        } else {
            self.calibration.iter().map(Vec::as_slice).collect()
        }
    }

    /// Compares a backend's outputs for `op` with the reference answer, and fingerprints them.
    ///
    /// # Panics
    /// If the cell was made without its reference answer (a harness bug).
    pub fn check(&self, op: Op, loss: &[f32], grad: &[f32], tol: Tolerance) -> Check {
        let answer = self
            .answer
            .as_ref()
            .expect("a cell that checks outputs has its reference answer");
        let loss_pairs = loss
            .iter()
            .map(|&l| f64::from(l))
            .zip(answer.loss.iter().copied());
        let grad_pairs = grad
            .iter()
            .map(|&g| f64::from(g))
            .zip(answer.grad.iter().map(|&g| f64::from(g)));
        // A gradient written in a half type is held to that type's rounding.
        let grad_tol = workload::grad_tolerance(self.spec.dtype, tol);
        let (max_rel_error, agrees) = match op {
            Op::Forward => workload::agreement(loss_pairs, tol),
            Op::Backward => workload::agreement(grad_pairs, grad_tol),
            Op::ForwardBackward => {
                let (a, ok_a) = workload::agreement(loss_pairs, tol);
                let (b, ok_b) = workload::agreement(grad_pairs, grad_tol);
                (a.max(b), ok_a && ok_b)
            }
        };
        Check {
            max_rel_error,
            agrees,
            digest: digest(op, loss, grad),
        }
    }
}

/// A backend's outputs on a cell, checked against the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    /// Largest `|got − ref| / (|ref| + atol/rtol)`.
    pub max_rel_error: f64,
    /// Every element within tolerance.
    pub agrees: bool,
    /// A fingerprint of the output bits: later rounds must reproduce it exactly.
    pub digest: u64,
}

/// An FNV-1a fingerprint of the bits of the outputs `op` produces.
pub fn digest(op: Op, loss: &[f32], grad: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |values: &[f32]| {
        for v in values {
            h ^= u64::from(v.to_bits());
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    if op != Op::Backward {
        eat(loss);
    }
    if op != Op::Forward {
        eat(grad);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_every_bit_of_the_outputs_of_the_op() {
        let base = digest(Op::ForwardBackward, &[1.0], &[0.5, -0.25]);
        assert_ne!(base, digest(Op::ForwardBackward, &[1.0], &[0.5, -0.0]));
        assert_ne!(
            base,
            digest(
                Op::ForwardBackward,
                &[f32::from_bits(1.0f32.to_bits() + 1)],
                &[0.5, -0.25]
            )
        );
        // Forward does not look at the (unwritten) gradient buffer.
        assert_eq!(
            digest(Op::Forward, &[1.0], &[1.0]),
            digest(Op::Forward, &[1.0], &[2.0])
        );
    }

    #[test]
    fn cells_are_reproducible_and_rotated() {
        let spec = CellSpec::plain(4, 10, true, Reduction::Mean, 7);
        let (a, b) = (Cell::new(spec, true, true), Cell::new(spec, false, false));
        assert_eq!(a.workload.logits, b.workload.logits);
        assert!(b.answer.is_none());
        let r = a.rotations();
        assert_eq!(r.len(), a.copies.len() + 1);
        assert!(r.iter().all(|x| *x == a.workload.logits.view()));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<CellSpec>(&json).unwrap(), spec);
    }
}
