"""Fused kernels vs the eager PyTorch reference, side by side in one process.

Cases (CPU always, CUDA when present), at the foundation issue's shape [64, 12, 16, 16]:
each op (actnorm, LU 1x1 conv, affine coupling) forward and forward+backward, and a Glow
step (actnorm -> LU 1x1 -> affine coupling with a small GlowNet st-net) forward+backward
and the double-backward step (log p plus the norm of d log p / dx, seed 004's penalty).

Run ``make bench`` (or ``python -m pytest bench --benchmark-only``); ``python
bench/ratios.py RESULTS.json`` prints the fused/reference ratio per group from
``--benchmark-json RESULTS.json``.
"""

from __future__ import annotations

import pytest
import torch

import invflow
from invflow import masks
from invflow.data import standard_normal_log_prob

from conftest import allocator_settings

SHAPE = (64, 12, 16, 16)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["fused", "reference"]
# Glow-step cases run at batch 64 everywhere and also at a large batch on CUDA.
STEP_CASES = [(d, b) for d in DEVICES for b in ([64, 1024] if d == "cuda" else [64])]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_layer(kind: str, device: str, hidden: int = 64) -> invflow.Flow:
    c = SHAPE[1]
    torch.manual_seed(0)
    layer = {
        "actnorm": lambda: invflow.ActNorm(c),
        "invconv": lambda: invflow.InvConv1x1(c, lu=True),
        "coupling": lambda: invflow.AffineCoupling(c, masks.Checkerboard(0), net=_identity_params),
        "glow_step": lambda: invflow.Sequential(
            invflow.ActNorm(c), invflow.InvConv1x1(c), invflow.AffineCoupling(c, masks.Channel(0), hidden=hidden)
        ),
    }[kind]()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return layer.to(device).eval()


class _ParamsFromInput(torch.nn.Module):
    """A free st-net: h = [x, x] * w. Isolates the coupling's elementwise part in the op benchmark."""

    def __init__(self, channels: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((1, 2 * channels, 1, 1), 0.1))

    def forward(self, x):
        return torch.cat([x, x], dim=1) * self.w


def _identity_params(i, o):
    return _ParamsFromInput(i)


def _record(benchmark, impl, device, group, batch=SHAPE[0]):
    shape = [batch, *SHAPE[1:]]
    benchmark.group = f"{group} [{device}]" if batch == SHAPE[0] else f"{group} [{device}, batch {batch}]"
    benchmark.extra_info.update(impl=impl, device=device, shape=shape, **allocator_settings())


def _run(benchmark, impl, device, fn):
    with invflow.backend(impl):
        fn()  # warm-up (and data-dependent paths)

        def timed():
            fn()
            sync(device)

        benchmark(timed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["actnorm", "invconv", "coupling"])
def test_op_forward(benchmark, kind, impl, device):
    layer = make_layer(kind, device)
    x = torch.randn(SHAPE, device=device)
    _record(benchmark, impl, device, f"{kind} forward")
    with torch.no_grad():
        _run(benchmark, impl, device, lambda: layer(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["actnorm", "invconv", "coupling"])
def test_op_forward_backward(benchmark, kind, impl, device):
    """The layer's forward and backward alone: fixed cotangents for (y, logdet), no loss."""
    layer = make_layer(kind, device)
    x = torch.randn(SHAPE, device=device, requires_grad=True)
    grad_y, grad_logdet = torch.randn(SHAPE, device=device), torch.randn(SHAPE[0], device=device)

    def step():
        y, logdet = layer(x)
        torch.autograd.backward((y, logdet), (grad_y, grad_logdet))

    _record(benchmark, impl, device, f"{kind} forward+backward")
    _run(benchmark, impl, device, step)


@pytest.mark.parametrize("device,batch", STEP_CASES)
@pytest.mark.parametrize("impl", IMPLS + ["compile"])
def test_glow_step_forward_backward(benchmark, impl, device, batch):
    """A maximum-likelihood training step through one Glow step (st-net GlowNet, hidden 64).

    impl "compile" is torch.compile of the reference step (first order only: torch.compile
    refuses double backward, so it has no double-backward row)."""
    layer = make_layer("glow_step", device)
    x = torch.randn((batch, *SHAPE[1:]), device=device, requires_grad=True)
    backend = "reference" if impl == "compile" else impl

    def nll(x):
        with invflow.backend(backend):
            y, logdet = layer(x)
        return -(standard_normal_log_prob(y) + logdet).mean()

    loss_fn = torch.compile(nll) if impl == "compile" else nll

    def step():
        loss_fn(x).backward()

    _record(benchmark, impl, device, "glow_step forward+backward", batch)
    _run(benchmark, backend, device, step)


@pytest.mark.parametrize("device,batch", STEP_CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_glow_step_double_backward(benchmark, impl, device, batch):
    """Training step of the approximate-mass objective: -log p + ||d log p / dx|| (seed 004 Eq. 2)."""
    layer = make_layer("glow_step", device)
    x = torch.randn((batch, *SHAPE[1:]), device=device, requires_grad=True)

    def step():
        y, logdet = layer(x)
        log_p = standard_normal_log_prob(y) + logdet
        (g,) = torch.autograd.grad(log_p.sum(), x, create_graph=True)
        loss = -log_p.mean() + 2.0 * g.flatten(1).norm(dim=1).mean()
        loss.backward()

    _record(benchmark, impl, device, "glow_step double-backward", batch)
    _run(benchmark, impl, device, step)
