"""The conformance kit for Python implementations: xent itself passes both vendored files; a
wrong implementation fails, with the case named; options it does not take are skipped."""
import subprocess
import sys

import torch

import xent
import xent.testing


def test_xent_passes_both_vendored_files_with_exact_error_kinds():
    text, passed = xent.testing.run(xent.cross_entropy, exact_errors=True)
    assert passed, text
    assert "101 of 101 cases passed" in text and "134 of 134 cases passed" in text
    assert "skip" not in text


def test_every_backend_passes_through_the_kit():
    for backend in ("cpu", "rayon", "reference"):
        def impl(*args, backend=backend, **kwargs):
            return xent.cross_entropy(*args, **kwargs, backend=backend)

        text, passed = xent.testing.run(impl, name=backend)
        assert passed, text


def slightly_wrong(input, target, weight=None, ignore_index=-100, reduction="mean",
                   label_smoothing=0.0):
    return xent.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                              reduction=reduction, label_smoothing=label_smoothing) * 1.001


def test_a_wrong_implementation_fails_and_extensions_it_lacks_are_skipped():
    text, passed = xent.testing.run(slightly_wrong)
    assert not passed
    assert "FAIL seed_post_weighted_mean" in text
    # It takes no z_loss, softcap or position_weight: those cases are skipped, not failed...
    assert "skipped as unsupported" in text
    # ...unless strict.
    text, passed = xent.testing.run(xent.cross_entropy, strict=True)
    assert passed, text


def test_an_implementation_that_accepts_bad_input_fails_the_error_cases():
    def lenient(input, target, weight=None, ignore_index=-100, reduction="mean",
                label_smoothing=0.0):
        return torch.zeros((), requires_grad=True) + input.float().sum() * 0

    text, passed = xent.testing.run(lenient)
    assert not passed
    assert "raw entry returned numbers" in text


def test_command_line_exit_status():
    ok = subprocess.run([sys.executable, "-m", "xent.testing", "--impl", "xent:cross_entropy"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every case passed" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "xent.testing", "--impl", "test_testing:slightly_wrong",
         "--vectors", xent.testing.vendored_vectors()[0]],
        capture_output=True, text=True, cwd=__import__("os").path.dirname(__file__),
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout
