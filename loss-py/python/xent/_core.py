"""The framework-free layer: NumPy arrays in and out, the backend choice, the call into Rust.

Everything here is shared by the NumPy entry (`xent.compute`) and the PyTorch layer
(`xent.cross_entropy`), which hands it raw addresses of the tensors it holds.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _xent
from ._xent import InvalidOption, ShapeMismatch, Unsupported

#: The element types of logits (and of probability targets), by their names.
DTYPES = ("float32", "bfloat16", "float16")
#: The backends a call can name.
BACKENDS = ("cpu", "rayon", "wgpu", "reference")
REDUCTIONS = ("none", "sum", "mean")

_profile: Optional["_xent.Profile"] = None


def use_profile(path: Optional[str]) -> Optional["_xent.Profile"]:
    """Loads a `loss-bench recommend` profile (None: forget it): from then on `backend=None`
    takes the backend measured fastest for the nearest shape on the machine the profile was made
    on. Returns the profile."""
    global _profile
    _profile = None if path is None else _xent.Profile(os.fspath(path))
    return _profile


def backends() -> Tuple[str, ...]:
    """The backends this build has (`wgpu` may still be unavailable: see `unavailable`)."""
    return tuple(_xent.backends())


def unavailable(backend: str, threads: int = 0) -> Optional[str]:
    """None when `backend` can run on this machine, else why not."""
    return _xent.unavailable(backend, threads)


def default_threads() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_backend(
    backend: Optional[str],
    threads: Optional[int],
    op: str,
    positions: int,
    classes: int,
    dtype: str,
    thread_budget: int,
) -> Tuple[str, int]:
    """The `(backend, threads)` a call runs on.

    `backend=None` is the automatic choice: the profile's (`use_profile`) when one is loaded,
    else loss-cpu on one thread when the thread budget is 1, else rayon on `thread_budget`
    threads (which runs small problems on the calling thread, as loss-cpu, by itself). The
    budget is `torch.get_num_threads()` for tensors and every CPU of the process for NumPy
    arrays; `threads` overrides it.
    """
    if backend is None:
        if _profile is not None:
            choice = _profile.choose(op, positions, classes, dtype)
            if choice is not None:
                return choice[0], choice[1]
        budget = thread_budget if threads is None else threads
        return ("cpu", 1) if budget <= 1 else ("rayon", budget)
    if backend not in BACKENDS:
        raise InvalidOption(f"backend {backend!r}: expected one of {', '.join(BACKENDS)} or None")
    if threads is not None and backend != "rayon":
        raise InvalidOption(f"threads= is rayon's pool size; backend {backend!r} takes none")
    if threads is not None and threads < 0:
        raise InvalidOption(f"threads={threads}: expected a count (0: every core)")
    return backend, (threads or 0) if backend == "rayon" else 0


def positions_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    """The shape of a `none` loss and of the LSE: the logits' shape without the class axis."""
    shape = tuple(shape)
    if len(shape) <= 1:
        return ()
    return (shape[0],) + shape[2:]


def loss_shape(shape: Sequence[int], reduction: str) -> Tuple[int, ...]:
    return positions_shape(shape) if reduction == "none" else ()


def empty(shape: Sequence[int], dtype) -> np.ndarray:
    """An uninitialised contiguous array for an output: from the package's pool of reused memory
    when it is large (fresh memory faults a page in per 4 KiB on first write, which costs more
    than the computation; see `loss-py/src/pool.rs`), else from NumPy."""
    dtype = np.dtype(dtype)
    n = 1
    for d in shape:
        n *= d
    nbytes = n * dtype.itemsize
    if nbytes < _xent.POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    return np.asarray(_xent.Block(nbytes)).view(dtype).reshape(shape)


def pooled_bytes() -> int:
    """Idle memory the output pool holds (at most 1 GiB), bytes."""
    return _xent.pooled_bytes()


def release_pool() -> None:
    """Returns the output pool's idle memory to the system."""
    _xent.release_pool()


def _buf(a: Optional[np.ndarray]) -> Tuple[int, int]:
    """`(address, elements)` of a contiguous array (`(0, 0)` for none)."""
    if a is None:
        return (0, 0)
    return (a.ctypes.data, a.size)


