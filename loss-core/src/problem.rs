//! Problem and option types, and the one place where input is validated.
//!
//! A [`Problem`] can only be built through validation ([`Problem::new`] or
//! [`Problem::from_ndarray`]), so a backend that receives one may rely on: the logits length equals
//! the product of the shape, the target fits the shape, every index target is in `[0, C)` or equal
//! to `ignore_index`, the weight has `C` entries, and the options are in their domains.

use ndarray::{ArrayView, ArrayViewD, Dimension};

use crate::dtype::{DType, Element, Elems, ElemsMut, OwnedElems};
use crate::error::{LossError, Result};

/// PyTorch's default `ignore_index`.
pub const DEFAULT_IGNORE_INDEX: i64 = -100;

/// How per-position losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Reduction {
    /// One loss per position; the output has the target's shape.
    None,
    /// The sum over positions: one value.
    Sum,
    /// The weighted mean (index targets) or the mean over positions (probability targets).
    #[default]
    Mean,
}

impl Reduction {
    /// Every reduction, in a fixed order.
    pub const ALL: [Reduction; 3] = [Reduction::None, Reduction::Sum, Reduction::Mean];

    /// `"none"`, `"sum"` or `"mean"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reduction::None => "none",
            Reduction::Sum => "sum",
            Reduction::Mean => "mean",
        }
    }

    /// Parses `"none"`, `"sum"` or `"mean"` into a reduction; anything else is an
    /// [`LossError::InvalidOption`].
    pub fn parse(name: &str) -> Result<Self> {
        Reduction::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| LossError::InvalidOption {
                option: "reduction",
                reason: format!("{name:?} is not one of none, sum, mean"),
            })
    }
}

impl std::fmt::Display for Reduction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The options of the loss, with PyTorch's defaults. Built with [`LossOptions::new`] and the
/// builder methods (new options will be added, so the struct cannot be written as a literal
/// outside this crate).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LossOptions<'a> {
    /// Per-class weights (`C` values), or `None` for all ones.
    pub weight: Option<&'a [f32]>,
    /// Index targets equal to this are skipped (any integer, even a real class).
    pub ignore_index: i64,
    /// How per-position losses are combined.
    pub reduction: Reduction,
    /// Label smoothing `ε`, in `[0, 1]`.
    pub label_smoothing: f32,
    /// The z-loss coefficient `z ≥ 0` (PaLM uses `1e-4`): each valid position adds
    /// `z·s_i·LSE_i²`. 0 leaves the term out entirely.
    pub z_loss: f32,
    /// The logit soft-cap `a > 0` (Gemma 2 uses 30): logits become `a·tanh(x/a)` first.
    pub softcap: Option<f32>,
    /// Per-position (token) weights `s_i`, `P` values in position order; `None` for all ones.
    pub position_weight: Option<&'a [f32]>,
}

impl Default for LossOptions<'_> {
    fn default() -> Self {
        LossOptions {
            weight: None,
            ignore_index: DEFAULT_IGNORE_INDEX,
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            position_weight: None,
        }
    }
}

impl<'a> LossOptions<'a> {
    /// The defaults: no weight, `ignore_index = -100`, mean, no smoothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets per-class weights.
    pub fn weight(mut self, weight: &'a [f32]) -> Self {
        self.weight = Some(weight);
        self
    }
    /// Sets per-class weights, or none.
    pub fn maybe_weight(mut self, weight: Option<&'a [f32]>) -> Self {
        self.weight = weight;
        self
    }
    /// Sets `ignore_index`.
    pub fn ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }
    /// Sets the reduction.
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }
    /// Sets label smoothing.
    pub fn label_smoothing(mut self, label_smoothing: f32) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }
    /// Sets the z-loss coefficient.
    pub fn z_loss(mut self, z: f32) -> Self {
        self.z_loss = z;
        self
    }
    /// Sets the logit soft-cap, or none.
    pub fn softcap(mut self, cap: Option<f32>) -> Self {
        self.softcap = cap;
        self
    }
    /// Sets per-position weights, or none.
    pub fn position_weight(mut self, weights: Option<&'a [f32]>) -> Self {
        self.position_weight = weights;
        self
    }
    /// Whether any of the extensions beyond PyTorch's `cross_entropy` is on (z-loss,
    /// soft-capping, position weights).
    pub fn has_extensions(&self) -> bool {
        self.z_loss != 0.0 || self.softcap.is_some() || self.position_weight.is_some()
    }
}

