//! One cell of a grid: its inputs, the rotated copies that keep consecutive calls out of the
//! cache, the reference answer, and the check of a backend's outputs against it.

use loss_core::conformance::Tolerance;
use serde::{Deserialize, Serialize};

use crate::bandwidth;
use crate::schema::Op;
use crate::workload::{self, ReferenceAnswer, Workload};
use loss_core::Reduction;

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
    /// Bytes of logits.
    pub fn bytes(&self) -> usize {
        self.batch * self.classes * 4
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
    pub copies: Vec<Vec<f32>>,
    /// The reference's answer, when asked for.
    pub answer: Option<ReferenceAnswer>,
    /// The upstream gradient.
    pub upstream: Vec<f32>,
    /// Whether the rotated data fits in the last-level cache.
    pub in_cache: bool,
}

impl Cell {
    /// Generates a cell's inputs, and its reference answer when `reference` is true (with the
    /// gradient when `with_grad`).
    pub fn new(spec: CellSpec, reference: bool, with_grad: bool) -> Self {
        let workload = Workload::generate(
            spec.batch,
            spec.classes,
            spec.weighted,
            spec.reduction,
            spec.seed,
        );
        let upstream = workload.upstream();
        let answer = reference.then(|| workload::reference_answer(&workload, &upstream, with_grad));
        let copies = (1..spec.rotations())
            .map(|_| workload.logits.clone())
            .collect();
        Cell {
            spec,
            workload,
            copies,
            answer,
            upstream,
            in_cache: spec.in_cache(),
        }
    }

    /// The logits of rotation `rep`.
    pub fn logits(&self, rep: usize) -> &[f32] {
        let k = rep % (self.copies.len() + 1);
        if k == 0 {
            &self.workload.logits
        } else {
            &self.copies[k - 1]
        }
    }

    /// Every rotation of the logits, in rotation order.
    pub fn rotations(&self) -> Vec<&[f32]> {
        (0..=self.copies.len()).map(|k| self.logits(k)).collect()
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
        let (max_rel_error, agrees) = match op {
            Op::Forward => workload::agreement(loss_pairs, tol),
            Op::Backward => workload::agreement(grad_pairs, tol),
            Op::ForwardBackward => workload::agreement(loss_pairs.chain(grad_pairs), tol),
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
        let spec = CellSpec {
            batch: 4,
            classes: 10,
            weighted: true,
            reduction: Reduction::Mean,
            seed: 7,
        };
        let (a, b) = (Cell::new(spec, true, true), Cell::new(spec, false, false));
        assert_eq!(a.workload.logits, b.workload.logits);
        assert!(b.answer.is_none());
        let r = a.rotations();
        assert_eq!(r.len(), a.copies.len() + 1);
        assert!(r.iter().all(|x| *x == a.workload.logits.as_slice()));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<CellSpec>(&json).unwrap(), spec);
    }
}
