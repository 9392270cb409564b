//! The conformance kit: reads vector files, runs any backend on every case, and reports.
//!
//! A vector file (`conformance/vectors.json` and `conformance/vectors-v2.json` in this crate are
//! the vendored ones; the formats are described in `conformance/README.md`) holds cases with
//! exact inputs (float32, or in format 2 also bfloat16 and float16) and the float64 answer.
//! Format 2 adds soft-capping, z-loss, position weights, the per-position LSE and the z-loss part
//! as outputs, and a tolerance for gradients written in a half type; a format-1 file reads as a
//! format-2 file whose new fields have their defaults.
//! Every file of that format goes through the same code path: nothing here looks at a case's
//! name. Inputs are read leniently (error cases are malformed on purpose) and validated by
//! [`Problem::new`](crate::Problem::new), so the kit tests the library's validation too.
//!
//! A backend crate runs the whole kit from a test with one line:
//!
//! ```no_run
//! loss_core::conformance::assert_conformance(&loss_core::ReferenceBackend::new());
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::backend::LossBackend;
use crate::dtype::{DType, OwnedElems};
use crate::error::{ErrorKind, LossError};
use crate::problem::{Outputs, OwnedTarget, ProblemData, Reduction, shape_from_i64};

pub use crate::tolerance::{DEFAULT_TOLERANCE, Tolerance};

/// A vector file that could not be read at all (as opposed to a case that is malformed on
/// purpose, which is read leniently and judged by the library).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A field is missing or of the wrong type.
    #[error("{path}: case {case}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The case's name or index.
        case: String,
        /// What is wrong.
        message: String,
    },
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// Numbers.
    Values {
        /// The loss: one value, or one per position.
        loss: Vec<f64>,
        /// The loss's shape.
        loss_shape: Vec<usize>,
        /// The gradient with respect to the logits, when given.
        grad: Option<Vec<f64>>,
        /// The per-position LSE (format 2), when given.
        lse: Option<Vec<f64>>,
        /// The z-loss part of the loss (format 2, `z > 0`), when given.
        z_loss: Option<Vec<f64>>,
    },
    /// An error of this kind.
    Error(ErrorKind),
}

/// One case of a vector file.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The case's name (for reports only).
    pub name: String,
    /// The problem as read, or the error the library gave while reading it (a negative extent
    /// in a shape, an unknown reduction).
    pub input: Result<ProblemData, LossError>,
    /// The upstream gradient: given for `none`; `[1]` is used for sum and mean.
    pub grad_output: Option<Vec<f32>>,
    /// What the backend must produce.
    pub expected: Expected,
}

/// A parsed vector file.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The format tag (`cross-entropy-conformance/1`).
    pub format: String,
    /// Who made it.
    pub generator: String,
    /// The file-level tolerance.
    pub tolerance: Tolerance,
    /// The tolerance of a gradient written in a half type (format 2's
    /// `grad_tolerance_by_dtype`); a type not listed uses [`VectorFile::tolerance`].
    pub grad_tolerance_by_dtype: Vec<(DType, Tolerance)>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// The format-1 tag.
pub const FORMAT_TAG: &str = "cross-entropy-conformance/1";
/// The format-2 tag (a superset of format 1).
pub const FORMAT_TAG_V2: &str = "cross-entropy-conformance/2";

/// The paths of the vendored vector files, format 1 then format 2 (`LOSS_VECTORS` in the
/// environment, a list separated like `PATH`, replaces them).
pub fn vendored_vectors_paths() -> Vec<PathBuf> {
    match std::env::var_os("LOSS_VECTORS") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => ["vectors.json", "vectors-v2.json"]
            .iter()
            .map(|f| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("conformance")
                    .join(f)
            })
            .collect(),
    }
}

/// The vendored vector files, parsed once per process.
pub fn vendored_vectors() -> Result<&'static [VectorFile], &'static FormatError> {
    static VECTORS: OnceLock<Result<Vec<VectorFile>, FormatError>> = OnceLock::new();
    VECTORS
        .get_or_init(|| {
            vendored_vectors_paths()
                .iter()
                .map(|p| VectorFile::load(p))
                .collect()
        })
        .as_ref()
        .map(Vec::as_slice)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Some(f64::NAN),
            "inf" | "Infinity" | "+inf" => Some(f64::INFINITY),
            "-inf" | "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

struct CaseReader<'v> {
    path: &'v Path,
    name: String,
    case: &'v Value,
}

