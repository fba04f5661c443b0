"""The channels-last Glow fast path (Kingma & Dhariwal 2018, Sec. 3 / Table 1, run as in
invflow.models.fused_scale): registered with ``invflow.Sequential`` at import, taken for Glow
steps on the fused backend only, and computing what the layers compute."""

from __future__ import annotations

import importlib

import pytest
import torch

import invflow
from invflow import masks, nets
from invflow.models import fused_scale

pytestmark = pytest.mark.skipif(not invflow.fused_available(), reason="needs the compiled extension")


def glow_step(c: int, parity: int) -> invflow.Sequential:
    return invflow.Sequential(
        invflow.ActNorm(c),
        invflow.InvConv1x1(c, lu=True),
        invflow.AffineCoupling(c, masks.Channel(parity), net=lambda i, o: nets.GlowNet(i, o, hidden=4)),
    )


@pytest.fixture
def calls(monkeypatch):
    """Counts the runs of the fused Glow steps (what the registered fast path calls)."""
    seen = []
    real = fused_scale.fused_glow_steps

    def counting(steps, x):
        out = real(steps, x)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(fused_scale, "fused_glow_steps", counting)
    return seen


def initialised(seq: invflow.Sequential, x: torch.Tensor) -> invflow.Sequential:
    with invflow.backend("reference"):
        seq.train()(x)
    return seq.eval()


def test_the_glow_fast_path_is_registered_by_the_models_package():
    assert fused_scale.sequential_fast_path in invflow.Sequential.fast_paths()
    before = invflow.Sequential.fast_paths()
    invflow.Sequential.register_fast_path(fused_scale.sequential_fast_path)  # twice: a no-op
    assert invflow.Sequential.fast_paths() == before


@pytest.mark.parametrize("run", [False, True], ids=["one_step", "run_of_steps"])
def test_fast_path_taken_on_fused_not_on_reference(calls, run):
    x = torch.rand(2, 4, 4, 6, dtype=torch.float64) - 0.5
    seq = invflow.Sequential(glow_step(4, 0), glow_step(4, 1)) if run else glow_step(4, 1)
    seq = initialised(seq.double(), x)
    with invflow.backend("reference"):
        y_ref, ld_ref = seq(x)
    assert calls == []
    with invflow.backend("fused"):
        y, ld = seq(x)
    assert calls == [True]
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ld, ld_ref)


def test_fast_path_not_taken_for_other_layers_or_uninitialised_actnorm(calls):
    x = torch.rand(2, 4, 4, 4) - 0.5
    other = invflow.Sequential(invflow.ActNorm(4), invflow.InvConv1x1(4))
    with invflow.backend("fused"):
        other.eval()(x)
        assert calls == []  # not Glow steps: the layers run, fused_glow_steps is not asked
        glow_step(4, 0).train()(x)  # actnorm awaiting its data-dependent init
    assert calls == [False]


def test_glow_model_forward_uses_the_fused_scale_on_fused_only(monkeypatch):
    seen = []
    real = fused_scale.fused_glow_scale

    def counting(flows, x):
        out = real(flows, x)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(importlib.import_module("invflow.models.glow"), "fused_glow_scale", counting)
    model = invflow.Glow(1, 4, levels=2, steps=1, hidden=4)
    x = torch.rand(3, 1, 4, 4) - 0.5
    with invflow.backend("reference"):
        model.train()(x)
        model.eval()(x)
    assert seen == []
    with invflow.backend("fused"):
        model(x)
    assert seen == [True, True]
