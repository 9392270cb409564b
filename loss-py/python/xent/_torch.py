"""The PyTorch layer: `xent.cross_entropy` and `xent.CrossEntropyLoss`, a drop-in for
`torch.nn.functional.cross_entropy` on CPU tensors.

Three ways through, one computation (`_run`, which calls Rust on the tensors' memory):

- **No gradient needed** (inference, `torch.no_grad()`, an input that does not require grad):
  `_run` directly — the loss alone, in one read of the logits.
- **Eager training**: a `torch.autograd.Function` whose forward computes the loss and the
  gradient for an upstream gradient of 1 in the same fused pass (the gradient kept on the
  context, not saved as a tensor output, so autograd neither materialises a gradient for it nor
  clones it); its backward returns that gradient as it is when the upstream gradient is exactly
  1 (what `loss.backward()` passes), else computes the gradient for that upstream gradient in
  one fused pass, rounded once to the input's type.
- **`torch.compile`**: two custom operators (`torch.library.custom_op`), which a compiled graph
  holds as opaque nodes (no graph break with `fullgraph=True`):
  `xent::cross_entropy(input, target, …) -> loss` and
  `xent::cross_entropy_backward(input, target, …, grad_output) -> grad_input`, the first's
  gradient registered as the second (`register_autograd`), each with a fake implementation for
  tracing. A graph cannot look at values, so its backward always runs the fused pass.

Why not the custom operator eagerly too: its Python dispatch costs about 40 µs a call, eight
times PyTorch's whole 4×3 cross-entropy.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import _core, _xent
from ._xent import InvalidOption, ShapeMismatch, Unsupported

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_REDUCTIONS = frozenset(_core.REDUCTIONS)
_NONE = (0, 0)


def _empty(shape, dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor for an output: large ones from the package's pool of reused memory
    (`xent._core.empty`), wrapped without a copy; they go back to the pool when freed."""
    n = 1
    for d in shape:
        n *= d
    if n * dtype.itemsize < _xent.POOL_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    raw = torch.from_numpy(_core.empty((n * dtype.itemsize,), "u1"))
    return raw.view(dtype).view(shape)


def _addr(t: Optional[Tensor]) -> Tuple[int, int]:
    return _NONE if t is None else (t.data_ptr(), t.numel())


def _backend(backend: str, threads: int, op: str, shape, dtype: str) -> Tuple[str, int]:
    """The backend of a call ("auto": the automatic choice, with torch's thread budget)."""
    if backend == "auto" and _core._profile is None and threads < 0:
        n = torch.get_num_threads()
        return ("cpu", 0) if n <= 1 else ("rayon", n)
    positions = 1
    for d in _core.positions_shape(shape):
        positions *= d
    classes = shape[1] if len(shape) > 1 else (shape[0] if shape else 0)
    return _core.choose_backend(
        None if backend == "auto" else backend,
        None if threads < 0 else threads,
        op,
        positions,
        classes,
        dtype,
        torch.get_num_threads(),
    )


