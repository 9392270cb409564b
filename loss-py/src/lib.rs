//! `xent._xent`: the Rust half of the Python package `xent` (its Python half, in `python/xent`,
//! is the API users call).
//!
//! This crate is thin on purpose: it turns the buffers the Python layer hands it into loss-core
//! problems and outputs and calls a backend's [`LossBackend::compute`]; no formula lives here.
//! It also lends Python loss-core's conformance kit (with a Python callable wrapped as a
//! backend) and loss-profile's backend choice.
//!
//! **The buffer contract.** [`compute`] takes each array as an address and an element count. It
//! is private to the package: its Python layer passes only addresses of contiguous CPU buffers
//! (NumPy arrays or torch tensors) it holds a reference to for the whole call, with their exact
//! element counts and element types, and output buffers it has just allocated (so no output
//! overlaps an input). Lengths that do not fit the problem are loss-core's typed errors, like
//! every other bad input.
//!
//! Large outputs come from a pool of reused memory (`pool.rs`: fresh memory costs a page fault
//! per 4 KiB, more than the computation on this machine).
//!
//! Errors become exceptions of the package (`xent.XentError`, a `ValueError`, and one subclass
//! per [`ErrorKind`] carrying it as `kind`); a panic is caught and becomes an `xent.BackendError`:
//! nothing unwinds into Python. The GIL is released while a backend runs.

mod pool;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use loss_core::conformance::{self, Checks, Column, RawErrors, VectorFile};
use loss_core::{
    DType, Elems, ElemsMut, ErrorKind, LossBackend, LossError, LossOptions, Outputs, OwnedElems,
    OwnedTarget, Problem, ProblemData, Reduction, Target, bf16, f16,
};
use loss_profile::{Op, Profile, WorkspaceBackend};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

create_exception!(
    _xent,
    XentError,
    PyValueError,
    "An error of xent: bad input, or a backend that cannot do what was asked. `kind` names it."
);
create_exception!(
    _xent,
    InvalidTarget,
    XentError,
    "An index target outside [0, C) that is not ignore_index."
);
create_exception!(
    _xent,
    ShapeMismatch,
    XentError,
    "A length or shape that does not fit the problem."
);
create_exception!(
    _xent,
    InvalidOption,
    XentError,
    "An option outside its domain."
);
create_exception!(
    _xent,
    Unsupported,
    XentError,
    "The backend does not implement something the call asks for."
);
create_exception!(
    _xent,
    Unavailable,
    XentError,
    "The backend cannot run on this machine."
);
create_exception!(_xent, BackendError, XentError, "The backend failed.");

/// The package's exception for a loss-core error.
fn to_py(e: LossError) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidTarget => InvalidTarget::new_err(msg),
        ErrorKind::ShapeMismatch => ShapeMismatch::new_err(msg),
        ErrorKind::InvalidOption => InvalidOption::new_err(msg),
        ErrorKind::Unsupported => Unsupported::new_err(msg),
        ErrorKind::Unavailable => Unavailable::new_err(msg),
        _ => BackendError::new_err(msg),
    }
}

/// Runs `f`, turning a panic into a [`LossError::Backend`].
fn unwinding<T>(f: impl FnOnce() -> Result<T, LossError>) -> Result<T, LossError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(LossError::Backend {
            backend: "xent".into(),
            message: format!("panicked: {what}"),
        })
    })
}

/// The backends this process has built, by (name, threads): a rayon pool or a GPU device is
/// built once and shared by every call (and every Python thread).
type Cache = Mutex<HashMap<(String, usize), Arc<dyn LossBackend>>>;

fn cached_backend(name: &str, threads: usize) -> Result<Arc<dyn LossBackend>, LossError> {
    // loss-cpu has no state: the common small call skips the map and its key.
    static CPU: std::sync::OnceLock<Arc<dyn LossBackend>> = std::sync::OnceLock::new();
    if name == "cpu" {
        return Ok(Arc::clone(
            CPU.get_or_init(|| Arc::new(loss_profile::WorkspaceBackend::cpu())),
        ));
    }
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (name.to_string(), if name == "rayon" { threads } else { 0 });
    if let Some(b) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok(Arc::clone(b));
    }
    // Built outside the lock (a device takes a while); a racing build of the same key is
    // dropped in favour of the first one stored.
    let built: Arc<dyn LossBackend> =
        Arc::from(WorkspaceBackend::build(name, Some(threads))?.boxed());
    let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(Arc::clone(map.entry(key).or_insert(built)))
}