impl CaseReader<'_> {
    fn err(&self, message: impl Into<String>) -> FormatError {
        FormatError::Field {
            path: self.path.to_path_buf(),
            case: self.name.clone(),
            message: message.into(),
        }
    }
    fn field<'a>(&self, obj: &'a Value, key: &str) -> Result<&'a Value, FormatError> {
        obj.get(key)
            .ok_or_else(|| self.err(format!("missing field {key:?}")))
    }
    fn numbers(&self, v: &Value, key: &str) -> Result<Vec<f64>, FormatError> {
        v.as_array()
            .ok_or_else(|| self.err(format!("{key:?} is not a list")))?
            .iter()
            .map(|x| number(x).ok_or_else(|| self.err(format!("{key:?} holds a non-number {x}"))))
            .collect()
    }
    fn floats(&self, v: &Value, key: &str) -> Result<Vec<f32>, FormatError> {
        Ok(self
            .numbers(v, key)?
            .into_iter()
            .map(|x| x as f32)
            .collect())
    }
    fn ints(&self, v: &Value, key: &str) -> Result<Vec<i64>, FormatError> {
        v.as_array()
            .ok_or_else(|| self.err(format!("{key:?} is not a list")))?
            .iter()
            .map(|x| {
                x.as_i64()
                    .ok_or_else(|| self.err(format!("{key:?} holds a non-integer {x}")))
            })
            .collect()
    }
}