def _run(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    position_weight: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: Optional[float],
    backend: str,
    threads: int,
    want_loss: bool,
    grad_output: Optional[Tensor],
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Calls Rust on tensors the wrapper prepared (contiguous, on the CPU, of the kernel's
    types): the loss (float32) when `want_loss`, and the gradient (the input's type) for
    `grad_output` (float32) when given."""
    shape = input.shape
    op = "forward" if grad_output is None else ("forward_backward" if want_loss else "backward")
    dtype = _DTYPE_NAMES[input.dtype]
    name, nthreads = _backend(backend, threads, op, shape, dtype)
    # (From NumPy: half the cost of `torch.empty` for a 0-d tensor, which a small call notices.)
    loss = (
        torch.from_numpy(np.empty(_core.loss_shape(shape, reduction), dtype=np.float32))
        if want_loss
        else None
    )
    grad = None if grad_output is None else _empty(shape, input.dtype)
    _xent.compute(
        name, nthreads, (input.data_ptr(), input.numel()), dtype, shape,
        (target.data_ptr(), target.numel()), target.is_floating_point(), target.shape,
        _addr(weight), ignore_index, reduction, label_smoothing, z_loss, softcap,
        _addr(position_weight), _addr(loss), _NONE, _NONE, _addr(grad), dtype,
        _addr(grad_output), 1,
    )
    return loss, grad


# --- Eager autograd -------------------------------------------------------------------------


class _CrossEntropy(torch.autograd.Function):
    """Eager training: the gradient computed in the forward pass (see the module docs)."""

    @staticmethod
    def forward(ctx, input, target, weight, position_weight, options):
        ignore_index, reduction, label_smoothing, z_loss, softcap, backend, threads = options
        ones = torch.ones(_core.loss_shape(input.shape, reduction), dtype=torch.float32)
        loss, grad = _run(input, target, weight, position_weight, ignore_index, reduction,
                          label_smoothing, z_loss, softcap, backend, threads, True, ones)
        ctx.grad = grad
        ctx.save_for_backward(input, target, weight, position_weight)
        ctx.options = options
        return loss if input.dtype is torch.float32 else loss.to(input.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grad, ctx.grad = ctx.grad, None  # one owner: autograd takes it without a copy
        if grad is None or not bool((grad_loss == 1).all()):
            input, target, weight, position_weight = ctx.saved_tensors
            up = grad_loss.to(torch.float32).contiguous()
            _, grad = _run(input, target, weight, position_weight, *ctx.options, False, up)
        return grad, None, None, None, None


# --- Custom operators, for torch.compile -----------------------------------------------------


@torch.library.custom_op("xent::cross_entropy", mutates_args=(), device_types="cpu")
def _cross_entropy_op(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    position_weight: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: Optional[float],
    backend: str,
    threads: int,
) -> Tensor:
    loss, _ = _run(input, target, weight, position_weight, ignore_index, reduction,
                   label_smoothing, z_loss, softcap, backend, threads, True, None)
    return loss if input.dtype is torch.float32 else loss.to(input.dtype)


@_cross_entropy_op.register_fake
def _(input, target, weight, position_weight, ignore_index, reduction, label_smoothing, z_loss,
      softcap, backend, threads):
    return input.new_empty(_core.loss_shape(input.shape, reduction))


@torch.library.custom_op("xent::cross_entropy_backward", mutates_args=(), device_types="cpu")
def _cross_entropy_backward_op(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    position_weight: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: Optional[float],
    backend: str,
    threads: int,
    grad_output: Tensor,
) -> Tensor:
    up = grad_output.detach().to(torch.float32).contiguous()
    _, grad = _run(input, target, weight, position_weight, ignore_index, reduction,
                   label_smoothing, z_loss, softcap, backend, threads, False, up)
    return grad


@_cross_entropy_backward_op.register_fake
def _(input, target, weight, position_weight, ignore_index, reduction, label_smoothing, z_loss,
      softcap, backend, threads, grad_output):
    return input.new_empty(input.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.options = inputs[4:]


def _backward(ctx, grad_loss: Tensor):
    input, target, weight, position_weight = ctx.saved_tensors
    grad_input = torch.ops.xent.cross_entropy_backward(
        input, target, weight, position_weight, *ctx.options, grad_loss
    )
    return grad_input, None, None, None, None, None, None, None, None, None, None


_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


# --- The public functions --------------------------------------------------------------------


def _check_device(*tensors: Optional[Tensor]) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            raise Unsupported(
                f"a tensor on {t.device}: xent runs on CPU tensors (its GPU backend, wgpu, takes "
                "host memory: move the tensors to the CPU, or use PyTorch's own loss on the device)"
            )


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average=None,
    ignore_index: int = -100,
    reduce=None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    position_weight: Optional[Tensor] = None,
    backend: Optional[str] = None,
    threads: Optional[int] = None,
) -> Tensor:
    """`torch.nn.functional.cross_entropy`, computed by this workspace's backends.

    Same arguments, shapes, dtypes and results as PyTorch's (index or probability targets, K-dim
    and unbatched input, class weights, `ignore_index`, `reduction`, `label_smoothing`; the
    deprecated `size_average` and `reduce` are PyTorch's legacy way of saying `reduction`), with
    the loss in the input's dtype and a gradient in it, plus the extensions: `z_loss` (PaLM's
    `z·LSE²` per valid position), `softcap` (Gemma 2's `a·tanh(x/a)` on the logits first),
    `position_weight` (one weight per position). `backend`: `"cpu"`, `"rayon"` (on `threads`
    threads), `"wgpu"`, `"reference"`, or None for the automatic choice (`xent.choose_backend`;
    the thread budget is `torch.get_num_threads()`).

    CPU tensors of float32, bfloat16 and float16 are read in place when contiguous (others are
    copied); float64 input is computed in float32 (the loss and gradient returned in float64:
    expect float32's accuracy). Targets: int64 indices (other integer types are converted) or
    probabilities (converted to the input's type). Bad input raises an exception of `xent` (a
    `ValueError` with a `kind`) before anything is computed.
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise InvalidOption(
            f"reduction {reduction!r}: expected one of {', '.join(_core.REDUCTIONS)}"
        )
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise ShapeMismatch("input and target must be tensors")
    if threads is not None and threads < 0:
        raise InvalidOption(f"threads={threads}: expected a count (0: every core)")
    if not (input.is_cpu and target.is_cpu):
        _check_device(input, target)
    out_dtype = input.dtype
    x = input
    if out_dtype not in _DTYPE_NAMES:
        if out_dtype != torch.float64:
            raise Unsupported(f"input of dtype {out_dtype}: float32, bfloat16, float16 or float64")
        x = input.to(torch.float32)
    if not x.is_contiguous():
        x = x.contiguous()
    if target.dtype == torch.int64:
        t = target if target.is_contiguous() else target.contiguous()
    elif target.is_floating_point():
        if target.requires_grad:
            raise Unsupported("a gradient with respect to the target (detach the probabilities)")
        t = target.to(x.dtype).contiguous()
    elif target.is_complex() or target.dtype == torch.bool:
        raise ShapeMismatch(f"target of dtype {target.dtype}: class indices or probabilities")
    else:
        t = target.to(torch.int64).contiguous()
    w = weight
    if w is not None:
        _check_device(w)
        w = w.detach().to(torch.float32).contiguous()
    pw = position_weight
    if pw is not None:
        _check_device(pw)
        pw = pw.detach().to(torch.float32).contiguous().reshape(-1)
    options = (
        int(ignore_index),
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        "auto" if backend is None else backend,
        -1 if threads is None else int(threads),
    )
    if torch.compiler.is_compiling():
        loss = torch.ops.xent.cross_entropy(x, t, w, pw, *options)
    elif input.requires_grad and torch.is_grad_enabled():
        loss = _CrossEntropy.apply(x, t, w, pw, options)
    else:
        loss, _ = _run(x, t, w, pw, *options, True, None)
    return loss if loss.dtype is out_dtype else loss.to(out_dtype)


def _legacy_reduction(size_average, reduce) -> str:
    """PyTorch's `_Reduction.legacy_get_string`: `reduce=False` is `none`; else `size_average`
    (default True) picks `mean` over `sum`."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


class CrossEntropyLoss(torch.nn.Module):
    """`torch.nn.CrossEntropyLoss` on `xent.cross_entropy`: the same arguments (the class
    `weight` kept as a buffer), plus the extensions and the backend, keyword-only."""

    __constants__ = ["ignore_index", "reduction", "label_smoothing"]

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        backend: Optional[str] = None,
        threads: Optional[int] = None,
    ) -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        if reduction not in _REDUCTIONS:
            raise InvalidOption(
                f"reduction {reduction!r}: expected one of {', '.join(_core.REDUCTIONS)}"
            )
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.backend = backend
        self.threads = threads

    def forward(
        self, input: Tensor, target: Tensor, position_weight: Optional[Tensor] = None
    ) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            position_weight=position_weight,
            backend=self.backend,
            threads=self.threads,
        )

    def extra_repr(self) -> str:
        parts: List[str] = [f"reduction={self.reduction!r}"]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.backend is not None:
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
