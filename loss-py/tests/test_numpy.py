"""`xent.compute`: NumPy arrays in and out, bf16 through ml_dtypes or raw bits, the optional
outputs, the backend choice and the errors."""
import ml_dtypes
import numpy as np
import pytest
import torch

import xent
from conftest import HALF_TOL, close, reference


def data(seed=0, n=24, c=50, weighted=True):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    t = rng.integers(0, c, n).astype(np.int64)
    t[rng.random(n) < 0.2] = -100
    w = (rng.random(c) + 0.5).astype(np.float32) if weighted else None
    return x, t, w


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_loss_grad_lse_and_z_part(backend, reduction):
    x, t, w = data(1)
    up = np.linspace(0.5, 1.5, 24, dtype=np.float32) if reduction == "none" else None
    r = xent.compute(x, t, w, reduction=reduction, label_smoothing=0.1, z_loss=1e-2, grad=True,
                     grad_output=up, lse=True, z=True, backend=backend)
    xr = torch.from_numpy(x).double().requires_grad_()
    tt, ww = torch.from_numpy(t), torch.from_numpy(w)
    want = reference(xr, tt, weight=ww, reduction=reduction, label_smoothing=0.1, z_loss=1e-2)
    (want * (torch.from_numpy(up).double() if up is not None else 1.0)).sum().backward()
    close(torch.from_numpy(r.loss), want)
    close(torch.from_numpy(r.grad), xr.grad)
    close(torch.from_numpy(r.lse), torch.logsumexp(torch.from_numpy(x).double(), dim=1))
    assert r.loss.dtype == np.float32 and r.grad.dtype == np.float32
    assert r.z_loss.shape == r.loss.shape
    # The z part alone: z·LSE² over the valid positions, reduced as the loss is.
    lse = torch.logsumexp(torch.from_numpy(x).double(), dim=1)
    zi = 1e-2 * lse * lse * (tt != -100).double()
    zwant = {"none": zi, "sum": zi.sum(), "mean": zi.sum() / (tt != -100).sum()}[reduction]
    close(torch.from_numpy(r.z_loss), zwant)


def test_bfloat16_as_ml_dtypes_or_raw_bits():
    x, t, w = data(2)
    xb = x.astype(ml_dtypes.bfloat16)
    r1 = xent.compute(xb, t, w, grad=True)
    assert r1.grad.dtype == ml_dtypes.bfloat16
    bits = xb.view(np.uint16)
    r2 = xent.compute(bits, t, w, dtype="bfloat16", grad=True)
    assert r2.grad.dtype == np.uint16
    assert np.array_equal(r1.grad.view(np.uint16), r2.grad)
    assert r1.loss == r2.loss
    xr = torch.from_numpy(xb.astype(np.float32)).double().requires_grad_()
    want = reference(xr, torch.from_numpy(t), weight=torch.from_numpy(w))
    want.backward()
    rtol, atol = HALF_TOL[torch.bfloat16]
    close(torch.from_numpy(r1.loss), want)
    close(torch.from_numpy(r1.grad.astype(np.float32)), xr.grad, rtol=rtol, atol=atol)
    # float16 natively; the gradient in float32 on request.
    r3 = xent.compute(x.astype(np.float16), t, w, grad=True, grad_dtype="float32")
    assert r3.grad.dtype == np.float32


def test_probability_targets_and_k_dim():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 3, 4)).astype(np.float32)
    p = rng.random((2, 7, 3, 4)).astype(np.float32)
    r = xent.compute(x, p, reduction="none", grad=True)
    xr = torch.from_numpy(x).double().requires_grad_()
    want = reference(xr, torch.from_numpy(p), reduction="none")
    want.sum().backward()
    assert r.loss.shape == (2, 3, 4)
    close(torch.from_numpy(r.loss), want)
    close(torch.from_numpy(r.grad), xr.grad)


def test_inputs_are_converted_when_they_must_be():
    x, t, w = data(4)
    base = xent.compute(x, t, w).loss
    assert xent.compute(np.asfortranarray(x), t.astype(np.int32), w.astype(np.float64)).loss == base
    assert xent.compute(x[:, ::1], t, list(w)).loss == base


def test_automatic_backend_and_profile(tmp_path):
    x, t, w = data(5)
    assert xent.choose_backend(None, None, "forward", 24, 50, "float32", 1) == ("cpu", 1)
    assert xent.choose_backend(None, None, "forward", 24, 50, "float32", 4) == ("rayon", 4)
    assert xent.choose_backend("rayon", 3, "forward", 24, 50, "float32", 4) == ("rayon", 3)
    profile = tmp_path / "p.json"
    profile.write_text(
        '{"schema": "loss-bench-profile/1", "machine": "test", "measured_unix": 0, "entries": ['
        '{"op": "forward", "batch": 32, "classes": 64, "dtype": "f32", "backend": "cpu", '
        '"threads": 1, "elements_per_second": 1e9, "margin": 1.2}]}'
    )
    try:
        p = xent.use_profile(profile)
        assert "1 cells" in repr(p)
        assert xent.choose_backend(None, None, "forward", 24, 50, "float32", 8) == ("cpu", 1)
        assert xent.compute(x, t, w).loss == xent.compute(x, t, w, backend="cpu").loss
    finally:
        xent.use_profile(None)
    with pytest.raises(ValueError):
        xent.use_profile(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "call, kind",
    [
        (lambda x, t, w: xent.compute(x, np.full_like(t, 77), w), "invalid_target"),
        (lambda x, t, w: xent.compute(x, t[:-1], w), "shape_mismatch"),
        (lambda x, t, w: xent.compute(x, t, w[:-1]), "shape_mismatch"),
        (lambda x, t, w: xent.compute(x, t, w, label_smoothing=-0.1), "invalid_option"),
        (lambda x, t, w: xent.compute(x, t, w, reduction="max"), "invalid_option"),
        (lambda x, t, w: xent.compute(x, t, w, backend="cpu", threads=2), "invalid_option"),
        (lambda x, t, w: xent.compute(x.astype(np.float64), t, w), "unsupported"),
        (lambda x, t, w: xent.compute(x.view(np.uint16)[:, :50], t, w), "invalid_option"),
        (lambda x, t, w: xent.compute(x, t, w, grad=True, grad_output=np.ones(3)),
         "shape_mismatch"),
        (lambda x, t, w: xent.compute(x, t, w, grad=True, grad_dtype="int8"), "invalid_option"),
    ],
)
def test_bad_input_is_an_exception_of_the_package(call, kind):
    x, t, w = data(6)
    with pytest.raises(xent.XentError) as e:
        call(x, t, w)
    assert e.value.kind == kind, e.value
    assert isinstance(e.value, ValueError)