/// An unvalidated target: flat data plus the shape it claims to have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target<'a> {
    /// Class indices, shape `(N, d1…dk)` (or `()` unbatched).
    Indices {
        /// Flat row-major indices.
        data: &'a [i64],
        /// Their shape.
        shape: &'a [usize],
    },
    /// Class probabilities, the logits' shape and element type.
    Probs {
        /// Flat row-major probabilities.
        data: Elems<'a>,
        /// Their shape.
        shape: &'a [usize],
    },
}

/// A validated target, as a backend sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TargetData<'a> {
    /// One class index per position (valid or `ignore_index`).
    Indices(&'a [i64]),
    /// One probability per logit, laid out like the logits, in the logits' element type.
    Probs(Elems<'a>),
}

/// A target given as ndarray views (probabilities in the logits' element type `T`).
#[derive(Debug, Clone)]
pub enum NdTarget<'a, T = f32> {
    /// Class indices.
    Indices(ArrayViewD<'a, i64>),
    /// Class probabilities.
    Probs(ArrayViewD<'a, T>),
}

/// Where the logits of a position live: logits are `(batch, classes, inner)` in row-major order,
/// with `inner = d1·…·dk` (1 for 2-D and unbatched input). The logit of class `c` at position
/// `p = n·inner + d` is at `(n·classes + c)·inner + d`, so classes are strided by `inner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// `N`, or 1 for unbatched input.
    pub batch: usize,
    /// `C`.
    pub classes: usize,
    /// `d1·…·dk`, or 1.
    pub inner: usize,
    /// False for unbatched `(C)` input.
    pub batched: bool,
}

impl Layout {
    /// Number of positions `P = batch·inner`.
    pub fn positions(&self) -> usize {
        self.batch * self.inner
    }
    /// Number of logits `batch·classes·inner`.
    pub fn len(&self) -> usize {
        self.batch * self.classes * self.inner
    }
    /// True when there are no logits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Flat index of the logit of `class` at `position`.
    #[inline]
    pub fn index(&self, position: usize, class: usize) -> usize {
        let (n, d) = (position / self.inner, position % self.inner);
        (n * self.classes + class) * self.inner + d
    }
}

/// A validated cross-entropy problem: logits, target and options, borrowed from the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem<'a> {
    logits: Elems<'a>,
    shape: Vec<usize>,
    layout: Layout,
    target: TargetData<'a>,
    options: LossOptions<'a>,
}

fn checked_product(shape: &[usize], what: &'static str) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d).ok_or_else(|| {
            LossError::shape(
                what,
                "a shape whose size fits in usize",
                format!("{shape:?}"),
            )
        })
    })
}

impl<'a> Problem<'a> {
    /// Validates flat logits of the given shape, a target and options into a problem.
    ///
    /// Errors, checked in this order: [`LossError::ShapeMismatch`] (logits, weight, target
    /// shapes and lengths), [`LossError::InvalidOption`] (smoothing outside `[0, 1]` or not
    /// finite; a non-negative `ignore_index` with probability targets; a z-loss coefficient
    /// negative or not finite; a soft-cap not finite and positive), then
    /// [`LossError::InvalidTarget`] (an index outside `[0, C)` that is not `ignore_index`).
    /// Shapes include the position weights (`P` values) and the probability targets' element
    /// type (the logits').
    pub fn new(
        logits: impl Into<Elems<'a>>,
        shape: &[usize],
        target: Target<'a>,
        options: LossOptions<'a>,
    ) -> Result<Self> {
        let logits = logits.into();
        match target {
            Target::Indices { data, shape: t } => {
                Self::validate(logits, shape, TargetData::Indices(data), t, options)
            }
            Target::Probs { data, shape: t } => {
                Self::validate(logits, shape, TargetData::Probs(data), t, options)
            }
        }
    }

