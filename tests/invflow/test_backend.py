"""The backend switch: default, context nesting, explicit requests never silently served."""

from __future__ import annotations

import warnings

import pytest
import torch

import invflow
from invflow import _backend
from invflow.ops import fused


def test_extension_is_built_and_default_is_fused():
    # CI builds the extension: if this fails, the build (not the kernels) is broken.
    assert invflow.fused_available(), fused.IMPORT_ERROR
    assert invflow.current_backend() == "fused"


def test_context_manager_nests_and_restores():
    with invflow.backend("reference"):
        assert invflow.current_backend() == "reference"
        with invflow.backend("fused"):
            assert invflow.current_backend() == "fused"
        assert invflow.current_backend() == "reference"
    assert invflow.current_backend() == "fused"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="expected one of"):
        with invflow.backend("triton"):
            pass


def test_layers_really_switch_kernels(monkeypatch):
    calls = []
    real = fused.actnorm_forward
    monkeypatch.setattr(fused, "actnorm_forward", lambda *a: calls.append(1) or real(*a))
    layer = invflow.ActNorm(2).eval()
    x = torch.randn(2, 2, 3, 3)
    with invflow.backend("reference"):
        layer(x)
    assert calls == []
    with invflow.backend("fused"):
        layer(x)
    assert calls == [1]


def test_without_extension_fused_request_raises_and_default_warns_once(monkeypatch):
    monkeypatch.setattr(fused, "AVAILABLE", False)
    monkeypatch.setattr(fused, "IMPORT_ERROR", "simulated")
    monkeypatch.setattr(_backend, "_warned", False)
    with pytest.raises(RuntimeError, match="not built"):
        with invflow.backend("fused"):
            pass
    with pytest.warns(RuntimeWarning, match="reference backend"):
        assert invflow.current_backend() == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert invflow.current_backend() == "reference"


def test_cuda_default_is_reference_until_gpu_check_passes(monkeypatch):
    """docs/design.md: CUDA tensors default to the reference (one warning naming the opt-in) until
    the kernels have passed `make gpu-check` on hardware; CPU keeps the fused default and an
    explicit choice always wins."""
    monkeypatch.setattr(_backend, "_warned_cuda", False)
    monkeypatch.setattr(_backend, "CUDA_KERNELS_VERIFIED", False)
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match=r'invflow.backend\(\\?"fused\\?"\)'):
        assert _backend.default_backend(cuda) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert _backend.default_backend(cuda) == "reference"
        assert _backend.default_backend(torch.device("cpu")) == "fused"
    with invflow.backend("fused"):
        assert _backend.backend_for(torch.empty(1, device="meta")) == "fused"
    monkeypatch.setattr(_backend, "CUDA_KERNELS_VERIFIED", True)
    assert _backend.default_backend(cuda) == "fused"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layers_use_the_policy(monkeypatch):
    monkeypatch.setattr(_backend, "_warned_cuda", True)
    calls = []
    real = fused.actnorm_forward
    monkeypatch.setattr(fused, "actnorm_forward", lambda *a: calls.append(1) or real(*a))
    layer = invflow.ActNorm(2).cuda().eval()
    layer(torch.randn(2, 2, 3, 3, device="cuda"))
    assert calls == ([1] if _backend.CUDA_KERNELS_VERIFIED else [])
    with invflow.backend("fused"):
        layer(torch.randn(2, 2, 3, 3, device="cuda"))
    assert calls[-1:] == [1]
