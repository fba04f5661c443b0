"""Reliability figures: a hypothesis fuzz of every flow layer, fused kernels against
the pure-PyTorch reference, over random shapes (odd sizes, ranks 2-4), dtypes, devices
available, masks and scale functions: the forward, the log-determinant and the inverse
agree, and the inverse reconstructs the input.  ``FUZZ_EXAMPLES`` (environment) sets the
examples per test (default 15)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import invflow
from invflow import masks, nets

pytestmark = pytest.mark.skipif(not invflow.fused_available(), reason="the fused extension is not built")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-4)}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _build(kind: str, c: int, scale: str, mask_kind: str, parity: int) -> invflow.Flow:
    torch.manual_seed(parity * 7 + c)
    if kind == "actnorm":
        return invflow.ActNorm(c)
    if kind == "invconv_lu":
        return invflow.InvConv1x1(c, lu=True)
    if kind == "invconv":
        return invflow.InvConv1x1(c, lu=False)
    if kind == "fixed":
        return invflow.FixedLinear(c, seed=parity)
    mask = {
        "channel": masks.Channel(parity),
        "checkerboard": masks.Checkerboard(parity),
        "horizontal": masks.Horizontal(parity),
        "cycle": masks.Cycle(parity),
    }[mask_kind]

    def net(i, o):
        return nets.GlowNet(i, o, hidden=6)

    if kind == "additive":
        return invflow.AdditiveCoupling(c, mask, net=net)
    return invflow.AffineCoupling(c, mask, net=net, scale=scale)


def _perturb(layer: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))


def _check(kind, c, b, spatial, dtype, device, scale, mask_kind, parity):
    layer = _build(kind, c, scale, mask_kind, parity).to(device=device, dtype=dtype)
    _perturb(layer, c * 31 + b)
    layer.eval()
    g = torch.Generator().manual_seed(b * 101 + c)
    x = (0.5 * torch.randn((b, c, *spatial), generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    outs = {}
    for name in ("reference", "fused"):
        with invflow.backend(name), torch.no_grad():
            y, ld = layer(x)
            back, ld_inv = layer.inverse(y)
        outs[name] = (y, ld, back, ld_inv)
    tol = TOL[dtype]
    for r, f in zip(outs["reference"], outs["fused"]):
        torch.testing.assert_close(f, r, **tol)
    torch.testing.assert_close(outs["fused"][2], x, **{k: 50 * v for k, v in tol.items()})
    torch.testing.assert_close(outs["fused"][3], -outs["fused"][1], **{k: 50 * v for k, v in tol.items()})


dtypes = st.sampled_from([torch.float32, torch.float64])
devices = st.sampled_from(DEVICES)


@FUZZ
@given(
    kind=st.sampled_from(["actnorm", "invconv_lu", "invconv", "fixed"]),
    c=st.integers(1, 9),
    b=st.integers(1, 5),
    spatial=st.sampled_from([(), (3,), (1, 1), (2, 3), (5, 4), (7, 7)]),
    dtype=dtypes,
    device=devices,
)
def test_fuzz_channel_layers_fused_equal_reference(kind, c, b, spatial, dtype, device):
    _check(kind, c, b, spatial, dtype, device, "sigmoid", "channel", 0)


@FUZZ
@given(
    kind=st.sampled_from(["affine", "additive"]),
    c=st.integers(2, 7),
    b=st.integers(1, 4),
    hw=st.sampled_from([(2, 2), (3, 5), (4, 4), (6, 3)]),
    dtype=dtypes,
    device=devices,
    scale=st.sampled_from(["sigmoid", "exp", "tanh"]),
    mask_kind=st.sampled_from(["channel", "checkerboard", "horizontal", "cycle"]),
    parity=st.integers(0, 1),
)
def test_fuzz_couplings_fused_equal_reference(kind, c, b, hw, dtype, device, scale, mask_kind, parity):
    if mask_kind == "cycle" and (hw[0] % 2 or hw[1] % 2):
        hw = (4, 4)  # quadrant masks need even sizes
    _check(kind, c, b, hw, dtype, device, scale, mask_kind, parity)


@FUZZ
@given(
    c=st.integers(1, 5),
    b=st.integers(1, 4),
    hw=st.sampled_from([(2, 2), (4, 6), (8, 2)]),
    dtype=dtypes,
    device=devices,
)
def test_fuzz_squeeze_and_sequential_step(c, b, hw, dtype, device):
    step = invflow.Sequential(
        invflow.Squeeze(),
        invflow.ActNorm(4 * c),
        invflow.InvConv1x1(4 * c),
        invflow.AffineCoupling(4 * c, masks.Channel(0), net=lambda i, o: nets.GlowNet(i, o, 6)),
    )
    step = step.to(device=device, dtype=dtype)
    _perturb(step, b + c)
    layer = step.eval()
    g = torch.Generator().manual_seed(b + 10 * c)
    x = (0.5 * torch.randn((b, c, *hw), generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    res = {}
    for name in ("reference", "fused"):
        with invflow.backend(name), torch.no_grad():
            y, ld = layer(x)
            res[name] = (y, ld, layer.inverse(y)[0])
    for r, f in zip(res["reference"], res["fused"]):
        torch.testing.assert_close(f, r, **TOL[dtype])
