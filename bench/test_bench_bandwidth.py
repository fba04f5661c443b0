"""Effective memory bandwidth of the fused elementwise kernels against a measured copy.

At a large batch the elementwise kernels are memory-bound, so the fair yardstick is a plain
device copy of the same tensor measured in the same process: each case records the bytes it
must move (every input read once, every output written once; per-channel parameters
ignored) and ``bench/ratios.py`` prints GB/s and the share of the copy's bandwidth.
"""

from __future__ import annotations

import pytest
import torch
from harness import BANDWIDTH_TENSORS, allocator_settings, bandwidth_calls, bandwidth_inputs, sync

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LARGE = {"cpu": (256, 12, 32, 32), "cuda": (1024, 12, 64, 64)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(BANDWIDTH_TENSORS))
def test_bandwidth(benchmark, case, device):
    shape = LARGE[device]
    fn = bandwidth_calls(bandwidth_inputs(shape, device))[case]
    nbytes = BANDWIDTH_TENSORS[case] * torch.Size(shape).numel() * 4
    benchmark.group = f"bandwidth [{device}]"
    benchmark.extra_info.update(
        impl=case, device=device, shape=list(shape), bytes=nbytes, **allocator_settings()
    )
    fn()

    def timed():
        fn()
        sync(device)

    benchmark(timed)