    /// [`Problem::new`] with the target's shape borrowed for validation only.
    fn validate(
        logits: Elems<'a>,
        shape: &[usize],
        target: TargetData<'a>,
        tshape: &[usize],
        options: LossOptions<'a>,
    ) -> Result<Self> {
        let layout = Self::layout_of(shape)?;
        let expected_len = checked_product(shape, "logits")?;
        if logits.len() != expected_len {
            return Err(LossError::shape(
                "logits",
                format!("{expected_len} values for shape {shape:?}"),
                logits.len(),
            ));
        }
        if let Some(w) = options.weight
            && w.len() != layout.classes
        {
            return Err(LossError::shape(
                "weight",
                format!("{} values (one per class)", layout.classes),
                w.len(),
            ));
        }
        let target = match target {
            TargetData::Probs(data) => {
                if tshape != shape {
                    return Err(LossError::shape(
                        "target",
                        format!("probabilities of the logits' shape {shape:?}"),
                        format!("{tshape:?}"),
                    ));
                }
                if data.len() != expected_len {
                    return Err(LossError::shape(
                        "target",
                        format!("{expected_len} probabilities"),
                        data.len(),
                    ));
                }
                if data.dtype() != logits.dtype() {
                    return Err(LossError::shape(
                        "target",
                        format!(
                            "probabilities of the logits' element type {}",
                            logits.dtype()
                        ),
                        data.dtype(),
                    ));
                }
                TargetData::Probs(data)
            }
            TargetData::Indices(data) => {
                let class_axis = usize::from(layout.batched);
                let expected: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .filter(|&(axis, _)| axis != class_axis)
                    .map(|(_, &d)| d)
                    .collect();
                if tshape != expected.as_slice() {
                    return Err(LossError::shape(
                        "target",
                        format!("indices of shape {expected:?}"),
                        format!("{tshape:?}"),
                    ));
                }
                if data.len() != layout.positions() {
                    return Err(LossError::shape(
                        "target",
                        format!("{} indices", layout.positions()),
                        data.len(),
                    ));
                }
                TargetData::Indices(data)
            }
        };
        if let Some(s) = options.position_weight
            && s.len() != layout.positions()
        {
            return Err(LossError::shape(
                "position_weight",
                format!("{} values (one per position)", layout.positions()),
                s.len(),
            ));
        }
        let eps = options.label_smoothing;
        if !(eps.is_finite() && (0.0..=1.0).contains(&eps)) {
            return Err(LossError::InvalidOption {
                option: "label_smoothing",
                reason: format!("{eps} is not a finite number in [0, 1]"),
            });
        }
        let z = options.z_loss;
        if !(z.is_finite() && z >= 0.0) {
            return Err(LossError::InvalidOption {
                option: "z_loss",
                reason: format!("{z} is not a finite number ≥ 0"),
            });
        }
        // (A cap so small that `1/a` overflows f32 cannot be evaluated by an f32 kernel:
        // below 2.9e-39.)
        if let Some(a) = options.softcap
            && !(a.is_finite() && a > 0.0 && (1.0 / a).is_finite())
        {
            return Err(LossError::InvalidOption {
                option: "softcap",
                reason: format!("{a} is not a finite number > 0 (with a finite 1/a)"),
            });
        }
        match target {
            TargetData::Probs(_) if options.ignore_index >= 0 => {
                return Err(LossError::InvalidOption {
                    option: "ignore_index",
                    reason: format!(
                        "{} is non-negative, but probability targets have no ignore_index",
                        options.ignore_index
                    ),
                });
            }
            TargetData::Indices(indices) => {
                let classes = layout.classes as i64;
                if let Some((position, &t)) = indices
                    .iter()
                    .enumerate()
                    .find(|&(_, &t)| t != options.ignore_index && !(0..classes).contains(&t))
                {
                    return Err(LossError::InvalidTarget {
                        position,
                        target: t,
                        classes: layout.classes,
                        ignore_index: options.ignore_index,
                    });
                }
            }
            TargetData::Probs(_) => {}
        }
        Ok(Problem {
            logits,
            shape: shape.to_vec(),
            layout,
            target,
            options,
        })
    }

