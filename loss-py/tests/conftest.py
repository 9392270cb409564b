"""Shared fixtures: the backends every test runs on, and PyTorch in float64 as the reference.

The wgpu backend runs where an adapter exists (Mesa's software rasteriser in CI); with
`LOSS_WGPU_REQUIRE_ADAPTER=1` (set by scripts/test.sh where lavapipe is installed) its absence
is a failure, never a skip.
"""
import os

import pytest
import torch

import xent

BACKENDS = ["cpu", "rayon", "reference", "wgpu"]


def backend_or_skip(name):
    why = xent.unavailable(name)
    if why is not None:
        if os.environ.get("LOSS_WGPU_REQUIRE_ADAPTER") == "1":
            pytest.fail(f"LOSS_WGPU_REQUIRE_ADAPTER=1 but {name} is unavailable: {why}")
        pytest.skip(f"{name} unavailable: {why}")
    return name


@pytest.fixture(params=BACKENDS)
def backend(request):
    return backend_or_skip(request.param)


def reference(x, t, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
              z_loss=0.0, softcap=None, position_weight=None):
    """The specification evaluated with PyTorch in float64 on the exactly widened inputs:
    PyTorch's own cross_entropy, with the extensions composed the way the spec states them."""
    x = x.double()
    w = None if weight is None else weight.double()
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    probs = t.is_floating_point()
    tt = t.double() if probs else t
    if not z_loss and position_weight is None:
        return torch.nn.functional.cross_entropy(
            x, tt, weight=w, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )
    ce = torch.nn.functional.cross_entropy(
        x, tt, weight=w, ignore_index=ignore_index, reduction="none",
        label_smoothing=label_smoothing,
    )
    lse = torch.logsumexp(x, dim=1 if x.dim() > 1 else 0)
    s = torch.ones_like(lse) if position_weight is None else position_weight.double().reshape(lse.shape)
    valid = torch.ones_like(lse) if probs else (t != ignore_index).double()
    ce = ce * s
    zt = z_loss * s * lse * lse * valid
    if reduction == "none":
        return ce + zt
    if reduction == "sum":
        return ce.sum() + zt.sum()
    if probs:
        d = s.sum()
    else:
        wy = torch.ones_like(lse) if w is None else w[t.clamp(min=0)]
        d = (s * wy * valid).sum()
    return ce.sum() / d + zt.sum() / (s * valid).sum()


def close(got, want, rtol=1e-4, atol=1e-5):
    got = got.detach().double()
    want = want.detach().double()
    assert got.shape == want.shape, (got.shape, want.shape)
    ok = torch.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if not bool(ok.all()):
        i = int((~ok).reshape(-1).nonzero()[0])
        raise AssertionError(
            f"[{i}] got {got.reshape(-1)[i].item():.9g} want {want.reshape(-1)[i].item():.9g} "
            f"({int((~ok).sum())} of {ok.numel()} outside rtol={rtol} atol={atol})"
        )


#: The tolerance of a result in a half type (the vectors' `grad_tolerance_by_dtype`).
HALF_TOL = {torch.bfloat16: (7.9e-3, 1e-6), torch.float16: (9.8e-4, 1e-7), torch.float32: (1e-4, 1e-5)}