impl VectorFile {
    /// Reads and parses a vector file.
    pub fn load(path: &Path) -> Result<Self, FormatError> {
        let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a vector file's text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, FormatError> {
        let root: Value = serde_json::from_str(text).map_err(|source| FormatError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let top = CaseReader {
            path,
            name: "<file>".into(),
            case: &root,
        };
        let format = top
            .field(&root, "format")?
            .as_str()
            .unwrap_or_default()
            .to_string();
        if format != FORMAT_TAG && format != FORMAT_TAG_V2 {
            return Err(top.err(format!(
                "format is {format:?}, expected {FORMAT_TAG:?} or {FORMAT_TAG_V2:?}"
            )));
        }
        let generator = root
            .get("generator")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let read_tol = |tol: &Value| -> Result<Tolerance, FormatError> {
            Ok(Tolerance::new(
                top.field(tol, "rtol")?
                    .as_f64()
                    .ok_or_else(|| top.err("rtol is not a number"))?,
                top.field(tol, "atol")?
                    .as_f64()
                    .ok_or_else(|| top.err("atol is not a number"))?,
            ))
        };
        let tolerance = read_tol(top.field(&root, "tolerance")?)?;
        let mut grad_tolerance_by_dtype = Vec::new();
        if let Some(by) = root
            .get("grad_tolerance_by_dtype")
            .and_then(Value::as_object)
        {
            for (name, tol) in by {
                let dtype =
                    DType::parse(name).ok_or_else(|| top.err(format!("unknown dtype {name:?}")))?;
                grad_tolerance_by_dtype.push((dtype, read_tol(tol)?));
            }
        }
        let cases = top
            .field(&root, "cases")?
            .as_array()
            .ok_or_else(|| top.err("cases is not a list"))?
            .iter()
            .enumerate()
            .map(|(i, case)| {
                let name = case
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("#{i}"), str::to_string);
                Self::parse_case(&CaseReader { path, name, case })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VectorFile {
            path: path.to_path_buf(),
            format,
            generator,
            tolerance,
            grad_tolerance_by_dtype,
            cases,
        })
    }

    /// The tolerance of a gradient written in `dtype`.
    pub fn grad_tolerance(&self, dtype: DType) -> Tolerance {
        self.grad_tolerance_by_dtype
            .iter()
            .find(|(d, _)| *d == dtype)
            .map_or(self.tolerance, |&(_, t)| t)
    }

    fn parse_case(r: &CaseReader<'_>) -> Result<Case, FormatError> {
        let case = r.case;
        let expected_v = r.field(case, "expected")?;
        let expected = if let Some(kind) = expected_v.get("error") {
            let kind = kind.as_str().unwrap_or_default();
            Expected::Error(
                ErrorKind::parse(kind)
                    .ok_or_else(|| r.err(format!("unknown error kind {kind:?}")))?,
            )
        } else {
            Expected::Values {
                loss: r.numbers(r.field(expected_v, "loss")?, "loss")?,
                loss_shape: r
                    .ints(r.field(expected_v, "loss_shape")?, "loss_shape")?
                    .into_iter()
                    .map(|d| d.max(0) as usize)
                    .collect(),
                grad: match expected_v.get("grad_logits") {
                    Some(g) => Some(r.numbers(g, "grad_logits")?),
                    None => None,
                },
                lse: match expected_v.get("lse") {
                    Some(g) => Some(r.numbers(g, "lse")?),
                    None => None,
                },
                z_loss: match expected_v.get("z_loss") {
                    Some(g) => Some(r.numbers(g, "z_loss")?),
                    None => None,
                },
            }
        };
        let grad_output = match case.get("grad_output") {
            Some(Value::Null) | None => None,
            Some(g) => Some(r.floats(g, "grad_output")?),
        };
        Ok(Case {
            name: r.name.clone(),
            input: Self::parse_input(r)?,
            grad_output,
            expected,
        })
    }

    /// Reads the problem. The outer error is an unreadable file; the inner one is what the
    /// library says about values it cannot represent.
    #[allow(clippy::type_complexity)] // a nested Result is the clearest statement of two layers
    fn parse_input(r: &CaseReader<'_>) -> Result<Result<ProblemData, LossError>, FormatError> {
        let case = r.case;
        let dtype = match case.get("dtype") {
            None | Some(Value::Null) => DType::F32,
            Some(v) => {
                let name = v.as_str().unwrap_or_default();
                DType::parse(name).ok_or_else(|| r.err(format!("unknown dtype {name:?}")))?
            }
        };
        // Parsed as f32 first (the file's numbers are f32 values), then converted (exactly).
        let logits = OwnedElems::from_f32(dtype, &r.floats(r.field(case, "logits")?, "logits")?);
        let shape = r.ints(r.field(case, "shape")?, "shape")?;
        let target_v = r.field(case, "target")?;
        let target_shape = r.ints(r.field(target_v, "shape")?, "target.shape")?;
        let target = if let Some(idx) = target_v.get("indices") {
            OwnedTarget::Indices(r.ints(idx, "target.indices")?)
        } else if let Some(p) = target_v.get("probs") {
            OwnedTarget::Probs(OwnedElems::from_f32(dtype, &r.floats(p, "target.probs")?))
        } else {
            return Err(r.err("target has neither indices nor probs"));
        };
        let weight = match case.get("weight") {
            None | Some(Value::Null) => None,
            Some(w) => Some(r.floats(w, "weight")?),
        };
        let ignore_index = match case.get("ignore_index") {
            None | Some(Value::Null) => crate::DEFAULT_IGNORE_INDEX,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| r.err("ignore_index is not an integer"))?,
        };
        let reduction = case
            .get("reduction")
            .and_then(Value::as_str)
            .unwrap_or("mean");
        let label_smoothing = match case.get("label_smoothing") {
            None | Some(Value::Null) => 0.0,
            Some(v) => number(v).ok_or_else(|| r.err("label_smoothing is not a number"))? as f32,
        };
        let z_loss = match case.get("z_loss") {
            None | Some(Value::Null) => 0.0,
            Some(v) => number(v).ok_or_else(|| r.err("z_loss is not a number"))? as f32,
        };
        let softcap = match case.get("softcap") {
            None | Some(Value::Null) => None,
            Some(v) => Some(number(v).ok_or_else(|| r.err("softcap is not a number"))? as f32),
        };
        let position_weight = match case.get("position_weight") {
            None | Some(Value::Null) => None,
            Some(w) => Some(r.floats(w, "position_weight")?),
        };
        let inner = (|| {
            Ok(ProblemData {
                logits,
                shape: shape_from_i64(&shape, "logits")?,
                target,
                target_shape: shape_from_i64(&target_shape, "target")?,
                weight,
                ignore_index,
                reduction: Reduction::parse(reduction)?,
                label_smoothing,
                z_loss,
                softcap,
                position_weight,
            })
        })();
        Ok(inner)
    }
}

/// The worst element of a case: the one with the largest error relative to the tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct Worst {
    /// Which entry point produced it (`forward`, `backward`, `forward_backward`).
    pub call: &'static str,
    /// Which output (`loss` or `grad`).
    pub output: &'static str,
    /// Flat index in that output.
    pub index: usize,
    /// The backend's value.
    pub got: f64,
    /// The expected value.
    pub expected: f64,
    /// `|got − expected| / (atol + rtol·|expected|)`: ≤ 1 passes.
    pub excess: f64,
}

