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
