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
