"""Shared fixtures: devices (CUDA skips cleanly without a GPU), backends, helpers.

Tests run in float64 unless they say otherwise (exactness first)."""

from __future__ import annotations

import pytest
import torch

import invflow

CUDA = torch.cuda.is_available()

# Exactness tests compare against the reference's F.conv2d / matmul, which on Ampere and
# newer run in TF32 by default (error ~1e-3): the comparisons need true float32.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# gradcheck's reentrancy check needs deterministic cuDNN convolution backward (st-nets).
torch.backends.cudnn.deterministic = True
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))]
BACKENDS = ["reference", "fused"]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request):
    with invflow.backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """An offline dataset that is not installed skips the test with the loader's one-line
    reason instead of failing it: `make test` installs the Debian data packages only where it
    can (as root), so a machine without them still runs every other test.  Matched by class
    name (``DatasetUnavailable`` of detectors' data loaders) so this file imports no detectors
    module."""
    outcome = yield
    report = outcome.get_result()
    exc = call.excinfo
    if report.failed and exc is not None and type(exc.value).__name__ == "DatasetUnavailable":
        reason = str(exc.value).splitlines()[0] if str(exc.value) else "an offline dataset is not installed"
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {reason}")