/// An array handed over by address (see the crate docs): `len` elements of `T` at `addr`.
///
/// # Safety
/// `addr` must point to `len` initialised elements of `T` that stay alive, and are not written
/// by anyone else, while the returned slice is used.
unsafe fn view<'a, T>(addr: usize, len: usize, what: &'static str) -> Result<&'a [T], LossError> {
    if len == 0 {
        return Ok(&[]);
    }
    check_address::<T>(addr, what)?;
    // SAFETY: non-null and aligned (checked); the caller vouches for the rest.
    Ok(unsafe { std::slice::from_raw_parts(addr as *const T, len) })
}

/// [`view`], writable.
///
/// # Safety
/// As for [`view`], and nothing else reads or writes the elements meanwhile.
unsafe fn view_mut<'a, T>(
    addr: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a mut [T], LossError> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_address::<T>(addr, what)?;
    // SAFETY: non-null and aligned (checked); the caller vouches for the rest.
    Ok(unsafe { std::slice::from_raw_parts_mut(addr as *mut T, len) })
}

fn check_address<T>(addr: usize, what: &'static str) -> Result<(), LossError> {
    if addr == 0 || !addr.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(LossError::ShapeMismatch {
            what,
            expected: format!(
                "a non-null address aligned to {} bytes",
                std::mem::align_of::<T>()
            ),
            got: format!("{addr:#x}"),
        });
    }
    Ok(())
}

fn dtype(name: &str) -> Result<DType, LossError> {
    DType::parse(name).ok_or_else(|| LossError::Unsupported {
        backend: "xent".into(),
        feature: format!("element type {name:?} (float32, bfloat16 and float16 are)"),
    })
}

/// # Safety
/// As for [`view`].
unsafe fn elems<'a>(
    addr: usize,
    len: usize,
    dt: DType,
    what: &'static str,
) -> Result<Elems<'a>, LossError> {
    // SAFETY: forwarded.
    unsafe {
        Ok(match dt {
            DType::F32 => Elems::F32(view::<f32>(addr, len, what)?),
            DType::Bf16 => Elems::Bf16(view::<bf16>(addr, len, what)?),
            DType::F16 => Elems::F16(view::<f16>(addr, len, what)?),
        })
    }
}

/// # Safety
/// As for [`view_mut`].
unsafe fn elems_mut<'a>(
    addr: usize,
    len: usize,
    dt: DType,
    what: &'static str,
) -> Result<ElemsMut<'a>, LossError> {
    // SAFETY: forwarded.
    unsafe {
        Ok(match dt {
            DType::F32 => ElemsMut::F32(view_mut::<f32>(addr, len, what)?),
            DType::Bf16 => ElemsMut::Bf16(view_mut::<bf16>(addr, len, what)?),
            DType::F16 => ElemsMut::F16(view_mut::<f16>(addr, len, what)?),
        })
    }
}

/// A buffer as the Python layer passes it: `(address, element count)`, `(0, 0)` for none.
type Buf = (usize, usize);