    /// Validates ndarray views. Both views must be in standard (row-major, contiguous) layout;
    /// any other layout is a [`LossError::ShapeMismatch`] (the data is borrowed, never copied).
    pub fn from_ndarray<T: Element, D: Dimension>(
        logits: ArrayView<'a, T, D>,
        target: &NdTarget<'a, T>,
        options: LossOptions<'a>,
    ) -> Result<Self> {
        fn contiguous<'b, T, D: Dimension>(
            view: &ArrayView<'b, T, D>,
            what: &'static str,
        ) -> Result<&'b [T]> {
            view.to_slice().ok_or_else(|| {
                LossError::shape(
                    what,
                    "an array in standard (row-major, contiguous) layout",
                    format!("strides {:?}", view.strides()),
                )
            })
        }
        let data = T::elems(contiguous(&logits, "logits")?);
        let (target_data, target_shape) = match target {
            NdTarget::Indices(t) => (TargetData::Indices(contiguous(t, "target")?), t.shape()),
            NdTarget::Probs(t) => (
                TargetData::Probs(T::elems(contiguous(t, "target")?)),
                t.shape(),
            ),
        };
        Problem::validate(data, logits.shape(), target_data, target_shape, options)
    }

    fn layout_of(shape: &[usize]) -> Result<Layout> {
        let layout = match shape {
            [] => {
                return Err(LossError::shape(
                    "logits",
                    "a shape (C), (N, C) or (N, C, d1, …)",
                    "a 0-dimensional shape",
                ));
            }
            [c] => Layout {
                batch: 1,
                classes: *c,
                inner: 1,
                batched: false,
            },
            [n, c, rest @ ..] => Layout {
                batch: *n,
                classes: *c,
                inner: checked_product(rest, "logits")?,
                batched: true,
            },
        };
        if layout.classes == 0 {
            return Err(LossError::shape("logits", "at least one class", "C = 0"));
        }
        Ok(layout)
    }

    /// The flat logits.
    pub fn logits(&self) -> Elems<'a> {
        self.logits
    }
    /// The logits' element type.
    pub fn dtype(&self) -> DType {
        self.logits.dtype()
    }
    /// Number of logits.
    pub fn len(&self) -> usize {
        self.logits.len()
    }
    /// Whether there are no logits.
    pub fn is_empty(&self) -> bool {
        self.logits.is_empty()
    }
    /// Whether the problem is one PyTorch's `cross_entropy` states: `f32` logits and none of the
    /// extensions (z-loss, soft-cap, position weights).
    pub fn is_plain(&self) -> bool {
        self.dtype() == DType::F32 && !self.options.has_extensions()
    }
    /// The logits' shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Batch, classes and inner extent.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// `C`.
    pub fn classes(&self) -> usize {
        self.layout.classes
    }
    /// Number of positions `P`.
    pub fn positions(&self) -> usize {
        self.layout.positions()
    }
    /// The validated target.
    pub fn target(&self) -> TargetData<'a> {
        self.target
    }
    /// The validated options, as one value.
    pub fn options(&self) -> LossOptions<'a> {
        self.options
    }
    /// The class weights, if any.
    pub fn weight(&self) -> Option<&'a [f32]> {
        self.options.weight
    }
    /// The weight of class `c` (1 without weights).
    #[inline]
    pub fn class_weight(&self, c: usize) -> f32 {
        self.options.weight.map_or(1.0, |w| w[c])
    }
    /// `ignore_index`.
    pub fn ignore_index(&self) -> i64 {
        self.options.ignore_index
    }
    /// The reduction.
    pub fn reduction(&self) -> Reduction {
        self.options.reduction
    }
    /// Label smoothing `ε`.
    pub fn label_smoothing(&self) -> f32 {
        self.options.label_smoothing
    }
    /// The z-loss coefficient.
    pub fn z_loss(&self) -> f32 {
        self.options.z_loss
    }
    /// The soft-cap.
    pub fn softcap(&self) -> Option<f32> {
        self.options.softcap
    }
    /// The position weights, if any.
    pub fn position_weight(&self) -> Option<&'a [f32]> {
        self.options.position_weight
    }
    /// The weight `s_i` of position `i` (1 without position weights).
    #[inline]
    pub fn position_weight_at(&self, i: usize) -> f32 {
        self.options.position_weight.map_or(1.0, |s| s[i])
    }

    /// Number of loss values: `P` for `none`, else 1. The upstream gradient has this length too.
    pub fn loss_len(&self) -> usize {
        match self.options.reduction {
            Reduction::None => self.positions(),
            Reduction::Sum | Reduction::Mean => 1,
        }
    }

    /// Shape of the loss: the target-index shape for `none`, `[]` otherwise.
    pub fn loss_shape(&self) -> Vec<usize> {
        match self.options.reduction {
            Reduction::None => self.lse_shape(),
            Reduction::Sum | Reduction::Mean => Vec::new(),
        }
    }

    /// Checks a caller-provided loss buffer (length [`Problem::loss_len`]).
    pub fn check_loss_buffer(&self, loss: &[f32]) -> Result<()> {
        check_len("loss", self.loss_len(), loss.len())
    }
    /// Checks a caller-provided gradient buffer (the logits' length).
    pub fn check_grad_buffer(&self, grad: &[f32]) -> Result<()> {
        check_len("grad", self.logits.len(), grad.len())
    }
    /// Checks every buffer of a [`Outputs`] request; nothing is written when one is wrong.
    pub fn check_outputs(&self, out: &Outputs<'_>) -> Result<()> {
        if let Some(l) = &out.loss {
            check_len("loss", self.loss_len(), l.len())?;
        }
        if let Some(l) = &out.lse {
            check_len("lse", self.positions(), l.len())?;
        }
        if let Some(z) = &out.z_loss {
            check_len("z_loss", self.loss_len(), z.len())?;
        }
        if let Some(g) = &out.grad {
            self.check_grad_output(g.grad_output)?;
            check_len("grad", self.logits.len(), g.grad.len())?;
        }
        Ok(())
    }
    /// The shape of the per-position LSE output (a `none` loss's shape).
    pub fn lse_shape(&self) -> Vec<usize> {
        let class_axis = usize::from(self.layout.batched);
        self.shape
            .iter()
            .enumerate()
            .filter(|&(axis, _)| axis != class_axis)
            .map(|(_, &d)| d)
            .collect()
    }
    /// Checks an upstream gradient (length [`Problem::loss_len`]).
    pub fn check_grad_output(&self, grad_output: &[f32]) -> Result<()> {
        check_len("grad_output", self.loss_len(), grad_output.len())
    }
    /// Checks the arguments of a backward call.
    pub fn check_backward(&self, grad_output: &[f32], grad: &[f32]) -> Result<()> {
        self.check_grad_output(grad_output)?;
        self.check_grad_buffer(grad)
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(LossError::shape(what, format!("{expected} values"), got))
    }
}