impl std::fmt::Display for Worst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}[{}]: got {:e}, expected {:e} ({:.3}× tolerance)",
            self.call, self.output, self.index, self.got, self.expected, self.excess
        )
    }
}

/// The verdict on one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    /// The case's name.
    pub name: String,
    /// Whether the backend met the expectation (or the case was skipped: see `skipped`).
    pub passed: bool,
    /// Why the case was not judged, when the run's [`Checks`] let a backend decline an option it
    /// does not take (`unsupported`), and it did.
    pub skipped: Option<String>,
    /// Why it failed, or which error it correctly returned.
    pub message: Option<String>,
    /// The worst element (value cases).
    pub worst: Option<Worst>,
}

/// The verdict on a whole file for one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The backend's name.
    pub backend: String,
    /// The vector file.
    pub file: PathBuf,
    /// The tolerance applied.
    pub tolerance: Tolerance,
    /// One entry per case, in file order.
    pub cases: Vec<CaseReport>,
}

impl Report {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.passed)
    }
    /// The failing cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(|c| !c.passed)
    }
    /// The skipped cases.
    pub fn skips(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(|c| c.skipped.is_some())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed = self.failures().count();
        let skipped = self.skips().count();
        writeln!(
            f,
            "{}: {} of {} cases passed{} on {} (rtol {}, atol {})",
            self.backend,
            self.cases.len() - failed - skipped,
            self.cases.len(),
            if skipped > 0 {
                format!(", {skipped} skipped as unsupported")
            } else {
                String::new()
            },
            self.file.display(),
            self.tolerance.rtol,
            self.tolerance.atol
        )?;
        for c in self.failures() {
            write!(f, "  FAIL {}", c.name)?;
            if let Some(m) = &c.message {
                write!(f, ": {m}")?;
            }
            if let Some(w) = &c.worst {
                write!(f, "; worst {w}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Runs `f`, turning a panic into an error message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown payload".into());
        format!("panicked: {msg}")
    })
}

fn compare(
    call: &'static str,
    output: &'static str,
    got: &[f32],
    expected: &[f64],
    tol: Tolerance,
    worst: &mut Option<Worst>,
) -> Result<(), String> {
    if got.len() != expected.len() {
        return Err(format!(
            "{call} gave {} {output} values, expected {}",
            got.len(),
            expected.len()
        ));
    }
    for (index, (&g, &e)) in got.iter().zip(expected).enumerate() {
        let excess = tol.excess(f64::from(g), e);
        if worst.as_ref().is_none_or(|w| excess > w.excess) {
            *worst = Some(Worst {
                call,
                output,
                index,
                got: f64::from(g),
                expected: e,
                excess,
            });
        }
    }
    Ok(())
}

/// The tolerances a case is judged with: the file's (losses, LSE, z-loss, `f32` gradients) and
/// the one for a gradient written in the case's half type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaseTolerance {
    /// Everything but a half-typed gradient.
    pub values: Tolerance,
    /// A gradient written in the logits' half type.
    pub half_grad: Tolerance,
}

impl CaseTolerance {
    /// One tolerance for everything.
    pub fn uniform(t: Tolerance) -> Self {
        CaseTolerance {
            values: t,
            half_grad: t,
        }
    }
}

/// What a run of the vectors asks of a backend besides the loss and the gradient in the logits'
/// type. The workspace's backends are held to [`Checks::FULL`]; an implementation from outside
/// (a porter's kernel, run through the Python kit) may be held to less, and says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// Ask for the per-position LSE and the z part beside the loss, and compare them.
    pub stats: bool,
    /// For half logits, also ask for the gradient written in `f32`.
    pub f32_grad_of_half: bool,
    /// How an error case is also run through the backend's own entry for unvalidated input
    /// ([`LossBackend::solve_raw`]) when it has one and the error is in the problem's data.
    pub raw_errors: RawErrors,
    /// A backend that answers a case with [`LossError::Unsupported`] has the case skipped (and
    /// reported as such) instead of failed.
    pub unsupported_skips: bool,
}

/// How [`Checks::raw_errors`] judges a backend's raw entry on an error case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawErrors {
    /// The raw entry is not called.
    Off,
    /// It must return an error of the case's kind.
    ExactKind,
    /// It must return an error, of any kind (an implementation that raises its own exceptions).
    AnyKind,
}