/// Computes what is asked for on a backend. Every array is a [`Buf`] (crate docs, "The buffer
/// contract"): `logits` of `logits_dtype` with `shape`; the target (`int64` indices of
/// `target_shape`, or probabilities of the logits' type and shape when `probs`); class weights
/// and position weights (`float32`, `(0, 0)`: none); the outputs `loss`, `lse`, `z_loss`
/// (`float32`, `(0, 0)`: not asked for) and `grad` (of `grad_dtype`, for the upstream gradient
/// `grad_output`, `float32`; `(0, 0)`: not asked for). `backend` is `cpu`, `rayon` (on
/// `threads` threads, 0: every core), `wgpu` or `reference`.
///
/// Returns the time the backend took per call, in ns: the computation runs `repeat` times on
/// the same buffers (the benchmark's measure of the Rust call itself, without Python).
#[pyfunction]
#[pyo3(signature = (
    backend, threads, logits, logits_dtype, shape, target, probs, target_shape, weight,
    ignore_index, reduction, label_smoothing, z_loss, softcap, position_weight, loss, lse,
    z_part, grad, grad_dtype, grad_output, repeat = 1
))]
#[allow(clippy::too_many_arguments)] // one argument per field of a problem and its outputs
fn compute(
    py: Python<'_>,
    backend: &str,
    threads: usize,
    logits: Buf,
    logits_dtype: &str,
    shape: Vec<usize>,
    target: Buf,
    probs: bool,
    target_shape: Vec<usize>,
    weight: Buf,
    ignore_index: i64,
    reduction: &str,
    label_smoothing: f32,
    z_loss: f32,
    softcap: Option<f32>,
    position_weight: Buf,
    loss: Buf,
    lse: Buf,
    z_part: Buf,
    grad: Buf,
    grad_dtype: &str,
    grad_output: Buf,
    repeat: usize,
) -> PyResult<f64> {
    let run = || -> Result<f64, LossError> {
        let dt = dtype(logits_dtype)?;
        let reduction = Reduction::parse(reduction)?;
        let backend = cached_backend(backend, threads)?;
        // SAFETY: the buffer contract of the crate docs: the Python layer passes live,
        // contiguous buffers of these element counts and types, held for the whole call, the
        // outputs freshly allocated (disjoint from the inputs and from each other).
        unsafe {
            let x = elems(logits.0, logits.1, dt, "logits")?;
            let target = if probs {
                Target::Probs {
                    data: elems(target.0, target.1, dt, "target")?,
                    shape: &target_shape,
                }
            } else {
                Target::Indices {
                    data: view::<i64>(target.0, target.1, "target")?,
                    shape: &target_shape,
                }
            };
            let weight = (weight.1 > 0 || weight.0 != 0)
                .then(|| view::<f32>(weight.0, weight.1, "weight"))
                .transpose()?;
            let position_weight = (position_weight.1 > 0 || position_weight.0 != 0)
                .then(|| view::<f32>(position_weight.0, position_weight.1, "position_weight"))
                .transpose()?;
            let options = LossOptions::new()
                .maybe_weight(weight)
                .ignore_index(ignore_index)
                .reduction(reduction)
                .label_smoothing(label_smoothing)
                .z_loss(z_loss)
                .softcap(softcap)
                .position_weight(position_weight);
            let problem = Problem::new(x, &shape, target, options)?;
            let grad_dtype = dtype(grad_dtype)?;
            let start = std::time::Instant::now();
            for _ in 0..repeat.max(1) {
                let mut out = Outputs::new();
                if loss.0 != 0 {
                    out = out.loss(view_mut::<f32>(loss.0, loss.1, "loss")?);
                }
                if lse.0 != 0 {
                    out = out.lse(view_mut::<f32>(lse.0, lse.1, "lse")?);
                }
                if z_part.0 != 0 {
                    out = out.z_loss(view_mut::<f32>(z_part.0, z_part.1, "z_loss")?);
                }
                if grad.0 != 0 {
                    let g = elems_mut(grad.0, grad.1, grad_dtype, "grad")?;
                    let up = view::<f32>(grad_output.0, grad_output.1, "grad_output")?;
                    out = out.grad(up, g);
                }
                backend.compute(&problem, out)?;
            }
            Ok(start.elapsed().as_secs_f64() * 1e9 / repeat.max(1) as f64)
        }
    };
    py.detach(|| unwinding(run)).map_err(to_py)
}

/// Whether a backend can run here: `None`, or why not.
#[pyfunction]
#[pyo3(signature = (backend, threads = 0))]
fn unavailable(py: Python<'_>, backend: &str, threads: usize) -> Option<String> {
    py.detach(|| unwinding(|| cached_backend(backend, threads)))
        .err()
        .map(|e| e.to_string())
}

/// The names of the backends `compute` takes.
#[pyfunction]
fn backends() -> Vec<&'static str> {
    WorkspaceBackend::NAMES.to_vec()
}

