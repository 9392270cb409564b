"""`xent.cross_entropy` against PyTorch in float64, on every backend, option and dtype; the
custom operators under autograd, `torch.compile`, `opcheck` and `gradcheck`; the errors."""
import threading

import pytest
import torch

import xent
from conftest import HALF_TOL, backend_or_skip, close, reference

SEED_X = [[0.2150, -0.1513, -0.1051], [-0.7047, -0.9339, 0.2430], [-0.9102, -0.4769, -0.1792],
          [0.2268, 1.9147, 1.8868]]


def test_seed_example():
    x = torch.tensor(SEED_X, requires_grad=True)
    t = torch.tensor([0, 0, 0, 1])
    assert f"{xent.cross_entropy(x, t).item():.5f}" == "1.16465"
    loss = xent.CrossEntropyLoss(weight=torch.tensor([9.0, 15.0, 80.0]))(x, t)
    assert f"{loss.item():.5f}" == "1.10811"
    loss.backward()
    xr = torch.tensor(SEED_X, requires_grad=True)
    torch.nn.functional.cross_entropy(xr, t, weight=torch.tensor([9.0, 15.0, 80.0])).backward()
    close(x.grad, xr.grad, rtol=1e-6, atol=1e-7)


def problem(gen, shape, probs=False, weighted=False, ignore=None):
    """Random logits of `shape`, targets (indices with some ignored, or probabilities), weights."""
    x = torch.randn(shape, generator=gen) * 3
    classes = shape[1] if len(shape) > 1 else shape[0]
    tshape = shape if probs else ((shape[0],) + tuple(shape[2:]) if len(shape) > 1 else ())
    if probs:
        t = torch.rand(tshape, generator=gen)
    else:
        t = torch.randint(0, classes, tshape, generator=gen)
        if ignore is not None and t.dim() > 0:
            t[torch.rand(tshape, generator=gen) < 0.2] = ignore
    w = torch.rand(classes, generator=gen) + 0.5 if weighted else None
    return x, t, w