impl Checks {
    /// Everything: the LSE and z outputs, the `f32` gradient of half logits, the raw entry's
    /// errors of the exact kind, nothing skipped.
    pub const FULL: Checks = Checks {
        stats: true,
        f32_grad_of_half: true,
        raw_errors: RawErrors::ExactKind,
        unsupported_skips: false,
    };
}

/// Runs one case on a backend, with the given tolerances, held to [`Checks::FULL`].
pub fn run_case(backend: &dyn LossBackend, case: &Case, tol: CaseTolerance) -> CaseReport {
    run_case_with(backend, case, tol, Checks::FULL)
}

/// Runs one case on a backend, with the given tolerances and checks.
pub fn run_case_with(
    backend: &dyn LossBackend,
    case: &Case,
    tol: CaseTolerance,
    checks: Checks,
) -> CaseReport {
    let verdict = guarded(|| judge(backend, case, tol, checks)).unwrap_or_else(|m| (Err(m), None));
    let (result, worst) = verdict;
    let (passed, message, skipped) = match result {
        Ok(Judged::Passed(note)) => (true, note, None),
        Ok(Judged::Skipped(why)) => (true, None, Some(why)),
        Err(m) => (false, Some(m), None),
    };
    CaseReport {
        name: case.name.clone(),
        passed,
        worst: if skipped.is_some() { None } else { worst },
        skipped,
        message,
    }
}

/// A case that did not fail.
enum Judged {
    /// It passed (with a note: the error it correctly returned).
    Passed(Option<String>),
    /// The backend declined an option it does not take ([`Checks::unsupported_skips`]).
    Skipped(String),
}

type Verdict = (Result<Judged, String>, Option<Worst>);

/// A call's error: skipped when the checks let the backend decline, a failure otherwise.
fn declined(what: &str, e: LossError, checks: Checks) -> Result<Judged, String> {
    if checks.unsupported_skips && e.kind() == ErrorKind::Unsupported {
        Ok(Judged::Skipped(e.to_string()))
    } else {
        Err(format!("{what}: {e}"))
    }
}

/// What one call of a case gave back.
struct Got {
    loss: Vec<f32>,
    /// Whether the backend returned the loss rounded to the logits' type.
    loss_in_logits_type: bool,
    lse: Vec<f32>,
    z_loss: Vec<f32>,
    grad: Option<Vec<f32>>,
}

/// Runs `compute` asking for everything: the loss, LSE and z-loss part when `forward`, the
/// gradient (in `grad_dtype`) when `upstream` is given.
fn call(
    backend: &dyn LossBackend,
    problem: &crate::Problem<'_>,
    forward: bool,
    stats: bool,
    upstream: Option<(&[f32], DType)>,
) -> crate::Result<Got> {
    let n = problem.loss_len();
    let mut loss = vec![0.0; n];
    let mut lse = vec![0.0; problem.positions()];
    let mut z_loss = vec![0.0; n];
    let mut grad = upstream.map(|(_, d)| OwnedElems::zeros(d, problem.len()));
    let mut out = Outputs::new();
    if forward {
        out = out.loss(&mut loss);
        if stats {
            out = out.lse(&mut lse).z_loss(&mut z_loss);
        }
    }
    if let (Some((g, _)), Some(buf)) = (upstream, grad.as_mut()) {
        out = out.grad(g, buf.view_mut());
    }
    backend.compute(problem, out)?;
    Ok(Got {
        loss_in_logits_type: backend.loss_in_logits_type(),
        loss,
        lse,
        z_loss,
        grad: grad.map(|g| g.to_f32_vec()),
    })
}