/// A `loss-bench recommend` profile: the measured fastest backend per shape.
#[pyclass(name = "Profile", module = "xent._xent", frozen)]
struct PyProfile {
    profile: Profile,
    path: PathBuf,
}

#[pymethods]
impl PyProfile {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        let profile = Profile::load(&path).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyProfile { profile, path })
    }

    /// The `(backend, threads)` measured fastest for the nearest shape: `op` is `forward`,
    /// `backward` or `forward_backward`; `positions` and `classes` the problem's; `dtype` the
    /// logits' (`float32`, `bfloat16`, `float16`). `None` for an empty profile.
    fn choose(
        &self,
        op: &str,
        positions: usize,
        classes: usize,
        dtype: &str,
    ) -> PyResult<Option<(String, usize)>> {
        let op = Op::parse(op).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown op {op:?}: forward, backward or forward_backward"
            ))
        })?;
        let dt = self::dtype(dtype).map_err(to_py)?;
        Ok(self
            .profile
            .choose_for(op, positions, classes, dt)
            .map(|e| (e.backend.clone(), e.threads)))
    }

    /// The winners as a batch × classes map per op.
    fn render(&self) -> String {
        self.profile.render()
    }

    fn __repr__(&self) -> String {
        format!(
            "Profile({:?}: {} cells measured on {})",
            self.path,
            self.profile.entries.len(),
            self.profile.machine
        )
    }
}

/// What a Python implementation takes beyond `torch.nn.functional.cross_entropy`'s arguments.
#[derive(Debug, Clone, Copy)]
struct Takes {
    z_loss: bool,
    softcap: bool,
    position_weight: bool,
}

/// A Python callable with `torch.nn.functional.cross_entropy`'s signature, as a backend of the
/// conformance kit: each call goes through `xent.testing._call`, which builds torch tensors from
/// the problem, calls the implementation, and runs autograd for the gradient.
struct PyImpl {
    name: String,
    callable: Py<PyAny>,
    takes: Takes,
}

impl PyImpl {
    fn unsupported(&self, feature: impl Into<String>) -> LossError {
        LossError::Unsupported {
            backend: self.name.clone(),
            feature: feature.into(),
        }
    }

    /// The extension a problem uses that the implementation does not take, if any.
    fn declines(&self, data: &ProblemData) -> Option<LossError> {
        let missing = [
            (data.z_loss != 0.0 && !self.takes.z_loss, "z_loss"),
            (data.softcap.is_some() && !self.takes.softcap, "softcap"),
            (
                data.position_weight.is_some() && !self.takes.position_weight,
                "position_weight",
            ),
        ];
        missing
            .iter()
            .find(|(m, _)| *m)
            .map(|(_, name)| self.unsupported(format!("the keyword `{name}`")))
    }

    /// Calls the implementation on `data` (the gradient for `upstream` when given: empty for
    /// ones of the loss's shape); its loss (`float32`) and gradient (raw bytes of the logits'
    /// type).
    fn call(
        &self,
        data: &ProblemData,
        upstream: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Option<Vec<u8>>), LossError> {
        Python::attach(|py| -> PyResult<(Vec<f32>, Option<Vec<u8>>)> {
            let kw = PyDict::new(py);
            kw.set_item("logits", PyBytes::new(py, data.logits.view().bytes()))?;
            kw.set_item("dtype", data.logits.dtype().torch_name())?;
            kw.set_item("shape", data.shape.clone())?;
            match &data.target {
                OwnedTarget::Indices(t) => kw.set_item("indices", t.clone())?,
                OwnedTarget::Probs(p) => {
                    kw.set_item("probs", PyBytes::new(py, p.view().bytes()))?
                }
            }
            kw.set_item("target_shape", data.target_shape.clone())?;
            kw.set_item("weight", data.weight.clone())?;
            kw.set_item("ignore_index", data.ignore_index)?;
            kw.set_item("reduction", data.reduction.as_str())?;
            kw.set_item("label_smoothing", data.label_smoothing)?;
            kw.set_item("z_loss", data.z_loss)?;
            kw.set_item("softcap", data.softcap)?;
            kw.set_item("position_weight", data.position_weight.clone())?;
            kw.set_item("grad_output", upstream.map(<[f32]>::to_vec))?;
            let helper = py.import("xent.testing")?.getattr("_call")?;
            let out = helper.call((self.callable.bind(py),), Some(&kw))?;
            let (loss, grad): (Vec<f32>, Option<Vec<u8>>) = out.extract()?;
            Ok((loss, grad))
        })
        .map_err(|e| Python::attach(|py| self.error_of(py, e)))
    }