def call(
    *,
    backend: str,
    threads: int,
    logits: Tuple[int, int],
    dtype: str,
    shape: Sequence[int],
    target: Tuple[int, int],
    probs: bool,
    target_shape: Sequence[int],
    weight: Tuple[int, int] = (0, 0),
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    position_weight: Tuple[int, int] = (0, 0),
    loss: Tuple[int, int] = (0, 0),
    lse: Tuple[int, int] = (0, 0),
    z_part: Tuple[int, int] = (0, 0),
    grad: Tuple[int, int] = (0, 0),
    grad_dtype: str = "float32",
    grad_output: Tuple[int, int] = (0, 0),
    repeat: int = 1,
) -> float:
    """The one call into Rust: `(address, elements)` of live, contiguous CPU buffers of the
    stated types, the outputs freshly allocated (see `loss-py/src/lib.rs`). Runs the computation
    `repeat` times and returns the backend's time per call, ns."""
    if reduction not in REDUCTIONS:
        raise InvalidOption(f"reduction {reduction!r}: expected one of {', '.join(REDUCTIONS)}")
    return _xent.compute(
        backend, threads, logits, dtype, list(shape), target, probs, list(target_shape), weight,
        int(ignore_index), reduction, float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap), position_weight, loss, lse, z_part, grad,
        grad_dtype, grad_output, repeat,
    )


# --- The NumPy entry --------------------------------------------------------------------------

try:  # NumPy has no bfloat16; ml_dtypes (JAX's) does, and is used when installed.
    import ml_dtypes as _ml_dtypes

    _BF16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is installed with the test extras
    _ml_dtypes = None
    _BF16 = None


def _array_dtype(a: np.ndarray, dtype: Optional[str], what: str) -> str:
    """The element type of a float array: its own, or `dtype` for raw `uint16` bits."""
    if a.dtype == np.uint16:
        if dtype not in ("bfloat16", "float16"):
            raise InvalidOption(
                f"{what} of uint16 bits: say their type with dtype='bfloat16' or 'float16'"
            )
        return dtype
    own = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(a.dtype)
    if own is None and _BF16 is not None and a.dtype == _BF16:
        own = "bfloat16"
    if own is None:
        raise Unsupported(
            f"{what} of dtype {a.dtype}: float32, float16, bfloat16 (ml_dtypes) or uint16 bits"
        )
    if dtype is not None and dtype != own:
        raise InvalidOption(f"dtype={dtype!r} but {what} are {own}")
    return own


