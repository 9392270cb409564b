//! The conformance kit: reads vector files, runs any backend on every case, and reports.
//!
//! A vector file (`conformance/vectors.json` in this crate is the vendored one; the format is
//! described in `conformance/README.md`) holds cases with float32 inputs and the float64 answer.
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
use crate::error::{ErrorKind, LossError};
use crate::problem::{OwnedTarget, ProblemData, Reduction, shape_from_i64};

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
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// The format tag this kit reads.
pub const FORMAT_TAG: &str = "cross-entropy-conformance/1";

/// The path of the vendored vector file (`LOSS_VECTORS` in the environment overrides it).
pub fn vendored_vectors_path() -> PathBuf {
    std::env::var_os("LOSS_VECTORS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/vectors.json"),
        PathBuf::from,
    )
}

/// The vendored vectors, parsed once per process.
pub fn vendored_vectors() -> Result<&'static VectorFile, &'static FormatError> {
    static VECTORS: OnceLock<Result<VectorFile, FormatError>> = OnceLock::new();
    VECTORS
        .get_or_init(|| VectorFile::load(&vendored_vectors_path()))
        .as_ref()
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
        if format != FORMAT_TAG {
            return Err(top.err(format!("format is {format:?}, expected {FORMAT_TAG:?}")));
        }
        let generator = root
            .get("generator")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let tol = top.field(&root, "tolerance")?;
        let tolerance = Tolerance::new(
            top.field(tol, "rtol")?
                .as_f64()
                .ok_or_else(|| top.err("rtol is not a number"))?,
            top.field(tol, "atol")?
                .as_f64()
                .ok_or_else(|| top.err("atol is not a number"))?,
        );
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
            cases,
        })
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
        let logits = r.floats(r.field(case, "logits")?, "logits")?;
        let shape = r.ints(r.field(case, "shape")?, "shape")?;
        let target_v = r.field(case, "target")?;
        let target_shape = r.ints(r.field(target_v, "shape")?, "target.shape")?;
        let target = if let Some(idx) = target_v.get("indices") {
            OwnedTarget::Indices(r.ints(idx, "target.indices")?)
        } else if let Some(p) = target_v.get("probs") {
            OwnedTarget::Probs(r.floats(p, "target.probs")?)
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
    /// Whether the backend met the expectation.
    pub passed: bool,
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
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failed = self.failures().count();
        writeln!(
            f,
            "{}: {} of {} cases passed on {} (rtol {}, atol {})",
            self.backend,
            self.cases.len() - failed,
            self.cases.len(),
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

/// Runs one case on a backend, with the given tolerance.
pub fn run_case(backend: &dyn LossBackend, case: &Case, tol: Tolerance) -> CaseReport {
    let verdict = guarded(|| judge(backend, case, tol)).unwrap_or_else(|m| (Err(m), None));
    let (result, worst) = verdict;
    let (passed, message) = match result {
        Ok(note) => (true, note),
        Err(m) => (false, Some(m)),
    };
    CaseReport {
        name: case.name.clone(),
        passed,
        message,
        worst,
    }
}

type Verdict = (Result<Option<String>, String>, Option<Worst>);

fn judge(backend: &dyn LossBackend, case: &Case, tol: Tolerance) -> Verdict {
    let problem = match &case.input {
        Ok(data) => data.problem(),
        Err(e) => Err(e.clone()),
    };
    match &case.expected {
        Expected::Error(kind) => (judge_error(backend, case, problem, *kind), None),
        Expected::Values {
            loss,
            loss_shape,
            grad,
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
            let mut worst = None;
            let result = (|| {
                let l = backend
                    .forward(&problem)
                    .map_err(|e| format!("forward: {e}"))?;
                compare("forward", "loss", &l, loss, tol, &mut worst)?;
                if let Some(grad) = grad {
                    let g = backend
                        .backward(&problem, &upstream)
                        .map_err(|e| format!("backward: {e}"))?;
                    compare("backward", "grad", &g, grad, tol, &mut worst)?;
                }
                let (l, g) = backend
                    .forward_backward(&problem, &upstream)
                    .map_err(|e| format!("forward_backward: {e}"))?;
                compare("forward_backward", "loss", &l, loss, tol, &mut worst)?;
                if let Some(grad) = grad {
                    compare("forward_backward", "grad", &g, grad, tol, &mut worst)?;
                }
                match &worst {
                    Some(w) if w.excess > 1.0 => Err("outside tolerance".to_string()),
                    _ => Ok(None),
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
) -> Result<Option<String>, String> {
    let check = |call: &str, e: LossError| {
        if e.kind() == kind {
            Ok(Some(format!("{kind} ({call}): {e}")))
        } else {
            Err(format!("{call}: expected {kind}, got {}: {e}", e.kind()))
        }
    };
    let problem = match problem {
        Err(e) => return check("validation", e),
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
    for (call, outcome) in [
        (
            "backward",
            backend.backward(&problem, &upstream).map(|_| ()),
        ),
        (
            "forward_backward",
            backend.forward_backward(&problem, &upstream).map(|_| ()),
        ),
    ] {
        match outcome {
            Ok(()) => return Err(format!("{call} returned numbers, expected {kind}")),
            Err(e) => note = check(call, e)?,
        }
    }
    Ok(note)
}

/// Runs every case of a file on a backend, with the backend's tolerance for that file.
pub fn run_file(backend: &dyn LossBackend, file: &VectorFile) -> Report {
    let tolerance = backend.tolerance(file.tolerance);
    Report {
        backend: backend.name().to_string(),
        file: file.path.clone(),
        tolerance,
        cases: file
            .cases
            .iter()
            .map(|c| run_case(backend, c, tolerance))
            .collect(),
    }
}

/// Runs the vendored vectors on a backend and panics with the report if any case fails: the
/// one line a backend crate's test needs.
///
/// # Panics
/// When the vectors cannot be read or a case fails.
pub fn assert_conformance(backend: &dyn LossBackend) {
    let file = vendored_vectors().unwrap_or_else(|e| panic!("vendored vectors: {e}"));
    let report = run_file(backend, file);
    assert!(report.passed(), "{report}");
}