fn judge(backend: &dyn LossBackend, case: &Case, tol: CaseTolerance, checks: Checks) -> Verdict {
    let problem = match &case.input {
        Ok(data) => data.problem(),
        Err(e) => Err(e.clone()),
    };
    match &case.expected {
        Expected::Error(kind) => (judge_error(backend, case, problem, *kind, checks), None),
        Expected::Values {
            loss,
            loss_shape,
            grad,
            lse,
            z_loss,
        } => {
            let problem = match problem {
                Ok(p) => p,
                Err(e) => return (Err(format!("expected numbers, got error: {e}")), None),
            };
            if problem.loss_shape() != *loss_shape {
                return (
                    Err(format!(
                        "loss shape {:?}, expected {loss_shape:?}",
                        problem.loss_shape()
                    )),
                    None,
                );
            }
            let upstream = match (&case.grad_output, problem.reduction()) {
                (Some(g), Reduction::None) => g.clone(),
                (None, Reduction::None) => vec![1.0; problem.loss_len()],
                (_, Reduction::Sum | Reduction::Mean) => vec![1.0],
            };
            let dtype = problem.dtype();
            let mut worst = None;
            let result = (|| {
                let check_forward = |name: &'static str,
                                     got: &Got,
                                     worst: &mut Option<Worst>|
                 -> Result<(), String> {
                    // A loss returned in a half type (PyTorch returns the loss in the logits'
                    // type) is held to that type's tolerance.
                    let loss_tol = if dtype.is_half() && got.loss_in_logits_type {
                        tol.half_grad
                    } else {
                        tol.values
                    };
                    compare(name, "loss", &got.loss, loss, loss_tol, worst)?;
                    if !checks.stats {
                        return Ok(());
                    }
                    if let Some(e) = lse {
                        compare(name, "lse", &got.lse, e, tol.values, worst)?;
                    }
                    if let Some(e) = z_loss {
                        compare(name, "z_loss", &got.z_loss, e, tol.values, worst)?;
                    }
                    Ok(())
                };
                let got = match call(backend, &problem, true, checks.stats, None) {
                    Ok(g) => g,
                    Err(e) => return declined("forward", e, checks),
                };
                check_forward("forward", &got, &mut worst)?;
                // The gradient in the logits' type (PyTorch's behaviour), alone and fused; for
                // half logits also in f32, which the file's tolerance holds.
                let grad_tol = if dtype.is_half() {
                    tol.half_grad
                } else {
                    tol.values
                };
                if let Some(grad) = grad {
                    let got = match call(backend, &problem, false, false, Some((&upstream, dtype)))
                    {
                        Ok(g) => g,
                        Err(e) => return declined("backward", e, checks),
                    };
                    let g = got.grad.as_deref().unwrap_or_default();
                    compare("backward", "grad", g, grad, grad_tol, &mut worst)?;
                }
                let mut fused = vec![("forward_backward", dtype, grad_tol)];
                if dtype.is_half() && checks.f32_grad_of_half {
                    fused.push(("forward_backward_f32", DType::F32, tol.values));
                }
                for (name, grad_dtype, t) in fused {
                    let got = match call(
                        backend,
                        &problem,
                        true,
                        checks.stats,
                        Some((&upstream, grad_dtype)),
                    ) {
                        Ok(g) => g,
                        Err(e) => return declined(name, e, checks),
                    };
                    check_forward(name, &got, &mut worst)?;
                    if let Some(grad) = grad {
                        let g = got.grad.as_deref().unwrap_or_default();
                        compare(name, "grad", g, grad, t, &mut worst)?;
                    }
                }
                match &worst {
                    Some(w) if w.excess > 1.0 => Err("outside tolerance".to_string()),
                    _ => Ok(Judged::Passed(None)),
                }
            })();
            (result, worst)
        }
    }
}

fn judge_error(
    backend: &dyn LossBackend,
    case: &Case,
    problem: Result<crate::Problem<'_>, LossError>,
    kind: ErrorKind,
    checks: Checks,
) -> Result<Judged, String> {
    let check = |call: &str, e: LossError| {
        if e.kind() == kind {
            Ok(Judged::Passed(Some(format!("{kind} ({call}): {e}"))))
        } else {
            Err(format!("{call}: expected {kind}, got {}: {e}", e.kind()))
        }
    };
    let problem = match problem {
        Err(e) => {
            let validated = check("validation", e)?;
            // The error is in the problem's data: a backend's own entry for unvalidated input
            // must refuse it too.
            let raw = match (&case.input, checks.raw_errors) {
                (_, RawErrors::Off) | (Err(_), _) => None,
                (Ok(data), _) => backend.solve_raw(data),
            };
            return match raw {
                None => Ok(validated),
                Some(Ok(())) => Err(format!("raw entry returned numbers, expected {kind}")),
                Some(Err(e)) if checks.unsupported_skips && e.kind() == ErrorKind::Unsupported => {
                    Ok(Judged::Skipped(e.to_string()))
                }
                Some(Err(e)) if checks.raw_errors == RawErrors::AnyKind => {
                    Ok(Judged::Passed(Some(format!("{kind} (raw entry: {e})"))))
                }
                Some(Err(e)) => check("raw entry", e),
            };
        }
        Ok(p) => p,
    };
    let upstream = case
        .grad_output
        .clone()
        .unwrap_or_else(|| vec![1.0; problem.loss_len()]);
    // The error may only surface where the offending input is taken (an upstream gradient of
    // the wrong length is not the forward pass's business), so both calls that take every input
    // must return it.
    let mut note = None;
    for (name, forward) in [("backward", false), ("forward_backward", true)] {
        match call(
            backend,
            &problem,
            forward,
            checks.stats,
            Some((&upstream, problem.dtype())),
        ) {
            Ok(_) => return Err(format!("{name} returned numbers, expected {kind}")),
            Err(e) => note = Some(check(name, e)?),
        }
    }
    Ok(note.unwrap_or(Judged::Passed(None)))
}

