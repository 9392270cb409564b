"""xent: weighted softmax cross-entropy, exact to PyTorch's and fast on every backend.

- `xent.cross_entropy`, `xent.CrossEntropyLoss`: drop-ins for `torch.nn.functional.cross_entropy`
  and `torch.nn.CrossEntropyLoss` on CPU tensors (registered as the custom operators
  `xent::cross_entropy` and `xent::cross_entropy_backward`: differentiable, and traced by
  `torch.compile(fullgraph=True)` without a graph break), with z-loss, soft-capping and position
  weights besides PyTorch's options;
- `xent.compute`: the same on NumPy arrays, no framework needed, with the gradient, the
  per-position log-sum-exp and the z-loss part on request;
- `xent.testing`: the conformance kit for Python implementations (`python -m xent.testing`).

Backends: `"cpu"` (one thread), `"rayon"` (a thread pool; `threads=`), `"wgpu"` (a GPU through
WGSL, or Mesa's software rasteriser), `"reference"` (the float64 oracle), or `None`: the automatic
choice (`xent.choose_backend`; `xent.use_profile` loads a `loss-bench recommend` profile).

Every error is an exception of this package: `xent.XentError` (a `ValueError`) or one of its
subclasses `InvalidTarget`, `ShapeMismatch`, `InvalidOption`, `Unsupported`, `Unavailable`,
`BackendError`, each with `kind` naming it as the specification does.

Large outputs (gradients) come from a pool of reused memory: fresh memory costs a page fault per
4 KiB, more than the computation itself (`xent.pooled_bytes`, `xent.release_pool`).

The PyTorch parts import torch when first used, so NumPy users need only NumPy.
"""
from ._core import (
    BACKENDS,
    DTYPES,
    Result,
    backends,
    choose_backend,
    compute,
    pooled_bytes,
    release_pool,
    unavailable,
    use_profile,
)
from ._xent import (
    BackendError,
    InvalidOption,
    InvalidTarget,
    Profile,
    ShapeMismatch,
    Unavailable,
    Unsupported,
    XentError,
    __version__,
)

__all__ = [
    "BACKENDS",
    "DTYPES",
    "BackendError",
    "CrossEntropyLoss",
    "InvalidOption",
    "InvalidTarget",
    "Profile",
    "Result",
    "ShapeMismatch",
    "Unavailable",
    "Unsupported",
    "XentError",
    "__version__",
    "backends",
    "choose_backend",
    "compute",
    "cross_entropy",
    "pooled_bytes",
    "release_pool",
    "testing",
    "unavailable",
    "use_profile",
]

_LAZY = {"cross_entropy": "_torch", "CrossEntropyLoss": "_torch"}


def __getattr__(name):
    # The torch layer (and the submodules) on first use: importing torch takes seconds.
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name == "testing":
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
