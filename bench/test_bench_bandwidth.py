"""Effective memory bandwidth of the fused elementwise kernels against a measured copy.

At a large batch the elementwise kernels are memory-bound, so the fair yardstick is a plain
device copy of the same tensor measured in the same process: each case records the bytes it
must move (every input read once, every output written once; per-channel parameters
ignored) and ``bench/ratios.py`` prints GB/s and the share of the copy's bandwidth.
"""

from __future__ import annotations

import pytest
import torch
from conftest import allocator_settings

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LARGE = {"cpu": (256, 12, 32, 32), "cuda": (1024, 12, 64, 64)}
OP = torch.ops.invflow


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def cases(device):
    """name -> (callable, tensors moved); inputs are made once per case."""
    shape = LARGE[device]
    x = torch.randn(shape, device=device)
    h = 0.5 * torch.randn((shape[0], 2 * shape[1]) + shape[2:], device=device)
    gy = torch.randn_like(x)
    gl = torch.randn(shape[0], device=device)
    b = torch.randn(shape[1], device=device)
    ls = 0.1 * torch.randn(shape[1], device=device)
    out = torch.empty_like(x)
    return {
        "copy": (lambda: out.copy_(x), 2),
        "actnorm_forward": (lambda: OP.actnorm_forward(x, b, ls), 2),
        "actnorm_backward": (lambda: OP.actnorm_backward(gy, gl, x, b, ls), 3),
        "coupling_forward": (lambda: OP.coupling_forward(x, h, None, "sigmoid", 2.0), 4),  # x, h (2x) -> y
        "coupling_backward": (lambda: OP.coupling_backward(gy, gl, x, h, None, "sigmoid", 2.0), 7),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "case", ["copy", "actnorm_forward", "actnorm_backward", "coupling_forward", "coupling_backward"]
)
def test_bandwidth(benchmark, case, device):
    fn, tensors = cases(device)[case]
    shape = LARGE[device]
    nbytes = tensors * torch.Size(shape).numel() * 4
    benchmark.group = f"bandwidth [{device}]"
    benchmark.extra_info.update(
        impl=case, device=device, shape=list(shape), bytes=nbytes, **allocator_settings()
    )
    fn()

    def timed():
        fn()
        sync(device)

    benchmark(timed)