/// Converts a shape given as signed integers (as a file may hold it) into a shape, or a
/// [`LossError::ShapeMismatch`] when an extent is negative.
pub fn shape_from_i64(shape: &[i64], what: &'static str) -> Result<Vec<usize>> {
    shape
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| LossError::shape(what, "non-negative extents", format!("{shape:?}")))
        })
        .collect()
}

/// An owned target (see [`ProblemData`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedTarget {
    /// Class indices.
    Indices(Vec<i64>),
    /// Class probabilities (in the logits' element type).
    Probs(OwnedElems),
}

/// An owned, unvalidated problem: what a test generator, a vector file or a benchmark holds.
/// [`ProblemData::problem`] validates it into a borrowed [`Problem`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProblemData {
    /// Flat logits.
    pub logits: OwnedElems,
    /// The logits' shape.
    pub shape: Vec<usize>,
    /// The target's data.
    pub target: OwnedTarget,
    /// The target's shape.
    pub target_shape: Vec<usize>,
    /// Class weights.
    pub weight: Option<Vec<f32>>,
    /// `ignore_index`.
    pub ignore_index: i64,
    /// Reduction.
    pub reduction: Reduction,
    /// Label smoothing.
    pub label_smoothing: f32,
    /// z-loss coefficient.
    pub z_loss: f32,
    /// Soft-cap.
    pub softcap: Option<f32>,
    /// Position weights.
    pub position_weight: Option<Vec<f32>>,
}

