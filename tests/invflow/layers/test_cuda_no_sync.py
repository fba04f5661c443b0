"""Layers run without a host synchronisation on CUDA, forward and inverse (sampling), once
ActNorm is initialised: torch.cuda.set_sync_debug_mode("error") raises on any sync (e.g.
torch.linalg.inv's error check, .item(), a host-built index tensor)."""

from __future__ import annotations

import pytest
import torch

import invflow
from invflow import masks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _layers():
    yield "actnorm", invflow.ActNorm(6)
    yield "invconv-lu", invflow.InvConv1x1(6)
    yield "invconv-free", invflow.InvConv1x1(6, lu=False)
    yield "coupling", invflow.AffineCoupling(6, masks.Channel(0), hidden=8)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("name", [n for n, _ in _layers()])
def test_cuda_layer_forward_and_inverse_do_not_sync(name, backend):
    layer = dict(_layers())[name].cuda()
    x = torch.randn(4, 6, 8, 8, device="cuda")
    with invflow.backend(backend):
        layer(x)  # ActNorm's data-dependent initialisation may sync, once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            y, _ = layer(x)
            x2, _ = layer.inverse(y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(x2, x, rtol=1e-4, atol=1e-4)