def _as(a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` as a contiguous array of `dtype` (bf16 and f16 as uint16 bits), copied only when it
    is not already one."""
    if dtype == "float32":
        return np.ascontiguousarray(a, dtype=np.float32)
    if a.dtype == np.uint16:
        return np.ascontiguousarray(a)
    if dtype == "float16" and a.dtype == np.float16:
        return np.ascontiguousarray(a).view(np.uint16)
    if dtype == "bfloat16" and _BF16 is not None and a.dtype == _BF16:
        return np.ascontiguousarray(a).view(np.uint16)
    # Any other float array: rounded to the type.
    if dtype == "float16":
        return np.ascontiguousarray(np.asarray(a, dtype=np.float16)).view(np.uint16)
    if _BF16 is None:
        raise Unsupported("converting to bfloat16 needs ml_dtypes (or pass uint16 bits)")
    return np.ascontiguousarray(np.asarray(a, dtype=_BF16)).view(np.uint16)


def _out_array(bits: np.ndarray, dtype: str, raw: bool) -> np.ndarray:
    """A half gradient (uint16 bits) as the caller's type: bits again when they passed bits."""
    if dtype == "float32" or raw:
        return bits
    if dtype == "float16":
        return bits.view(np.float16)
    return bits.view(_BF16)


class Result(NamedTuple):
    """What `xent.compute` returns: the loss (`float32`: one value, or one per position for
    `none`), and, when asked for, the gradient, the per-position LSE and the z-loss part."""

    loss: np.ndarray
    grad: Optional[np.ndarray] = None
    lse: Optional[np.ndarray] = None
    z_loss: Optional[np.ndarray] = None


def compute(
    logits,
    target,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    position_weight=None,
    dtype: Optional[str] = None,
    grad: bool = False,
    grad_output=None,
    grad_dtype: Optional[str] = None,
    lse: bool = False,
    z: bool = False,
    backend: Optional[str] = None,
    threads: Optional[int] = None,
) -> Result:
    """Cross-entropy of NumPy arrays, without any framework.

    `logits` are float32, float16 or bfloat16 (an `ml_dtypes.bfloat16` array, or raw `uint16`
    bits with `dtype='bfloat16'` or `'float16'`), of shape `(N, C)`, `(N, C, d1, ...)` or `(C,)`.
    `target` holds class indices (int64; other integer types are converted) of the logits' shape
    without the class axis, or probabilities of the logits' shape (converted to the logits' type).
    `weight` (class weights) and `position_weight` are float32 (converted). The options are
    PyTorch's (`ignore_index`, `reduction`, `label_smoothing`) and the extensions' (`z_loss`,
    `softcap`, `position_weight`).

    With `grad=True` the gradient of `(loss * grad_output).sum()` is returned too (`grad_output`:
    1 by default; one value per position for `none`), in `grad_dtype` (the logits' type by
    default; raw bits in, raw bits out); `lse=True` and `z=True` add the per-position
    log-sum-exp and the z-loss part. Contiguous arrays of the right type are not copied.
    """
    logits = np.asarray(logits)
    ltype = _array_dtype(logits, dtype, "logits")
    raw = logits.dtype == np.uint16
    x = _as(logits, ltype)
    shape = logits.shape
    target = np.asarray(target)
    probs = target.dtype.kind in "fV" or (target.dtype == np.uint16 and target.shape == shape)
    if probs:
        t = _as(target if target.dtype != np.uint16 else target, ltype)
    elif target.dtype.kind in "iub":
        t = np.ascontiguousarray(target, dtype=np.int64)
    else:
        raise ShapeMismatch(f"target of dtype {target.dtype}: class indices or probabilities")
    w = None if weight is None else np.ascontiguousarray(weight, dtype=np.float32).ravel()
    pw = (
        None
        if position_weight is None
        else np.ascontiguousarray(position_weight, dtype=np.float32).ravel()
    )
    positions = int(np.prod(positions_shape(shape), dtype=np.int64))
    classes = shape[1] if len(shape) > 1 else (shape[0] if shape else 0)
    op = "forward_backward" if grad else "forward"
    name, nthreads = choose_backend(backend, threads, op, positions, classes, ltype, default_threads())
    out_loss = np.zeros(loss_shape(shape, reduction), dtype=np.float32)
    out_lse = np.zeros(positions_shape(shape), dtype=np.float32) if lse else None
    out_z = np.zeros(loss_shape(shape, reduction), dtype=np.float32) if z else None
    out_grad, up = None, None
    gtype = grad_dtype or ltype
    if grad:
        if gtype not in DTYPES:
            raise InvalidOption(f"grad_dtype {gtype!r}: expected one of {', '.join(DTYPES)}")
        out_grad = empty(shape, np.float32 if gtype == "float32" else np.uint16)
        if grad_output is None:
            up = np.ones(loss_shape(shape, reduction), dtype=np.float32)
        else:
            up = np.ascontiguousarray(grad_output, dtype=np.float32)
    call(
        backend=name,
        threads=nthreads,
        logits=_buf(x),
        dtype=ltype,
        shape=shape,
        target=_buf(t),
        probs=probs,
        target_shape=target.shape,
        weight=(w.ctypes.data, w.size) if w is not None else (0, 0),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        position_weight=(pw.ctypes.data, pw.size) if pw is not None else (0, 0),
        loss=_buf(out_loss),
        lse=_buf(out_lse),
        z_part=_buf(out_z),
        grad=_buf(out_grad),
        grad_dtype=gtype,
        grad_output=_buf(up),
    )
    return Result(
        loss=out_loss,
        grad=None if out_grad is None else _out_array(out_grad, gtype, raw),
        lse=out_lse,
        z_loss=out_z,
    )
