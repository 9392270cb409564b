"""The conformance kit for Python implementations of cross-entropy.

Runs the PyTorch-generated vector files (the two vendored with this project, or any file of
their formats) through any Python callable with `torch.nn.functional.cross_entropy`'s signature
— a Triton kernel's wrapper, a CUDA extension, `xent.cross_entropy` itself — and prints the same
case table as `loss-bench verify`::

    python -m xent.testing --impl mymodule:my_cross_entropy [--vectors FILE ...] [--strict]

It exits non-zero when a case fails. The kit is loss-core's own (the same reader, the same
judge, the same tolerances and table as the Rust backends get): the callable is wrapped as a
backend whose every call comes back here (`_call`), which builds torch tensors from the case,
calls the implementation (on the CPU, or on `--device`) and runs autograd for the gradient.

What an implementation with PyTorch's signature can be asked: the loss (compared in the input's
type: PyTorch returns a half loss for half input, held to the half type's tolerance) and the
gradient through autograd (in the input's type). Class weights and position weights come as
float32 tensors (the vectors' answers use those exact values). Format 2's extensions are passed as keywords —
`z_loss`, `softcap`, `position_weight` — only to an implementation whose signature takes them;
cases needing one it does not take are reported `skip (unsupported)` (a failure with
`--strict`). Error cases must raise: with `--exact-errors` an exception of `xent` of the right
kind (`xent.InvalidTarget`, `xent.ShapeMismatch`, `xent.InvalidOption`), otherwise any exception.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from . import _xent

EXTENSIONS = ("z_loss", "softcap", "position_weight")

_device = "cpu"


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _tensor(raw: bytes, dtype: str):
    import torch

    if not raw:
        return torch.empty(0, dtype=_torch_dtype(dtype))
    return torch.frombuffer(bytearray(raw), dtype=_torch_dtype(dtype)).clone()


def _call(
    impl: Callable,
    *,
    logits: bytes,
    dtype: str,
    shape: Sequence[int],
    target_shape: Sequence[int],
    weight: Optional[List[float]],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: Optional[float],
    position_weight: Optional[List[float]],
    grad_output: Optional[List[float]],
    indices: Optional[List[int]] = None,
    probs: Optional[bytes] = None,
) -> Tuple[List[float], Optional[bytes]]:
    """One call of the kit (from Rust): the implementation's loss as float32 values, and its
    gradient's raw bytes in the input's type (when `grad_output` is given; empty: ones of the
    loss's shape). Shapes may not match the data on purpose (error cases): reshape errors are
    the implementation's to raise, so data is passed flat where it cannot be shaped."""
    import torch

    x = _tensor(logits, dtype)
    try:
        x = x.reshape(tuple(shape))
    except RuntimeError:
        pass
    if indices is not None:
        t = torch.tensor(indices, dtype=torch.int64)
    else:
        t = _tensor(probs, dtype)
    try:
        t = t.reshape(tuple(target_shape))
    except RuntimeError:
        pass
    x = x.to(_device).requires_grad_(grad_output is not None)
    t = t.to(_device)
    kwargs = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    if weight is not None:
        # float32, as the vectors' answers were computed with (an implementation that wants
        # its weights in the input's type converts them itself).
        kwargs["weight"] = torch.tensor(weight, dtype=torch.float32).to(_device)
    if z_loss:
        kwargs["z_loss"] = z_loss
    if softcap is not None:
        kwargs["softcap"] = softcap
    if position_weight is not None:
        kwargs["position_weight"] = torch.tensor(position_weight, dtype=torch.float32).to(_device)
    loss = impl(x, t, **kwargs)
    values = loss.detach().to("cpu", torch.float32).reshape(-1).tolist()
    if grad_output is None:
        return values, None
    up = (
        torch.ones_like(loss)
        if len(grad_output) == 0
        else torch.tensor(grad_output, dtype=torch.float32).reshape(loss.shape).to(loss)
    )
    (g,) = torch.autograd.grad(loss, x, up)
    g = g.detach().to("cpu").contiguous()
    return values, g.view(torch.uint8).numpy().tobytes()


def takes(impl: Callable) -> List[str]:
    """The extension keywords `impl` accepts (all of them when it takes `**kwargs`)."""
    try:
        params = inspect.signature(impl).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return list(EXTENSIONS)
    return [e for e in EXTENSIONS if e in params]


def run(
    impl: Callable,
    vectors: Optional[Sequence[str]] = None,
    *,
    name: Optional[str] = None,
    strict: bool = False,
    exact_errors: bool = False,
    device: str = "cpu",
) -> Tuple[str, bool]:
    """Runs vector files (default: both vendored files) through `impl`; returns the case tables
    and whether every case passed (skips allowed unless `strict`)."""
    global _device
    _device = device
    label = name or getattr(impl, "__qualname__", None) or repr(impl)
    return _xent.run_vectors(
        impl,
        label,
        takes(impl),
        None if not vectors else list(vectors),
        strict,
        exact_errors,
    )


def vendored_vectors() -> List[str]:
    """The vendored vector files (in the checkout this package was built from)."""
    return [str(p) for p in _xent.vendored_vectors()]


def _resolve(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--impl {spec!r}: expected module:function")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m xent.testing",
        description="Runs cross-entropy conformance vectors through a Python implementation.",
    )
    ap.add_argument(
        "--impl",
        default="xent:cross_entropy",
        help="module:function with torch.nn.functional.cross_entropy's signature "
        "(default: xent:cross_entropy)",
    )
    ap.add_argument("--vectors", action="append", help="a vector file (repeatable; default: the vendored ones)")
    ap.add_argument("--strict", action="store_true", help="a case the implementation cannot take fails")
    ap.add_argument(
        "--exact-errors",
        action="store_true",
        help="error cases must raise xent's exception of the case's kind",
    )
    ap.add_argument("--device", default="cpu", help="where the tensors go (default: cpu)")
    args = ap.parse_args(argv)
    impl = _resolve(args.impl)
    text, passed = run(
        impl,
        args.vectors,
        name=args.impl,
        strict=args.strict,
        exact_errors=args.exact_errors,
        device=args.device,
    )
    print(text, end="")
    print("xent.testing: every case passed" if passed else "xent.testing: FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