SHAPES = [(7, 5), (3, 1200), (2, 40000), (4, 6, 3), (2, 5, 3, 2), (9,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("kind", ["plain", "weights_ignore_smoothing", "probs", "real_class_ignored"])
def test_matches_pytorch_float64(backend, shape, reduction, kind):
    gen = torch.Generator().manual_seed(hash((shape, reduction, kind)) % 2**31)
    probs = kind == "probs"
    ignore = {"weights_ignore_smoothing": -100, "real_class_ignored": 1}.get(kind)
    x, t, w = problem(gen, shape, probs=probs, weighted=kind != "plain", ignore=ignore)
    opts = dict(weight=w, reduction=reduction,
                label_smoothing=0.1 if kind in ("weights_ignore_smoothing", "probs") else 0.0)
    if ignore is not None:
        opts["ignore_index"] = ignore
    xg = x.clone().requires_grad_()
    loss = xent.cross_entropy(xg, t, **opts, backend=backend)
    up = torch.rand(loss.shape, generator=gen) + 0.5
    (loss * up).sum().backward()
    xr = x.double().requires_grad_()
    want = reference(xr, t, **opts)
    (want * up.double()).sum().backward()
    assert loss.dtype == torch.float32 and loss.shape == want.shape
    close(loss, want)
    close(xg.grad, xr.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("probs", [False, True])
def test_half_inputs_give_half_loss_and_gradient(backend, dtype, probs):
    gen = torch.Generator().manual_seed(3)
    x, t, w = problem(gen, (16, 300), probs=probs, weighted=True, ignore=-100)
    x = x.to(dtype)
    xg = x.clone().requires_grad_()
    loss = xent.cross_entropy(xg, t, weight=w, label_smoothing=0.05, backend=backend)
    loss.backward()
    assert loss.dtype == dtype and xg.grad.dtype == dtype
    xr = x.double().requires_grad_()
    want = reference(xr, t.to(dtype) if probs else t, weight=w, label_smoothing=0.05)
    want.backward()
    rtol, atol = HALF_TOL[dtype]
    close(loss, want, rtol=rtol, atol=atol)
    close(xg.grad, xr.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_extensions_match_their_definition(backend, reduction):
    gen = torch.Generator().manual_seed(11)
    x, t, w = problem(gen, (12, 70), weighted=True, ignore=-100)
    pw = torch.rand(12, generator=gen) * 2 - 0.5
    opts = dict(weight=w, reduction=reduction, z_loss=1e-2, softcap=5.0, position_weight=pw)
    xg = x.clone().requires_grad_()
    loss = xent.cross_entropy(xg, t, **opts, backend=backend)
    loss.sum().backward()
    xr = x.double().requires_grad_()
    want = reference(xr, t, **opts)
    want.sum().backward()
    close(loss, want)
    close(xg.grad, xr.grad)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("upstream", [1.0, 2.5, -0.5])
def test_upstream_gradient_is_honoured(reduction, upstream):
    gen = torch.Generator().manual_seed(5)
    x, t, w = problem(gen, (10, 33), weighted=True, ignore=-100)
    for dtype in (torch.float32, torch.bfloat16):
        xg = x.to(dtype).clone().requires_grad_()
        loss = xent.cross_entropy(xg, t, weight=w, reduction=reduction)
        g = torch.full(loss.shape, upstream, dtype=loss.dtype)
        if reduction == "none":
            g[::3] = 1.0  # mixed ones and others: the gradient is computed for g
        loss.backward(g)
        xr = x.to(dtype).double().detach().requires_grad_()
        want = reference(xr, t, weight=w, reduction=reduction)
        want.backward(g.double())
        rtol, atol = HALF_TOL[dtype]
        close(xg.grad, xr.grad, rtol=rtol, atol=atol)


def test_every_backend_gives_the_same_as_cpu_and_rayon_bits_for_any_threads():
    gen = torch.Generator().manual_seed(8)
    x, t, w = problem(gen, (300, 3000), weighted=True, ignore=-100)
    runs = []
    for backend, threads in [("cpu", None), ("rayon", 1), ("rayon", 2), ("rayon", 3)]:
        xg = x.clone().requires_grad_()
        loss = xent.cross_entropy(xg, t, weight=w, backend=backend, threads=threads)
        loss.backward()
        runs.append((loss.item(), xg.grad.clone()))
    for loss, grad in runs[1:]:
        assert loss == runs[0][0]
        assert torch.equal(grad, runs[0][1])


def test_threads_from_several_python_threads_give_the_serial_bits():
    gen = torch.Generator().manual_seed(9)
    problems = [problem(gen, (64, 2000), weighted=True, ignore=-100) for _ in range(4)]

    def run(p):
        x, t, w = p
        xg = x.clone().requires_grad_()
        loss = xent.cross_entropy(xg, t, weight=w, backend="rayon", threads=2)
        loss.backward()
        return loss.item(), xg.grad

    serial = [run(p) for p in problems]
    results = [None] * (4 * len(problems))
    errors = []

    def worker(k):
        try:
            for _ in range(3):
                results[k] = run(problems[k % len(problems)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(results))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for k, (loss, grad) in enumerate(results):
        assert loss == serial[k % len(problems)][0]
        assert torch.equal(grad, serial[k % len(problems)][1])


def test_contiguous_inputs_are_not_copied(monkeypatch):
    from xent import _torch

    seen = []

    class Spy:
        """The Rust module, recording the address of the logits it is handed."""

        def __init__(self, real):
            self.real = real

        def compute(self, *args):
            seen.append(args[2][0])
            return self.real.compute(*args)

    monkeypatch.setattr(_torch, "_xent", Spy(_torch._xent))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(32, 100).to(dtype)
        t = torch.randint(0, 100, (32,))
        xent.cross_entropy(x, t)
        assert seen[-1] == x.data_ptr()
    # Non-contiguous input works (a copy), with the same answer.
    x = torch.randn(100, 32).t()
    t = torch.randint(0, 100, (32,))
    close(xent.cross_entropy(x, t), reference(x, t))
    assert seen[-1] != x.data_ptr()


def test_input_conversions():
    gen = torch.Generator().manual_seed(2)
    x, t, w = problem(gen, (20, 9), weighted=True)
    want = reference(x, t, weight=w)
    close(xent.cross_entropy(x, t.to(torch.int32), weight=w.double()), want)
    # float64 input: computed in float32, returned in float64.
    xd = x.double().requires_grad_()
    loss = xent.cross_entropy(xd, t, weight=w)
    loss.backward()
    assert loss.dtype == torch.float64 and xd.grad.dtype == torch.float64
    close(loss, want, rtol=1e-6, atol=1e-6)
    # Unbatched input and a scalar target.
    close(xent.cross_entropy(x[0], t[0]), reference(x[0], t[0]))


def test_gradcheck_through_float32():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen).requires_grad_()
    t = torch.randint(0, 5, (6,), generator=gen)
    w = torch.rand(5, generator=gen) + 0.5
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda x: xent.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.1),
            (x,), eps=1e-3, atol=1e-3, rtol=1e-3,
        )


@pytest.mark.filterwarnings(
    # Raised inside torch (its fake-tensor conversion reads `.grad` of the non-leaf copies
    # opcheck makes: torch/_subclasses/meta_utils.py, safe_grad), not by xent.
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)
def test_opcheck_both_operators():
    gen = torch.Generator().manual_seed(6)
    x, t, w = problem(gen, (8, 7), weighted=True, ignore=-100)
    pw = torch.rand(8, generator=gen)
    import xent._torch  # noqa: F401  (registers the operators)

    for reduction in ("mean", "none"):
        args = (x.clone().requires_grad_(), t, w, pw, -100, reduction, 0.1, 1e-3, None, "cpu", -1)
        torch.library.opcheck(torch.ops.xent.cross_entropy.default, args)
        up = torch.rand(8 if reduction == "none" else (), generator=gen)
        args = (x, t, w, pw, -100, reduction, 0.1, 1e-3, None, "cpu", -1, up)
        torch.library.opcheck(torch.ops.xent.cross_entropy_backward.default, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(10)
    x, t, w = problem(gen, (16, 50), weighted=True, ignore=-100)

    def f(x, t, w):
        return xent.cross_entropy(x, t, weight=w, label_smoothing=0.1, z_loss=1e-3) * 2

    compiled = torch.compile(f, fullgraph=True)
    xg = x.clone().requires_grad_()
    loss = compiled(xg, t, w)
    loss.backward()
    xe = x.clone().requires_grad_()
    f(xe, t, w).backward()
    assert loss.item() == f(x, t, w).item()
    close(xg.grad, xe.grad, rtol=1e-6, atol=1e-8)


def test_module_matches_function():
    gen = torch.Generator().manual_seed(12)
    x, t, w = problem(gen, (6, 8), weighted=True, ignore=3)
    m = xent.CrossEntropyLoss(weight=w, ignore_index=3, reduction="sum", label_smoothing=0.2)
    assert "reduction='sum'" in repr(m)
    close(m(x, t), xent.cross_entropy(x, t, weight=w, ignore_index=3, reduction="sum",
                                      label_smoothing=0.2), rtol=0, atol=0)
    # PyTorch's legacy arguments.
    close(xent.CrossEntropyLoss(reduce=False)(x, t), reference(x, t, reduction="none"))


@pytest.mark.parametrize(
    "call, kind",
    [
        (lambda x, t: xent.cross_entropy(x, torch.full_like(t, 99)), "invalid_target"),
        (lambda x, t: xent.cross_entropy(x, t[:-1]), "shape_mismatch"),
        (lambda x, t: xent.cross_entropy(x, t, weight=torch.ones(3)), "shape_mismatch"),
        (lambda x, t: xent.cross_entropy(x, t, label_smoothing=1.5), "invalid_option"),
        (lambda x, t: xent.cross_entropy(x, t, z_loss=-1.0), "invalid_option"),
        (lambda x, t: xent.cross_entropy(x, t, softcap=0.0), "invalid_option"),
        (lambda x, t: xent.cross_entropy(x, t, reduction="avg"), "invalid_option"),
        (lambda x, t: xent.cross_entropy(x, t, backend="tpu"), "invalid_option"),
        (lambda x, t: xent.cross_entropy(x, t, position_weight=torch.ones(2)), "shape_mismatch"),
        (lambda x, t: xent.cross_entropy(x.to("meta"), t.to("meta")), "unsupported"),
        (lambda x, t: xent.cross_entropy(x.to(torch.int64), t), "unsupported"),
        (lambda x, t: xent.cross_entropy(x, torch.rand(5, 7, requires_grad=True)), "unsupported"),
        # A non-negative ignore_index with probability targets.
        (lambda x, t: xent.cross_entropy(x, torch.rand(5, 7), ignore_index=2), "invalid_option"),
    ],
)
def test_bad_input_is_an_exception_of_the_package(call, kind):
    x = torch.randn(5, 7, requires_grad=True)
    t = torch.randint(0, 7, (5,))
    with pytest.raises(xent.XentError) as e:
        call(x, t)
    assert isinstance(e.value, ValueError)
    assert e.value.kind == kind
    assert x.grad is None


def test_wgpu_backend_by_name():
    backend_or_skip("wgpu")
    x = torch.randn(4, 5)
    t = torch.randint(0, 5, (4,))
    close(xent.cross_entropy(x, t, backend="wgpu"), reference(x, t))


def test_large_gradients_reuse_pooled_memory():
    xent.release_pool()
    x = torch.randn(1024, 2048, requires_grad=True)  # an 8 MiB gradient: from the pool
    t = torch.randint(0, 2048, (1024,))
    xent.cross_entropy(x, t).backward()
    first = x.grad.data_ptr()
    want = x.grad.clone()
    x.grad = None  # back to the pool...
    assert xent.pooled_bytes() == 1024 * 2048 * 4
    xent.cross_entropy(x, t).backward()
    assert x.grad.data_ptr() == first  # ...and out again, with the right values
    assert torch.equal(x.grad, want)
    assert xent.pooled_bytes() == 0
    # A pooled tensor is an ordinary tensor.
    x.grad.mul_(2).add_(1)
    assert x.grad.is_contiguous() and x.grad.dtype == torch.float32
    x.grad = None
    xent.release_pool()
    assert xent.pooled_bytes() == 0