/// Runs every case of a file on a backend, with the backend's tolerance for that file, held to
/// [`Checks::FULL`].
pub fn run_file(backend: &dyn LossBackend, file: &VectorFile) -> Report {
    run_file_with(backend, file, Checks::FULL)
}

/// [`run_file`] with the given checks.
pub fn run_file_with(backend: &dyn LossBackend, file: &VectorFile, checks: Checks) -> Report {
    let tolerance = backend.tolerance(file.tolerance);
    Report {
        backend: backend.name().to_string(),
        file: file.path.clone(),
        tolerance,
        cases: file
            .cases
            .iter()
            .map(|c| {
                let half_grad = match &c.input {
                    Ok(d) => backend.tolerance(file.grad_tolerance(d.logits.dtype())),
                    Err(_) => tolerance,
                };
                run_case_with(
                    backend,
                    c,
                    CaseTolerance {
                        values: tolerance,
                        half_grad,
                    },
                    checks,
                )
            })
            .collect(),
    }
}

/// One backend's column of a case table ([`render_table`]): its report on the file, or why it
/// did not run.
#[derive(Debug, Clone)]
pub enum Column<'a> {
    /// The backend ran.
    Ran(&'a Report),
    /// It could not run (the reason).
    Missing(String),
}

/// The case × backend table of one file: `pass` with the worst element's error in units of the
/// tolerance, `pass (error)` for a correctly returned error, `skip` for a case the backend
/// declined as unsupported (when its checks allow that), `FAIL` otherwise; then each backend's
/// summary and its failures. What `loss-bench verify` and the Python kit (`python -m
/// xent.testing`) print.
pub fn render_table(path: &Path, cases: &[String], columns: &[(String, Column<'_>)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "vectors: {}", path.display());
    let width = cases.iter().map(String::len).max().unwrap_or(4).max(4);
    let col = 22;
    let _ = write!(out, "{:width$}", "case");
    for (name, _) in columns {
        let _ = write!(out, "  {name:col$}");
    }
    out.push('\n');
    for (i, case) in cases.iter().enumerate() {
        let _ = write!(out, "{case:width$}");
        for (_, column) in columns {
            let cell = match column {
                Column::Missing(_) => "-".to_string(),
                Column::Ran(r) => {
                    let c = &r.cases[i];
                    match (&c.worst, c.passed, &c.skipped) {
                        (_, true, Some(_)) => "skip (unsupported)".to_string(),
                        (Some(w), true, None) => format!("pass {:.2e}", w.excess),
                        (None, true, None) => "pass (error)".to_string(),
                        (Some(w), false, _) => format!("FAIL {:.2e}", w.excess),
                        (None, false, _) => "FAIL".to_string(),
                    }
                }
            };
            let _ = write!(out, "  {cell:col$}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "(numbers: worst element's error in units of the tolerance; ≤ 1 passes)"
    );
    for (name, column) in columns {
        match column {
            Column::Missing(why) => {
                let _ = writeln!(out, "{name}: not run: {why}");
            }
            Column::Ran(r) => {
                let _ = write!(out, "{r}");
            }
        }
    }
    out
}

/// Runs the vendored vectors (both files) on a backend and panics with the report if any case
/// fails: the one line a backend crate's test needs.
///
/// # Panics
/// When the vectors cannot be read or a case fails.
pub fn assert_conformance(backend: &dyn LossBackend) {
    let files = vendored_vectors().unwrap_or_else(|e| panic!("vendored vectors: {e}"));
    for file in files {
        let report = run_file(backend, file);
        assert!(report.passed(), "{report}");
    }
}