    /// An exception of the implementation as a loss-core error: the package's exceptions keep
    /// their kind; any other is a backend error with the exception's type and message.
    fn error_of(&self, py: Python<'_>, e: PyErr) -> LossError {
        let v = e.value(py);
        let kind = v
            .getattr("kind")
            .ok()
            .and_then(|k| k.extract::<String>().ok());
        let message = v.str().map_or_else(|_| "?".into(), |s| s.to_string());
        let type_name = v
            .get_type()
            .name()
            .map_or_else(|_| "exception".into(), |n| n.to_string());
        let owner = self.name.clone();
        match kind.as_deref().and_then(ErrorKind::parse) {
            // (The library's variant has fields, not a message: the kit judges the kind.)
            Some(ErrorKind::InvalidTarget) => LossError::InvalidTarget {
                position: 0,
                target: 0,
                classes: 0,
                ignore_index: 0,
            },
            Some(ErrorKind::ShapeMismatch) => LossError::ShapeMismatch {
                what: "input",
                expected: String::new(),
                got: message,
            },
            Some(ErrorKind::InvalidOption) => LossError::InvalidOption {
                option: "option",
                reason: message,
            },
            Some(ErrorKind::Unsupported) => LossError::Unsupported {
                backend: owner,
                feature: message,
            },
            _ => LossError::Backend {
                backend: owner,
                message: format!("{type_name}: {message}"),
            },
        }
    }
}

impl LossBackend for PyImpl {
    fn name(&self) -> &str {
        &self.name
    }

    fn loss_in_logits_type(&self) -> bool {
        true
    }

    fn compute(&self, problem: &Problem<'_>, out: Outputs<'_>) -> Result<(), LossError> {
        problem.check_outputs(&out)?;
        if out.wants_stats() {
            return Err(self.unsupported("the LSE and z-loss outputs"));
        }
        let data = ProblemData::of(problem);
        if let Some(e) = self.declines(&data) {
            return Err(e);
        }
        let Outputs { loss, grad, .. } = out;
        if let Some(g) = &grad
            && g.grad.dtype() != problem.dtype()
        {
            return Err(self.unsupported("a gradient in another type than the logits'"));
        }
        let (got_loss, got_grad) = self.call(&data, grad.as_ref().map(|g| g.grad_output))?;
        if let Some(l) = loss {
            if got_loss.len() != l.len() {
                return Err(LossError::ShapeMismatch {
                    what: "the implementation's loss",
                    expected: format!("{} values", l.len()),
                    got: format!("{} values", got_loss.len()),
                });
            }
            l.copy_from_slice(&got_loss);
        }
        if let Some(mut g) = grad {
            let bytes = got_grad.ok_or_else(|| LossError::Backend {
                backend: self.name.clone(),
                message: "no gradient came back".into(),
            })?;
            let values = OwnedElems::from_bytes(problem.dtype(), &bytes).ok_or_else(|| {
                LossError::ShapeMismatch {
                    what: "the implementation's gradient",
                    expected: format!("{} bytes", problem.len() * problem.dtype().size()),
                    got: format!("{} bytes", bytes.len()),
                }
            })?;
            if values.len() != g.grad.len() {
                return Err(LossError::ShapeMismatch {
                    what: "the implementation's gradient",
                    expected: format!("{} values", g.grad.len()),
                    got: format!("{} values", values.len()),
                });
            }
            g.grad.copy_from(values.view());
        }
        Ok(())
    }

    /// The implementation on data that validation refuses: it must raise (the kit judges
    /// how). Forward and backward (an upstream gradient of ones) both run.
    fn solve_raw(&self, data: &ProblemData) -> Option<Result<(), LossError>> {
        if let Some(e) = self.declines(data) {
            return Some(Err(e));
        }
        Some(self.call(data, Some(&[])).map(|_| ()))
    }
}