impl ProblemData {
    /// An owned copy of a validated problem.
    pub fn of(problem: &Problem<'_>) -> Self {
        let o = problem.options();
        let (target, target_shape) = match problem.target() {
            TargetData::Indices(t) => (OwnedTarget::Indices(t.to_vec()), problem.lse_shape()),
            TargetData::Probs(t) => (
                OwnedTarget::Probs(t.to_owned_elems()),
                problem.shape().to_vec(),
            ),
        };
        ProblemData {
            logits: problem.logits().to_owned_elems(),
            shape: problem.shape().to_vec(),
            target,
            target_shape,
            weight: o.weight.map(<[f32]>::to_vec),
            ignore_index: o.ignore_index,
            reduction: o.reduction,
            label_smoothing: o.label_smoothing,
            z_loss: o.z_loss,
            softcap: o.softcap,
            position_weight: o.position_weight.map(<[f32]>::to_vec),
        }
    }

    /// The options as a borrowed [`LossOptions`].
    pub fn options(&self) -> LossOptions<'_> {
        LossOptions {
            weight: self.weight.as_deref(),
            ignore_index: self.ignore_index,
            reduction: self.reduction,
            label_smoothing: self.label_smoothing,
            z_loss: self.z_loss,
            softcap: self.softcap,
            position_weight: self.position_weight.as_deref(),
        }
    }

    /// The target as a borrowed [`Target`].
    pub fn target(&self) -> Target<'_> {
        match &self.target {
            OwnedTarget::Indices(data) => Target::Indices {
                data,
                shape: &self.target_shape,
            },
            OwnedTarget::Probs(data) => Target::Probs {
                data: data.view(),
                shape: &self.target_shape,
            },
        }
    }

    /// Validates into a [`Problem`].
    pub fn problem(&self) -> Result<Problem<'_>> {
        Problem::new(
            self.logits.view(),
            &self.shape,
            self.target(),
            self.options(),
        )
    }

    /// The same problem with logits (and probability targets) rounded to `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.logits = OwnedElems::from_f32(dtype, &self.logits.to_f32_vec());
        if let OwnedTarget::Probs(t) = &self.target {
            self.target = OwnedTarget::Probs(OwnedElems::from_f32(dtype, &t.to_f32_vec()));
        }
        self
    }
}

/// An upstream gradient and the buffer the gradient goes to (`f32`, or a half type: the
/// gradient is rounded once to the buffer's type, whatever the logits' type).
#[derive(Debug)]
pub struct GradRequest<'o> {
    /// The upstream gradient ([`Problem::loss_len`] values).
    pub grad_output: &'o [f32],
    /// Where `∂(Σ loss·grad_output)/∂logits` goes, laid out like the logits.
    pub grad: ElemsMut<'o>,
}

/// What one call computes: any of the loss, the per-position LSE, the z-loss part and the
/// gradient, all from the same pass over the logits. Built with [`Outputs::new`] and the
/// builder methods.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Outputs<'o> {
    /// The loss ([`Problem::loss_len`] values): cross-entropy plus the z-loss part.
    pub loss: Option<&'o mut [f32]>,
    /// The log-sum-exp of each position's (soft-capped) logits, `P` values (ignored positions
    /// included).
    pub lse: Option<&'o mut [f32]>,
    /// The z-loss part of the loss, reduced as the loss is ([`Problem::loss_len`] values; zeros
    /// when `z = 0`).
    pub z_loss: Option<&'o mut [f32]>,
    /// The gradient.
    pub grad: Option<GradRequest<'o>>,
}

impl<'o> Outputs<'o> {
    /// Nothing requested yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests the loss.
    pub fn loss(mut self, loss: &'o mut [f32]) -> Self {
        self.loss = Some(loss);
        self
    }
    /// Requests the per-position LSE.
    pub fn lse(mut self, lse: &'o mut [f32]) -> Self {
        self.lse = Some(lse);
        self
    }
    /// Requests the z-loss part.
    pub fn z_loss(mut self, z: &'o mut [f32]) -> Self {
        self.z_loss = Some(z);
        self
    }
    /// Requests the gradient for upstream gradient `grad_output`, written into `grad`.
    pub fn grad(mut self, grad_output: &'o [f32], grad: impl Into<ElemsMut<'o>>) -> Self {
        self.grad = Some(GradRequest {
            grad_output,
            grad: grad.into(),
        });
        self
    }
    /// Whether anything besides the loss and the gradient is requested.
    pub fn wants_stats(&self) -> bool {
        self.lse.is_some() || self.z_loss.is_some()
    }
}