/// Runs vector files through a Python implementation with `torch.nn.functional.cross_entropy`'s
/// signature (loss-core's conformance kit: the same reader, judge and table as `loss-bench
/// verify`). `takes` names the extension keywords it accepts (`z_loss`, `softcap`,
/// `position_weight`); a case needing one it does not take is skipped unless `strict`.
/// Error cases are run through it too: it must raise, an `xent` exception of the right kind
/// when `exact_errors`, any exception otherwise. Returns the rendered tables and whether every
/// case passed. No `paths`: the two vendored files.
#[pyfunction]
#[pyo3(signature = (implementation, name, takes, paths = None, strict = false, exact_errors = false))]
fn run_vectors(
    py: Python<'_>,
    implementation: Py<PyAny>,
    name: String,
    takes: Vec<String>,
    paths: Option<Vec<PathBuf>>,
    strict: bool,
    exact_errors: bool,
) -> PyResult<(String, bool)> {
    let files: Vec<VectorFile> = match paths {
        Some(paths) => paths
            .iter()
            .map(|p| VectorFile::load(p).map_err(|e| PyValueError::new_err(e.to_string())))
            .collect::<PyResult<_>>()?,
        None => conformance::vendored_vectors()
            .map_err(|e| PyValueError::new_err(e.to_string()))?
            .to_vec(),
    };
    let backend = PyImpl {
        name,
        callable: implementation,
        takes: Takes {
            z_loss: takes.iter().any(|t| t == "z_loss"),
            softcap: takes.iter().any(|t| t == "softcap"),
            position_weight: takes.iter().any(|t| t == "position_weight"),
        },
    };
    let checks = Checks {
        stats: false,
        f32_grad_of_half: false,
        raw_errors: if exact_errors {
            RawErrors::ExactKind
        } else {
            RawErrors::AnyKind
        },
        unsupported_skips: !strict,
    };
    // The kit calls back into Python for every case, so it runs attached, on this thread.
    let _ = py;
    let mut text = String::new();
    let mut passed = true;
    for file in &files {
        let report = conformance::run_file_with(&backend, file, checks);
        passed &= report.passed();
        let cases: Vec<String> = file.cases.iter().map(|c| c.name.clone()).collect();
        text.push_str(&conformance::render_table(
            &file.path,
            &cases,
            &[(backend.name.clone(), Column::Ran(&report))],
        ));
    }
    Ok((text, passed))
}

/// The vendored vector files (paths into the checkout this package was built from).
#[pyfunction]
fn vendored_vectors() -> Vec<PathBuf> {
    conformance::vendored_vectors_paths()
}

#[pymodule]
fn _xent(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(compute, m)?)?;
    m.add_function(wrap_pyfunction!(unavailable, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(run_vectors, m)?)?;
    m.add_function(wrap_pyfunction!(vendored_vectors, m)?)?;
    m.add_class::<PyProfile>()?;
    m.add_class::<pool::Block>()?;
    m.add_function(wrap_pyfunction!(pool::pooled_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(pool::release_pool, m)?)?;
    m.add("POOL_MIN_BYTES", pool::MIN_BYTES)?;
    let kinds: [(&str, Bound<'_, pyo3::types::PyType>, Option<&str>); 7] = [
        ("XentError", py.get_type::<XentError>(), None),
        (
            "InvalidTarget",
            py.get_type::<InvalidTarget>(),
            Some("invalid_target"),
        ),
        (
            "ShapeMismatch",
            py.get_type::<ShapeMismatch>(),
            Some("shape_mismatch"),
        ),
        (
            "InvalidOption",
            py.get_type::<InvalidOption>(),
            Some("invalid_option"),
        ),
        (
            "Unsupported",
            py.get_type::<Unsupported>(),
            Some("unsupported"),
        ),
        (
            "Unavailable",
            py.get_type::<Unavailable>(),
            Some("unavailable"),
        ),
        (
            "BackendError",
            py.get_type::<BackendError>(),
            Some("backend"),
        ),
    ];
    for (name, ty, kind) in kinds {
        ty.setattr("kind", kind)?;
        ty.setattr("__module__", "xent")?;
        m.add(name, ty)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
